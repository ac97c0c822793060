"""Build a feature bank: the frozen teacher over every (sample, view), sharded over ranks and resumable.

The teacher runs exactly as the online teacher does inside the trainer (eval mode, no grad, the run's AMP
setting and memory format) on exactly the tensors the student gets: the pipeline the config names (torch, FFCV or
DALI) replays view k of each sample through the code training runs (TrainRecipe(replay=True)), and the images
are normalised with the trainer's expression. Samples are cut into chunks of bank.chunk; a chunk's rows (all K
views) are flushed to disk before its marker is written atomically, so a killed build restarts where it stopped,
on any number of ranks. Rank 0 seals the manifest last, after a barrier; until then the bank is refused by
training.
"""

from __future__ import annotations

import json
import logging
import math
import os
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
from pekd.engine.checkpoint import atomic_write_bytes
from pekd.engine.distributed import DistEnv, all_reduce_sum, barrier, broadcast_object, init_distributed
from pekd.engine.metrics import progress_bar
from pekd.engine.rundir import git_revision
from pekd.errors import PekdError
from pekd.teacher import bank

log = logging.getLogger("pekd")

# A partial build may only be resumed by a build that would write the same bytes.
RESUME_CHECKED = [*bank.CHECKED, "shape", "chunk", "precision.amp", "precision.channels_last"]


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


def chunk_rows(chunk: int, size: int, n: int) -> np.ndarray:
    return np.arange(chunk * size, min((chunk + 1) * size, n), dtype=np.int64)


def marker(folder: Path, chunk: int) -> Path:
    return folder / bank.CHUNKS / f"{chunk:07d}.json"


def prepare_folder(folder: Path, spec: dict[str, Any]) -> str:
    """Rank 0: 'sealed' (nothing to do), 'resume' (a matching partial build) or 'new' (empty bank laid out)."""
    where = f"feature bank folder {str(folder)!r}"
    if (folder / bank.MANIFEST).is_file():
        diff = bank.first_difference(bank.read_json(folder / bank.MANIFEST), spec)
        if diff:
            raise PekdError(f"{where} already holds a finished bank of another run ({diff}); choose another "
                            "teacher.bank, or delete the folder to rebuild it")
        return "sealed"
    if (folder / bank.BUILDING).is_file():
        diff = bank.first_difference(bank.read_json(folder / bank.BUILDING), spec, RESUME_CHECKED)
        if diff:
            raise PekdError(f"{where} holds an unfinished build of another config ({diff}); resume it with its "
                            "own settings, choose another teacher.bank, or delete the folder")
        bank.open_features(folder, spec, "r")  # refuses a truncated file before any rank writes into it
        return "resume"
    if folder.exists() and any(folder.iterdir()):
        raise PekdError(f"{where} is not empty and holds no bank; choose an empty or new folder")
    (folder / bank.CHUNKS).mkdir(parents=True, exist_ok=True)
    k, n, d = spec["shape"]
    with open(folder / bank.FEATURES, "wb") as f:  # sparse: pages appear as ranks write their rows
        f.truncate(k * n * d * np.dtype(spec["dtype"]).itemsize)
    atomic_write_bytes(folder / bank.BUILDING, (json.dumps(spec, indent=2, sort_keys=True) + "\n").encode())
    return "new"


def passes_for(source: Source, cfg: Any) -> Passes:
    return build_view_passes(source, cfg.data, bank_seed=int(cfg.bank.seed), bank_views=int(cfg.bank.views),
                             batch_size=cfg.data.eval_batch_size)


def work_plan(chunks: list[int], size: int, n: int, views: int,
              batch_size: int) -> list[tuple[int, int, list[np.ndarray]]]:
    """(chunk, view, index batches) for every view of every chunk: one replay pass each."""
    plan = []
    for c in chunks:
        rows = chunk_rows(c, size, n)
        batches = [rows[s:s + batch_size] for s in range(0, len(rows), batch_size)]
        plan.extend((c, k, batches) for k in range(views))
    return plan


def to_bank_dtype(feat: torch.Tensor, dtype: str) -> np.ndarray:
    out = feat.float().to(getattr(torch, dtype)).cpu().numpy()
    if not np.isfinite(out).all():
        raise PekdError(f"teacher features are not finite in {dtype} (largest |f| = {feat.float().abs().max():.4g});"
                        " float16 holds at most 65504: use bank.dtype=float32")
    return out


