"""The distributed, preemption-safe trainer against real processes: gloo DDP, SIGUSR2, elastic resume, NaN."""

import os
import random
import signal
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pekd.models import build_model
from tests.train_helpers import TINY, Child, final_model, start, train, until, wait

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory) -> Path:
    """Any fixed teacher will do for equivalence tests; a random resnet8 is the cheapest."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(build_model("resnet8", 10, 1).state_dict(), path)
    return path


def pefd(teacher: Path, run_dir: Path, *extra: str) -> list[str]:
    return TINY + ["method=pefd", "teacher.name=resnet8", f"teacher.weights={teacher}", f"run_dir={run_dir}",
                   "data.batch_size=32", *extra]


def parameters_only(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if "running_" not in k and "num_batches" not in k}


def test_two_process_ddp_matches_one_process(random_teacher, tmp_path):
    """Same global batch (32): 1 process accumulates 2 x 16, 2 processes do 16 each; BN sees the same batches."""
    common = ["trainer.max_steps=6", "data.max_micro_batch=16"]
    [(rc1, err1)] = train(pefd(random_teacher, tmp_path / "one", *common), world=1)
    results = train(pefd(random_teacher, tmp_path / "two", *common), world=2)
    assert rc1 == 0, err1
    assert all(rc == 0 for rc, _ in results), results
    for run, names in (("one", "on cpu, backend none, amp off, world 1 "),
                       ("two", "on cpu, backend gloo, amp off, world 2 ")):
        assert names in (tmp_path / run / "logs" / "rank0.log").read_text().splitlines()[0]  # the start line
    one, two = parameters_only(final_model(tmp_path / "one")), parameters_only(final_model(tmp_path / "two"))
    assert one.keys() == two.keys() and any("projector" in k for k in one)
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-5, msg=k)
    moved = final_model(tmp_path / "one")["student.fc.weight"]
    torch.manual_seed(0)
    assert not torch.equal(moved, build_model("resnet8", 10, 1).fc.weight), "training changed the weights"


def logged_step(run_dir: Path) -> int:
    """The newest global step in rank 0's log (0 before its first step line)."""
    log = run_dir / "logs" / "rank0.log"
    for line in reversed(log.read_text().splitlines() if log.exists() else []):
        if "(global " in line:
            return int(line.split("(global ")[1].split(")")[0])
    return 0


def wait_for_step(run_dir: Path, step: int, timeout: float = 300, procs: Sequence[Child] = ()) -> None:
    until(lambda: logged_step(run_dir) >= step, f"global step {step} in {run_dir}", timeout, procs)


def interrupt(overrides: list[str], run_dir: Path, world: int, at_step: int, signal_ranks: list[int]) -> None:
    procs = start(overrides, world)
    wait_for_step(run_dir, at_step, procs=procs)
    for r in signal_ranks:
        os.kill(procs[r].pid, signal.SIGUSR2)
    results = wait(procs)
    assert all(rc == 3 for rc, _ in results), [(rc, err[-2000:]) for rc, err in results]


@pytest.mark.parametrize("world", [1, 2])
def test_sigusr2_mid_epoch_resume_is_bit_exact(random_teacher, tmp_path, world):
    common = ["trainer.epochs=2", "trainer.milestones=[1]"]
    ref = tmp_path / "ref"
    assert all(rc == 0 for rc, _ in train(pefd(random_teacher, ref, *common), world=world))
    cut = tmp_path / "cut"
    args = pefd(random_teacher, cut, *common)
    at = random.Random(world).randint(5, 60)  # 44 steps per epoch: epoch 0 or mid-epoch 1
    interrupt(args, cut, world, at, signal_ranks=[world - 1])  # signal ONE rank: all must agree to stop
    newest = sorted((cut / "checkpoints").glob("ckpt-*.pt"))[-1]
    assert int(newest.stem.split("-")[1]) % 44 != 0, "the stop checkpoint is mid-epoch"
    assert all(rc == 0 for rc, _ in train(args, world=world))
    a, b = final_model(ref), final_model(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    logged = {}
    for run_dir in (ref, cut):  # TensorBoard: every step once across the restart, with the same values
        acc = EventAccumulator(str(run_dir / "tb"))
        acc.Reload()
        logged[run_dir] = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in logged[cut]] == list(range(1, 89)) and logged[cut] == logged[ref]


def test_elastic_2_1_2_sees_every_sample_once_per_epoch(random_teacher, tmp_path):
    run_dir = tmp_path / "elastic"
    args = pefd(random_teacher, run_dir, "trainer.epochs=2", "trainer.milestones=[1]", "trainer.audit_samples=true")
    interrupt(args, run_dir, world=2, at_step=10, signal_ranks=[0, 1])
    interrupt(args, run_dir, world=1, at_step=55, signal_ranks=[0])
    assert all(rc == 0 for rc, _ in train(args, world=2))
    seen: dict[int, list[int]] = defaultdict(list)
    steps: dict[int, set[int]] = defaultdict(set)
    for f in (run_dir / "logs").glob("samples-rank*.txt"):
        for line in f.read_text().splitlines():
            epoch, step, *idx = map(int, line.split())
            seen[epoch].extend(idx)
            steps[epoch].add(step)
    assert sorted(seen) == [0, 1]
    for epoch, idx in seen.items():
        assert len(idx) == 44 * 32 and len(set(idx)) == len(idx), f"epoch {epoch}: repeated or missing samples"
        assert steps[epoch] == set(range(44 * epoch, 44 * (epoch + 1)))
    import json

    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "completed" and res["world_size"] == 2


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "nan"
    [(rc, err)] = train(TINY + ["method=ce", "teacher=none", "trainer.lr=1e30", "trainer.ckpt_every_steps=1",
                                "trainer.epochs=1", f"run_dir={run_dir}"])
    assert rc == 2, err
    assert "non-finite" in err and "Traceback" not in err
    model = final_model(run_dir)
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())
