"""Metrics to MLflow off the training thread, through a bounded queue.

A tracking server that dies or hangs never stalls a step: `log` never blocks (when the queue is
full the metric is dropped and counted; metrics.jsonl keeps everything), and `close` waits
only a bounded time before abandoning the daemon thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from pipelines.tracking import mlflow_run

log = logging.getLogger(__name__)
_STOP = object()


class AsyncMetricLogger:
    def __init__(
        self, uri: str, run_id: str, *, max_queue: int = 10_000, flush_every_s: float = 1.0
    ):
        self._uri = uri
        self._run_id = run_id
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._flush_every_s = flush_every_s
        self.dropped = 0
        self.failed_batches = 0
        self._thread = threading.Thread(target=self._work, name="mlflow-logger", daemon=True)
        self._thread.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        try:
            self._queue.put_nowait((metrics, step, stamp))
        except queue.Full:
            self.dropped += 1

    def close(self, timeout_s: float = 10.0) -> bool:
        """Flush what the server accepts within `timeout_s`; True if everything was sent."""
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return False
        self._thread.join(timeout_s)
        return not self._thread.is_alive() and self.dropped == 0 and self.failed_batches == 0

    def _work(self) -> None:
        from mlflow.entities import Metric

        # Retries bounded: a dead server costs seconds, not the end of training for minutes.
        client = mlflow_run.tracking_client(self._uri)
        warned_at = 0.0
        stop = False
        while not stop:
            item = self._queue.get()
            pending = []
            while True:
                if item is _STOP:
                    stop = True
                else:
                    pending.append(item)
                if stop or len(pending) >= 500:
                    break
                try:
                    item = self._queue.get(timeout=self._flush_every_s if not pending else 0.05)
                except queue.Empty:
                    break
            if not pending:
                continue
            batch = [
                Metric(key, float(value), stamp, step)
                for metrics, step, stamp in pending
                for key, value in metrics.items()
            ]
            try:
                for start in range(0, len(batch), 1000):
                    client.log_batch(self._run_id, metrics=batch[start : start + 1000])
            except Exception as err:
                self.failed_batches += 1
                now = time.monotonic()
                if now - warned_at > 60:
                    warned_at = now
                    log.warning("MLflow logging failed (training continues): %s", str(err)[:200])