class RowWriter:
    """Writes teacher features into the bank one batch behind the teacher. On CUDA a batch's rows are copied
    (non_blocking) into pinned host memory and the host waits only for that copy's event when the next batch
    has been queued: the device computes batch i + 1 while the host writes batch i, instead of idling at a
    device read after every batch. On a CPU the rows are written at once."""

    def __init__(self, features: np.memmap, dtype: str) -> None:
        self.features, self.dtype = features, dtype
        self.pending: tuple[int, np.ndarray, torch.Tensor, torch.Tensor, torch.cuda.Event] | None = None

    def add(self, view: int, index: np.ndarray, feat: torch.Tensor) -> None:
        if feat.device.type != "cuda":
            self.features[view, index] = to_bank_dtype(feat, self.dtype)
            return
        rows = feat.float().to(getattr(torch, self.dtype))
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        host.copy_(rows, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.flush()
        self.pending = (view, index, feat, host, event)

    def flush(self) -> None:
        """Write the batch still in flight, if any (before a chunk's marker, and at the end)."""
        if self.pending is None:
            return
        view, index, feat, host, event = self.pending
        self.pending = None
        event.synchronize()
        out = host.numpy()
        if not np.isfinite(out).all():
            raise PekdError(f"teacher features are not finite in {self.dtype} (largest |f| = "
                            f"{feat.float().abs().max():.4g}); float16 holds at most 65504: use bank.dtype=float32")
        self.features[view, index] = out


def pending_chunks(folder: Path, spec: dict[str, Any]) -> list[int]:
    """Chunks without a marker: the work left (a chunk killed half-way has none and is computed again)."""
    return [c for c in range(math.ceil(spec["shape"][1] / spec["chunk"])) if not marker(folder, c).is_file()]


def compute_chunks(cfg: Any, folder: Path, source: Source, teacher: FrozenTeacher, spec: dict[str, Any],
                   pending: list[int], env: DistEnv) -> tuple[int, float]:
    """This rank's share of the unfinished chunks (round robin); returns (images computed, seconds)."""
    views, n, size = int(cfg.bank.views), len(source), int(cfg.bank.chunk)
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
    passes = passes_for(source, cfg)
    writer = RowWriter(features, spec["dtype"])
    t0 = time.perf_counter()
    for c, k, batches in plan:
        seen = 0
        for batch in passes.run(k, batches):
            assert bool((batch.view == k).all()), "a replay pass must show view k of every sample"
            if len(batch):  # on_corrupt=skip can empty a batch; skipped samples keep zero rows training never reads
                feat, _ = teacher(batch)
                writer.add(k, batch.index.cpu().numpy(), feat)
            if bar is not None:
                bar.update(len(batch))
            seen += len(batch)
        assert seen == sum(map(len, batches)) or cfg.data.on_corrupt == "skip", \
            f"chunk {c} view {k}: the {cfg.data.pipeline} pipeline returned {seen} of its samples"
        if k == views - 1:
            writer.flush()
            features.flush()  # the rows are on disk before the marker says so
            rows = chunk_rows(c, size, n)
            atomic_write_bytes(marker(folder, c), json.dumps(
                {"chunk": c, "rows": [int(rows[0]), int(rows[-1]) + 1], "rank": env.rank}).encode())
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
         world: int) -> None:
    """Rank 0, after every rank's barrier: check every chunk is done, then write the manifest (the bank exists)."""
    missing = pending_chunks(folder, spec)
    if missing:
        raise PekdError(f"feature bank {str(folder)!r}: chunks {missing[:5]} have no marker after every rank "
                        "finished; re-run the same precompute command to compute them")
    manifest = dict(spec)
    manifest["teacher"] = {**spec["teacher"], "top1": round(top1, 4)}
    manifest["eval"] = val
    manifest["build"] = {"ranks": world, "images_per_s_rank0": rate, "torch": torch.__version__,
                         "pekd_git": git_revision(), "sealed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_bytes(folder / bank.MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    (folder / bank.BUILDING).unlink()


def precompute(cfg: Any) -> dict[str, Any]:
    """Build (or finish) the bank at cfg.teacher.bank on every rank; returns the sealed manifest."""
    from pekd.engine.logs import setup_logging

    if not cfg.teacher.bank:
        raise PekdError("precompute needs teacher.bank=<folder> to write the feature bank into")
    env = init_distributed()
    source, teacher, spec = setup(cfg, env.device)
    folder = Path(str(broadcast_object(str(Path(cfg.teacher.bank).resolve()))))
    outcome: tuple[str | None, str, list[int]] = (None, "", [])
    if env.is_main:  # rank 0 alone lays out the folder and lists what is left, before any rank writes a marker
        try:
            state = prepare_folder(folder, spec)
            outcome = (None, state, [] if state == "sealed" else pending_chunks(folder, spec))
        except PekdError as e:
            outcome = (str(e), "", [])
    problem, state, pending = cast(tuple[str | None, str, list[int]], broadcast_object(outcome))
    if problem:
        raise PekdError(problem)
    setup_logging(folder, env.rank)
    if state == "sealed":
        log.info("feature bank %s is complete and matches this config; nothing to do", folder)
        return bank.read_json(folder / bank.MANIFEST)
    images, seconds = compute_chunks(cfg, folder, source, teacher, spec, pending, env)
    top1, val = teacher_top1(cfg, teacher, env)
    barrier()
    if env.is_main:
        seal(folder, spec, top1, val, round(images / seconds, 1) if images else None, env.world)
        log.info("sealed %s: %s %s bank of %s, teacher top-1 %.2f%% on %s/%s", folder, "x".join(
            str(s) for s in spec["shape"]), spec["dtype"], spec["teacher"]["name"], top1, val["name"], val["split"])
    barrier()  # every rank returns a sealed bank
    return bank.read_json(folder / bank.MANIFEST)


def human_bytes(n: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.1f} {units[i]}"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def dry_run(cfg: Any, sample_batches: int = 4) -> str:
    """The bank's size, and its precompute time extrapolated from timing a few real batches (writes nothing)."""
    # this process's own GPU, as init_distributed picks it: under torchrun every rank would otherwise time on cuda:0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local % torch.cuda.device_count()) if torch.cuda.is_available() else \
        torch.device("cpu")
    source, teacher, spec = setup(cfg, device)
    k, n, d = spec["shape"]
    size = k * n * d * np.dtype(spec["dtype"]).itemsize
    bs = cfg.data.eval_batch_size
    sampled = min(n, bs * sample_batches)
    [(_, _, batches)] = work_plan([0], sampled, n, 1, bs)
    passes = passes_for(source, cfg)
    for batch in passes.run(0, batches[:1]):  # warm-up (JIT, workers, first touches), not timed
        teacher(batch)
    rows = np.zeros((1, sampled, d), dtype=spec["dtype"])  # written as the build writes them, into memory
    writer = RowWriter(rows, spec["dtype"])  # type: ignore[arg-type]
    timed, t0 = 0, time.perf_counter()
    for batch in passes.run(0, batches):
        feat, _ = teacher(batch)
        writer.add(0, batch.index.cpu().numpy(), feat)
        timed += len(batch)
    writer.flush()
    rate = timed / (time.perf_counter() - t0)
    val_n = len(run_sources(cfg)[1])
    seconds = (k * n + val_n) / rate
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return "\n".join([
        f"feature bank {Path(cfg.teacher.bank).resolve() if cfg.teacher.bank else '(teacher.bank unset)'}",
        f"  teacher {cfg.teacher.name} -> features [K={k}, N={n}, d={d}] {spec['dtype']}: {human_bytes(size)}"
        f" in {bank.FEATURES}, {math.ceil(n / spec['chunk'])} chunks of {spec['chunk']}",
        f"  views: augment={cfg.data.augment} image_size={cfg.data.image_size} bank.seed={cfg.bank.seed}; "
        f"amp={cfg.trainer.amp} channels_last={cfg.trainer.channels_last}",
        f"  measured {rate:.0f} images/s on one {device.type} process ({timed} images, batch {bs})",
        f"  expected precompute: {k} x {n} + {val_n} eval images = {duration(seconds)} on 1 process"
        + (f", about {duration(seconds / world)} on {world} processes" if world > 1 else ""),
    ])
