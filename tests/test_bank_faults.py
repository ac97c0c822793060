"""Faults of feature banks, against real `python -m pekd.precompute` / `pekd.train` processes and real filesystems:
a disk too small or full (a tmpfs), features.bin damaged after sealing, malformed records, two builders of one bank,
a read-only filesystem. Each ends in one `error:` line and exit 2 (or the right behaviour), never a traceback or a
signal, and nothing good is lost: the same command finishes the bank once the cause is gone.

The teacher is an untrained resnet8 (the bytes of a bank do not need a good teacher, only a fixed one).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch

from pekd.data.sources import build_source
from pekd.errors import PekdError
from pekd.models import build_model
from pekd.teacher import allocation
from pekd.teacher.bank import BankTeacher
from pekd.teacher.precompute import precompute
from pekd.train import compose_config
from tests.test_bank import CIFAR_VIEWS, bank_equal, with_teacher
from tests.train_helpers import Child, env_for, remount, spawn, start, tmpfs, until, wait

pytestmark = pytest.mark.slow

BANK_BYTES = 2 * 1437 * 64 * 4  # K x N x d float32 of the digits bank below: 735,744 bytes = 179.6 pages of 4 KiB


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet8", 10, 1).state_dict(), path)
    return path


def overrides(weights: Path, folder: Path, *extra: str) -> list[str]:
    return with_teacher(weights, *CIFAR_VIEWS, f"teacher.bank={folder}", *extra)


@pytest.fixture(scope="module")
def reference(weights, tmp_path_factory) -> Path:
    """The bank built undisturbed, in this process: what every faulted build must end up equal to."""
    folder = tmp_path_factory.mktemp("ref") / "bank"
    precompute(compose_config(overrides(weights, folder)))
    return folder


def open_bank(weights: Path, folder: Path) -> BankTeacher:
    """Open `folder` as a training run does (its checksums verified)."""
    cfg = compose_config(overrides(weights, folder, "teacher.mode=bank"))
    return BankTeacher.open(folder, cfg, build_source("digits", "", "train"))


def start_precompute(args: list[str]) -> Child:
    return spawn(["-m", "pekd.precompute", *args], env_for(0, 1, 0))


def run_precompute(args: list[str]) -> tuple[int, str]:
    [(rc, err)] = wait([start_precompute(args)], timeout=300)
    return rc, err


def one_error_line(rc: int, stderr: str) -> str:
    """Exit 2, exactly one `error:` line, no traceback; returns the line."""
    assert rc == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    [line] = [x for x in stderr.splitlines() if x.startswith("error:")]
    return line


def copy_bank(reference: Path, to: Path) -> Path:
    shutil.copytree(reference, to, ignore=shutil.ignore_patterns("lease", "logs"))
    return to


def edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(edit(manifest)))


# ------------------------------------------------------------------ 1. a disk too small, or full
def test_a_disk_too_small_for_the_bank_is_refused_before_anything_is_written(weights, tmp_path):
    """Today's sparse features.bin met the full disk as a SIGBUS in a memmap store (status 135, not a word)."""
    with tmpfs(tmp_path / "disk", "512k") as disk:
        rc, err = run_precompute(overrides(weights, disk / "bank"))
        line = one_error_line(rc, err)
        assert f"{disk / 'bank'}" in line and f"718.5 KiB ({BANK_BYTES} bytes)" in line and "free" in line, line
        assert not (disk / "bank").exists(), "refused before the first write"


def test_disk_full_while_reserving_the_bank_is_one_line_and_the_same_command_resumes(weights, reference, tmp_path):
    """181 pages of 4 KiB: the size checks pass (before the lease and under it, after its file took a page), then
    building.json takes another and the 180 pages of features.bin cannot be reserved (as with a quota the free
    space does not show, or another writer). The error names the file and the bytes; after the disk grows, the same
    command builds the bank."""
    with tmpfs(tmp_path / "disk", "724k") as disk:
        args = overrides(weights, disk / "bank")
        rc, err = run_precompute(args)
        line = one_error_line(rc, err)
        assert f"cannot reserve 718.5 KiB ({BANK_BYTES} bytes) for '{disk / 'bank' / 'features.bin'}'" in line, line
        assert "no space left on device" in line and "re-run the same command" in line, line
        assert (disk / "bank" / "features.bin").stat().st_blocks == 0, "the failed reservation handed its space back"
        remount(disk, "size=4m")
        rc, err = run_precompute(args)
        assert rc == 0, err[-3000:]
        assert f"718.5 KiB ({BANK_BYTES} bytes) in features.bin, all of it reserved" in err, err[-3000:]
        bank_equal(disk / "bank", reference)
        open_bank(weights, disk / "bank")


