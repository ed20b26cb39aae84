"""Render `gpu_report.md` from what benchmarks/gpu/check.sh left in its output folder: the steps
and their exit status, tests/gpu, the train_step table and top kernels, host syncs per ZeRO step,
and the pretraining run (img/s, MFU against the rated and the measured peak, peak memory,
data-wait fraction), each against the goals of the GPU-readiness issue. Any part may be missing
(a step that failed or ran out of time): the report says so and shows the rest.

    python benchmarks/gpu/report.py OUT_DIR [--dry-run 0|1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

GOAL_MFU, GOAL_WAIT = 0.45, 0.05


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def machine() -> list[str]:
    import torch

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
    line = f"torch {torch.__version__}, CUDA {torch.version.cuda or '-'}, {name}"
    try:
        import deepspeed

        line += f", deepspeed {deepspeed.__version__}"
    except ImportError:
        line += ", deepspeed not importable"
    return [line]


def steps(out: Path) -> list[str]:
    rows = []
    for line in (
        (out / "steps.tsv").read_text().splitlines() if (out / "steps.tsv").exists() else []
    ):
        name, rc, seconds = line.split("\t")
        status = {"0": "ok", "124": "TIMED OUT", "137": "KILLED"}.get(rc, f"FAILED ({rc})")
        rows.append([name, status, f"{seconds} s"])
    return _table(["step", "status", "time"], rows) if rows else ["(no step finished)"]


def tests(out: Path) -> list[str]:
    path = out / "tests_gpu.txt"
    if not path.exists():
        return ["(not run)"]
    lines = path.read_text().splitlines()
    keep = [ln for ln in lines if ln.startswith(("PASSED", "FAILED", "ERROR", "SKIPPED"))]
    return [f"    {ln}" for ln in keep + lines[-1:]]


def train_step(out: Path) -> list[str]:
    report = _json(out / "train_step.json")
    if not report or not report.get("rows"):
        return ["(no pair finished)"]
    peak = report.get("mfu_peak", {}).get("source", "the measured matmul (the sweep did not end)")
    lines = [f"{report.get('device')}, {report.get('dtype')}; MFU against {peak}", ""]
    rows, goal = [], []
    for r in report["rows"]:
        if r["status"] != "ok":
            rows.append([r["model"], r["mode"], r["impl"], "failed: " + r.get("error", "")[:60]])
            continue
        mem = r.get("peak_mem_bytes")
        rows.append(
            [r["model"], r["mode"], r["impl"], str(r["batch"]), f"{r['img_per_s']:.0f}"]
            + [_pct(r.get("mfu")), _pct(r.get("mfu_measured_peak"))]
            + ["-" if mem is None else f"{mem / 2**30:.1f} GiB"]
            + [f"{r['ratio']:.3f}" if "ratio" in r else ""]
        )
        if r["model"] == "vit_base_patch16" and r["impl"] == "vit_core" and "ratio" in r:
            met = r.get("mfu", 0) >= GOAL_MFU and r["ratio"] < 1
            goal.append(
                f"goal ViT-B/16 {r['mode']}: MFU {_pct(r.get('mfu'))} (>= 45%), vit_core/timm "
                f"{r['ratio']:.3f} (< 1): {'met' if met else 'NOT met'}"
            )
    header = ["model", "mode", "impl", "batch", "img/s", "MFU", "MFU meas.", "peak mem"]
    lines += _table([*header, "vit_core/timm"], rows) + [""] + goal
    profiled = next((r for r in report["rows"] if r.get("kernels")), None)
    if profiled:
        where = f"vit_core {profiled['model']} {profiled['mode']}"
        lines += ["", f"Top kernels, {where} (torch.profiler, device self time):", ""]
        rows = [
            [k["name"][:80].replace("|", "/"), f"{k['ms_per_step']:.2f}", _pct(k["share"])]
            for k in profiled["kernels"]
        ]
        lines += _table(["kernel", "ms/step", "share"], rows)
    return lines


def host_syncs(out: Path) -> list[str]:
    report = _json(out / "host_syncs.json")
    if not report or not report.get("rows"):
        return ["(not run)"]
    lines = []
    for row in report["rows"]:
        cuda = row.get("cuda_syncs_per_step")
        extra = "" if cuda is None else f", {cuda:g} seen by torch.cuda sync debug mode"
        lines.append(f"- ZeRO-{row['zero_stage']} ({row['optimizer']}): {row['reads_per_step']:g}")
        lines[-1] += f" host reads per step{extra}"
        lines += [f"    - {n:g} x `{site}`" for site, n in row["sites"].items()]
    return lines


def pretrain(out: Path) -> list[str]:
    summary = _json(out / "summary.json")
    records = []
    if (out / "metrics.jsonl").exists():
        for line in (out / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if "images_per_sec" in record:
                records.append(record)
    if not summary and not records:
        return ["(no summary and no metrics)"]
    lines = []
    if summary:
        mem = summary.get("peak_memory_bytes")
        lines += [
            f"status {summary.get('status')}, {summary.get('steps')} steps, "
            f"{summary.get('fast_path')}, MFU peak: {summary.get('mfu_peak')}",
            f"whole run: {summary.get('images_per_sec', 0):.0f} img/s, MFU "
            f"{_pct(summary.get('mfu'))} (measured peak {_pct(summary.get('mfu_measured_peak'))}),"
            f" data-wait {_pct(summary.get('data_wait_frac'))}, peak memory "
            f"{'-' if mem is None else f'{mem / 2**30:.1f} GiB'}",
        ]
    steady = records[len(records) // 2 :]  # past compilation and the loader's start
    if steady:
        img = statistics.median(r["images_per_sec"] for r in steady)
        wait = statistics.median(r["data_wait_frac"] for r in steady)
        mfu = statistics.median(r.get("mfu") or 0.0 for r in steady)
        measured = statistics.median(r.get("mfu_measured_peak") or 0.0 for r in steady)
        lines.append(
            f"steady state (median of the last {len(steady)} logged windows): {img:.0f} img/s, "
            f"MFU {_pct(mfu)} (measured peak {_pct(measured)}), data-wait {_pct(wait)}"
        )
        lines.append(f"goal data-wait <= 5%: {'met' if wait <= GOAL_WAIT else 'NOT met'}")
    return lines


def render(out: Path, dry_run: bool) -> str:
    title = "GPU check" + (" (DRY RUN: CPU, tiny sizes; no number here is a GPU number)" * dry_run)
    sections = [
        (f"# {title}", [time.strftime("%Y-%m-%d %H:%M:%S %Z"), *machine()]),
        ("## Steps", steps(out)),
        ("## tests/gpu", tests(out)),
        ("## Training step: vit_core vs timm (benchmarks/train_step.py)", train_step(out)),
        ("## Host syncs per optimizer step (benchmarks/host_syncs.py)", host_syncs(out)),
        ("## Pretraining ViT-B/16, every fast-path switch on", pretrain(out)),
    ]
    return "\n".join(f"{head}\n\n" + "\n".join(body) + "\n" for head, body in sections)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--dry-run", type=int, default=0)
    args = p.parse_args(argv)
    text = render(args.out, bool(args.dry_run))
    tmp = args.out / ".gpu_report.md.tmp"
    tmp.write_text(text)
    tmp.replace(args.out / "gpu_report.md")


if __name__ == "__main__":
    main()
