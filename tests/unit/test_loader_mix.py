"""The loader on a mix of shard sets and with excluded samples, on real shards: each source's
share of an epoch, class ids shared or offset, samples of a source that is not repeated read at
most once, excluded samples never read, equal batches per rank, and a resume that is exact (or
refused when the exclusions changed)."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter

import pytest
import yaml

from pipelines.errors import ConfigError, DataError

from shard_fixtures import make_loader, sample_label, write_shard_set

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    write_shard_set(root / "a", {"train": [20, 20]}, key_prefix="a", image_size=16)
    write_shard_set(root / "b", {"train": [24, 16]}, key_prefix="b", image_size=16)
    other = tuple(f"letter{i}" for i in range(3))
    write_shard_set(
        root / "c", {"train": [12]}, key_prefix="c", classes=other, num_classes=3, image_size=16
    )
    return root


def _slots(batches) -> list[tuple[str, int, int]]:
    return [
        (key, int(label), source)
        for b in batches
        for key, label, source in zip(b["key"], b["label"], b["source"], strict=True)
    ]


def test_weights_three_to_one_give_each_source_its_share_of_an_epoch(sets):
    mix = [{"shards": str(sets / "a"), "weight": 3.0}, {"shards": str(sets / "b"), "weight": 1.0}]
    loaders = [make_loader(mix, rank=rank, world_size=2, num_workers=0) for rank in (0, 1)]
    assert loaders[0].source_names == ("a", "b") and loaders[0].batches_per_epoch == 10
    batches = [list(loader) for loader in loaders]
    assert [len(b) for b in batches] == [10, 10]  # equal batches per rank
    slots = _slots(batches[0] + batches[1])
    # 80 samples an epoch (both sets hold 40): a gets 60 (repeats), b 20 (a draw).
    assert Counter(source for _, _, source in slots) == {0: 60, 1: 20}
    b_keys = [k for k, _, s in slots if s == 1]
    assert len(set(b_keys)) == 20 and all(k.startswith("b") for k in b_keys)
    a_keys = Counter(k for k, _, s in slots if s == 0)
    assert len(a_keys) == 40 and sorted(Counter(a_keys.values()).items()) == [(1, 20), (2, 20)]
    assert all(0 <= label < 5 for _, label, _ in slots)  # the same 5 classes: shared


def test_disagreeing_classes_need_a_choice_and_offset_moves_the_second_sources_ids(sets):
    mix = [{"shards": str(sets / "a"), "repeat": 1.0}, {"shards": str(sets / "c"), "repeat": 2.0}]
    with pytest.raises(ConfigError, match="classes differ.*data.mix_classes: shared"):
        make_loader(mix, num_workers=0)
    loader = make_loader(mix, num_workers=0, mix_classes="offset")
    assert loader.sources.num_classes == 8 and loader.batches_per_epoch == (40 + 24) // 4
    slots = _slots(list(loader))
    c_slots = [(k, label) for k, label, s in slots if s == 1]
    assert len(c_slots) == 24 and len({k for k, _ in c_slots}) == 12  # 2 copies each
    for key, label in c_slots:
        index = int(key.rsplit("_", 1)[1])
        assert label == 5 + sample_label(0, index, 3)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_excluded_samples_are_never_read_and_a_resume_needs_the_same_list(sets):
    a = sets / "a"
    exclude = {_sha(a / "train-000001.tar"): [0, 3, 19], _sha(a / "train-000000.tar"): [7]}
    gone = {"atrain001_0000", "atrain001_0003", "atrain001_0019", "atrain000_0007"}
    kw = dict(world_size=2, num_workers=0, exclude=exclude)
    keys = [k for rank in (0, 1) for b in make_loader(a, rank=rank, **kw) for k in b["key"]]
    assert not gone & set(keys) and len(keys) == len(set(keys)) == 32  # 36 kept: 2 x 16
    first = make_loader(a, **kw)
    head = list(itertools.islice(iter(first), 2))
    state = first.state_dict()
    assert state["exclude_digest"] == first.exclude_digest
    resumed = make_loader(a, **kw)
    resumed.load_state_dict(state)
    rest = list(resumed)
    whole = list(make_loader(a, **kw))
    assert [b["key"] for b in head + rest] == [b["key"] for b in whole]
    with pytest.raises(DataError, match="excluding samples .* this run excludes \\(none\\)"):
        make_loader(a, world_size=2, num_workers=0).load_state_dict(state)
    with pytest.raises(DataError, match="another shard set"):
        make_loader(a, num_workers=0, exclude={"0" * 64: [1]})


@pytest.mark.parametrize(
    "sources,mix_classes,expected",
    [
        ([("a", "weight", 0)], None, "data.train_shards.0.weight: Input should be greater than 0"),
        ([("a", "wieght", 1)], None, "data.train_shards.0.wieght: unknown key; did you mean"),
        ([("a", "weight", 1), ("b", "repeat", 1)], None, "every source a weight"),
        ([("a", "repeat", 1), ("c", "repeat", 1)], None, "the sources' classes differ (a: 5"),
    ],
)
def test_check_config_refuses_a_bad_mix_in_one_line(
    sets, tmp_path, capsys, sources, mix_classes, expected
):
    from launch.cli import main

    mix = [{"shards": str(sets / name), key: value} for name, key, value in sources]
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump({"data": {"train_shards": mix, "mix_classes": mix_classes}}))
    assert main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err


def test_check_config_takes_a_mix_with_a_class_choice(sets, tmp_path, capsys):
    from launch.cli import main

    mix = [{"shards": str(sets / "a"), "repeat": 1.0}, {"shards": str(sets / "c"), "repeat": 3.0}]
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump({"data": {"train_shards": mix, "mix_classes": "offset"}}))
    assert main(["check-config", "-c", str(path)]) == 0
    assert "mix_classes: offset" in capsys.readouterr().out
