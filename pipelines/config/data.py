"""`shard:`, `data:` and `augment:` — how images become shards, and shards become batches.

`shard.source` is one section per input kind, each kept beside its source in
`pipelines.data.sources`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipelines.data.sources import SourceSection
from pipelines.errors import ConfigError
from pipelines.section import MAX_IMG_SIZE, Section, Seed


class ShardSection(Section):
    source: SourceSection
    output: str | None = Field(None, description="None: <run dir>/shards")
    samples_per_shard: int = Field(1000, ge=1, le=10_000_000)
    max_size: int | None = Field(
        None, ge=8, le=4 * MAX_IMG_SIZE, description="resize the shorter side on write"
    )
    image_format: Literal["jpeg", "png", "keep"] = "jpeg"
    jpeg_quality: int = Field(95, ge=1, le=100)
    val_fraction: float = Field(0.0, ge=0, lt=1)
    seed: Seed = 0
    train_per_class: int | None = Field(
        None, ge=1, description="a k-shot set: keep k training images per class; val untouched"
    )
    train_subset_seed: Seed = Field(0, description="which k images per class train_per_class keeps")
    num_workers: int = Field(2, ge=1, le=100_000, description="Ray tasks in flight")
    max_pixels: int = Field(89_478_485, ge=1, description="larger images are rejected")


class MixSourceSection(Section):
    """One shard set of a mixed training set (`data.train_shards` as a list). As in MosaicML
    Streaming, a source's share is either relative (`weight`: the epoch, as many samples as all
    sources hold together, is split in proportion) or absolute (`repeat`: this many times its
    own samples per epoch); a source smaller than its share repeats, a larger one is sampled
    without replacement within the epoch."""

    shards: str = Field(description="a shard dir with manifest.json (a path or a URI)")
    weight: float | None = Field(None, gt=0, description="relative share of every epoch")
    repeat: float | None = Field(None, gt=0, description="its samples per epoch, times this")
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        max_length=64,
        description="in metrics (data/samples_seen/NAME); None: the folder's name",
    )

    @model_validator(mode="after")
    def _one_share(self) -> MixSourceSection:
        if (self.weight is None) == (self.repeat is None):
            raise ValueError("give the source a weight or a repeat (one of them)")
        return self


class DataSection(Section):
    train_shards: str | list[MixSourceSection] | None = Field(
        None,
        description="a shard dir, or a mix: a list of {shards, weight} or {shards, repeat}",
    )
    mix_classes: Literal["shared", "offset"] | None = Field(
        None,
        description="a mix whose sources' classes differ: one label space (shared) or each "
        "source's class ids after the previous source's (offset); None: they must agree",
    )
    val_shards: str | None = Field(None, description="None: the val split of train_shards")
    train_split: str = "train"
    val_split: str = "val"
    fewshot_shards: str | None = Field(
        None, description="a shard dir with train/val splits for few-shot evaluation"
    )
    num_workers: int = Field(2, ge=0, le=256, description="dataloader workers per rank")
    prefetch_factor: int = Field(2, ge=1, le=1024)
    shuffle_buffer: int = Field(1000, ge=0, le=10_000_000)
    max_skip_fraction: float = Field(0.01, ge=0, le=1)
    decode_device: Literal["cpu", "cuda"] = "cpu"
    pin_memory: bool | None = Field(None, description="None: on when training on a GPU")
    worker_start_method: Literal["forkserver", "spawn", "fork"] = Field(
        "forkserver",
        description="how dataloader workers start; fork deadlocks in threaded hosts like Ray workers",
    )
    max_pixels: int = Field(
        89_478_485, ge=1, description="larger images are skipped before they are decoded"
    )
    max_member_bytes: int = Field(
        512 * 2**20,
        ge=1,
        description="a tar member claiming more ends its shard's reading (a corrupt or hostile "
        "header is never read whole)",
    )
    repeated_aug: int = Field(
        1,
        ge=1,
        le=16,
        description="repeated augmentation (DeiT: 3): each training image an epoch picks is "
        "used this many times, each copy augmented differently, mostly in the same batch; the "
        "epoch keeps its length, so it sees 1/N of the images. 1: off",
    )
    verify_shards: Literal["first_epoch", "always", "never"] = Field(
        "first_epoch",
        description="check each shard's sha256 against the manifest before using its samples: "
        "in the first epoch a loader runs, in every epoch, or never",
    )

    @field_validator("train_shards", mode="before")
    @classmethod
    def _path_or_list(cls, value: object) -> object:
        if value is None or isinstance(value, str | list):
            return value
        raise ValueError(
            "a shard dir (a path or URI), or a list of {shards, weight} / {shards, repeat} "
            f"sources; got {value!r}"
        )

    @model_validator(mode="after")
    def _check_mix(self) -> DataSection:
        if not isinstance(self.train_shards, list):
            return self
        if not self.train_shards:
            raise ValueError("data.train_shards: an empty list; give one source or more")
        if len({s.weight is None for s in self.train_shards}) > 1:
            raise ValueError(
                "data.train_shards: give every source a weight (relative shares) or every "
                "source a repeat (absolute), not both kinds"
            )
        names = [s.name for s in self.train_shards if s.name]
        if len(names) != len(set(names)):
            raise ValueError(f"data.train_shards: source names repeat: {names}")
        return self

    @property
    def train_sources(self) -> tuple[MixSourceSection, ...]:
        """The training shard sets: the single path as one source taken once per epoch."""
        if isinstance(self.train_shards, list):
            return tuple(self.train_shards)
        return (MixSourceSection(shards=self.require_train_shards(), repeat=1.0),)

    def require_train_shards(self) -> str:
        """The (first) training shard dir: where a mix's val split and classes default from."""
        if not self.train_shards:
            raise ConfigError(
                "data.train_shards is not set; point it at a shard directory with manifest.json"
            )
        if isinstance(self.train_shards, list):
            return self.train_shards[0].shards
        return self.train_shards

    def val_root(self) -> str:
        """The shard dir validation reads: data.val_shards, else the (first) training set."""
        return self.val_shards or self.require_train_shards()


class AugmentSection(Section):
    scale: list[float] = Field([0.08, 1.0], min_length=2, max_length=2)
    ratio: list[float] = Field([0.75, 1.3333333], min_length=2, max_length=2)
    hflip: float = Field(0.5, ge=0, le=1)
    randaugment: bool = False
    randaugment_num_ops: int = Field(2, ge=1, le=64)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    random_erasing: float = Field(
        0.0, ge=0, le=1, description="probability of erasing a random box with noise (DeiT: 0.25)"
    )
    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    mean: list[float] = Field([0.5, 0.5, 0.5], min_length=1, max_length=64)
    std: list[float] = Field([0.5, 0.5, 0.5], min_length=1, max_length=64)
    eval_crop_pct: float = Field(0.875, gt=0, le=1)

    @model_validator(mode="after")
    def _check_ranges(self) -> AugmentSection:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"augment.scale={self.scale} must satisfy 0 < min <= max <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"augment.ratio={self.ratio} must satisfy 0 < min <= max")
        if len(self.mean) != len(self.std):
            raise ValueError("augment.mean and augment.std must have the same length")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"augment.std={self.std} must be positive")
        return self
