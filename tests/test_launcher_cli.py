"""launchers/submit.py's command line without a scheduler: SLURM time strings, gres counts, pass-through options,
and --dry-run's preview of the batch script on a machine with no SLURM at all (site options, array caps, one
error line per missing input before anything is queued).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from launchers import submit
from pekd.cluster.sbatch import DEFAULT_ARRAY_PARALLELISM, gres_gpus, pass_through, slurm_minutes
from pekd.errors import PekdError
from tests.train_helpers import REPO, TINY


@pytest.mark.parametrize("text, minutes", [("infinite", None), ("30", 30), ("30:00", 30), ("12:00:00", 720),
                                           ("1-12", 2160), ("2-12:30:00", 3630), ("24:00:00", 1440),
                                           ("1-00:00:00", 1440), ("10:30", 11), ("0:0:30", 1)])
def test_slurm_time_limits_read_as_minutes(text: str, minutes: int | None) -> None:
    assert slurm_minutes(text) == minutes


def test_time_strings_and_gres_counts_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert submit.parse_args(["--time", "1-00:00:00"]).time == 1440
    assert submit.parse_args(["--time", "24:00:00"]).time == submit.parse_args(["--time", "1440"]).time
    for bad in ("1 day", "0", "infinite"):
        with pytest.raises(PekdError, match="--time"):
            submit.parse_args(["--time", bad])
    assert (gres_gpus("gpu:a100:8"), gres_gpus("gpu:2,nvme:1"), gres_gpus("gpu"), gres_gpus("nvme:1")) == \
        (8, 2, 1, None)
    with pytest.raises(PekdError, match="submit.py sets --time itself"):
        pass_through(["time=10"])


def _preview(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """submit.py --dry-run on a machine with no SLURM at all: no srun, no sinfo, no slurm.conf."""
    empty = tmp_path / "no-slurm-bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("SLURM_CONF", raising=False)
    capsys.readouterr()
    code = 0
    try:
        submit.main(["--dry-run", "--folder", str(tmp_path / "runs"), "--gpus", "0", *argv])
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dry_run_previews_the_script_with_every_site_option_and_no_controller(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _preview(["--time", "1-00:00:00", "--setup", "module load cuda/12.4", "--setup",
                               "source /shared/venv/bin/activate", "--gres", "tmpdisk:10", "--array-parallelism",
                               "3", "--after", "1234", "--sbatch", "mail-type=END", "--sbatch", "exclusive", "-m",
                               *TINY, "method=ce", "teacher=none", "seed=0,1,2,3,4"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert "# not checked: partition (default) and its time limit: no SLURM controller answers sinfo here" in out
    assert "# not checked: that job(s) 1234 exist" in out
    script = out[out.index("#!/bin/bash"):]
    for line in ("#SBATCH --time=1440", "#SBATCH --gres=tmpdisk:10", "#SBATCH --array=0-4%3",
                 "#SBATCH --dependency=afterok:1234", "#SBATCH --mail-type=END", "#SBATCH --exclusive"):
        assert line in script.splitlines(), line
    setup = script.split("\n# setup\n", 1)[1].split("\n\n", 1)[0]
    assert setup.splitlines() == ["module load cuda/12.4", "source /shared/venv/bin/activate"]
    assert script.index("# setup") < script.index("srun ")
    assert not (tmp_path / "runs").exists()  # a preview creates nothing
    # the default array cap is modest: a 20-point sweep does not ask for 20 allocations at once (each point's
    # config is composed and checked: a 200-point preview takes a minute on a slow CPU)
    assert DEFAULT_ARRAY_PARALLELISM < 20
    code, out, err = _preview([*TINY, "method=ce", "teacher=none", "-m", "seed=range(20)"], tmp_path, monkeypatch,
                              capsys)
    assert code == 0, err
    assert f"#SBATCH --array=0-19%{DEFAULT_ARRAY_PARALLELISM}" in out.splitlines()


def test_missing_inputs_are_one_error_line_each_before_the_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _preview(["model.name=resnet1100", "teacher.name=resnet8", "teacher.weights=/nonexistent.pth",
                               "data=cifar100", f"data.root={tmp_path / 'no-data'}"], tmp_path, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert all(line.startswith("error: ") for line in lines) and len(lines) == 3, err
    assert "model.name: unknown model 'resnet1100'" in lines[0] and "resnet110" in lines[0]
    assert "teacher.weights='/nonexistent.pth' does not exist" in lines[1]
    assert "no-data" in lines[2] and "cifar-100-python" in lines[2]
    code, out, err = _preview([*TINY, "teacher.name=resnet8", "teacher.mode=bank", f"teacher.bank={tmp_path}/bank",
                               "data.pipeline=ffcv", f"data.train_beton={tmp_path}/t.beton",
                               f"data.val_beton={tmp_path}/v.beton", "method.q=1,3", "-m"], tmp_path, monkeypatch,
                              capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 3, err  # each problem once, not once per sweep point
    assert "teacher.bank=" in lines[0] and "manifest.json" in lines[0]
    assert "data.train_beton=" in lines[1] and "data.val_beton=" in lines[2]



def test_kd_on_a_bank_without_logits_is_one_line_before_the_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Read from the manifest alone (a bank of format 5, or built for feature runs only): the KD points of a sweep
    are refused before anything is queued, the FD point is not."""
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "manifest.json").write_text('{"format": 5, "shape": [1, 1437, 64]}')
    common = [*TINY, "teacher.name=resnet8", f"teacher.weights={tmp_path}/t.pt", "teacher.mode=bank",
              f"teacher.bank={bank}"]
    code, _, err = _preview([*common, "method=kd"], tmp_path, monkeypatch, capsys)
    assert code == 2 and err.startswith("error: ") and "holds no teacher logits, which Hinton KD reads" in err, err
    code, _, err = _preview([*common, "method=fd"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    # a student that waits for its teacher's job may name the file that job is to write
    code, out, err = _preview(["--after", "99", *TINY, "teacher.name=resnet8", f"teacher.weights={tmp_path}/t.pt"],
                              tmp_path, monkeypatch, capsys)
    assert code == 0 and err.startswith("note: teacher.weights=") and "error" not in err




def test_an_m_s_time_is_refused_naming_both_readings() -> None:
    """SLURM reads `1:30` as 1 minute 30 seconds: a job meant for an hour and a half ended 2 minutes in."""
    with pytest.raises(PekdError, match=r"--time '1:30' is ambiguous: SLURM reads it as 1 min 30 s .* \(90\) or "
                                        r"H:M:S \(1:30:00\).* 0:01:30 if you mean M:S"):
        submit.parse_args(["--time", "1:30"])
    assert [submit.parse_args(["--time", t]).time for t in ("90", "1:30:00", "0:01:30", "1-12")] == [90, 90, 2, 2160]


def test_a_time_limit_within_the_stop_signals_lead_is_warned_about(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run = [*TINY, "method=ce", "teacher=none"]
    code, out, err = _preview(["--time", "2", *run], tmp_path, monkeypatch, capsys)
    assert code == 0 and "#SBATCH --signal=USR2@120" in out.splitlines(), err
    assert err.startswith("warning: --time 2 (minutes) is not longer than --signal-delay 120 s") and \
        err.count("\n") == 1, err
    code, out, err = _preview(["--time", "3", *run], tmp_path, monkeypatch, capsys)
    assert code == 0 and err == ""
    code, out, err = _preview(["--time", "3", "--signal-delay", "300", *run], tmp_path, monkeypatch, capsys)
    assert code == 0 and "more than 5 minutes" in err


def test_ad_hoc_runs_and_sweeps_are_named_by_what_they_train(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _preview([*TINY, "method=ce", "teacher=none"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert re.search(rf"^# run {tmp_path}/runs/digits_resnet8_ce-[0-9a-f]{{8}}: ", out, re.M), out
    assert "#SBATCH --job-name=digits_resnet8_ce" in out.splitlines()
    code, out, err = _preview([*TINY, "method=ce", "teacher=none", "-m", "seed=0,1"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert re.search(rf"^# run {tmp_path}/runs/digits_resnet8_ce-[0-9a-f]{{8}}/seed=1: ", out, re.M), out


def test_the_console_script_exits_0_and_prints_no_list(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """pyproject's pekd-submit, called as pip's generated script calls it: `sys.exit(<function>())` -- main's list of
    jobs made that print the list and exit 1 after a successful submission."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["pekd-submit"].partition(":")
    assert module == "pekd.launchers.submit"
    entry = getattr(submit, function)  # the same file; the tests import it as launchers.submit
    empty = tmp_path / "no-slurm-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(sys, "argv", ["pekd-submit", "--dry-run", "--folder", str(tmp_path / "runs"), "--gpus", "0",
                                      *TINY, "method=ce", "teacher=none"])
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(entry())
    out = capsys.readouterr()
    assert exit_info.value.code is None and "#!/bin/bash" in out.out and "[]" not in out.out + out.err


def test_a_local_sweep_leaves_no_literal_job_id_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """submitit's local controller made its folder from the unformatted `submitit/%j` pattern."""
    jobs = submit.main(["--local", "--folder", str(tmp_path), "--gpus", "0", "--time", "5", *TINY, "method=ce",
                        "teacher=none", "trainer.max_steps=1", "trainer.epochs=1", "trainer.milestones=[1]", "-m",
                        "seed=0,1"])
    assert [job.exception() for job in jobs] == [None, None]
    assert not [p for p in tmp_path.rglob("*") if "%" in p.name]
    assert len(list((tmp_path / "submitit").glob(f"{jobs[0].job_id}_0_log.*"))) == 2


def test_a_node_whose_sinfo_fails_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """SLURM's clients installed but no cluster configured: sinfo fails with several lines of its own (three for
    an empty slurm.conf, four without one and no DNS SRV record), which the error quoted as they were -- an
    `error:` line broken over several. An empty slurm.conf of the test's own: never a real cluster's."""
    (tmp_path / "slurm.conf").write_text("")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        submit.main(["--folder", str(tmp_path / "runs"), "--gpus", "0", *TINY, "method=ce", "teacher=none"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: sinfo failed (sinfo: ") and "--local" in err, err
    assert not (tmp_path / "runs").exists()