def test_where_the_filesystem_refuses_fallocate_zeros_are_written_to_reserve_the_space(tmp_path, monkeypatch):
    """ZFS and some network filesystems answer posix_fallocate with EINVAL / EOPNOTSUPP (glibc emulates only the
    latter): then written zeros must reserve the blocks, and a disk too small must still be one line."""
    def refuse(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "posix_fallocate", refuse)
    with tmpfs(tmp_path / "disk", "1m") as disk:
        allocation.allocate(disk / "fits.bin", 600_000, fresh=True)
        assert (disk / "fits.bin").stat().st_size == 600_000
        assert (disk / "fits.bin").stat().st_blocks * 512 >= 600_000, "written zeros occupy real blocks"
        with pytest.raises(PekdError, match=r"cannot reserve .* \(600000 bytes\) for .*too\.bin': no space left"):
            allocation.allocate(disk / "too.bin", 600_000, fresh=True)
        assert (disk / "too.bin").stat().st_size == 0, "a failed fresh reservation hands its space back"


# ------------------------------------------------------------------ 2. content checksums
def test_a_bank_zeroed_in_place_is_refused_before_training_naming_its_chunks(weights, reference, tmp_path):
    """Same size, wrong bytes: today it trains without a word (loss_feat the same at every step)."""
    bank = copy_bank(reference, tmp_path / "bank")
    size = (bank / "features.bin").stat().st_size
    (bank / "features.bin").write_bytes(bytes(size))
    run_dir = tmp_path / "run"
    [(rc, err)] = wait(start(overrides(weights, bank, "method=pefd", "teacher.mode=bank", "trainer.max_steps=2",
                                       f"run_dir={run_dir}")))
    line = one_error_line(rc, err)
    assert f"feature bank '{bank}' is damaged: chunk 0 (samples 0 to 63, all 2 views) (and 22 more of its 23 " \
           "chunks)" in line, line
    assert f"mv {bank} {bank}.damaged" in line and "python -m pekd.precompute" in line, line
    assert not run_dir.exists(), "refused before the run directory"


def test_one_damaged_chunk_is_found_by_both_ranks_of_a_ddp_run(weights, reference, tmp_path):
    """Two ranks split the hashing (rank 1 hashes the odd chunks) and agree: both name chunk 11, one line each."""
    bank = copy_bank(reference, tmp_path / "bank")
    with open(bank / "features.bin", "r+b") as f:  # view 1, sample 11 * 64 + 5: one byte of one row
        f.seek(((1437 + 11 * 64 + 5) * 64 + 7) * 4)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(PekdError, match=r"chunk 11 \(samples 704 to 767, all 2 views\) differs"):
        open_bank(weights, bank)
    run_dir = tmp_path / "run"
    results = wait(start(overrides(weights, bank, "method=pefd", "teacher.mode=bank", "trainer.max_steps=2",
                                   f"run_dir={run_dir}"), world=2))
    for rc, err in results:
        assert "chunk 11 (samples 704 to 767, all 2 views) differs" in one_error_line(rc, err)


def test_a_bank_without_checksums_is_served_with_one_warning(weights, reference, tmp_path):
    """A format-3 bank (pekd before checksums) holds the same rows: it is read, saying once that it is unverified."""
    bank = copy_bank(reference, tmp_path / "bank")
    edit_manifest(bank, lambda m: {**{k: v for k, v in m.items() if k != "checksums"}, "format": 3})
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("pekd").addHandler(handler)
    try:
        open_bank(weights, bank)
        precompute(compose_config(overrides(weights, bank)))  # a sealed bank of this run: nothing to do
    finally:
        logging.getLogger("pekd").removeHandler(handler)
    [warning] = [r.getMessage() for r in records]
    assert "has no content checksums (format 3" in warning and "served unverified" in warning, warning


# ------------------------------------------------------------------ 3. malformed records
@pytest.mark.parametrize("edit,problem", [
    (lambda m: [m], "holds a JSON list, not the object pekd writes"),
    (lambda m: {"format": 4}, "it has no 'pekd_version'"),
    (lambda m: {**m, "shape": "2x1437x64"}, "'shape' is '2x1437x64', not a list"),
    (lambda m: {**m, "views": {**m["views"], "K": "2"}}, "'views.K' is '2', not an integer"),
    (lambda m: {**m, "views": {**m["views"], "exact": "no"}}, "'views.exact' is 'no', not true/false"),
    (lambda m: {**m, "shape": [2, 1437, 0]}, "not [K, N, d] of positive integers"),
    (lambda m: {**m, "checksums": {"sha256": m["checksums"]["sha256"][:3]}}, "not a list of 23 digests"),
    (lambda m: {**m, "format": 99}, "it is format 99; this pekd reads formats [3, 4, 5, 6]"),
])
def test_a_malformed_manifest_is_one_error_naming_it(weights, reference, tmp_path, edit, problem):
    """Today a manifest that is a JSON list ends in AttributeError."""
    bank = copy_bank(reference, tmp_path / "bank")
    edit_manifest(bank, edit)
    with pytest.raises(PekdError, match="manifest.json") as opened:
        open_bank(weights, bank)
    assert problem in str(opened.value) and "move it aside and rebuild" in str(opened.value), opened.value
    with pytest.raises(PekdError, match="manifest.json") as built:
        precompute(compose_config(overrides(weights, bank)))
    assert problem in str(built.value)


