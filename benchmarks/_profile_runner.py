"""train_step.py --profile: where a vit_core/timm ratio != 1 comes from. torch.profiler over a
few steps of the first model and mode, for each implementation: its top 15 ops, then the ops
whose self time per step differs most between the two."""

from __future__ import annotations

from typing import Any

from _measure import timed
from _report import format_table
from _step_runner import IMPLS, StepRunner, profiled_time, profiler_activities, release

TOP = 15


class ProfileRunner(StepRunner):
    """The first --pairs (model, mode), profiled per impl; self time per op and per step."""

    key = "profile"

    def run(self, report: dict[str, Any]) -> None:
        from torch.profiler import profile

        args, device = self.args, self.device
        spec, mode = args.pairs[0]
        config = args.configs[spec]
        batch = self.batch_size(spec)
        x, y = self.synthetic_batch(config, batch)
        key = profiled_time(device)
        per_op: dict[str, dict[str, float]] = {}
        for name in IMPLS:
            impl = self.build(name, config, mode)
            timed(impl.step, x, y, max(args.warmup, 1), device)
            for _ in range(2):  # the first profile of a process pays the profiler's start-up
                with profile(activities=profiler_activities(device)) as prof:
                    timed(impl.step, x, y, args.profile_steps, device)
            averages = prof.key_averages()
            print(f"\n== {name}: {spec} {mode} batch {batch}, {args.profile_steps} steps, by {key}")
            print(averages.table(sort_by=key, row_limit=TOP))
            per_op[name] = {e.key: getattr(e, key) / args.profile_steps / 1e3 for e in averages}
            del impl, prof
            release(device)
        ours, theirs = per_op["vit_core"], per_op["timm"]
        diffs = sorted(
            ((ours.get(n, 0.0) - theirs.get(n, 0.0), n) for n in set(ours) | set(theirs)),
            key=lambda d: -abs(d[0]),
        )
        print("\n== self time per step, vit_core - timm (ms; + means vit_core spends more)")
        rows = [
            [n[:70], f"{ours.get(n, 0.0):.3f}", f"{theirs.get(n, 0.0):.3f}", f"{d:+.3f}"]
            for d, n in diffs[:TOP]
        ]
        print(format_table(["op", "vit_core ms", "timm ms", "diff ms"], rows))
        totals = {name: sum(ops.values()) for name, ops in per_op.items()}
        print(
            f"total self time per step: vit_core {totals['vit_core']:.2f} ms, "
            f"timm {totals['timm']:.2f} ms"
        )
        report[self.key] = {"model": spec, "mode": mode, "batch": batch, "self_ms_per_step": per_op}
