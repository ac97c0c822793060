"""The model zoo: every backbone's interface, the published shapes and sizes, and checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pekd.errors import PekdError
from pekd.models import MODEL_NAMES, build_model, feature_dim, list_models, load_weights

# Penultimate widths of the CRD / PEFD teacher-student pairs, as published.
PUBLISHED_FEATURE_DIMS = {
    "resnet8x4": 256, "resnet32x4": 256, "resnet20": 64, "resnet56": 64, "wrn_16_2": 128, "wrn_40_2": 128,
    "vgg8": 512, "vgg13": 512, "MobileNetV2": 1280, "ShuffleNetV1": 960, "ShuffleNetV2": 1024,
    "ResNet50": 2048, "resnet18": 512, "resnet34": 512, "resnet50": 2048, "mobilenet_v1": 1024,
}

# Exact parameter counts of RepDistiller's definitions for CIFAR-100 (the papers round them: resnet8x4
# 1.23M, resnet32x4 7.43M, wrn_40_2 2.26M, resnet56 0.86M, ...), and of torchvision / classic MobileNet-V1.
# resnet56 by hand: stem 432+32, stage1 9*(2*2304+64), stage2 14528+8*18560, stage3 57728+8*73984, fc 6500.
PARAM_COUNTS = {
    ("resnet8x4", 100): 1_233_540,
    ("resnet32x4", 100): 7_433_860,
    ("resnet56", 100): 861_620,
    ("resnet20", 100): 278_324,
    ("wrn_40_2", 100): 2_255_156,
    ("wrn_16_2", 100): 703_284,
    ("vgg8", 100): 3_965_028,
    ("vgg13", 100): 9_462_180,
    ("MobileNetV2", 100): 812_836,
    ("ShuffleNetV1", 100): 949_258,
    ("ShuffleNetV2", 100): 1_355_528,
    ("ResNet50", 100): 23_705_252,
    ("resnet18", 1000): 11_689_512,
    ("resnet50", 1000): 25_557_032,
    ("mobilenet_v1", 1000): 4_231_976,
}


def _forward(model: torch.nn.Module, in_chans: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    with torch.no_grad():
        return model.eval()(torch.randn(2, in_chans, size, size))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_returns_pooled_feature_and_logits(name: str) -> None:
    model = build_model(name, 7)
    feat, logits = _forward(model, in_chans=3, size=32)
    assert model.num_classes == 7
    assert model.feature_dim == feature_dim(name)
    assert feat.shape == (2, model.feature_dim)
    assert logits.shape == (2, 7)
    assert (feat >= 0).all(), "the feature is taken after the last ReLU"
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_channel_small_inputs(name: str) -> None:
    """The demo feeds 1-channel 28x28 Fashion-MNIST; tests and smoke runs go down to 8x8."""
    model = build_model(name, 7, in_chans=1)
    for size in (28, 8):
        feat, logits = _forward(model, in_chans=1, size=size)
        assert feat.shape == (2, model.feature_dim)
        assert logits.shape == (2, 7)


def test_published_feature_dims() -> None:
    assert {name: feature_dim(name) for name in PUBLISHED_FEATURE_DIMS} == PUBLISHED_FEATURE_DIMS


@pytest.mark.parametrize(("name", "classes"), list(PARAM_COUNTS))
def test_parameter_counts_match_reference(name: str, classes: int) -> None:
    with torch.device("meta"):  # counting needs shapes only
        model = build_model(name, classes)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[(name, classes)]


def test_list_models_and_unknown_name() -> None:
    assert list_models() == list(MODEL_NAMES)
    assert len(set(MODEL_NAMES)) == len(MODEL_NAMES) == 26
    with pytest.raises(PekdError, match=r"unknown model 'resnet_56' \(closest: 'resnet56'\).*wrn_40_2"):
        build_model("resnet_56", 10)
    with pytest.raises(PekdError, match="closest: 'MobileNetV2'"):
        feature_dim("mobilenetv2")


def test_torchvision_resnet18_state_dict_loads_strictly(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18", 10).eval()
    load_weights(model, str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[1], reference(x))


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_repdistiller_checkpoint_round_trip(tmp_path: Path) -> None:
    teacher = build_model("resnet8x4", 100)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": teacher.state_dict(), "best_acc": 73.1}, path)
    loaded = build_model("resnet8x4", 100)
    load_weights(loaded, str(path))
    _assert_same_weights(teacher, loaded)


def test_ddp_state_dict_wrapper(tmp_path: Path) -> None:
    teacher = build_model("wrn_16_2", 10)
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in teacher.state_dict().items()}}, path)
    loaded = build_model("wrn_16_2", 10)
    load_weights(loaded, str(path))
    _assert_same_weights(teacher, loaded)


def test_checkpoint_without_bn_step_counters_loads(tmp_path: Path) -> None:
    """Checkpoints from before PyTorch 0.4.1 have no num_batches_tracked; load_state_dict fills it in."""
    teacher = build_model("resnet8", 10)
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in teacher.state_dict().items() if "num_batches_tracked" not in k}, path)
    load_weights(build_model("resnet8", 10), str(path))


def test_wrong_architecture_names_first_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "resnet8.pth"
    torch.save({"model": build_model("resnet8", 100).state_dict()}, path)
    with pytest.raises(PekdError) as err:
        load_weights(build_model("resnet8x4", 100), str(path))
    assert str(err.value) == (
        f"checkpoint {path} does not fit model resnet8x4: first bad key 'conv1.weight' "
        "(checkpoint shape [16, 3, 3, 3], model shape [32, 3, 3, 3]); check teacher.name"
    )


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = build_model("resnet8", 10).state_dict()
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}, path)
    with pytest.raises(PekdError, match=r"first bad key 'layer2\.0\.conv1\.weight' \(missing from the"):
        load_weights(build_model("resnet8", 10), str(path))
    torch.save({**state, "projector.weight": torch.zeros(1)}, path)
    with pytest.raises(PekdError, match=r"first bad key 'projector.weight' \(not in the model\)"):
        load_weights(build_model("resnet8", 10), str(path))


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    model = build_model("resnet8", 10)
    missing = tmp_path / "nope.pth"
    with pytest.raises(PekdError, match=f"checkpoint {missing} not found"):
        load_weights(model, str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(PekdError, match="could not be read"):
        load_weights(model, str(garbage))
    pickled_objects = tmp_path / "numpy.pth"
    torch.save({"model": model.state_dict(), "best_acc": np.float64(73.1)}, pickled_objects)
    with pytest.raises(PekdError, match=r"holds Python objects other than tensors \(.*numpy.*\).*re-save"):
        load_weights(model, str(pickled_objects))
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(PekdError, match="is not a state dict"):
        load_weights(model, str(not_a_state_dict))
