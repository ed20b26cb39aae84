"""Writing one shard: load its samples, prepare each image, build the tar, write it atomically.

Pure (no Ray) so it runs and is tested in one process; `launch/stages/shard.py` runs `write_shard`
as Ray tasks. The bytes of a shard depend only on its `ShardTask` and the `ShardWriteSettings` settings:

- tar: USTAR, members in sample order and per sample `.cls`, `.json`, then the image (`.jpg` or
  `.png`); every member mode 0o444, mtime 0, uid/gid 0, empty user/group names;
- `.cls`: the label as ASCII digits; `.json`: {"label_name", "original_size", "source"} with
  sorted keys, compact, no timestamps.

Each written shard gets a state file `_state/<shard>.json` (fingerprint, size, sha256, the
shard's rejects), written after the shard. A re-run skips a shard whose state has the same
fingerprint and whose file still has that size and sha256; anything else is rewritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipelines.data.image_encode import EncodeOptions, ImageRejected, PreparedImage, prepare_image
from pipelines.data.manifest import ShardInfo
from pipelines.data.sources.base import Rejected, Source
from pipelines.data.write_plan import ShardTask
from pipelines.storage import Location

SHARD_FORMAT_VERSION = 1  # bump when shard bytes change for the same inputs and options
STATE_DIR = "_state"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ShardSample:
    key: str
    label: int
    label_name: str
    source_id: str
    image: PreparedImage

    def members(self) -> list[tuple[str, bytes]]:
        meta = {
            "label_name": self.label_name,
            "original_size": list(self.image.original_size),
            "source": self.source_id,
        }
        return [
            ("cls", str(self.label).encode("ascii")),
            ("json", json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()),
            (self.image.ext, self.image.data),
        ]


def tar_bytes(samples: Iterable[ShardSample]) -> bytes:
    """A deterministic WebDataset tar of `samples`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for ext, payload in sample.members():
                info = tarfile.TarInfo(f"{sample.key}.{ext}")
                info.size = len(payload)
                info.mtime = 0
                info.mode = 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.type = tarfile.REGTYPE
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


@dataclass(frozen=True)
class ShardWriteSettings:
    """What every shard task needs besides its `ShardTask`; sent to the workers once."""

    output: Location
    source: Source
    classes: tuple[str, ...]
    options: EncodeOptions


@dataclass(frozen=True)
class ShardResult:
    split: str
    number: int
    name: str
    samples: int
    bytes: int
    sha256: str | None  # None: every sample was rejected, no file written
    rejected: tuple[Rejected, ...]
    skipped: bool = False
    elapsed_s: float = 0.0  # wall time of the task
    cpu_s: float = 0.0  # CPU time of the task's process (its share of the machine)

    def info(self) -> ShardInfo:
        assert self.sha256 is not None
        return ShardInfo(self.name, self.samples, self.bytes, self.sha256)


def build_shard(
    task: ShardTask, source: Source, classes: Sequence[str], options: EncodeOptions
) -> tuple[bytes | None, int, tuple[Rejected, ...]]:
    """(tar bytes or None when nothing survived, samples written, rejects)."""
    samples: list[ShardSample] = []
    rejected: list[Rejected] = []
    loaded = 0
    for ref, item in source.load(task.refs):
        assert ref is task.refs[loaded], "sources must load refs in the order given"
        loaded += 1
        if isinstance(item, Rejected):
            rejected.append(item)
            continue
        try:
            image = prepare_image(item, options)
        except ImageRejected as err:
            rejected.append(Rejected(ref.source_id, err.reason, err.detail, ref.key))
            continue
        except Exception as err:  # a bad input never stops the job
            detail = f"{type(err).__name__}: {err}"
            rejected.append(Rejected(ref.source_id, "undecodable", detail, ref.key))
            continue
        samples.append(ShardSample(ref.key, ref.label, classes[ref.label], ref.source_id, image))
    assert loaded == len(task.refs), "sources must load every ref"
    data = tar_bytes(samples) if samples else None
    return data, len(samples), tuple(rejected)


def write_shard(job: ShardWriteSettings, task: ShardTask) -> ShardResult:
    """Write one shard (or skip it when a verified copy is already there)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    previous = verified_state(job.output, task)
    if previous is not None:
        return previous
    data, samples, rejected = build_shard(task, job.source, job.classes, job.options)
    target = job.output.join(task.name)
    if data is None:
        target.delete()
        sha, size = None, 0
    else:
        target.write_bytes_atomic(data)
        sha, size = hashlib.sha256(data).hexdigest(), len(data)
    result = ShardResult(
        split=task.split,
        number=task.number,
        name=task.name,
        samples=samples,
        bytes=size,
        sha256=sha,
        rejected=rejected,
        elapsed_s=time.perf_counter() - started,
        cpu_s=time.process_time() - cpu_started,
    )
    state = {
        "fingerprint": task.fingerprint,
        "name": task.name,
        "samples": samples,
        "bytes": size,
        "sha256": sha,
        "rejected": [[r.source_id, r.reason, r.detail, r.key] for r in rejected],
    }
    state_file(job.output, task.name).write_bytes_atomic(json.dumps(state, indent=1).encode())
    return result


def state_file(output: Location, name: str) -> Location:
    return output.join(STATE_DIR, f"{name}.json")


def verified_state(output: Location, task: ShardTask) -> ShardResult | None:
    """The recorded result of `task` when its shard is complete and unchanged, else None."""
    path = state_file(output, task.name)
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != task.fingerprint:
        return None
    try:
        rejected = tuple(Rejected(*row) for row in state["rejected"])
        samples, size, sha = int(state["samples"]), int(state["bytes"]), state["sha256"]
    except (KeyError, TypeError, ValueError, AssertionError):
        return None
    target = output.join(task.name)
    if sha is None:
        if target.exists():
            return None
    elif not target.is_file() or target.size() != size or file_sha256(target) != sha:
        return None
    return ShardResult(
        task.split, task.number, task.name, samples, size, sha, rejected, skipped=True
    )


def file_sha256(location: Location) -> str:
    digest = hashlib.sha256()
    with location.fs.open_input_stream(location.path) as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
