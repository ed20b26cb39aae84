"""Each logged training loss says how many optimizer steps it averages: after a resume at a
step that is not a multiple of `train.log_every_n_steps` (or a stop between two log steps) the
window is shorter, and a reader comparing losses must know."""

from __future__ import annotations

import torch

from pipelines.distributed import DistContext
from pipelines.layout import METRICS
from pipelines.run_storage import RunDir
from pipelines.storage import locate
from pipelines.train.metrics import MetricsLogger, read_metrics
from pipelines.train.peak import Peaks


def test_a_window_after_a_resume_at_an_odd_step_is_labelled_with_its_steps(tmp_path):
    logger = MetricsLogger(
        ctx=DistContext(),
        run=RunDir(locate(str(tmp_path)), tmp_path),
        tracking=None,
        resume_step=7,  # log_every_n_steps=5: the next log is at step 10
        total_steps=20,
        flops_per_image=1.0,
        peaks=Peaks(1e12, 1e12, "test"),
        device=torch.device("cpu"),
    )
    windows = {10: range(8, 11), 15: range(11, 16), 17: range(16, 18)}  # 17: a stop
    for end, steps in windows.items():
        for step in steps:  # one micro-step each, its loss the step number
            logger.add(torch.tensor(float(step)), images=4, wait_s=0.0)
        logger.log_train(
            step=end, epoch=0, samples_seen=4 * end, lr=0.1, grad_norm=1.0, skipped=0.0
        )
    records = read_metrics(tmp_path / METRICS)
    assert [r["train/loss_window_steps"] for r in records] == [3, 5, 2]
    assert [r["train/loss"] for r in records] == [9.0, 13.0, 16.5]
