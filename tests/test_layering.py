"""The layers import one way: launch -> pipelines -> vit_core. `pipelines` never imports `launch`
or Ray at module level, so the training loop runs where Ray is not installed."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pipelines


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
