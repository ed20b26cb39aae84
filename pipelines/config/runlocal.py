"""`runlocal` (big_vision's habit): any recipe shrunk to something a laptop runs in a minute, so
that no recipe ships without ever having run. The recipe's choices that decide *how* it trains
(model family, pooling, head, optimizer, schedule shape, ZeRO stage, augmentations, loss) stay;
what decides *how much* (model size, data, steps, batch, workers, GPUs) becomes tiny, and the
data becomes local FractalDB-style shards written into the run dir.
"""

from __future__ import annotations

import copy
from typing import Any

TINY_MODEL = {"img_size": 32, "patch_size": 4, "dim": 64, "depth": 2, "num_heads": 2}
LOCAL_SHARDS = {
    "source": {
        "kind": "fractal",
        "num_classes": 4,
        "images_per_class": 16,
        "image_size": 32,
        "num_points": 1000,
    },
    "output": None,  # <run dir>/shards, which training then reads
    "samples_per_shard": 32,
    "image_format": "png",
    "val_fraction": 0.25,
    "num_workers": 1,
}
TINY_TRAIN = {
    "total_steps": 4,
    "global_batch_size": 8,
    "micro_batch_size": 4,
    "grad_accum_steps": None,
    "log_every_n_steps": 1,
    "eval_every_n_steps": None,
    "eval_max_batches": 2,
    "fewshot_every_n_steps": None,
    "peak_tflops": None,
}
LOCAL_CLUSTER = {
    "address": None,
    "num_workers": 1,
    "use_gpu": False,
    "cpus_per_worker": 1.0,
    "resources_per_worker": {},
    "storage_path": None,
}


def shrink(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a raw job config (before validation) shrunk as the module says."""
    out = copy.deepcopy(raw)
    sections = {
        name: dict(out.get(name) or {})
        for name in ("model", "data", "train", "schedule", "checkpoint", "cluster", "deepspeed")
    }
    sections["model"].update(TINY_MODEL, head_hidden_dim=None)
    sections["data"].update(
        train_shards=None,
        val_shards=None,
        fewshot_shards=None,
        num_workers=1,
        shuffle_buffer=16,
        decode_device="cpu",
    )
    sections["train"].update(TINY_TRAIN)
    warmup = sections["schedule"].get("warmup_steps") or 0
    sections["schedule"]["warmup_steps"] = min(warmup, 1)
    sections["checkpoint"].update(every_n_steps=2, keep_last=2)
    sections["cluster"].update(LOCAL_CLUSTER)
    if sections["deepspeed"].get("precision") == "fp16":
        sections["deepspeed"]["precision"] = "bf16"  # fp16 needs a GPU; bf16 runs on CPU
    out.update(sections)
    # The data is replaced; where it goes and a k-shot selection (the demo's curve) stay.
    kept = {
        k: v
        for k, v in (out.get("shard") or {}).items()
        if k in ("output", "train_per_class", "train_subset_seed")
    }
    out["shard"] = {**copy.deepcopy(LOCAL_SHARDS), **kept}
    if isinstance(out.get("finetune"), dict):
        out["finetune"] = {**out["finetune"], "img_size": None}
    return out
