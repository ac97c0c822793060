"""Build a feature bank: the frozen teacher over every (sample, view), sharded over ranks and resumable.

The teacher runs exactly as the online teacher does inside the trainer (eval mode, no grad, the run's AMP
setting and memory format) on exactly the tensors the student gets: the pipeline the config names (torch, FFCV or
DALI) replays view k of each sample through the code training runs (TrainRecipe(replay=True)), and the images
are normalised with the trainer's expression. Samples are cut into chunks of bank.chunk; a chunk's rows (all K
views) are flushed to disk before its marker (with their sha256, pekd.teacher.chunks) is written atomically, so a
killed build restarts where it stopped, on any number of ranks. Rank 0 holds the bank's build lease
(pekd.teacher.build_lease) and lays the folder out (pekd.teacher.bank_folder: features.bin preallocated, so a full
disk is an error line, not a SIGBUS); it seals the manifest last, after a barrier; until then the bank is refused
by training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from pekd.data.batch import Batch
from pekd.data.pipelines import Passes, build_eval_loader, build_view_passes
from pekd.data.sources import Source, run_sources
from pekd.engine import determinism
from pekd.engine.distributed import DistEnv, all_reduce_sum, barrier, broadcast_object, init_distributed
from pekd.engine.files import atomic_write_bytes
from pekd.engine.lease import Lease
from pekd.engine.metrics import progress_bar
from pekd.engine.rundir import git_revision
from pekd.errors import PekdError
from pekd.teacher import bank, bank_folder, bank_views, build_lease, chunks, estimate
from pekd.teacher.allocation import bank_bytes, decimal_bytes, human_bytes, row_words, size_line
from pekd.teacher.checksums import chunk_digest
from pekd.teacher.row_writer import RowWriter, bank_row
from pekd.teacher.write_errors import write_error

log = logging.getLogger("pekd")


class FrozenTeacher:
    """The teacher as the trainer runs it: uint8 -> (x - mean) / std, memory format, autocast, eval, no grad."""

    def __init__(self, model: nn.Module, source: Source, device: torch.device, amp: str, channels_last: bool):
        from pekd.engine.trainer import amp_dtype

        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().requires_grad_(False).to(device, memory_format=self.memory_format)
        self.device = device
        self.dtype = amp_dtype(amp, device)
        self.mean = torch.tensor(source.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(source.std, device=device).view(1, -1, 1, 1)

    @torch.no_grad()
    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch.images.to(self.device, non_blocking=True)
        x = ((x.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return self.model(x)


def setup(cfg: Any, device: torch.device) -> tuple[Source, FrozenTeacher, dict[str, Any]]:
    """The run's train source, its frozen teacher and the spec of its bank (shared by the build and --dry-run).

    The spec adds what only builds must agree on: the chunking and the precision the teacher ran at.
    """
    from pekd.models import build_model, load_weights

    if not cfg.teacher.name:
        raise PekdError("precompute needs a teacher: set teacher.name and teacher.weights (or teacher=<config>)")
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    determinism.configure(cfg.trainer.deterministic, device)
    source = run_sources(cfg)[0]
    digest = bank.weights_sha256(cfg.teacher.weights)  # first: the clearest message for an empty or bad path
    model = build_model(cfg.teacher.name, source.num_classes, source.in_chans)
    load_weights(model, cfg.teacher.weights)
    teacher = FrozenTeacher(model, source, device, cfg.trainer.amp, cfg.trainer.channels_last)
    spec = bank.bank_spec(cfg, source, int(model.feature_dim), digest)
    spec["chunk"] = int(cfg.bank.chunk)
    spec["precision"] = {"amp": cfg.trainer.amp, "channels_last": bool(cfg.trainer.channels_last)}
    return source, teacher, spec


def passes_for(source: Source, cfg: Any, spec: dict[str, Any]) -> Passes:
    return build_view_passes(source, cfg.data, bank_seed=int(cfg.bank.seed), bank_views=int(spec["views"]["K"]),
                             batch_size=cfg.data.eval_batch_size, exact=bool(spec["views"]["exact"]))


def work_plan(todo: list[int], size: int, n: int, views: int,
              batch_size: int) -> list[tuple[int, int, list[np.ndarray]]]:
    """(chunk, view, index batches) for every view of every chunk in `todo`: one replay pass each."""
    plan = []
    for c in todo:
        rows = chunks.chunk_rows(c, size, n)
        batches = [rows[s:s + batch_size] for s in range(0, len(rows), batch_size)]
        plan.extend((c, k, batches) for k in range(views))
    return plan


def compute_chunks(cfg: Any, folder: Path, source: Source, teacher: FrozenTeacher, spec: dict[str, Any],
                   pending: list[int], env: DistEnv, lease: Lease) -> tuple[int, float]:
    """This rank's share of the unfinished chunks (round robin); returns (images computed, seconds). Each chunk's
    marker is written only while `lease` is still the bank's current one."""
    views, n, size = int(spec["views"]["K"]), len(source), int(cfg.bank.chunk)
    total = math.ceil(n / size)
    if len(pending) < total:
        log.info("resuming: %d of %d chunks already finished, skipped", total - len(pending), total)
    mine = pending[env.rank::env.world]
    log.info("computing %d chunks (%d samples x %d views) on %d rank(s); this rank: %d chunks", len(pending),
             n, views, env.world, len(mine))
    plan = work_plan(mine, size, n, views, cfg.data.eval_batch_size)
    features = bank.open_features(folder, spec, "r+")
    images = sum(len(b) for _, _, batches in plan for b in batches)
    # as the training bars: on a terminal only, never into SLURM's .err or a pipe (the log line below says it)
    bar = progress_bar(env.is_main and cfg.trainer.progress, images, 0, "teacher features")
    passes = passes_for(source, cfg, spec)
    writer = RowWriter(features, spec["dtype"])
    t0 = time.perf_counter()
    for c, k, batches in plan:
        seen = 0
        for batch in passes.run(k, batches):
            assert bool((batch.view == k).all()), "a replay pass must show view k of every sample"
            if len(batch):  # on_corrupt=skip can empty a batch; skipped samples keep zero rows training never reads
                writer.add(k, batch.index.cpu().numpy(), bank_row(*teacher(batch), spec))
            if bar is not None:
                bar.update(len(batch))
            seen += len(batch)
        assert seen == sum(map(len, batches)) or cfg.data.on_corrupt == "skip", \
            f"chunk {c} view {k}: the {cfg.data.pipeline} pipeline returned {seen} of its samples"
        if k == views - 1:
            writer.flush()
            try:
                features.flush()  # the rows are on disk before the marker says so
            except OSError as e:
                raise write_error(folder / bank.FEATURES, e) from None
            chunks.write_marker(folder, c, chunks.chunk_rows(c, size, n), env.rank, chunk_digest(features, c, size),
                                lease.check)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    if images:
        log.info("rank %d: %d images in %.1f s (%.0f images/s)", env.rank, images, seconds, images / seconds)
    return images, seconds


