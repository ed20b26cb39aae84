"""The sample-key audit (`train.record_sample_keys`): every key each rank reads, one line per
micro-batch in `sample_keys/rankNNNNN.jsonl`, published to run storage at each checkpoint. With
it a test (or a user) checks that a resumed run reads no sample of an epoch twice. With a mixed
training set each line also lists each key's source (its index in `data.train_shards`): two
sources may hold the same key."""

from __future__ import annotations

from pipelines.distributed import DistContext
from pipelines.layout import SAMPLE_KEYS_DIR, sample_keys_name, sample_keys_rank
from pipelines.run_storage import RunDir
from pipelines.train.metrics import MetricsFile


class SampleKeyAudit:
    """This rank's key log; with the audit off, `record` and `sync` do nothing."""

    def __init__(self, file: MetricsFile | None):
        self._file = file

    @classmethod
    def start(
        cls, *, enabled: bool, run: RunDir, ctx: DistContext, resume_step: int | None
    ) -> SampleKeyAudit:
        """This rank's log, cut back to `resume_step` on a resume (what it read after the
        checkpoint was never committed). With fewer ranks than before, rank 0 also cuts the
        files of the ranks that are gone."""
        if not enabled:
            return cls(None)
        if ctx.is_main and resume_step is not None:
            for entry in run.at(SAMPLE_KEYS_DIR).list_dir():
                rank = sample_keys_rank(entry.name)
                if rank is not None and rank >= ctx.world_size:
                    MetricsFile(run, SAMPLE_KEYS_DIR, entry.name, resume_step=resume_step)
        name = sample_keys_name(ctx.rank)
        return cls(MetricsFile(run, SAMPLE_KEYS_DIR, name, resume_step=resume_step))

    def record(
        self, *, step: int, epoch: int, keys: list[str], sources: list[int] | None = None
    ) -> None:
        """The keys of one micro-batch of optimizer step `step` (counted from 1)."""
        if self._file is not None:
            record = {"step": step, "epoch": epoch, "keys": keys}
            self._file.write(record | ({"sources": sources} if sources is not None else {}))

    def sync(self) -> None:
        """Publish the log to run storage (after a checkpoint commits)."""
        if self._file is not None:
            self._file.sync()
