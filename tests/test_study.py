"""The study end to end at toy size (digits): teacher, banks, students along two budgets, stopped mid-way,
resumed by the same command, and reported along data.subset; and the plan of its other axes (teacher seeds,
splits, epochs), which reuses the same code, from the command line alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pekd.science.study_plan import cells, plan, report_options, teacher_overrides
from pekd.study import main, parse_args, run_dir_of
from tests.train_helpers import REPO, env_for, run_python


def study_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "pekd.study", "--data", "digits", "--out", str(out), "--subsets", "256,512",
            "--epochs", "3", "--seeds", "2", "--methods", "fd,pefd_q1", "--processes", "2",
            "--teacher-epochs", "4"]


def in_session(sid: int) -> list[int]:
    """Pids of the live processes in session sid (the study was started as its session's leader)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
def test_toy_study_stops_resumes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "study"
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(study_command(out), cwd=REPO, env=env_for(0, 1, 0), stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:  # stop it once a student has started: the students are then half done or undone
        deadline = time.monotonic() + 600
        while (not list(out.glob("subset*/*/seed*/config.yaml")) and first.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.2)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        # the same command again meanwhile: one line naming the first driver (pekd.science.one_driver)
        second = run_python(study_command(out)[1:], timeout=120)
        assert second.returncode == 2 and len(second.stderr.splitlines()) == 1, second.stderr[-3000:]
        assert "is in use by another `python -m pekd.study`: host " in second.stderr
        assert f"pid {first.pid}," in second.stderr and "== " not in second.stdout, second.stdout
        # a shell's `kill PID`: the driver alone; it forwards the stop, the runs checkpoint, and nothing stays behind
        os.kill(first.pid, signal.SIGTERM)
        first.wait(timeout=300)
        assert first.returncode == 3, (tmp_path / "first.log").read_text()[-3000:]
        assert not in_session(first.pid), "workers of the stopped study are still running"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        log.close()
    assert not (out / "report.json").exists(), "the interrupted study must not have reported"

    again = subprocess.run(study_command(out), cwd=REPO, env=env_for(0, 1, 0), capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "== teacher" not in again.stdout, again.stdout[:2000]  # the finished teacher is not trained again

    report = json.loads((out / "report.json").read_text())
    runs = sorted(out.glob("subset*/*/seed*"))
    assert len(runs) == 8
    for r in runs:
        assert json.loads((r / "results.json").read_text())["status"] == "completed"
        assert (r / "analysis.json").exists()
    claim = [c for c in report["comparisons"] if (c["a"], c["b"]) == ("PEFD q=1", "FD no projector")]
    assert sorted(c["along"]["data.subset"] for c in claim) == [256, 512], report["comparisons"]
    assert all(c["n"] == 2 for c in claim)
    # a third run of the same command trains nothing
    third = subprocess.run(study_command(out), cwd=REPO, env=env_for(0, 1, 0), capture_output=True, text=True,
                           timeout=900)
    assert third.returncode == 0 and "8 completed" in third.stdout and "student runs to train" not in third.stdout


def test_every_cell_is_a_folder_named_by_what_differs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Teacher seeds x splits x subsets x epochs: the first study's cell keeps its folders (teacher, split0,
    subsetN), every other names its teacher seed, split and epochs; a bank per teacher, split and subset; the
    report goes along every axis that varies, by the test asked for."""
    args = parse_args(["--data", "digits", "--out", str(tmp_path), "--subsets", "256", "--epochs", "24,96",
                       "--split-seeds", "0,1", "--teacher-seeds", "0,1", "--methods", "fd,kd_proj", "--seeds", "2",
                       "--test", "perm"])
    args.out = tmp_path
    runs = plan(args)
    assert len(cells(args)) == 8 and len(runs) == 8 * 2 * 2
    dirs = {str(run_dir_of(r).relative_to(tmp_path)) for _, r in runs}
    assert {"subset256/fd/seed0", "subset256-epochs96/kd_proj/seed1", "split1/subset256/fd/seed0",
            "teacher-seed1/split1/subset256-epochs96/fd/seed1"} <= dirs
    cfg = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in next(r for c, r in runs if c.teacher_seed and c.split_seed
                                                                 and c.epochs == 96)}
    assert cfg["teacher.weights"] == str(tmp_path / "teacher-seed1" / "student.pt")
    assert cfg["teacher.bank"] == str(tmp_path / "banks" / "teacher-seed1" / "split1" / "subset256")
    assert (cfg["data.split_seed"], cfg["trainer.epochs"], cfg["trainer.milestones"]) == ("1", "96", "[57,81]")
    options = report_options(vars(args))
    assert options[:6] == ["--along", "trainer.epochs", "--along", "data.split_seed", "--along", "teacher.weights"]
    assert options[-2:] == ["--test", "perm"] and "KD T=4 + logit projector>KD T=4" not in options
    # the first study's study.json (one epochs and split as numbers, no test) gives its committed options
    assert report_options({"methods": ["ce", "fd", "pefd_q1", "pefd_q3"], "subsets": [500, 2000], "epochs": 24,
                           "split_seed": 0}) == ["--along", "data.subset", "--compare", "PEFD q=1>FD no projector",
                                                 "--compare", "PEFD q=3>PEFD q=1", "--compare", "PEFD q=1>CE",
                                                 "--test", "t"]
    # the teacher's recipe: 20 epochs by default (the committed study's teacher), shorter ones scaled alike
    default, short = (dict(o.split("=", 1) for o in teacher_overrides(parse_args(extra), 0))
                      for extra in ([], ["--teacher-epochs", "4"]))
    assert (default["trainer.epochs"], default["trainer.milestones"]) == ("20", "[12,17]")
    assert (short["trainer.epochs"], short["trainer.milestones"], short["trainer.eval_every_epochs"]) == (
        "4", "[2,3]", "4")
    main(["--data", "digits", "--out", str(tmp_path), "--subsets", "256", "--epochs", "24,96", "--dry-run"])
    assert "subset256-epochs96 -> 384" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "24,x"], "--epochs '24,x': give a comma list of whole numbers"),
    (["--split-seeds", "0,0"], "must be distinct"),
    (["--epochs", "0"], "--subsets and --epochs must be positive"),
    (["--teacher", "t.pt", "--teacher-seeds", "0,1"], "give one or the other"),
    (["--teacher-epochs", "0"], "--teacher-epochs must be at least 1"),
])
def test_bad_options_are_one_error_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--dry-run", *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: " in err[-1] and message in err[-1], err
