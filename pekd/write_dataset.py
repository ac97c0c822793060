"""Write a source to an FFCV .beton: `python -m pekd.write_dataset --source imagefolder --root R --split train
--out train.beton`.

Records are written in source order with their source index and original size, so the FFCV pipeline can draw
the same views as the torch pipeline. The file is written under a temporary name and renamed only once it is
complete, next to a `<out>.json` naming the source it came from; the loader refuses a .beton whose JSON does not
match the run's source. Defaults for image folders follow ffcv-imagenet: longest side at most 500 px, half of the
images stored as JPEG (quality 90) and half raw.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np

from pekd.data.extras import require
from pekd.data.sources import Source, build_source
from pekd.engine.files import write_error
from pekd.errors import PekdError, user_errors_exit

MIN_PAGE = 1 << 23  # ffcv's default page size (8 MiB); raised when one raw image would not fit


class Records:
    """The indexable dataset FFCV's writer processes read: (RGB image, label, index, height, width).

    FFCV's writer waits forever for a worker that raised, so an unreadable image is flagged in shared memory and
    written as a 1x1 placeholder; `failures()` names them once the writer returns and the file is discarded.
    """

    def __init__(self, source: Source):
        self.source = source
        self.failed = mp.Array("b", len(source), lock=False)

    def __len__(self) -> int:
        return len(self.source)

    def _decode(self, i: int) -> np.ndarray:
        """Files are decoded with PIL here, not torchvision: FFCV forks its writer processes from a parent whose
        torch thread pools and locks may be held at fork time, and a torch op in the child can then hang forever."""
        if self.source.paths is None:
            return self.source.image(i)
        from PIL import Image

        with Image.open(self.source.paths[i]) as im:
            return np.asarray(im.convert("RGB" if self.source.in_chans == 3 else "L")).reshape(
                im.height, im.width, self.source.in_chans)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int, int, int]:
        try:
            image = self._decode(i)
        except (PekdError, OSError, ValueError):
            self.failed[i] = 1
            return np.zeros((1, 1, 3), dtype=np.uint8), int(self.source.labels[i]), i, 1, 1
        if image.shape[2] == 1:  # RGBImageField stores 3 channels; loaders keep the first for gray sources
            image = np.repeat(image, 3, axis=2)
        return np.ascontiguousarray(image), int(self.source.labels[i]), i, image.shape[0], image.shape[1]

    def failures(self) -> list[int]:
        return np.flatnonzero(np.frombuffer(self.failed, dtype=np.int8)).tolist()


def largest_side(source: Source) -> int:
    """The longest image side in a source, from file headers only (PIL reads no pixels to report a size)."""
    if source.paths is None:
        return int(max(source.arrays.shape[1:3])) if source.arrays is not None else 0
    from PIL import Image

    side = 0
    for path in source.paths:
        try:
            with Image.open(path) as im:
                side = max(side, *im.size)
        except OSError:
            pass  # unreadable: reported by name when the writer reaches it
    return side


def why(source: Source, i: int) -> str:
    """The decoder's message for sample i (re-raised here, since writer processes cannot return it)."""
    try:
        source.image(i)
    except PekdError as e:
        return str(e)
    return f"sample {i} failed in a writer process"


def write_beton(source: Source, out: str | Path, *, max_resolution: int = 0, write_mode: str = "raw",
                jpeg_quality: int = 90, compress_probability: float = 0.5, workers: int = 0) -> Path:
    """Write `source` to `out` (and `out`.json) atomically; return the path. max_resolution 0 = keep sizes."""
    require("ffcv")  # an extra: without it, one line naming `pip install 'pekd[ffcv]'`
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    from pekd.data.ffcv_pipeline import FIELDS, manifest, sidecar

    out = Path(out)
    if write_mode not in ("raw", "jpg", "proportion", "smart"):
        raise PekdError(f"--write-mode={write_mode!r} is not one of raw, jpg, proportion, smart")
    if not out.parent.is_dir():
        raise PekdError(f"output folder {str(out.parent)!r} does not exist; create it or choose another --out")
    if len(source) == 0:
        raise PekdError(f"source {source.name}/{source.split} is empty; nothing to write")
    if os.statvfs(out.parent).f_flag & os.ST_RDONLY:
        raise PekdError(f"output folder {str(out.parent)!r} is on a read-only filesystem; choose another --out")
    side = max_resolution or largest_side(source)
    page = MIN_PAGE
    while page < 2 * 3 * side * side:  # FFCV's writer hangs if a sample does not fit in one page
        page *= 2
    image = RGBImageField(write_mode=write_mode, max_resolution=max_resolution or None,
                          jpeg_quality=jpeg_quality, compress_probability=compress_probability)
    fields = dict(zip(FIELDS, (image, IntField(), IntField(), IntField(), IntField()), strict=True))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp_side = sidecar(tmp)
    records = Records(source)
    try:
        DatasetWriter(str(tmp), fields, page_size=page, num_workers=workers or os.cpu_count() or 1
                      ).from_indexed_dataset(records)
        bad = records.failures()
        if bad:
            raise PekdError(f"{len(bad)} unreadable image(s), nothing written; the first: {why(source, bad[0])}")
        tmp_side.write_text(json.dumps({**manifest(source), "max_resolution": max_resolution,
                                        "write_mode": write_mode, "jpeg_quality": jpeg_quality}, indent=1))
        os.replace(tmp_side, sidecar(out))  # JSON first: a .beton never appears without its identity
        os.replace(tmp, out)
    except OSError as e:  # a full disk or quota, a read-only remount, an I/O error
        raise write_error(out, e) from None
    finally:
        for debris in (tmp, tmp_side):
            with contextlib.suppress(OSError):  # on a read-only filesystem the unlink fails too: keep the first error
                debris.unlink(missing_ok=True)
    return out


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pekd.write_dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="cifar100 | imagefolder | fashion_mnist | digits")
    p.add_argument("--root", default="", help="data.root of the source")
    p.add_argument("--split", default="train", help="train | val")
    p.add_argument("--out", required=True, help="the .beton to write (a .json is written next to it)")
    p.add_argument("--max-resolution", type=int, default=None,
                   help="downscale so the longest side is at most this (default: 500 for image folders, "
                        "0 = keep, for in-memory sources)")
    p.add_argument("--write-mode", default=None,
                   help="raw | jpg | proportion | smart (default: proportion for image folders, else raw)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--compress-probability", type=float, default=0.5, help="JPEG share for proportion mode")
    p.add_argument("--workers", type=int, default=0, help="writer processes (0 = all cores)")
    a = p.parse_args(argv)
    require("ffcv")  # before reading a whole source
    from pekd.data.ffcv_pipeline import sidecar

    source = build_source(a.source, a.root, a.split)
    files = source.paths is not None
    out = write_beton(source, a.out, max_resolution=a.max_resolution if a.max_resolution is not None
                      else (500 if files else 0), write_mode=a.write_mode or ("proportion" if files else "raw"),
                      jpeg_quality=a.jpeg_quality, compress_probability=a.compress_probability,
                      workers=a.workers)
    print(f"wrote {out} ({len(source)} records) and {sidecar(out).name}")


if __name__ == "__main__":
    main()