@torch.no_grad()
def teacher_top1(cfg: Any, teacher: FrozenTeacher, env: DistEnv) -> tuple[float, dict[str, object]]:
    """The teacher's top-1 (%) on the eval split, each rank on its shard; a bank records what it was built from."""
    val = run_sources(cfg)[1]
    loader = build_eval_loader(val, cfg.data, rank=env.rank, world=env.world)
    hits, images = torch.zeros((), dtype=torch.int64, device=env.device), 0  # hits stay on the device
    for batch in loader:
        _, logits = teacher(batch)
        hits += (logits.argmax(1) == batch.labels.to(env.device, non_blocking=True)).sum()
        images += len(batch)
    counts = all_reduce_sum(torch.stack([hits, torch.tensor(images, dtype=torch.int64).to(env.device)]))
    top1, n = counts.tolist()
    return 100.0 * top1 / max(n, 1), val.identity()


def seal(folder: Path, spec: dict[str, Any], top1: float, val: dict[str, object], rate: float | None,
         world: int, lease: Lease) -> None:
    """Rank 0, after every rank's barrier, holding the lease: check every chunk is done, then write the manifest
    with the chunks' digests (the bank exists)."""
    digests = [chunks.finished_digest(folder, c) for c in range(chunks.count(spec))]
    missing = [c for c, d in enumerate(digests) if d is None]
    if missing:
        raise PekdError(f"feature bank {str(folder)!r}: chunks {missing[:5]} have no marker after every rank "
                        "finished; re-run the same precompute command to compute them")
    manifest = dict(spec)
    manifest["checksums"] = {"sha256": digests}
    manifest["teacher"] = {**spec["teacher"], "top1": round(top1, 4)}
    manifest["eval"] = val
    manifest["build"] = {"ranks": world, "images_per_s_rank0": rate, "torch": torch.__version__,
                         "pekd_git": git_revision(), "sealed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_bytes(folder / bank.MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
                       lease.check)
    try:
        (folder / bank.BUILDING).unlink()
    except OSError as e:
        raise write_error(folder / bank.BUILDING, e, "remove") from None


