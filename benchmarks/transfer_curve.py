"""The label-efficiency curve of a pipeline config, measured with the real pipeline pieces:
shards written by `shard_set` + `write_shard` (the functions `vitpipe shard`'s Ray tasks run; the
bytes do not depend on where they run), pretraining and every fine-tune through
`run_training_job` / `run_finetune_job` (the same loader, augmentation, DeepSpeed engine and
checkpoints as `vitpipe pretrain` / `vitpipe finetune`), in this process (`--launcher local`,
world size 1) or on Ray (`--launcher ray`, `cluster.num_workers` workers per job).

Baseline: every point is fine-tuned from the pretrained checkpoint and from a random init of the
same architecture (seeded by the point's seed), on the same k-shot shard set.

    .venv/bin/python benchmarks/transfer_curve.py -c configs/demo.yaml --out /tmp/curve
    .venv/bin/python benchmarks/transfer_curve.py -c configs/demo.yaml --out /tmp/curve \\
        --pretrain-from /tmp/curve/pretrain --shots 5 --seeds 0 1 2   # reuse a pretraining

Writes `<out>/points.json` ([{k, seed, init, val_top1, elapsed_s}]), `<out>/timings.json`,
`<out>/transfer.png`, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.stages.finetune import run_finetune_job  # noqa: E402
from launch.stages.training import run_training_job  # noqa: E402
from pipelines.config import JobConfig  # noqa: E402
from pipelines.config.paths import with_absolute_paths  # noqa: E402
from pipelines.config.pipeline import load_pipeline, pipeline_transfer_runs  # noqa: E402
from pipelines.data import shard_set  # noqa: E402
from pipelines.data.manifest import MANIFEST_NAME, read_manifest  # noqa: E402
from pipelines.data.shard_writer import write_shard  # noqa: E402
from pipelines.evaluation.transfer import transfer_report  # noqa: E402


def shard_in_process(config: JobConfig) -> float:
    """Write `config.shard` unless its manifest exists; returns seconds spent."""
    started = time.perf_counter()
    section = with_absolute_paths(config).shard
    if Path(section.output, MANIFEST_NAME).is_file():
        return 0.0
    job, plan = shard_set.prepare(section)
    shard_set.begin(job.output, plan)
    results = [write_shard(job, task) for task in plan.shards]
    shard_set.finish(job, plan, results, section)
    return time.perf_counter() - started


def scratch_init(vit_config: dict, preprocess: dict | None, seed: int, out: Path) -> Path:
    """A random init of the pretrained architecture, exported like a model (seeded)."""
    import torch

    from pipelines.export import export_info, save_model
    from vit_core import VisionTransformer, ViTConfig

    if (out / "model.safetensors").is_file():
        return out
    torch.manual_seed(seed)
    model = VisionTransformer(ViTConfig.from_dict(vit_config))
    info = export_info(model, stage="random-init", preprocess=preprocess)
    save_model(model, out, info=info)
    return out


def architecture(checkpoint: str | None, pretrain: JobConfig) -> tuple[dict, dict]:
    """The pretrained model's ViT config and preprocessing: from its checkpoint, else from the
    pretraining config (scratch-only runs, before or without pretraining)."""
    if checkpoint is not None and Path(checkpoint, "config.json").is_file():
        info = json.loads(Path(checkpoint, "config.json").read_text())  # an export dir
        return info["vit_config"], info.get("preprocess")
    if checkpoint is not None:
        from pipelines.train.checkpoint import open_checkpoint

        meta = open_checkpoint(Path(checkpoint)).meta
        return meta["vit_config"], meta.get("preprocess")
    import vit_core

    classes = pretrain.model.num_classes or pretrain.shard.source.num_classes
    model = vit_core.create_model(pretrain.model.name, **pretrain.model.vit_overrides(classes))
    augment = pretrain.augment
    preprocess = {"img_size": model.config.img_size, "mean": list(augment.mean),
                  "std": list(augment.std), "crop_pct": augment.eval_crop_pct}  # fmt: skip
    return model.config.to_dict(), preprocess


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (dataloader workers, Ray excluded)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load(args: argparse.Namespace):
    pipeline, stages = load_pipeline(args.config, args.overrides)
    if pipeline.transfer is None:
        raise SystemExit(f"{args.config} has no `transfer:` section")
    runs = pipeline_transfer_runs(pipeline, args.out / "transfer")
    runs = [r for r in runs if str(r.shots) in args.shots] if args.shots else runs
    runs = [r for r in runs if r.seed in args.seeds] if args.seeds else runs
    runs = [r for r in runs if r.init in args.inits] if args.inits else runs
    return stages, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", type=Path, required=True, help="a pipeline config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pretrain-from", help="a pretraining run dir or checkpoint to reuse")
    parser.add_argument("--launcher", choices=("local", "ray"), default="local")
    parser.add_argument("--shots", nargs="*", help="only these k (e.g. 5 20 all)")
    parser.add_argument("--seeds", nargs="*", type=int, help="only these seeds")
    parser.add_argument("--inits", nargs="*", choices=("pretrained", "scratch"))
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    stages, runs = load(args)
    timings: dict[str, float] = {}

    def timed(name: str, seconds: float) -> None:
        timings[name] = round(timings.get(name, 0.0) + seconds, 2)
        timings[f"{name}_load1"] = round(os.getloadavg()[0], 2)

    checkpoint = None
    if args.inits == ["scratch"] and not args.pretrain_from:
        pass  # the scratch baseline needs only the architecture
    elif args.pretrain_from and Path(args.pretrain_from, "model.safetensors").is_file():
        checkpoint = str(Path(args.pretrain_from).resolve())  # an export dir
    elif args.pretrain_from:
        from pipelines.train.checkpoint import latest_checkpoint, open_checkpoint

        path = Path(args.pretrain_from).resolve()
        found = latest_checkpoint(path / "checkpoints") or open_checkpoint(path)
        checkpoint = str(found.path)
    else:
        pretrain = with_absolute_paths(stages["pretrain"], args.out / "pretrain")
        timed("shard_pretrain_s", shard_in_process(pretrain))
        started = time.perf_counter()
        pre = run_training_job(pretrain, stage="pretrain", launcher=args.launcher, progress=False)
        timed("pretrain_s", time.perf_counter() - started)
        checkpoint = pre["checkpoint"]
        print(f"pretrain: val top-1 {pre.get('val_top1')}, {timings['pretrain_s']} s", flush=True)

    vit_config, preprocess = architecture(checkpoint, stages["pretrain"])
    points_path = args.out / "points.json"
    points = json.loads(points_path.read_text()) if points_path.is_file() else []
    done = {(p["k"], p["seed"], p["init"]) for p in points}
    for run in runs:
        if (run.shots, run.seed, run.init) in done:
            continue
        timed("shard_finetune_s", shard_in_process(run.config))
        init = checkpoint
        if run.init == "scratch":
            out = args.out / "scratch_init" / f"s{run.seed}"
            init = str(scratch_init(vit_config, preprocess, run.seed, out))
        started, cpu = time.perf_counter(), cpu_seconds()
        summary = run_finetune_job(
            run.config, init_from=init, launcher=args.launcher, progress=False
        )
        elapsed = time.perf_counter() - started
        timed(f"finetune_k{run.shots}_s", elapsed)
        point = {"k": run.shots, "seed": run.seed, "init": run.init,
                 "val_top1": summary["val_top1"], "elapsed_s": round(elapsed, 1),
                 "cpu_s": round(cpu_seconds() - cpu, 1),
                 "load1": round(os.getloadavg()[0], 2)}  # fmt: skip
        points.append(point)
        points_path.write_text(json.dumps(points, indent=1))
        print(json.dumps(point), flush=True)

    full = (
        read_manifest(str(next(r for r in runs if r.shots == "all").config.shard.output))
        if any(r.shots == "all" for r in runs)
        else None
    )
    per_class = full.split("train").num_samples / full.num_classes if full else None
    report = transfer_report(points, args.out / "transfer.png", all_per_class=per_class)
    (args.out / "timings.json").write_text(json.dumps(timings, indent=1))
    print(report.table)
    print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
