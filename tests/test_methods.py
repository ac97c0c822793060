"""The loss math against hand-computed values, following the official PEFD code line by line."""

import math

import pytest
import torch
from torch import nn

from pekd.config import MethodConfig
from pekd.errors import PekdError
from pekd.methods import TrainModule, build_method
from pekd.methods.losses import cosine_distance, hinton_kd
from pekd.methods.projector import LinearReluEnsemble


def official_pefd_feature_loss(f_s, f_t, linears):
    """The official code (helper/loops.py, distill == 'ours'): separate Linear layers, ReLU, mean, normalise."""
    relu = torch.nn.ReLU()
    f = sum(relu(lin(f_s)) for lin in linears) / len(linears)
    outft = f_t.div(f_t.pow(2).sum(1, keepdim=True).pow(0.5))
    outfs = f.div(f.pow(2).sum(1, keepdim=True).pow(0.5))
    g_diff = 1 - (outft * outfs).sum(1, keepdim=True)
    return g_diff.sum() / f.shape[0]


def test_cosine_distance_hand_values():
    f_s = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    f_t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    # cosines: 1, 1/sqrt(2), 0  ->  mean of (0, 1 - 1/sqrt 2, 1)
    expected = (0.0 + (1 - 1 / math.sqrt(2)) + 1.0) / 3
    assert cosine_distance(f_s, f_t).item() == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("q", [1, 3, 5])
def test_pefd_matches_official_formula(q):
    g = torch.Generator().manual_seed(q)
    d_s, d_t, b = 16, 24, 10
    f_s = torch.relu(torch.randn(b, d_s, generator=g))
    f_t = torch.relu(torch.randn(b, d_t, generator=g)) + 0.01
    linears = [nn.Linear(d_s, d_t) for _ in range(q)]
    for lin in linears:
        nn.init.normal_(lin.weight, generator=g)
        nn.init.normal_(lin.bias, generator=g)
    cfg = MethodConfig(name="pefd", q=q, beta=25.0)
    method = build_method(cfg, d_s, d_t)
    method.projector.load_projectors([lin.weight for lin in linears], [lin.bias for lin in linears])
    labels = torch.randint(0, 5, (b,), generator=g)
    logits = torch.randn(b, 5, generator=g)
    losses = method(f_s, logits, labels, f_t, None)
    with torch.no_grad():
        ref = official_pefd_feature_loss(f_s, f_t, linears)
    assert losses["feat"].item() == pytest.approx(25.0 * ref.item(), abs=1e-6 * 25)
    assert losses["ce"].item() == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), abs=1e-6)
    assert set(losses) == {"ce", "feat"}


def test_fused_projectors_have_per_projector_init_scale():
    ens = LinearReluEnsemble(64, 32, 3)
    bound = 1 / math.sqrt(64)  # nn.Linear's default init bound depends on fan_in only
    assert ens.linear.weight.abs().max() <= bound
    assert ens.linear.weight.abs().max() > 0.9 * bound


def test_fd_without_projector_needs_equal_dims():
    with pytest.raises(PekdError, match="equal feature sizes.*64.*128"):
        build_method(MethodConfig(name="fd"), 64, 128)
    m = build_method(MethodConfig(name="fd", beta=2.0), 8, 8)
    f = torch.rand(4, 8) + 0.1
    assert m(f, torch.randn(4, 3), torch.zeros(4, dtype=torch.long), f, None)["feat"].item() == pytest.approx(
        0.0, abs=1e-6)


def test_hinton_kd_hand_value():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.5, 3.0, 1.0]])
    T = 4.0
    ps, pt = torch.softmax(s.double() / T, 1), torch.softmax(t.double() / T, 1)  # fp64 reference
    expected = (pt * (pt.log() - ps.log())).sum().item() * T * T
    assert hinton_kd(s, t, T).item() == pytest.approx(expected, rel=2e-5)  # fp32 KL of a small value
    m = build_method(MethodConfig(name="kd", ce_weight=0.1, kd_weight=0.9), 4, None)
    losses = m(torch.zeros(1, 4), s, torch.tensor([1]), None, t)
    assert losses["kd"].item() == pytest.approx(0.9 * expected, rel=2e-5)


def test_projectors_train_with_student_and_are_not_in_the_student():
    student = nn.Sequential()  # stands in only for the parameter bookkeeping below
    method = build_method(MethodConfig(name="pefd", q=3), 8, 16)
    tm = TrainModule(student, method)
    names = [n for n, _ in tm.named_parameters()]
    assert all(n.startswith("method.projector") for n in names) and names
    assert not list(tm.student.state_dict())


def test_mlp_bn_projector_ablation_shapes():
    m = build_method(MethodConfig(name="pefd", q=2, projector="mlp_bn"), 8, 16)
    out = m.projector(torch.randn(4, 8))
    assert out.shape == (4, 16) and (out >= 0).all()


def test_kd_logit_projector_loss_by_hand_as_the_official_kd1proj():
    """method.logit_projector (the official code's kd1proj): CE on the raw logits, KD on Linear(logits), T^2,
    batch mean; the Linear trains with the student (a TrainModule parameter), evaluation sees the raw logits."""
    cfg = MethodConfig(name="kd", ce_weight=0.1, kd_weight=0.9, temperature=4.0, logit_projector=True)
    m = build_method(cfg, 4, None, num_classes=3)
    w = torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, -1.0], [0.5, 0.0, 1.0]])
    b = torch.tensor([0.1, -0.2, 0.3])
    with torch.no_grad():
        m.logit_projector.weight.copy_(w)
        m.logit_projector.bias.copy_(b)
    z = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[0.5, 3.0, 1.0], [1.0, 0.0, 2.0]])
    y = torch.tensor([1, 2])
    T = 4.0
    zd, td = z.double(), t.double()
    proj = zd @ w.double().T + b.double()  # nn.Linear: x W^T + b
    ps, pt = torch.softmax(proj / T, 1), torch.softmax(td / T, 1)
    kd = (pt * (pt.log() - ps.log())).sum().item() / 2 * T * T  # summed KL / batch size, as DistillKL
    ce = -torch.log_softmax(zd, 1)[torch.arange(2), y].mean().item()  # raw logits
    losses = m(torch.zeros(2, 4), z, y, None, t)
    assert losses["ce"].item() == pytest.approx(0.1 * ce, rel=1e-6)
    assert losses["kd"].item() == pytest.approx(0.9 * kd, rel=2e-5)
    plain = build_method(MethodConfig(name="kd", ce_weight=0.1, kd_weight=0.9), 4, None, num_classes=3)
    assert plain.logit_projector is None and not list(plain.parameters())
    tm = TrainModule(nn.Sequential(), m)
    assert [n for n, _ in tm.named_parameters()] == ["method.logit_projector.weight", "method.logit_projector.bias"]
    losses["kd"].backward()
    assert m.logit_projector.weight.grad is not None and m.logit_projector.weight.grad.abs().sum() > 0


def test_logit_projector_is_an_option_of_kd_only():
    from pekd.train import compose_config

    with pytest.raises(PekdError, match="logit_projector=true is an option of method=kd"):
        compose_config(["data=digits", "method=pefd", "method.logit_projector=true", "teacher.name=resnet8",
                        "teacher.weights=/x.pt"])
