"""The feature bank: the frozen teacher's pooled feature for every (view k, sample i), precomputed once.

A bank is a folder:

  features.bin     raw [K, N, d + C] array (float16 or float32), read through a numpy memmap, so a bank of
                   1.28M x 2048 x K never has to fit in memory and ranks share the page cache. Each row is the
                   teacher's feature (d), then, in a bank with logits (C = "logits" in the manifest, the number of
                   classes; 0 without), its logits for Hinton KD: one gather serves both, and the build's
                   allocation, checksums and resume cover them without a second file
  manifest.json    written last, once every row is on disk: what the bank was built from (its "spec") and how
                   the build went (teacher top-1, time). No manifest, no bank: an interrupted build is refused
  building.json    the spec of a build in progress (removed when sealed); a resumed build must match it
  chunks/          one marker per finished chunk of samples (the unit of resume), with the sha256 of its rows;
                   sealing copies the digests into the manifest, and a run checks them before step 1
  lease/           the builder's lease (pekd.engine.lease): one builder per bank
  logs/            the precompute's per-rank logs

Row (k, i) is the teacher's feature of view k of sample i. In an exact bank (views.exact, pekd.teacher.bank_views)
view k is the k-th of every view of a finite augmentation (pekd.data.view_space), and with teacher.mode=bank the
pipeline shows the view the online pipeline draws for (seed, epoch, i) and names its row. In a bank of K drawn
views, view k is the crop and flip the data layer re-creates from (bank.seed, i, k) (pekd.data.views), and the
pipeline shows view `bank_view_ids(seed, epoch, i, K)` of sample i (the training seed picks the view). Either way
the bank serves the matching row: cached and online training are the same computation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pekd.data.batch import Batch
from pekd.data.pipelines import pixels_identity
from pekd.data.sources import Source
from pekd.errors import PekdError
from pekd.teacher import bank_views, checksums
from pekd.teacher.manifest import FORMAT, LEGACY_FORMATS, Malformed, check_spec, logits_of
from pekd.teacher.write_errors import write_error

MANIFEST = "manifest.json"
BUILDING = "building.json"
FEATURES = "features.bin"
CHUNKS = "chunks"

# Spec fields a bank must share with the run that reads it, and the run setting to look at when one differs.
CHECKED: dict[str, str] = {
    "format": "the pekd version that wrote the bank",
    "teacher.name": "teacher.name",
    "teacher.weights_sha256": "teacher.weights",
    "data.name": "data.source",
    "data.split": "data.source",
    "data.n": "data.subset / data.root",
    "data.labels_sha256": "data.subset / data.root",
    "data.files_sha256": "data.root",
    "data.indices_sha256": "data.subset / data.split_seed",
    "views.augment": "data.augment",
    "views.image_size": "data.image_size",
    "views.seed": "bank.seed",
    "views.exact": "bank.views: unset = every view of a finite augmentation, the online recipe; bank.views=K = K drawn "
                   "views, as every bank of pekd before format 5 holds",
    "views.K": "bank.views",
    "views.pixels": "data.pipeline / data.dali_device / data.train_beton",
    "dtype": "bank.dtype",
}
# The setting to name for a field that may differ only between builds (a partial build and its resume).
SETTINGS = {**CHECKED, "logits": "bank.logits (a KD run's bank stores the teacher's logits)"}


def weights_sha256(path: str) -> str:
    """sha256 of the teacher's weights file: the bank is tied to these exact bytes, not to a file name."""
    if not path:
        raise PekdError("teacher.weights is empty: a feature bank is tied to the teacher's weights file; set "
                        "teacher.weights to the checkpoint the bank is (or will be) built from")
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise PekdError(f"cannot read teacher.weights {path!r} ({e.strerror}); check the path") from None


def wants_logits(cfg: Any) -> bool:
    """Whether this run's bank holds the teacher's logits: asked for (bank.logits), or read by Hinton KD."""
    return bool(cfg.bank.logits) or cfg.method.kd_weight > 0