def precompute(cfg: Any) -> dict[str, Any]:
    """Build (or finish) the bank at cfg.teacher.bank on every rank; returns the sealed manifest."""
    if not cfg.teacher.bank:
        raise PekdError("precompute needs teacher.bank=<folder> to write the feature bank into")
    env = init_distributed()
    source, teacher, spec = setup(cfg, env.device)
    folder = Path(str(broadcast_object(str(Path(cfg.teacher.bank).resolve()))))
    lease: Lease | None = None
    outcome: tuple[str | None, str, list[int], dict[str, Any] | None] = (None, "", [], None)
    if env.is_main:  # rank 0 alone takes the lease, lays out the folder and lists what is left, before any rank writes
        try:
            state, lease = bank_folder.claim(folder, spec, cfg.trainer.lease_stale_s, cfg.trainer.lease_wait_s)
            outcome = (None, state, [] if lease is None else chunks.pending_chunks(folder, spec),
                       None if lease is None else build_lease.shared(lease))
        except PekdError as e:
            outcome = (str(e), "", [], None)
    try:
        problem, state, pending, holder = cast(tuple[str | None, str, list[int], dict[str, Any] | None],
                                               broadcast_object(outcome))
        if problem:
            raise PekdError(problem)
        if state == "sealed":  # only read: no lease, no logs written (the folder may be read-only)
            if env.is_main:
                print(f"feature bank {folder} is complete and matches this config; nothing to do", file=sys.stderr,
                      flush=True)
            return bank.read_record(folder / bank.MANIFEST, sealed=True)
        assert holder is not None
        return build(cfg, folder, source, teacher, spec, pending, env, lease or build_lease.follower(folder, holder))
    finally:
        if lease is not None:
            lease.release()


def build(cfg: Any, folder: Path, source: Source, teacher: FrozenTeacher, spec: dict[str, Any], pending: list[int],
          env: DistEnv, lease: Lease) -> dict[str, Any]:
    """Every rank, the folder laid out and `lease` current: compute the pending chunks, then rank 0 seals."""
    from pekd.engine.logs import setup_logging

    try:
        setup_logging(folder, env.rank)
    except OSError as e:
        raise write_error(folder / "logs", e) from None
    if env.is_main:  # what the build will take, before it takes it (a bank too big for its disk was refused)
        log.info("%s", size_line(folder, spec))
        log.info("%s", estimate.views_line(bank_views.resolve(cfg, source)))
        log.info("%s", estimate.time_line(spec, rate(cfg, source, teacher, spec, 2), len(run_sources(cfg)[1]),
                                          env.world))
    images, seconds = compute_chunks(cfg, folder, source, teacher, spec, pending, env, lease)
    top1, val = teacher_top1(cfg, teacher, env)
    barrier()
    if env.is_main:
        seal(folder, spec, top1, val, round(images / seconds, 1) if images else None, env.world, lease)
        log.info("sealed %s: %s %s bank of %s, teacher top-1 %.2f%% on %s/%s", folder, "x".join(
            str(s) for s in spec["shape"]), spec["dtype"], spec["teacher"]["name"], top1, val["name"], val["split"])
    barrier()  # every rank returns a sealed bank
    return bank.read_record(folder / bank.MANIFEST, sealed=True)


def rate(cfg: Any, source: Source, teacher: FrozenTeacher, spec: dict[str, Any], sample_batches: int) -> float:
    """Images per second of this process's teacher on the first `sample_batches` batches of the data set."""
    n, bs = len(source), cfg.data.eval_batch_size
    [(_, _, batches)] = work_plan([0], min(n, bs * sample_batches), n, 1, bs)
    return estimate.images_per_second(passes_for(source, cfg, spec), teacher, spec, batches)


def dry_run(cfg: Any, sample_batches: int = 4) -> str:
    """The bank's size, views, and its precompute time extrapolated from timing a few real batches (writes
    nothing)."""
    # this process's own GPU, as init_distributed picks it: under torchrun every rank would otherwise time on cuda:0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local % torch.cuda.device_count()) if torch.cuda.is_available() else \
        torch.device("cpu")
    source, teacher, spec = setup(cfg, device)
    k, n, _ = spec["shape"]
    size = bank_bytes(spec)
    measured = rate(cfg, source, teacher, spec, sample_batches)
    return "\n".join([
        f"feature bank {Path(cfg.teacher.bank).resolve() if cfg.teacher.bank else '(teacher.bank unset)'}",
        f"  teacher {cfg.teacher.name} -> features [K={k}, N={n}, d={row_words(spec)}] {spec['dtype']}: "
        f"{human_bytes(size)} ({decimal_bytes(size)}) in {bank.FEATURES}, {chunks.count(spec)} chunks of "
        f"{spec['chunk']}",
        estimate.views_line(bank_views.resolve(cfg, source)),
        f"  augment={cfg.data.augment} image_size={cfg.data.image_size} bank.seed={cfg.bank.seed}; "
        f"amp={cfg.trainer.amp} channels_last={cfg.trainer.channels_last}; measured on one {device.type} process, "
        f"batch {cfg.data.eval_batch_size}",
        estimate.time_line(spec, measured, len(run_sources(cfg)[1]), int(os.environ.get("WORLD_SIZE", "1"))),
    ])
