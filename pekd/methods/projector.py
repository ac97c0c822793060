"""The projector ensemble: q independent projectors from the student's feature space to the teacher's, averaged.

The default kind, Linear(d_s, d_t) + ReLU, is computed as ONE Linear(d_s, q * d_t): the same q weight matrices and
biases stacked, the same per-projector initialisation (fan-in d_s), but a single GEMM instead of q small ones,
which is what keeps PEFD's step time next to CE-only (bench/method_overhead.py).
"""

from __future__ import annotations

import torch
from torch import nn


class LinearReluEnsemble(nn.Module):
    """mean_i ReLU(W_i f + b_i), i = 1..q, with W_i stacked row-wise in one Linear."""

    def __init__(self, d_s: int, d_t: int, q: int) -> None:
        super().__init__()
        self.q, self.d_t = q, d_t
        self.linear = nn.Linear(d_s, q * d_t)
        # nn.Linear's default init depends only on fan_in (= d_s), so stacking q of them is the same distribution.

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.per_projector(f).mean(dim=1)

    def per_projector(self, f: torch.Tensor) -> torch.Tensor:
        """Each projector's output, [batch, q, d_t] (pekd.analyze counts the units that never activate)."""
        return torch.relu(self.linear(f)).view(f.shape[0], self.q, self.d_t)

    def load_projectors(self, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> None:
        """Set projector i to (weights[i], biases[i]); used to compare against the official separate layers."""
        with torch.no_grad():
            self.linear.weight.copy_(torch.cat(weights, dim=0))
            self.linear.bias.copy_(torch.cat(biases, dim=0))


class MlpBnEnsemble(nn.Module):
    """Ablation: q projectors of Linear-BN-ReLU-Linear-ReLU (a deeper, normalised projector)."""

    def __init__(self, d_s: int, d_t: int, q: int) -> None:
        super().__init__()
        self.projectors = nn.ModuleList(
            nn.Sequential(nn.Linear(d_s, d_t), nn.BatchNorm1d(d_t), nn.ReLU(inplace=True),
                          nn.Linear(d_t, d_t), nn.ReLU(inplace=True))
            for _ in range(q)
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.stack([p(f) for p in self.projectors], dim=0).mean(dim=0)

    def per_projector(self, f: torch.Tensor) -> torch.Tensor:
        """Each projector's output, [batch, q, d_t]."""
        return torch.stack([p(f) for p in self.projectors], dim=1)


def build_projector(kind: str, d_s: int, d_t: int, q: int) -> nn.Module:
    return {"linear_relu": LinearReluEnsemble, "mlp_bn": MlpBnEnsemble}[kind](d_s, d_t, q)