def bank_spec(cfg: Any, source: Source, feature_dim: int, weights_digest: str) -> dict[str, Any]:
    """What a bank for this run must be: teacher, data, views and layout (the manifest minus build results)."""
    import pekd

    views = bank_views.resolve(cfg, source)
    k, n = views.K, len(source)
    logits = int(source.num_classes) if wants_logits(cfg) else 0
    return {
        "format": FORMAT,
        "pekd_version": pekd.__version__,
        "teacher": {"name": cfg.teacher.name, "weights_sha256": weights_digest},
        "data": source.identity(),
        "views": {"augment": cfg.data.augment, "image_size": int(cfg.data.image_size), "seed": int(cfg.bank.seed),
                  "K": k, "exact": views.exact, "pixels": pixels_identity(cfg.data)},
        "dtype": cfg.bank.dtype,
        "shape": [k, n, int(feature_dim) + logits],
        "logits": logits,
        "file": FEATURES,
    }


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in d.items():
        out.update(_flat(v, f"{prefix}{key}.") if isinstance(v, dict) else {f"{prefix}{key}": v})
    return out


def first_difference(bank: dict[str, Any], run: dict[str, Any], fields: list[str] | None = None) -> str | None:
    """'field: bank value vs run value (setting)' for the first checked field that differs, else None."""
    a, b = _flat(bank), _flat(run)
    for key in fields or list(CHECKED):
        if a.get(key) != b.get(key):
            setting = SETTINGS.get(key, key)
            return f"{key} is {a.get(key)!r} in the bank but {b.get(key)!r} for this run (see {setting})"
    return None


def bank_difference(manifest: dict[str, Any], run: dict[str, Any]) -> str | None:
    """first_difference, except that a bank of a legacy format matches a run of the same rows: its views are drawn
    ones (views.exact false), and a format-3 bank has no checksums."""
    if manifest["format"] in LEGACY_FORMATS:
        run = {**run, "format": manifest["format"]}
        manifest = {**manifest, "views": {"exact": False, **manifest["views"]}}
    return first_difference(manifest, run)


def read_json(path: Path) -> dict[str, Any]:
    """A bank file's JSON object; unreadable, not JSON or not an object is one PekdError naming the file."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PekdError(f"cannot read {str(path)!r} ({e}); the bank folder is damaged: move it aside and rebuild "
                        "it with `python -m pekd.precompute`") from None
    if not isinstance(record, dict):
        raise PekdError(f"{str(path)!r} holds a JSON {type(record).__name__}, not the object pekd writes; the bank "
                        "folder is damaged: move it aside and rebuild it with `python -m pekd.precompute`")
    return record


def read_record(path: Path, sealed: bool) -> dict[str, Any]:
    """manifest.json (sealed=True) or building.json, checked; anything malformed is one PekdError."""
    record = read_json(path)
    try:
        check_spec(record, sealed)
    except Malformed as e:
        what = "feature bank's manifest" if sealed else "record of a bank build in progress"
        raise PekdError(f"{str(path)!r} is not a valid {what}: {e}; the bank folder is damaged or was not written "
                        "by this pekd: move it aside and rebuild it with `python -m pekd.precompute`") from None
    return record


def open_features(folder: Path, spec: dict[str, Any], mode: str) -> np.memmap:
    """Map features.bin with the spec's shape and dtype, refusing a file of the wrong size (truncated copy)."""
    path = folder / FEATURES
    shape = tuple(int(s) for s in spec["shape"])
    dtype = np.dtype(spec["dtype"])
    expected = int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size if path.is_file() else -1
    if size != expected:
        raise PekdError(f"{str(path)!r} has {size} bytes, a {list(shape)} {dtype} bank needs {expected}; "
                        "the file is missing or truncated, rebuild the bank with `python -m pekd.precompute`")
    try:
        return np.memmap(path, dtype=dtype, mode=mode, shape=shape)
    except OSError as e:  # e.g. a filesystem remounted read-only under a build that resumes
        raise write_error(path, e, "open") if mode != "r" else PekdError(
            f"cannot read {str(path)!r} ({(e.strerror or str(e)).lower()}); check the filesystem holding it") from None


