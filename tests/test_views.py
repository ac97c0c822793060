"""Views are pure functions of their key and follow torchvision's augmentation distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from pekd.data.views import EvalRecipe, TrainRecipe, bank_view_ids, uniforms
from pekd.errors import PekdError

N = 20_000
M = 10_000  # torchvision draws are slow: one Python call each


def _views(recipe: TrainRecipe, epoch: int, index: np.ndarray, h: int, w: int):
    return recipe.views(epoch, index, np.full(len(index), h), np.full(len(index), w))


def test_same_key_same_view_and_batching_does_not_matter():
    r = TrainRecipe("imagenet", 224, seed=3)
    idx = np.arange(500)
    a = _views(r, 7, idx, 375, 500)
    b = _views(r, 7, idx[::-1], 375, 500)  # other batch composition and order
    for f in ("top", "left", "height", "width", "flip"):
        assert np.array_equal(getattr(a, f), getattr(b, f)[::-1])
    one = _views(r, 7, np.array([123]), 375, 500)
    assert one.box(0) == a.box(123) and one.flip[0] == a.flip[123]


def test_different_keys_differ():
    idx = np.arange(1000)
    base = _views(TrainRecipe("imagenet", 224, seed=0), 0, idx, 375, 500)
    for other in (_views(TrainRecipe("imagenet", 224, seed=1), 0, idx, 375, 500),
                  _views(TrainRecipe("imagenet", 224, seed=0), 1, idx, 375, 500)):
        same = (base.top == other.top) & (base.left == other.left) & (base.height == other.height)
        assert same.mean() < 0.05
    # neighbouring indices are not correlated either
    assert abs(np.corrcoef(base.height[:-1], base.height[1:])[0, 1]) < 0.1
    u = uniforms((1, 2, np.arange(N)), 2)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


@pytest.mark.parametrize("h,w", [(375, 500), (40, 400)])
def test_random_resized_crop_matches_torchvision(h, w):
    """Two-sample KS tests against torchvision's own get_params.

    With M = 10,000 draws on each side, the KS statistic of two samples of one distribution exceeds
    0.035 = 2.45 * sqrt(2 / M) with probability about 1e-5 (alpha = 0.001 would be 0.028), while a wrong scale
    or ratio range, a missing round() or a wrong fallback moves it by several times that. The 40 x 400 image
    makes the center fallback frequent, so its rate and shape are tested too.
    """
    torch.manual_seed(0)
    img = torch.zeros(1, h, w)
    ref = np.array([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(M)])
    v = _views(TrainRecipe("imagenet", 224, seed=0), 0, np.arange(M), h, w)
    ours = np.stack([v.top, v.left, v.height, v.width], 1)
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= h).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= w).all()
    for stat in (lambda b: b[:, 2] * b[:, 3] / (h * w),  # scale
                 lambda b: np.log(b[:, 3] / b[:, 2]),  # ratio
                 lambda b: b[:, 0] / np.maximum(h - b[:, 2], 1),  # relative position
                 lambda b: b[:, 1] / np.maximum(w - b[:, 3], 1)):
        assert ks_2samp(stat(ours), stat(ref)).statistic < 0.035
    full_width = (ref[:, 3] == w).mean()
    assert abs((ours[:, 3] == w).mean() - full_width) < 0.02


def test_cifar_pad_crop_and_flip():
    v = _views(TrainRecipe("cifar", 32, seed=0), 0, np.arange(N), 32, 32)
    assert set(v.height) == {32} and set(v.width) == {32}
    assert v.top.min() == -4 and v.top.max() == 4 and v.left.min() == -4 and v.left.max() == 4
    counts = np.unique(np.stack([v.top, v.left], 1), axis=0, return_counts=True)[1]
    assert len(counts) == 81 and counts.min() > N / 81 * 0.7  # uniform over the 9 x 9 offsets
    assert abs(v.flip.mean() - 0.5) < 0.02
    none = _views(TrainRecipe("none", 32, seed=0), 0, np.arange(100), 32, 32)
    assert not none.flip.any() and (none.top == 0).all() and (none.height == 32).all()


def test_bank_views_replay_the_same_view_across_epochs():
    k = 4
    r = TrainRecipe("imagenet", 224, seed=5, bank_views=k)
    idx = np.arange(4000)
    a, b = _views(r, 0, idx, 375, 500), _views(r, 1, idx, 375, 500)
    assert set(a.view) == set(range(k)) and not np.array_equal(a.view, b.view)
    assert np.allclose(np.bincount(a.view, minlength=k) / len(idx), 1 / k, atol=0.03)
    same = a.view == b.view
    assert np.array_equal(a.top[same], b.top[same]) and np.array_equal(a.flip[same], b.flip[same])
    assert np.array_equal(bank_view_ids(5, 0, idx, k), a.view)


def test_eval_is_resize_then_center_crop():
    """torchvision's Resize(256) sizes (the longer side truncated), then CenterCrop(224)'s box of the resized image
    (offsets rounded half to even); tests/test_eval_transform.py checks the pixels against torchvision's own."""
    r = EvalRecipe(224, 256)
    heights, widths = r.resized(np.array([375, 500, 256, 64]), np.array([500, 375, 256, 100]))
    assert heights.tolist() == [256, 341, 256, 256] and widths.tolist() == [341, 256, 256, 400]
    v = r.views(0, np.arange(4), heights, widths)
    assert [v.box(i) for i in range(4)] == [(16, 58, 224, 224), (58, 16, 224, 224), (16, 16, 224, 224),
                                            (16, 88, 224, 224)]
    assert r.resamples(375, 500) and not r.resamples(256, 300) and not EvalRecipe(224).resamples(375, 500)
    with pytest.raises(PekdError, match="eval_resize"):
        EvalRecipe(224, 200)
    with pytest.raises(PekdError, match="augment"):
        TrainRecipe("autoaugment", 224, 0)


def test_a_flip_bank_of_two_views_holds_both_views_and_picks_them_like_a_random_flip():
    idx = np.arange(4000)
    r = TrainRecipe("flip", 28, seed=3, bank_views=2, bank_seed=9)
    replay = TrainRecipe("flip", 28, seed=0, bank_views=2, replay=True, bank_seed=9)
    assert not _views(replay, 0, idx, 28, 28).flip.any() and _views(replay, 1, idx, 28, 28).flip.all()
    v = _views(r, 0, idx, 28, 28)
    assert np.array_equal(v.flip, v.view == 1) and abs(v.flip.mean() - 0.5) < 0.03
    assert not np.array_equal(v.flip, _views(TrainRecipe("flip", 28, seed=4, bank_views=2, bank_seed=9), 0, idx,
                                             28, 28).flip), "the training seed picks the views"
