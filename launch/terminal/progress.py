"""A progress bar on the driver, fed by rank 0's metrics.jsonl (works for any launcher)."""

from __future__ import annotations

import json
import threading

from pipelines.storage import Location


class MetricsProgress:
    def __init__(self, metrics: Location, *, total: int, poll_s: float | None = None):
        self._metrics = metrics
        # Reading a local file each second costs nothing; a remote one is a request each time.
        poll_s = poll_s or (1.0 if metrics.is_local else 5.0)
        self._total = total
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> MetricsProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task("train", total=self._total, info="")
            while not self._stop.is_set():
                latest = self._latest()
                if latest:
                    info = f"loss {latest.get('train/loss', float('nan')):.4f}  {latest.get('images_per_sec', 0):.0f} img/s"
                    bar.update(task, completed=latest["step"], info=info)
                self._stop.wait(self._poll_s)
            latest = self._latest()
            if latest:
                bar.update(task, completed=latest["step"])

    def _latest(self) -> dict | None:
        try:
            lines = self._metrics.read_text().splitlines()
        except (OSError, FileNotFoundError):
            return None
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "train/loss" in record:
                return record
        return None


def progress_wrap(description: str):
    """A (iterable, total) -> iterable wrapper that shows a rich progress bar while iterating."""
    from rich.progress import track

    def wrap(items, total: int):
        return track(items, total=total, description=description)

    return wrap
