"""Hostile configs are one clear line each: an alias bomb, a binary file, a FIFO,
`.inf`/`.nan`, values no one can mean, and the integer hint for an integer field; a SQLite
tracking file that a symlink takes out of the working tree is named in a warning."""

from __future__ import annotations

import os

import pytest

from launch.cli import main
from pipelines.config import config_from_dict, load_config
from pipelines.errors import ConfigError

ALIAS_BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return info.value.problems


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "alias" in err[0] and str(path) in err[0], err
    # A few aliases are still fine.
    ok = tmp_path / "ok.yaml"
    ok.write_text("augment: {mean: &m [0.5, 0.5, 0.5], std: *m}\n")
    assert load_config(ok).augment.std == [0.5, 0.5, 0.5]


def test_a_binary_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "model.yaml"
    path.write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xff\xfe binary")
    assert main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: not a text (UTF-8) file: byte 10 is 0xff"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"optim": {"lr": float("inf")}}, "optim.lr"),
        ({"optim": {"eps": float("nan")}}, "optim.eps"),
        ({"augment": {"mixup_alpha": float("inf")}}, "augment.mixup_alpha"),
        ({"cluster": {"resources_per_worker": {"TPU": float("nan")}}}, "cluster"),
    ],
)
def test_inf_and_nan_are_refused_in_float_fields(raw, field):
    (problem,) = problems(raw)
    assert problem.startswith(field) and "finite" in problem, problem


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"model": {"img_size": 1 << 20}}, "model.img_size"),
        ({"train": {"seed": 2**63}}, "train.seed"),
        ({"train": {"seed": -1}}, "train.seed"),
        ({"train": {"global_batch_size": 2**40, "micro_batch_size": 2**20}}, "train."),
        ({"train": {"grad_accum_steps": 10**9}}, "train.grad_accum_steps"),
        ({"shard": {"source": {"kind": "fractal", "num_classes": 10**12}}}, "shard.source"),
        ({"optim": {"betas": [0.9, 3.0]}}, "optim.betas"),
    ],
)
def test_values_no_one_can_mean_are_refused(raw, field):
    found = problems(raw)
    assert any(p.startswith(field) for p in found), found


def test_the_largest_seed_still_seeds_mixup():
    import torch

    from pipelines.data.mixing import mix_batch
    from pipelines.seeds import mix_seed

    config = config_from_dict({"train": {"seed": 2**32 - 1}, "augment": {"mixup_alpha": 0.2}})
    seed = mix_seed(config.train.seed, 10**6, 3, 7)
    images, labels = torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])
    mixed, targets = mix_batch(
        images,
        labels,
        num_classes=2,
        mixup_alpha=0.2,
        cutmix_alpha=0.0,
        label_smoothing=0.0,
        generator=torch.Generator().manual_seed(seed),
    )
    assert targets.shape == (2, 2)


def test_the_number_hint_for_an_integer_field_is_an_integer():
    (problem,) = problems({"model": {"img_size": "2.24e2"}})
    assert "write the integer 224" in problem and "224.0" not in problem, problem
    (problem,) = problems({"model": {"img_size": 224.0}})
    assert problem == "model.img_size: expected an integer, got 224.0; write 224"
    (problem,) = problems({"optim": {"lr": "3e-4"}})  # floats keep their hint
    assert "3.0e-4" in problem, problem


def test_a_fifo_given_as_the_config_is_named_for_what_it_is(tmp_path, capsys):
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)  # no writer: reading it would wait forever
    assert main(["check-config", "-c", str(fifo)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a FIFO, not a regular file" in err[0], err
    assert str(fifo) in err[0] and "does not exist" not in err[0]


def test_a_sqlite_tracking_file_linked_out_of_the_working_tree_is_warned_about(
    tmp_path, monkeypatch, capsys
):
    work, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "mlflow.db").symlink_to(elsewhere / "someone-elses.db")
    (work / "job.yaml").write_text("tracking: {uri: 'sqlite:///mlflow.db'}\n")
    (work / "here.yaml").write_text("tracking: {uri: 'sqlite:///runs/mlflow.db'}\n")
    (work / "said.yaml").write_text("tracking: {uri: 'sqlite:///../shared/mlflow.db'}\n")
    monkeypatch.chdir(work)
    assert main(["check-config", "-c", "job.yaml"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: tracking.uri sqlite:///mlflow.db"), err
    assert str(elsewhere / "someone-elses.db") in err[0]
    # Inside the tree, or out of it in so many words: nothing to say.
    for quiet in ("here.yaml", "said.yaml"):
        assert main(["check-config", "-c", quiet]) == 0
        assert capsys.readouterr().err == ""
