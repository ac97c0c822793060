"""Which views a feature bank holds, and whether a run that reads it trains on the online recipe.

`bank.views` unset (null, the default) asks for an exact bank wherever the training augmentation has finitely many
views: every view of every sample (CIFAR's pad-4 crop + flip: 162; flip-only: 2; none: 1), and training shows the
very view the online pipeline draws -- a bank run is the paper's recipe, bit for bit the online run's samples. For
RandomResizedCrop (continuous) unset means K = 1. `bank.views=K` asks for K views drawn once per sample, keyed by
bank.seed; each epoch shows one of them. That is a different recipe from the online one (each sample cycles
through K fixed augmentations) unless the K views happen to carry the online distribution: any K of augment=none,
an even K of flip-only (flip = k % 2, half of them mirrored). The run's start line, pekd.precompute and
pekd.report say which (`note`, `config_note`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pekd.data import view_space
from pekd.data.sources import Source
from pekd.data.views import CIFAR_PAD
from pekd.errors import PekdError

CONTINUOUS_DEFAULT = 1  # bank.views unset on a continuous augmentation


@dataclass(frozen=True)
class BankViews:
    """A bank's views for one run: K rows per sample, exact (every view, numbered) or drawn (keyed by bank.seed)."""

    K: int
    exact: bool
    augment: str
    space: str = ""  # the enumeration in words (exact banks): '162 = 9 x 9 crop offsets x 2 flips'

    def note(self) -> str:
        """The start line's words: what the student's views are, and whether that is the online recipe."""
        if self.exact:
            return f"bank: every view of each image ({self.space}), drawn as online: the online recipe"
        return drawn_note(self.augment, self.K)


def online_distribution(augment: str, k: int) -> bool:
    """Whether K drawn views per image show the online recipe's distribution: every view of augment=none is the
    same, and an even K of flip-only mirrors exactly half (view k is flipped when k is odd)."""
    return augment == "none" or (augment == "flip" and k % 2 == 0)


def drawn_note(augment: str, k: int) -> str:
    """What K drawn views per image make of `augment`'s recipe."""
    if online_distribution(augment, k):
        return f"bank: {k} drawn view{'s' * (k > 1)} per image, the online recipe's distribution"
    exact = " (leave bank.views unset for every view, the online recipe)" if augment in view_space.FINITE else ""
    return f"bank: {k} fixed view{'s' * (k > 1)} per image, not the online recipe{exact}"


def resolve(cfg: Any, source: Source) -> BankViews:
    """The bank this config builds or reads from `source`; an exact bank needs images of one size (its K)."""
    augment, size, views = cfg.data.augment, int(cfg.data.image_size), cfg.bank.views
    if views is not None:
        return BankViews(int(views), False, augment)
    if augment not in view_space.FINITE:
        return BankViews(CONTINUOUS_DEFAULT, False, augment)
    side = source.image_size
    if side is None and augment == "cifar":
        raise PekdError(f"data.augment=cifar on images of different sizes (data.source={cfg.data.source}) has no "
                        "single number of views, so bank.views unset (every view) cannot be built; set bank.views=K "
                        "for K drawn views per image")
    side = side or size  # flip and none: one center box whatever the size
    k = view_space.space_size(augment, side, side, size, CIFAR_PAD)
    assert k is not None
    return BankViews(k, True, augment, view_space.describe(augment, side, side, size, CIFAR_PAD))


def config_note(config: dict[str, Any]) -> str | None:
    """From a run's flattened config (pekd.report): the note of a run whose views are a bank's and are not the
    online recipe's distribution, else None (online views, or an exact bank)."""
    mode = config.get("teacher.mode")
    if not (mode == "bank" or (mode == "online" and config.get("bank.online_same_views"))):
        return None
    augment, views = str(config.get("data.augment")), config.get("bank.views")
    if views is None:
        if augment in view_space.FINITE:
            return None
        views = CONTINUOUS_DEFAULT
    return None if online_distribution(augment, int(views)) else drawn_note(augment, int(views))
