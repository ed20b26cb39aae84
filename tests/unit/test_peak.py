"""MFU peaks: the chip's rated dense peak per dtype (what `mfu` divides by), overridable by
train.peak_tflops, and the measured matmul peak (`mfu_measured_peak`)."""

from __future__ import annotations

import pytest
import torch

from pipelines.train.peak import (
    math_dtype,
    measure_matmul_flops,
    measured_peak_flops,
    rated_peak_flops,
    resolve_peaks,
)


@pytest.mark.parametrize(
    ("name", "dtype", "tflops"),
    [
        ("NVIDIA H200", "bf16", 989.4),
        ("NVIDIA H100 80GB HBM3", "fp16", 989.4),
        ("NVIDIA H100 PCIe", "bf16", 756.5),
        ("NVIDIA H100 NVL", "tf32", 417.5),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156.0),
        ("NVIDIA A100 80GB PCIe", torch.bfloat16, 312.0),
        ("NVIDIA L40S", "fp32", 91.6),
    ],
)
def test_rated_dense_peaks(name, dtype, tflops):
    assert rated_peak_flops(name, dtype) == pytest.approx(tflops * 1e12)


def test_an_unknown_chip_has_no_rated_peak_and_a_bad_dtype_is_refused():
    assert rated_peak_flops("cpu", "fp32") is None
    assert rated_peak_flops("NVIDIA GeForce RTX 4090", "bf16") is None
    with pytest.raises(ValueError, match="allowed are bf16, fp16, tf32, fp32"):
        rated_peak_flops("NVIDIA H100", "int8")


def test_fp16_mfu_is_taken_against_the_fp16_peak_not_fp32():
    """The defect: fp16 steps divided by a measured fp32 peak gave MFU over 100%."""
    peaks = resolve_peaks("NVIDIA H100 80GB HBM3", "fp16", measured=60e12)
    achieved = 400e12  # a plausible fp16 training rate on one H100
    out = peaks.mfu(achieved)
    assert out["mfu"] == pytest.approx(400 / 989.4)
    assert out["mfu_measured_peak"] == pytest.approx(400 / 60)  # the old, meaningless figure
    assert peaks.source == "rated fp16 peak of NVIDIA H100 80GB HBM3"


def test_override_and_fallback():
    override = resolve_peaks("NVIDIA H200", "bf16", measured=700e12, override_tflops=800)
    assert override.rated == 800e12 and override.source == "train.peak_tflops"
    assert override.mfu(400e12 * 2, devices=2)["mfu"] == pytest.approx(0.5)
    cpu = resolve_peaks("cpu", "fp32", measured=1e11)
    assert cpu.rated == cpu.measured == 1e11 and cpu.source.startswith("measured")


def test_math_dtype_follows_precision_and_autocast():
    assert math_dtype("bf16", autocast=False, on_gpu=True) == "bf16"
    assert math_dtype("fp16", autocast=False, on_gpu=True) == "fp16"
    assert math_dtype("fp32", autocast=True, on_gpu=True) == "bf16"
    assert math_dtype("fp32", autocast=False, on_gpu=False) == "fp32"


def test_measuring_is_uncached_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    assert measure_matmul_flops("cpu", "bf16", size=64, seconds=0.01) > 0
    assert measure_matmul_flops("cpu", torch.float32, size=64, seconds=0.01) > 0
    assert torch.equal(torch.get_rng_state(), state)
    assert not hasattr(measure_matmul_flops, "cache_info")  # benchmarks measure afresh
    assert hasattr(measured_peak_flops, "cache_info")  # the training loop measures once
