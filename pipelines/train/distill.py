"""DeiT distillation (Touvron et al. 2021, section 5) in pieces a trainer calls:

- `load_teacher(section, ...)` -> `Teacher`: the teacher model (a vitpipe export, a Hugging Face
  ViT/DeiT dir, or a timm architecture with a local weight file), in eval mode and frozen; weights
  are never unpickled (safetensors, or `torch.load(weights_only=True)`);
- `TeacherIdentity` (path + sha256 of the weight files): stored with each checkpoint, so that a
  resume with a different teacher is refused (`check_same_teacher`);
- `DistillationLoss`: DeiT's loss on the student's (class, distillation) logits.

The teacher sees exactly the student's (augmented, mixed) batch, as in the DeiT code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import vit_core
from pipelines.checkpoint.export import export_info, load_exported, save_model
from pipelines.config import DistillSection, StageConfig
from pipelines.data.loader.train_sources import open_train_sources
from pipelines.errors import CheckpointError, ConfigError
from pipelines.train.losses import classification_loss
from vit_core.convert.hf_dir import read_weight_file, weight_files

TIMM_EXTRA = "pip install 'vitpipe[timm]'"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class TeacherIdentity:
    """What the teacher is: its kind, where it was read from, and a hash of its weights."""

    kind: str  # "export" | "hf" | "timm"
    path: str  # absolute: the teacher's directory, or its weight file for a timm teacher
    weights: tuple[str, ...]  # the weight files hashed, relative to `path`'s directory
    sha256: str  # of the weight files' bytes, read in the order of `weights`
    timm_model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weights": list(self.weights)}

    def describe(self) -> str:
        model = f" ({self.timm_model})" if self.timm_model else ""
        return f"{self.path}{model}, sha256 {self.sha256[:12]}"


@dataclass
class Teacher:
    """A frozen teacher: `teacher(images)` gives its logits, without building a graph."""

    model: nn.Module
    identity: TeacherIdentity
    flops_per_image: int | None  # forward FLOPs (vit_core teachers); None when unknown

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(images)


def _teacher_kind(section: DistillSection) -> tuple[str, Path]:
    path = Path(section.teacher).expanduser().absolute()
    where = f"distill.teacher={section.teacher!r}"
    if not path.exists():
        raise CheckpointError(f"{where} does not exist")
    if section.timm_model is not None:
        if not path.is_file():
            raise CheckpointError(f"{where}: with distill.timm_model it must be a weight file")
        return "timm", path
    info = {}
    if path.is_dir() and (path / "config.json").is_file():
        try:
            info = json.loads((path / "config.json").read_text())
        except json.JSONDecodeError:
            info = {}
    if not isinstance(info, dict):
        info = {}
    if info.get("format") == "vitpipe-export":
        return "export", path
    if info.get("model_type") in ("vit", "deit") or "hidden_size" in info:
        return "hf", path
    raise CheckpointError(
        f"{where} is not a teacher: expected a vitpipe export dir (vitpipe export, --format "
        "safetensors), a Hugging Face ViT/DeiT dir, or a weight file with distill.timm_model"
    )


def _weight_files(kind: str, path: Path) -> list[Path]:
    if kind == "timm":
        return [path]
    if kind == "export":
        return [path / "model.safetensors"]
    try:
        return weight_files(path)
    except ValueError as err:
        raise CheckpointError(f"distill.teacher: {err}") from None


def _sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def teacher_identity(section: DistillSection) -> TeacherIdentity:
    """Kind, absolute path and sha256 of the teacher's weight files (read, never loaded)."""
    kind, path = _teacher_kind(section)
    files = _weight_files(kind, path)
    base = path.parent if kind == "timm" else path
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"distill.teacher: {file} is missing")
    return TeacherIdentity(
        kind=kind,
        path=str(path),
        weights=tuple(str(f.relative_to(base)) for f in files),
        sha256=_sha256(files),
        timm_model=section.timm_model,
    )


def check_same_teacher(saved: dict[str, Any] | None, current: TeacherIdentity | None) -> None:
    """Refuse to resume with another teacher (other weights or timm architecture), or with a
    teacher added or removed. A moved teacher with the same weights is the same teacher."""
    if saved is None and current is None:
        return
    if saved is None or current is None:
        was = "without a teacher" if saved is None else f"with teacher {_describe(saved)}"
        now = "none is configured" if current is None else f"distill.teacher is {current.path}"
        raise CheckpointError(
            f"the checkpoint was trained {was}, but {now}; restore the distill section, or start "
            "a new run with --run-dir or --resume never"
        )
    if (saved.get("sha256"), saved.get("timm_model")) != (current.sha256, current.timm_model):
        raise CheckpointError(
            f"the checkpoint was distilled from teacher {_describe(saved)}, but distill.teacher "
            f"is {current.describe()}; resume with the same teacher, or start a new run with "
            "--run-dir or --resume never"
        )


def _describe(saved: dict[str, Any]) -> str:
    model = f" ({saved['timm_model']})" if saved.get("timm_model") else ""
    return f"{saved.get('path')}{model}, sha256 {str(saved.get('sha256'))[:12]}"


