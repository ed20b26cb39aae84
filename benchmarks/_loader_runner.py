"""train_step.py --with-loader SHARDS: vit_core's step fed by the real ShardLoader, as the
training loop feeds it (`--device-decode`: JPEG decode and crop on the GPU, else batches copied
one step ahead), for img/s and the data-wait fraction: the share of wall time the host spends
blocked in next(batch). The same steps on synthetic data follow, for reference.

Needs the loader's dependencies (pyarrow, torchvision, pillow, pydantic), imported only here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from _measure import peaks, timed
from _report import format_table
from _step_runner import StepRunner

import vit_core
from pipelines.train.peak import sync


class LoaderRunner(StepRunner):
    """The first --pairs (model, mode), one timed run of --steps x --windows loader batches."""

    key = "loader"

    def run(self, report: dict[str, Any]) -> None:
        from pipelines.config.data import AugmentSection, DataSection
        from pipelines.data.loader.shard_loader import ShardLoader

        args, device = self.args, self.device
        spec, mode = args.pairs[0]
        workers = args.workers
        if workers is None:
            workers = max(2, (os.cpu_count() or 2) - 2) if device.type == "cuda" else 2
        config = args.configs[spec]
        batch = self.batch_size(spec)
        loader = ShardLoader(
            str(args.with_loader),
            args.split,
            rank=0,
            world_size=1,
            micro_batch_size=batch,
            seed=args.seed,
            data=DataSection(num_workers=workers),
            augment=AugmentSection(),
            img_size=config.img_size,
            # The training loop's options: decode on the device, or copy batches one step ahead.
            decode_on=device if args.device_decode else None,
            device=device if device.type == "cuda" and not args.device_decode else None,
        )
        if loader.batches_per_epoch < 1:
            raise SystemExit(
                f"{args.with_loader} split {args.split!r} is too small for batch {batch} with "
                f"{workers} workers; lower --batch or --workers"
            )
        config = config.replace(num_classes=loader.manifest.num_classes)
        impl = self.build("vit_core", config, mode)
        batches = _forever(loader)
        n = args.steps * args.windows

        def run(count: int) -> float:
            """`count` steps on loader batches; the seconds spent waiting for them."""
            wait = 0.0
            for _ in range(count):
                start = time.perf_counter()
                b = next(batches)
                wait += time.perf_counter() - start
                x = b["image"].to(device, non_blocking=True)
                y = b["label"].to(device, non_blocking=True)
                impl.step(x, y)
            return wait

        run(max(args.warmup, 1))  # worker start-up and compilation excluded
        sync(device)
        start = time.perf_counter()
        wait = run(n)
        sync(device)
        wall = time.perf_counter() - start
        batches.close()  # stop the loader's workers before the synthetic-data reference
        x, y = self.synthetic_batch(config, batch)
        synthetic_s, _ = timed(impl.step, x, y, n, device)
        img_s = n * batch / wall
        chip = peaks(device, self.dtype, self.peak)
        result = {
            "model": spec,
            "mode": mode,
            "batch": batch,
            "img_size": config.img_size,
            "workers": workers,
            "device_decode": bool(args.device_decode),
            "steps": n,
            "shards": str(args.with_loader),
            "img_per_s": img_s,
            "step_ms": wall / n * 1e3,
            "data_wait_frac": wait / wall,
            **chip.mfu(3 * vit_core.flops(config) * img_s),
            "synthetic_img_per_s": batch / synthetic_s,
            "loader_stats": loader.stats(),
        }
        header = ["model", "mode", "batch", "workers", "steps", "img/s", "step ms", "data-wait"]
        header += ["MFU", "synthetic img/s"]
        row = [spec, mode, str(batch), str(workers), str(n), f"{img_s:.1f}"]
        row += [f"{result['step_ms']:.2f}", f"{100 * result['data_wait_frac']:.1f}%"]
        row += [f"{100 * result['mfu']:.1f}%", f"{result['synthetic_img_per_s']:.1f}"]
        print(format_table(header, [row]))
        print(
            f"data-wait = time blocked in next(batch) / wall time; the loader delivers "
            f"{img_s / result['synthetic_img_per_s']:.0%} of the synthetic-data throughput"
        )
        report[self.key] = result


def _forever(loader: Any) -> Iterator[dict[str, Any]]:
    """Epoch after epoch: a run longer than one epoch never stops at its end."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise RuntimeError("the loader yielded no batch in a whole epoch")
