"""Exports describe themselves: student.pt is safetensors with the model's architecture, classes, channels and
input normalisation in its metadata, so `load_student` rebuilds it alone, `python -m pekd.evaluate` reproduces
the run's own accuracy from it, and it serves as another run's teacher.weights."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from pekd.data.sources import build_source
from pekd.engine import checkpoint as ckpt
from pekd.errors import PekdError
from pekd.evaluate import evaluate_student, main
from pekd.models import build_model, load_student, load_weights, read_weights
from tests.train_helpers import TINY, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("export") / "run"
    [(rc, err)] = train(TINY + ["method=ce", "teacher=none", "trainer.epochs=1", "trainer.ema_decay=0.9",
                                f"run_dir={run_dir}"])
    assert rc == 0, err[-3000:]
    return run_dir


def test_pekd_evaluate_reproduces_the_runs_last_top1_exactly(run, tmp_path, capsys):
    res = json.loads((run / "results.json").read_text())
    got = evaluate_student(run, [])
    assert (got["top1"], got["top5"], got["images"]) == (res["last_top1"], res["last_top5"], 360)
    ema = evaluate_student(run / "ema.pt", [])  # a file in a run directory: the run's eval set
    assert (ema["top1"], ema["top5"]) == (res["last_ema_top1"], res["last_ema_top5"])
    alone = tmp_path / "student.pt"  # outside its run directory: the file says which model, the command the data
    shutil.copy(run / "student.pt", alone)
    assert evaluate_student(alone, ["data=digits", "trainer.amp=off"])["top1"] == res["last_top1"]
    main([str(run)])
    assert f"top-1 {res['last_top1']:.2f}%  top-5 {res['last_top5']:.2f}%" in capsys.readouterr().out


def test_load_student_round_trip(run):
    model = load_student(str(run / "student.pt"))
    src = build_source("digits", "", "train")
    assert model.arch == "resnet8" and not model.training and (model.mean, model.std) == (src.mean, src.std)
    trained = {k.removeprefix("student."): v for k, v in ckpt.newest_valid(run / "checkpoints")[1]["model"].items()
               if k.startswith("student.")}
    state = model.state_dict()
    assert state.keys() == trained.keys() and all(torch.equal(state[k], trained[k]) for k in state)
    x = torch.rand(4, 1, 8, 8)
    manual = build_model("resnet8", 10, 1)
    load_weights(manual, str(run / "student.pt"), config_key="model.name")
    assert torch.equal(manual.eval()(x)[1], model(x)[1])
    assert read_weights(str(run / "student.pt"))[1]["pekd_version"]


def test_an_export_serves_as_teacher_weights(run, tmp_path):
    args = TINY + ["method=pefd", "teacher.name=resnet8", f"teacher.weights={run / 'student.pt'}",
                   "trainer.max_steps=2"]
    [(rc, err)] = train(args + [f"run_dir={tmp_path / 'pefd'}"])
    assert rc == 0, err[-3000:]
    [(rc, err)] = train([a.replace("teacher.name=resnet8", "teacher.name=resnet20") for a in args]
                        + [f"run_dir={tmp_path / 'wrong'}"])
    assert rc == 2 and "(a pekd export of resnet8) does not fit model resnet20" in err, err[-2000:]


def test_load_student_refuses_a_file_that_does_not_describe_itself(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(build_model("resnet8", 10, 1).state_dict(), path)
    with pytest.raises(PekdError, match="not a pekd export"):
        load_student(str(path))


def test_pekd_evaluate_names_a_bad_override_or_a_file_that_is_no_student_first(run, tmp_path):
    """An override's value is checked as pekd.train checks it (data.val_subset=-5 had evaluated all the images),
    and a file that is no student is named before any data is looked for (it had been "CIFAR-100 not found")."""
    with pytest.raises(PekdError, match=r"data.val_subset=-5 must be 0"):
        evaluate_student(run, ["data.val_subset=-5"])
    garbage = tmp_path / "student.pt"
    garbage.write_bytes(b"not a model\n")
    with pytest.raises(PekdError, match=re.escape(str(garbage))):
        evaluate_student(garbage, [])
