"""The layers import one way, top to bottom: launch -> pipelines -> vit_core, and inside
`pipelines` through the stages of the stack below. Every import counts, a function-level one
too (a lazy import that dodges a cycle is still a cycle). `pipelines` never imports `launch` or
Ray at module level, so the training loop runs where Ray is not installed."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pipelines

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top. A module belongs to the stage of the longest prefix that names it; it may
# import its own stage and the stages below.
STACK: list[tuple[str, ...]] = [
    ("vit_core",),
    (  # foundations: errors, names in a run dir, seeds, storage, the process group
        "pipelines.errors",
        "pipelines.layout",
        "pipelines.seeds",
        "pipelines.section",
        "pipelines.storage",
        "pipelines.transfer",
        "pipelines.distributed",
    ),
    ("pipelines.data.sources", "pipelines.data.labels"),  # inputs, each with its section
    ("pipelines.config",),
    ("pipelines.numerics", "pipelines.run_storage"),
    ("pipelines.data",),
    ("pipelines.tracking",),
    ("pipelines.checkpoint",),  # the stored form of a checkpoint, exports, model sources
    ("pipelines.evaluation",),
    ("pipelines.train",),
    ("launch.processes", "launch.jobs", "launch.terminal"),
    ("launch.stages",),
    ("launch.commands", "launch.cli"),
]
PACKAGES = ("vit_core", "pipelines", "launch")


def _stage(module: str) -> tuple[int, str]:
    best = (-1, "")
    for level, prefixes in enumerate(STACK):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best[1]):
                best = (level, prefix)
    assert best[0] >= 0, f"{module} is in no stage of the stack: add it to STACK"
    return best


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if name not in PACKAGES:  # the top-level packages' __init__ are empty
                modules[name] = path
    return modules


def test_no_module_imports_a_stage_above_its_own():
    modules = _modules()
    upward = []
    for name, path in sorted(modules.items()):
        level, _ = _stage(name)
        for target in _imports(path):
            if target not in modules:  # `from package import name` of a non-module name
                continue
            target_level, prefix = _stage(target)
            if target_level > level:
                upward.append(f"{name} imports {target} (stage {prefix!r} is above)")
    assert not upward, "\n".join(upward)


def _all_pipelines_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(pipelines.__path__, prefix="pipelines.")
        if not info.name.endswith("__main__")
    )


def test_pipelines_never_imports_launch_or_ray_at_module_level():
    modules = _all_pipelines_modules()
    assert "pipelines.train.trainer" in modules and "pipelines.data.loader.shard_loader" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('launch', 'ray'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing pipelines loaded {out.stdout.strip()}"