def test_a_malformed_building_record_is_one_error_naming_it(weights, tmp_path):
    bank = tmp_path / "bank"
    bank.mkdir()
    for text, problem in [("[1, 2]", "holds a JSON list"), ('{"format": 4, "shape": [2, 1437, 64]}', "has no"),
                          ("{", "cannot read")]:
        (bank / "building.json").write_text(text)
        with pytest.raises(PekdError, match="building.json") as e:
            precompute(compose_config(overrides(weights, bank)))
        assert problem in str(e.value), e.value


# ------------------------------------------------------------------ 4. one builder per bank
def test_a_second_builder_is_refused_naming_the_first_and_a_waiting_one_finds_the_bank_sealed(weights, reference,
                                                                                              tmp_path):
    """The first builder is frozen (SIGSTOP) mid-build: a second one is refused naming its pid (today it resumed
    the same bank beside it, and the first then failed to seal with a FileNotFoundError traceback); a third,
    asked to wait, waits, and once the first finished finds the bank sealed."""
    bank = tmp_path / "bank"
    args = overrides(weights, bank, "trainer.lease_stale_s=600")  # frozen is not stale here
    first = start_precompute(args)
    until(lambda: any(bank.glob("chunks/*.json")), "a chunk finished", procs=[first], interval=0.01)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        rc, err = run_precompute(overrides(weights, bank))
        line = one_error_line(rc, err)
        assert f"feature bank '{bank}' is being built by host" in line and f"pid {first.pid}" in line, line
        assert "trainer.lease_wait_s" in line, line
        third = start_precompute(overrides(weights, bank, "trainer.lease_wait_s=300"))
        until(lambda: "waiting up to 300 s" in third.output()[1], "the third builder waits", procs=[third])
    finally:
        os.kill(first.pid, signal.SIGCONT)
    [(rc1, err1), (rc3, err3)] = wait([first, third], timeout=300)
    assert rc1 == 0 and f"sealed {bank}" in err1, err1[-3000:]
    assert rc3 == 0 and "complete and matches this config; nothing to do" in err3, err3[-3000:]
    assert "Traceback" not in err1 + err3
    bank_equal(bank, reference)
    open_bank(weights, bank)


def test_two_builders_started_at_once_build_the_bank_once(weights, reference, tmp_path):
    bank = tmp_path / "bank"
    results = wait([start_precompute(overrides(weights, bank)) for _ in range(2)], timeout=300)
    builders = [err for rc, err in results if rc == 0 and f"sealed {bank}" in err]
    assert len(builders) == 1, [err[-2000:] for _, err in results]
    for rc, err in results:
        if err not in builders:  # refused naming the builder, or it found the bank already sealed
            assert (rc == 2 and "is being built by host" in one_error_line(rc, err)) or \
                (rc == 0 and "nothing to do" in err), err[-3000:]
    bank_equal(bank, reference)
    open_bank(weights, bank)


# ------------------------------------------------------------------ 5. read-only filesystems
def test_a_read_only_filesystem_is_one_error_and_a_sealed_bank_is_still_served_from_it(weights, reference, tmp_path):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        copy_bank(reference, disk / "sealed")
        partial = copy_bank(reference, disk / "partial")
        manifest = json.loads((partial / "manifest.json").read_text())
        spec = {k: v for k, v in manifest.items() if k not in ("checksums", "eval", "build")}
        spec["teacher"] = {k: v for k, v in spec["teacher"].items() if k != "top1"}
        (partial / "building.json").write_text(json.dumps(spec))
        (partial / "manifest.json").unlink()
        remount(disk, "ro")

        rc, err = run_precompute(overrides(weights, disk / "new"))  # today: an OSError traceback from mkdir
        line = one_error_line(rc, err)
        assert f"'{disk / 'new'}'" in line and "read-only filesystem" in line, line
        with pytest.raises(PekdError, match=re.escape(f"'{partial}'") + ".*read-only filesystem; choose a teacher"):
            precompute(compose_config(overrides(weights, partial)))
        assert precompute(compose_config(overrides(weights, disk / "sealed")))["shape"] == [2, 1437, 64]
        open_bank(weights, disk / "sealed")
