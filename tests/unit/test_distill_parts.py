"""DeiT distillation pieces: the `distill:` section, teachers (vitpipe export, Hugging Face dir,
timm name + weight file) loaded without unpickling, their identity for resume checks, and the
DeiT loss (hard / soft, alpha mixing, Mixup soft targets). No training loop here."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipelines.checkpoint.export import export_info, save_model
from pipelines.config import config_from_dict
from pipelines.config.distill import DistillSection
from pipelines.errors import CheckpointError, ConfigError
from pipelines.train.distill import (
    DistillationLoss,
    check_same_teacher,
    check_student,
    load_teacher,
    teacher_identity,
)
from vit_core import VisionTransformer, ViTConfig

TEACHER = ViTConfig(img_size=32, patch_size=8, dim=32, depth=1, num_heads=2, num_classes=10)


def export_teacher(out: Path, seed: int = 0, config: ViTConfig = TEACHER) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(config).eval()
    save_model(model, out, info=export_info(model))
    return model


def images(size: int = 32) -> torch.Tensor:
    return torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------- the loss


def logits(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_hard_distillation_is_ce_on_the_teachers_argmax() -> None:
    cls, dist, teacher = logits(8, 5, seed=1), logits(8, 5, seed=2), logits(8, 5, seed=3)
    labels = torch.arange(8) % 5
    loss = DistillationLoss(kind="hard", alpha=0.5)((cls, dist), labels, teacher)
    expected = 0.5 * F.cross_entropy(cls, labels) + 0.5 * F.cross_entropy(dist, teacher.argmax(-1))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_distillation_is_kl_at_tau_scaled_as_deit(tau: float) -> None:
    cls, dist, teacher = logits(8, 5, seed=1), logits(8, 5, seed=2), logits(8, 5, seed=3)
    labels = torch.arange(8) % 5
    loss = DistillationLoss(kind="soft", alpha=0.7, tau=tau)((cls, dist), labels, teacher)
    p_t = torch.softmax(teacher / tau, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(dist / tau, -1))).sum()
    expected = 0.3 * F.cross_entropy(cls, labels) + 0.7 * kl * tau * tau / dist.numel()
    torch.testing.assert_close(loss, expected)


def test_alpha_mixes_and_only_the_student_gets_gradients() -> None:
    cls = logits(6, 4, seed=1).requires_grad_()
    dist = logits(6, 4, seed=2).requires_grad_()
    teacher = logits(6, 4, seed=3).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    base_only = DistillationLoss(alpha=0.0)((cls, dist), labels, teacher)
    torch.testing.assert_close(base_only, F.cross_entropy(cls, labels))
    teacher_only = DistillationLoss(alpha=1.0)((cls, dist), labels, teacher)
    teacher_only.backward()
    assert teacher.grad is None and cls.grad is not None and not cls.grad.any()
    assert dist.grad.abs().sum() > 0


def test_mixup_soft_targets_and_label_smoothing_go_to_the_class_head() -> None:
    cls, dist, teacher = logits(4, 3, seed=1), logits(4, 3, seed=2), logits(4, 3, seed=3)
    mixed = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.6, 0.4], [1.0, 0.0, 0.0], [0.2, 0.0, 0.8]])
    loss = DistillationLoss(kind="soft", alpha=0.5)((cls, dist), mixed, teacher)
    base = -(mixed * torch.log_softmax(cls, -1)).sum(-1).mean()
    kd = F.kl_div(torch.log_softmax(dist, -1), torch.log_softmax(teacher, -1), reduction="sum",
                  log_target=True) / dist.numel()  # fmt: skip
    torch.testing.assert_close(loss, 0.5 * base + 0.5 * kd)
    smooth = DistillationLoss(alpha=0.0, label_smoothing=0.1)(
        (cls, dist), mixed.argmax(-1), teacher
    )
    torch.testing.assert_close(smooth, F.cross_entropy(cls, mixed.argmax(-1), label_smoothing=0.1))


def test_the_loss_needs_both_heads() -> None:
    with pytest.raises(ValueError, match="set_distilled_training"):
        DistillationLoss()(logits(2, 3, seed=0), torch.tensor([0, 1]), logits(2, 3, seed=1))
    with pytest.raises(ConfigError, match="distillation token"):
        check_student(VisionTransformer(TEACHER))
    check_student(VisionTransformer(TEACHER.replace(distilled=True)))


def test_loss_from_config() -> None:
    raw = {"model": {"name": "deit_tiny_distilled_patch16"}, "train": {"label_smoothing": 0.1},
           "distill": {"teacher": "t", "kind": "soft", "alpha": 0.2, "tau": 2.0}}  # fmt: skip
    loss = DistillationLoss.from_config(config_from_dict(raw))
    assert loss == DistillationLoss(kind="soft", alpha=0.2, tau=2.0, label_smoothing=0.1)


# ------------------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    ("distill", "needle"),
    [
        ({}, "distill.teacher: required, missing"),
        ({"teacher": "t", "kind": "medium"}, "distill.kind"),
        ({"teacher": "t", "alpha": 1.5}, "distill.alpha"),
        ({"teacher": "t", "tau": 0.0}, "distill.tau"),
        ({"teacher": "t", "techer": "x"}, "did you mean 'teacher'"),
    ],
)
def test_distill_section_errors(distill: dict, needle: str) -> None:
    raw = {"model": {"name": "deit_tiny_distilled_patch16"}, "distill": distill}
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert any(needle in p for p in info.value.problems), info.value.problems


def test_distill_is_absent_by_default_and_needs_a_distilled_student() -> None:
    assert config_from_dict({}).distill is None
    with pytest.raises(ConfigError, match="distillation token; model.name='vit_base_patch16'"):
        config_from_dict({"distill": {"teacher": "t"}})
    assert config_from_dict({"model": {"distilled": True}, "distill": {"teacher": "t"}}).distill


# ------------------------------------------------------------------------------ the teacher


def test_an_exported_teacher_loads_frozen_with_its_identity(tmp_path) -> None:
    source = export_teacher(tmp_path / "teacher")
    teacher = load_teacher(DistillSection(teacher=str(tmp_path / "teacher")), num_classes=10,
                           img_size=32, dtype=torch.float64)  # fmt: skip
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    x = images()
    out = teacher(x.double())
    assert out.dtype == torch.float64 and not out.requires_grad
    torch.testing.assert_close(out.float(), source(x), rtol=1e-5, atol=1e-5)
    identity = teacher.identity
    weights = (tmp_path / "teacher" / "model.safetensors").read_bytes()
    assert identity.kind == "export" and identity.weights == ("model.safetensors",)
    assert identity.sha256 == hashlib.sha256(weights).hexdigest()
    assert teacher.flops_per_image > 0


def test_resume_refuses_a_different_teacher(tmp_path) -> None:
    export_teacher(tmp_path / "a", seed=0)
    export_teacher(tmp_path / "b", seed=1)
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    saved = teacher_identity(DistillSection(teacher=str(tmp_path / "a"))).to_dict()
    moved = teacher_identity(DistillSection(teacher=str(tmp_path / "moved")))
    check_same_teacher(saved, moved)  # same weights elsewhere: the same teacher
    check_same_teacher(None, None)
    other = teacher_identity(DistillSection(teacher=str(tmp_path / "b")))
    with pytest.raises(CheckpointError, match="distilled from teacher .*/a, sha256") as info:
        check_same_teacher(saved, other)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="trained without a teacher"):
        check_same_teacher(None, other)
    with pytest.raises(CheckpointError, match="none is configured"):
        check_same_teacher(saved, None)


def test_a_hugging_face_teacher(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from vit_core import hf_config_dict

    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(**hf_config_dict(TEACHER)))
    hf.save_pretrained(tmp_path / "hf")
    teacher = load_teacher(DistillSection(teacher=str(tmp_path / "hf")), num_classes=10)
    assert teacher.identity.kind == "hf"
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), hf(pixel_values=x).logits, rtol=0, atol=1e-5)


def test_a_timm_teacher_from_a_local_file_is_never_unpickled(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "teacher.safetensors"))
    torch.save({"model": state, "epoch": 3}, tmp_path / "teacher.pth")  # a training checkpoint
    x = images()
    for name in ("teacher.safetensors", "teacher.pth"):
        section = DistillSection(teacher=str(tmp_path / name), timm_model="test_resnet")
        teacher = load_teacher(section, num_classes=10, img_size=32)
        assert teacher.identity.kind == "timm" and teacher.identity.timm_model == "test_resnet"
        assert teacher.flops_per_image is None
        torch.testing.assert_close(teacher(x), source(x))

    marker = tmp_path / "pwned"
    torch.save({"w": _Payload(str(marker))}, tmp_path / "evil.pth")
    section = DistillSection(teacher=str(tmp_path / "evil.pth"), timm_model="test_resnet")
    with pytest.raises(CheckpointError, match="weights_only=True") as info:
        load_teacher(section, num_classes=10)
    assert not marker.exists() and "\n" not in str(info.value)
    with pytest.raises(
        CheckpointError, match="does not fit timm.s test_resnet: size mismatch for fc.weight"
    ):
        load_teacher(DistillSection(teacher=str(tmp_path / "teacher.pth"),
                                    timm_model="test_resnet"), num_classes=7)  # fmt: skip


class _Payload:
    """What a hostile weight file would carry: code that runs when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_timm_teacher_without_timm_says_how_to_install_it(tmp_path, monkeypatch) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    section = DistillSection(teacher=str(tmp_path / "w.safetensors"), timm_model="resnet18")
    with pytest.raises(ConfigError, match=r"needs timm.*pip install 'vitpipe\[timm\]'"):
        load_teacher(section, num_classes=10)


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        ("missing", {}, "does not exist"),
        ("empty-dir", {}, "is not a teacher"),
        ("dir-with-timm", {"timm_model": "test_resnet"}, "must be a weight file"),
        ("export", {"num_classes": 3}, "predicts 10 classes, the student 3"),
        ("export", {"img_size": 64}, "takes 32 px images"),
    ],
)
def test_teacher_errors_are_one_line(tmp_path, make: str, kwargs: dict, message: str) -> None:
    path = tmp_path / "teacher"
    if make == "export":
        export_teacher(path)
    elif make != "missing":
        path.mkdir()
    section = DistillSection(teacher=str(path), timm_model=kwargs.pop("timm_model", None))
    with pytest.raises((CheckpointError, ConfigError), match=message) as info:
        load_teacher(section, **{"num_classes": 10, **kwargs})
    assert "\n" not in str(info.value)