class BankRows:
    """Batch -> the same batch with its bank rows (view[j], index[j]) attached as Batch.features, in the bank's
    dtype. The data pipeline applies it -- in the torch pipeline's DataLoader workers (their collate), elsewhere
    as the loader hands a batch over -- so the rows are gathered off the training step, pinned with the images
    and copied to the GPU by the prefetch. Picklable for spawned workers: the memmap is opened by the process
    that reads it (ranks and workers share the page cache)."""

    def __init__(self, folder: Path, spec: dict[str, Any]) -> None:
        self.folder, self.spec = folder, spec
        self._features: np.memmap | None = None

    def open(self) -> np.memmap:
        """The features, mapped on first use in this process."""
        if self._features is None:
            self._features = open_features(self.folder, self.spec, "r")
        return self._features

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "spec": self.spec, "_features": None}

    def read(self, index: np.ndarray, view: np.ndarray) -> np.ndarray:
        """Rows (view[j], index[j]): one gather from the memmap, in the bank's dtype."""
        return self.open()[view, index]

    def __call__(self, batch: Batch) -> Batch:
        rows = self.read(batch.index.numpy(), batch.view.numpy())
        return dataclasses.replace(batch, features=torch.from_numpy(rows))


class BankTeacher:
    """Serves the teacher feature of a batch, and its logits where the bank holds them: the bank rows its pipeline
    attached (BankRows)."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder, self.manifest = folder, manifest
        self.logits = logits_of(manifest)
        self.feature_dim = int(manifest["shape"][2]) - self.logits
        self.rows = BankRows(folder, manifest)
        self.rows.open()  # now: a file of the wrong size is refused before training starts

    @classmethod
    def open(cls, folder: str | Path, cfg: Any, source: Source) -> BankTeacher:
        """Open a sealed bank and check it was built for this run; any mismatch is one PekdError naming it.

        The run's teacher is built and its weights loaded as in online mode, but only to be checked: the
        checkpoint must fit teacher.name (same error as online), and building it draws the same random numbers
        as online mode does, so the projectors built next start from the same weights in both modes.
        """
        from pekd.models import build_model, load_weights

        path = Path(folder).resolve()
        command = "`python -m pekd.precompute <this run's overrides> teacher.bank="
        if not (path / MANIFEST).is_file():
            if (path / BUILDING).is_file():
                done = len(list((path / CHUNKS).glob("*.json")))
                raise PekdError(f"feature bank {str(path)!r} is incomplete (no sealed manifest; {done} chunks "
                                "finished): its precompute was interrupted; re-run the same `python -m "
                                "pekd.precompute ...` command to finish it (finished chunks are kept)")
            raise PekdError(f"{str(path)!r} is not a feature bank (no {MANIFEST}); build it with {command}{path}`")
        manifest = read_record(path / MANIFEST, sealed=True)
        digest = weights_sha256(cfg.teacher.weights)
        model = build_model(cfg.teacher.name, source.num_classes, source.in_chans)
        load_weights(model, cfg.teacher.weights)
        run = bank_spec(cfg, source, int(model.feature_dim), digest)
        diff = bank_difference(manifest, run)
        if diff:
            raise PekdError(f"feature bank {str(path)!r} does not match this run: {diff}; re-run precompute for "
                            f"this run into a new folder, {command}<new folder>`, or point teacher.bank at a bank "
                            "built for this run")
        if cfg.method.kd_weight > 0 and not logits_of(manifest):
            raise PekdError(f"feature bank {str(path)!r} holds no teacher logits, which Hinton KD (method.kd_weight="
                            f"{cfg.method.kd_weight}) reads; build a bank with them into a new folder, {command}"
                            "<new folder>` (a KD run's precompute stores them; bank.logits=true makes any run's "
                            "bank store them), or use teacher.mode=online")
        teacher = cls(path, manifest)
        checksums.verify(path, manifest, teacher.rows.open())
        return teacher

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's teacher features, and logits where the bank holds them, as float32 on the images' device
        (upcasting fp16 is exact). A batch without rows (one a bench or test made itself, not a training loader)
        has them gathered here."""
        rows = batch.features if batch.features is not None else self.rows(batch).features
        assert rows is not None
        rows = rows.to(images.device, non_blocking=True).float()
        if not self.logits:
            return rows, None
        return rows[:, :self.feature_dim].contiguous(), rows[:, self.feature_dim:].contiguous()