def _load_timm(section: DistillSection, path: Path, num_classes: int | None) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"distill.timm_model={section.timm_model!r} needs timm, which is not installed: "
            f"{TIMM_EXTRA}"
        ) from None
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    try:
        model = timm.create_model(section.timm_model, pretrained=False, **kwargs)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        raise ConfigError(f"distill.timm_model={section.timm_model!r}: {err}") from None
    state = _read_state(path)
    for key in ("model", "state_dict", "model_ema"):  # training checkpoints wrap the weights
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise CheckpointError(
            f"distill.teacher={str(path)!r} does not fit timm's {section.timm_model}: {first}"
        ) from None
    return model


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = read_weight_file(path)
    except Exception as err:  # an unpickling refusal, a corrupt file: one line, no traceback
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"distill.teacher={str(path)!r} is not a safetensors file or a torch file of "
            f"tensors (read with weights_only=True): {reason}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"distill.teacher={str(path)!r} holds no state dict")
    return state


def load_teacher(
    section: DistillSection,
    *,
    num_classes: int,
    img_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Teacher:
    """The teacher, frozen and in eval mode on `device` in `dtype`, checked to predict the
    student's `num_classes` (and, for ViT teachers, to take the student's `img_size`)."""
    identity = teacher_identity(section)
    path = Path(identity.path)
    if identity.kind == "timm":
        model = _load_timm(section, path, num_classes)
        classes, size = getattr(model, "num_classes", num_classes), None
    else:
        if identity.kind == "export":
            model, _ = load_exported(path)
        else:
            try:
                model = vit_core.load_hf_dir(path)
            except ValueError as err:
                raise CheckpointError(f"distill.teacher={section.teacher!r}: {err}") from None
        classes, size = model.config.num_classes, model.config.img_size
    if classes != num_classes:
        raise CheckpointError(
            f"distill.teacher={section.teacher!r} predicts {classes} classes, the student "
            f"{num_classes}; distil from a teacher trained on the same classes"
        )
    if img_size is not None and size is not None and size != img_size:
        raise CheckpointError(
            f"distill.teacher={section.teacher!r} takes {size} px images, the student's batches "
            f"are {img_size} px; export the teacher at {img_size} px"
        )
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    flops = vit_core.flops(model.config) if isinstance(model, vit_core.VisionTransformer) else None
    return Teacher(model=model, identity=identity, flops_per_image=flops)


def check_student(model: nn.Module) -> None:
    """The student must carry a distillation token (a distilled vit_core model)."""
    config = getattr(model, "config", None)
    if not (isinstance(config, vit_core.ViTConfig) and config.distilled):
        raise ConfigError(
            "distill needs a student with a distillation token (a deit_*_distilled model, or "
            "model.distilled: true); this model has none"
        )


@dataclass(frozen=True)
class DistillationLoss:
    """DeiT's loss: (1 - alpha) * base(class logits, targets) + alpha * KD(distillation logits,
    teacher logits). KD is, for `hard`, cross-entropy against the teacher's argmax; for `soft`,
    KL(teacher || student) at temperature tau, summed and divided by the logits' element count,
    times tau^2 (the DeiT code's scaling). `targets` may be class ids or Mixup/CutMix soft targets
    (the base loss takes either; the teacher saw the same mixed images)."""

    kind: str = "hard"
    alpha: float = 0.5
    tau: float = 1.0
    base: str = "softmax_ce"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("hard", "soft"):
            raise ValueError(f"kind={self.kind!r}: allowed values are ['hard', 'soft']")

    @classmethod
    def from_config(cls, config: StageConfig) -> DistillationLoss:
        d = config.distill
        if d is None:
            raise ValueError("DistillationLoss.from_config: the config has no distill section")
        return cls(
            kind=d.kind,
            alpha=d.alpha,
            tau=d.tau,
            base=config.train.loss,
            label_smoothing=config.train.label_smoothing,
        )

    def __call__(
        self,
        student: tuple[torch.Tensor, torch.Tensor],
        targets: torch.Tensor,
        teacher_logits: torch.Tensor,
    ) -> torch.Tensor:
        if not isinstance(student, tuple) or len(student) != 2:
            raise ValueError(
                "DistillationLoss needs the student's (class logits, distillation logits): a "
                "distilled model in training with set_distilled_training(True)"
            )
        cls_logits, dist_logits = student
        base = classification_loss(
            cls_logits, targets, kind=self.base, label_smoothing=self.label_smoothing
        )
        dist_logits = dist_logits.float()
        teacher = teacher_logits.detach().float()
        if self.kind == "soft":
            t = self.tau
            kd = F.kl_div(
                F.log_softmax(dist_logits / t, dim=-1),
                F.log_softmax(teacher / t, dim=-1),
                reduction="sum",
                log_target=True,
            ) * (t * t / dist_logits.numel())
        else:
            kd = F.cross_entropy(dist_logits, teacher.argmax(dim=-1))
        return base * (1 - self.alpha) + kd * self.alpha


def runlocal_teacher(config: StageConfig, out: Path) -> StageConfig:
    """`runlocal` of a distillation recipe: its teacher (a large model in a file on a cluster)
    becomes a tiny, randomly initialised ViT export in `out`, predicting the local shards'
    classes at the student's image size, so the recipe's distillation still runs."""
    if not config.runlocal or config.distill is None:
        return config
    if not (out / "model.safetensors").is_file():
        classes = open_train_sources(config.data).num_classes
        student = config.model.vit_config(classes)
        torch.manual_seed(config.train.seed)
        teacher = vit_core.VisionTransformer(
            vit_core.ViTConfig(
                img_size=student.img_size,
                patch_size=student.patch_size,
                dim=32,
                depth=1,
                num_heads=2,
                num_classes=classes,
            )
        )
        save_model(teacher, out, info=export_info(teacher, stage="runlocal-teacher"))
    distill = config.distill.model_copy(update={"teacher": str(out), "timm_model": None})
    return config.model_copy(update={"distill": distill})
