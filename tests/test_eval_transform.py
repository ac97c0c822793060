"""ImageNet evaluation against torchvision's own Resize(256) + CenterCrop(224) (bilinear, antialiased), on real
JPEGs of many sizes and aspect ratios: the torch pipeline makes exactly its pixels; DALI and FFCV resize with their
own kernels and are held to the tolerances docs/pipelines-and-bank.md states.

The reference transforms tensors decoded by torchvision.io, as torchvision's ImageClassification preset (the
`transforms()` of its pretrained weights, whose published accuracies users compare with) does, and as the torch
pipeline decodes: a difference is then the transform's, not the decoder's. The PIL backend of torchvision's
reference scripts is checked to differ from it by at most one grey level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pekd.config import DataConfig
from pekd.data.pipelines import build_eval_loader
from pekd.data.sources import Source, build_source
from pekd.data.torch_pipeline import apply_view
from pekd.data.views import EvalRecipe, center_boxes
from tests.data_factory import smooth_image

# numba's dispatcher finaliser raises KeyError when FFCV's per-loader jitted closures are collected (in whichever test
# runs then); harmless
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

# (height, width): landscape, portrait, one pixel off square, ImageNet's commonest, smaller than the crop, odd,
# extreme aspect ratios, already at the resize (no resampling), exactly the crop; one saved grayscale
SIZES = ((300, 200), (200, 300), (257, 256), (256, 257), (375, 500), (500, 375), (64, 64), (223, 225), (101, 999),
         (667, 1000), (256, 256), (224, 224), (333, 517), (481, 640))
GRAY = (333, 517)
RESIZE = v2.Resize(256, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
CROP = v2.CenterCrop(224)


@pytest.fixture(scope="module")
def val(tmp_path_factory: pytest.TempPathFactory) -> tuple[Source, list[torch.Tensor]]:
    """An ImageFolder val split of photo-like JPEGs of SIZES, with torchvision's eval pixels of each."""
    root = tmp_path_factory.mktemp("eval")
    folder = root / "val" / "class_000"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate(SIZES):
        image = Image.fromarray(smooth_image(rng, h, w))
        (image.convert("L") if (h, w) == GRAY else image).save(folder / f"img_{k:02d}.jpg", quality=90)
    source = build_source("imagefolder", str(root), "val")
    return source, [CROP(RESIZE(decoded(p))) for p in source.paths]


def decoded(path: str) -> torch.Tensor:
    return decode_image(read_file(path), mode=ImageReadMode.RGB)


def evaluated(source: Source, pipeline: str, **kw: object) -> list[torch.Tensor]:
    """Every image as pekd's eval loader of `pipeline` makes it (ImageNet's 256 / 224), in source order."""
    cfg = DataConfig(source="imagefolder", pipeline=pipeline, image_size=224, eval_resize=256, eval_batch_size=5,
                     workers=1, **kw)
    out: dict[int, torch.Tensor] = {}
    for batch in build_eval_loader(source, cfg, rank=0, world=1):
        out.update(zip(batch.index.tolist(), batch.images, strict=True))
    return [out[i] for i in range(len(source))]


def differences(got: list[torch.Tensor], want: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the largest and the mean absolute pixel difference, in grey levels."""
    d = [(a.float() - b.float()).abs() for a, b in zip(got, want, strict=True)]
    return np.array([x.max().item() for x in d]), np.array([x.mean().item() for x in d])


def test_torch_evaluation_is_torchvisions(val):
    source, want = val
    assert all(torch.equal(a, b) for a, b in zip(evaluated(source, "torch"), want, strict=True))
    resized = EvalRecipe(224, 256).resized(*np.array(SIZES).T)
    assert [tuple(RESIZE(decoded(p)).shape[1:]) for p in source.paths] == list(zip(*resized, strict=True))


def test_one_box_resized_once_is_not_torchvisions(val):
    """pekd's former evaluation -- the centered box of side 224 * shorter / 256 resized once to 224 by the same
    torchvision kernel -- moves pixels by up to tens of grey levels: outside every tolerance below."""
    source, want = val
    got = []
    for path in source.paths:
        image = decoded(path)
        h, w = image.shape[1:]
        side = max(round(min(h, w) * 224 / 256), 1)
        box = tuple(int(x[0]) for x in center_boxes(np.array([h]), np.array([w]), side))
        got.append(apply_view(image, box, False, 224))
    largest, mean = differences(got, want)
    assert largest.max() > 20 and mean.mean() > 2


def test_torchvisions_pil_backend_is_within_one_grey_level(val):
    """torchvision's reference scripts resize PIL images by default: the same pixels but for rounding."""
    source, want = val
    pil = [F.pil_to_tensor(CROP(RESIZE(Image.open(p).convert("RGB")))) for p in source.paths]
    assert differences(pil, want)[0].max() <= 1


def test_dali_evaluation_is_within_one_grey_level(val):
    """DALI's antialiased linear resize of the whole image, then the same crop: at most 1, about 0.2 on average."""
    pytest.importorskip("nvidia.dali", reason="the DALI extra is not installed")
    source, want = val
    largest, mean = differences(evaluated(source, "dali", dali_device="cpu"), want)
    assert largest.max() <= 1 and mean.max() <= 0.3, (largest, mean)


@pytest.mark.parametrize(("write_mode", "most", "average"), [("raw", 6, 0.8), ("jpg", 10, 1.5)])
def test_ffcv_evaluation_is_within_its_tolerance(val, tmp_path: Path, write_mode: str, most: int, average: float):
    """OpenCV's INTER_AREA (shrinking) / INTER_LINEAR (enlarging) of the whole image, then the same crop: a raw
    .beton within 6 grey levels, 0.8 on average; a JPEG one (quality 90) adds its re-encoding."""
    pytest.importorskip("ffcv", reason="the ffcv extra is not installed")
    from pekd.write_dataset import write_beton

    source, want = val
    beton = write_beton(source, tmp_path / "val.beton", write_mode=write_mode, workers=1)
    largest, mean = differences(evaluated(source, "ffcv", val_beton=str(beton)), want)
    assert largest.max() <= most and mean.max() <= average, (largest, mean)
