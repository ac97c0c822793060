"""The online teacher keeps its weights in the AMP dtype: under autocast a forward casts only its input (autocast
re-cast every frozen conv/linear weight and bias on every call, 36 of them for resnet32x4), and its features and
logits are bit for bit those of the fp32 teacher under the same autocast -- what pekd.teacher.precompute stores."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pekd.models import build_model
from pekd.teacher.online import CAST_LAYERS, OnlineTeacher


class CastCount(TorchDispatchMode):
    """Counts the dtype casts (aten::_to_copy, what autocast's casts dispatch to) that run inside it, and how many
    of them cast a tensor of one of `weights`' shapes."""

    def __init__(self, weights: list[torch.Tensor]) -> None:
        super().__init__()
        self.shapes = {tuple(w.shape) for w in weights}
        self.casts = self.weight_casts = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") not in (None, args[0].dtype):
            self.casts += 1
            self.weight_casts += tuple(args[0].shape) in self.shapes
        return func(*args, **kwargs)


def fresh(name: str, classes: int = 100) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, classes, 3)
    with torch.no_grad():  # BatchNorm statistics away from their (0, 1) start, so that their precision matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval().requires_grad_(False)


def cast_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """The conv and linear weights and biases: what autocast casts at every call."""
    return [p for m in model.modules() if isinstance(m, CAST_LAYERS) for p in m.parameters(recurse=False)]


def casts_of(fn: Any, weights: list[torch.Tensor]) -> CastCount:
    with torch.autocast("cpu", dtype=torch.bfloat16), CastCount(weights) as count:
        fn()
    return count


@pytest.mark.parametrize("name", ["resnet32x4", "vgg13"])
def test_a_teacher_forward_under_autocast_casts_its_input_only(name):
    model = fresh(name)
    reference = copy.deepcopy(model).to(memory_format=torch.channels_last)  # today's teacher: fp32 weights
    weights = cast_parameters(reference)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    before = casts_of(lambda: reference(x), weights)
    assert before.weight_casts == len(weights), "autocast re-casts every frozen weight on every call"

    teacher = OnlineTeacher(model, channels_last=True)
    first = casts_of(lambda: teacher(x, None), weights)
    assert first.weight_casts == before.weight_casts, "the first call casts the weights, once"
    for _ in range(2):  # every later step, also after a call outside autocast
        after = casts_of(lambda: teacher(x, None), weights)
        assert after.weight_casts == 0 and after.casts <= 1, (after.casts, after.weight_casts)
        teacher(x, None)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = reference(x), teacher(x, None)
    for a, b in zip(want, got, strict=True):
        assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b), "the features autocast computed"


def test_outside_autocast_the_teacher_runs_on_its_fp32_weights():
    model = fresh("resnet8x4")
    reference = copy.deepcopy(model)
    teacher = OnlineTeacher(model, channels_last=False)
    x = torch.randn(3, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        teacher(x, None)
    assert model.fc.weight.dtype == torch.bfloat16 and model.bn1.running_var.dtype == torch.float32
    for a, b in zip(reference(x), teacher(x, None), strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    assert model.fc.weight.dtype == torch.float32
