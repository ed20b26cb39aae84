"""Training-step speed of vit_core's ViT against timm's VisionTransformer (the baseline).

Both models get the same config (vit_core.timm_kwargs), threads, batch and optimizer; one step is
forward + cross-entropy + backward + AdamW. After a warmup the two run interleaved
(A, B, A, B, ...) so that drift in the machine's speed hits both alike; the script prints each
one's median step time and the ratio vit_core / timm (lower is better, < 1 means faster).

    python benchmarks/model_step.py                          # CPU, small ViT-Ti, ~30 s
    python benchmarks/model_step.py --device cuda --model vit_base_patch16 --img-size 224 \
        --batch 64 --amp bf16
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import Step, timed, train_step
from torch import nn

import vit_core


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--model", default="vit_tiny_patch16", choices=vit_core.list_models())
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round and model")
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds (A, B) x rounds")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_models(args: argparse.Namespace) -> tuple[nn.Module, nn.Module]:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    config = vit_core.model_config(args.model, img_size=args.img_size, num_classes=args.num_classes)
    ours = vit_core.VisionTransformer(config)
    timm_model = TimmViT(**vit_core.timm_kwargs(config))
    n_ours, n_timm = vit_core.num_params(ours), vit_core.num_params(timm_model)
    assert n_ours == n_timm, f"parameter counts differ: {n_ours} vs {n_timm}"
    return ours, timm_model


def make_step(model: nn.Module, args: argparse.Namespace, device: torch.device) -> Step:
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, foreach=True)
    forward = torch.compile(model) if args.compile else model
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float32
    return train_step(forward, optimizer, device, dtype)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    ours, timm_model = build_models(args)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch,), device=device)
    steps = {"vit_core": make_step(ours, args, device), "timm": make_step(timm_model, args, device)}
    for step in steps.values():
        timed(step, x, y, args.warmup, device)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    cpu_samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            wall, cpu = timed(step, x, y, args.steps, device)
            samples[name].append(wall)
            cpu_samples[name].append(cpu)

    cfg = ours.config
    print(
        f"model {args.model} (dim {cfg.dim}, depth {cfg.depth}, heads {cfg.num_heads}, "
        f"patch {cfg.patch_size}) img {args.img_size} batch {args.batch} device {device} "
        f"threads {torch.get_num_threads()} amp {args.amp} compile {args.compile}"
    )
    print(f"params {vit_core.num_params(ours):,}  fwd GFLOPs/img {vit_core.flops(cfg) / 1e9:.3f}")
    medians = {name: statistics.median(s) for name, s in samples.items()}
    for name, median in medians.items():
        spread = f"min {min(samples[name]) * 1e3:.1f} max {max(samples[name]) * 1e3:.1f}"
        imgs = args.batch / median
        print(f"{name:9s} median step {median * 1e3:8.2f} ms  ({spread})  {imgs:8.1f} img/s")
    paired = [a / b for a, b in zip(samples["vit_core"], samples["timm"], strict=True)]
    if device.type == "cpu":
        cpu = {name: statistics.median(s) for name, s in cpu_samples.items()}
        print(
            f"median CPU time per step: vit_core {cpu['vit_core'] * 1e3:.2f} ms, "
            f"timm {cpu['timm'] * 1e3:.2f} ms, ratio {cpu['vit_core'] / cpu['timm']:.3f}"
        )
    print(
        f"ratio vit_core/timm {medians['vit_core'] / medians['timm']:.3f} (median wall step "
        f"times; median of per-round ratios {statistics.median(paired):.3f}; lower is better)"
    )


if __name__ == "__main__":
    main()
