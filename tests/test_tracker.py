"""The optional experiment tracker (W&B, offline) on a node without network: a real tiny run in a network namespace
of its own, stopped by SIGUSR2 and resumed, read back from W&B's offline transaction logs with W&B's own reader
(`wandb leet inspect --json`) and compared with metrics.csv; a missing wandb package is one error line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from pekd.train import main as train_main
from tests.test_distributed import wait_for_step
from tests.train_helpers import REPO, TINY, Child, env_for, wait

# unshare's user namespace (-r) lets a non-root CI runner have a network namespace too; unshare execs the command,
# so the child's pid is the trainer's and SIGUSR2 reaches it
OFFLINE = ["unshare", "--net", "--map-root-user"]
WANDB = Path(sys.executable).with_name("wandb")  # the CLI of the wandb package this Python imports


def offline_env() -> dict[str, str]:
    """The child's environment without a developer's own W&B settings (WANDB_MODE, WANDB_DIR, a key)."""
    return {k: v for k, v in env_for(0, 1, 0).items() if not k.startswith("WANDB_")}


def start_offline(args: list[str]) -> Child:
    return Child([*OFFLINE, sys.executable, "-m", "pekd.train", *args], env=offline_env(), cwd=REPO)


def log_time(run_dir: Path, start: int, marker: str) -> float:
    """The timestamp of the first line containing `marker` in rank 0's log, from line `start` on."""
    for line in (run_dir / "logs" / "rank0.log").read_text().splitlines()[start:]:
        if marker in line:
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise AssertionError(f"no {marker!r} line in {run_dir}/logs/rank0.log")


def records(folder: Path) -> list[dict]:
    """Every record of one offline run folder's .wandb transaction log, read by W&B's own reader."""
    out = subprocess.run([*OFFLINE, str(WANDB), "leet", "inspect", "--json", str(folder)], capture_output=True,
                         text=True, timeout=120, env={**offline_env(), "WANDB_MODE": "offline"})
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_the_network_namespace_has_no_network():
    """What the tracker test relies on: inside it, a connection fails at once (no route), it does not hang."""
    probe = "import socket\ntry:\n socket.create_connection(('1.1.1.1', 443), timeout=20)\nexcept OSError as e:\n" \
            " print(e.errno)"
    out = subprocess.run([*OFFLINE, sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "101", (out.stdout, out.stderr)  # ENETUNREACH


@pytest.mark.slow
def test_offline_wandb_logs_what_metrics_csv_has_and_a_resumed_run_continues_it(tmp_path):
    """~1 min: two starts of one 2-epoch run (SIGUSR2 at step 10, then the rerun) with the network off."""
    run_dir = tmp_path / "run"
    args = [*TINY, "teacher=none", "method=ce", "trainer.epochs=2", "trainer.milestones=[1]", "tracker.name=wandb",
            f"run_dir={run_dir}"]
    lines_before = 0
    for attempt, expected in (("stopped", 3), ("resumed", 0)):
        proc = start_offline(args)
        if attempt == "stopped":
            wait_for_step(run_dir, 10, procs=[proc])
            os.kill(proc.pid, signal.SIGUSR2)
        [(rc, err)] = wait([proc], timeout=300)
        exited = time.time()
        assert rc == expected, err[-3000:]
        # no network wait: W&B starts in seconds (its own timeouts are 30-90 s) and the run ends soon after its
        # last line (W&B's finish included)
        assert log_time(run_dir, lines_before, "tracker: W&B run") - log_time(run_dir, lines_before, " INFO run ") < 60
        last = (run_dir / "logs" / "rank0.log").read_text().splitlines()[-1]
        assert exited - datetime.strptime(last[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() < 60
        lines_before = len((run_dir / "logs" / "rank0.log").read_text().splitlines())

    run_id = json.loads((run_dir / "tracker.json").read_text())["wandb_id"]
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(f"-{run_id}") for f in folders), folders
    logged: dict[tuple[int, str], float] = {}
    steps_per_start = []
    for folder in folders:
        recs = records(folder)
        [run] = [r["run"] for r in recs if r["type"] == "run"]
        assert (run["run_id"], run["display_name"], run["project"]) == (run_id, run_dir.name, "pekd")
        config = run["config"]["update"]
        assert (config["model"]["name"], config["trainer"]["epochs"], config["tracker"]["mode"]) == \
            ("resnet8", 2, "offline")
        steps = set()
        for r in recs:
            if r["type"] == "history":
                step = r["history"]["step"]["num"]
                steps.add(step)
                for tag, value in r["history"]["item"].items():
                    if not tag.startswith("_"):  # W&B's own (_step, _runtime, _timestamp)
                        logged[step, tag] = value
        steps_per_start.append(steps)
    first, second = steps_per_start
    assert first and second and max(first) < min(second), "the second start logs after the stop, each step once"
    with open(run_dir / "metrics.csv", newline="") as f:
        expected = {(int(r["step"]), r["tag"]): float(r["value"]) for r in csv.DictReader(f)}
    assert {"train/loss", "train/top1", "val/top1"} <= {tag for _, tag in expected}
    assert max(step for step, _ in expected) == 88  # 2 epochs of 44 steps: the whole run is in the comparison
    assert logged == expected


def test_tracker_without_the_wandb_package_is_one_error_naming_the_extra(monkeypatch, tmp_path, capsys):
    """As on a machine that installed pekd without the extra (a None entry in sys.modules); nothing is written."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        train_main(["data=digits", "model=resnet8", "teacher=none", "method=ce", "run_dir=run", "tracker.name=wandb"])
    assert e.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: tracker.name=wandb needs the wandb package, which cannot be imported")
    assert "pip install 'pekd[wandb]'" in line and "tracker.name=none" in line
    assert list(tmp_path.iterdir()) == []
