"""`python -m bench.official_loop [--device cpu|cuda] [--rounds 7 --reps 1]`: pekd vs the official PEFD loop.

Why: pekd claims to run the paper's method faster than the code the paper was published with, on the paper's main
CIFAR-100 pair. The baseline is re-created here from the published training loop (chenyd7/PEFD,
helper/loops.py `train_distill` with `--distill ours -a 0 -b 25`), on the same backbones (pekd.models is the
CRD/RepDistiller zoo the official code imports), so the two differ only in how the step is run:

- official: teacher in eval mode, student forward, teacher forward under no_grad, THREE separate
  Linear(d_s, d_t) + ReLU projectors applied one after another and averaged, features normalised by dividing by
  their norm, feature loss = sum over the batch of (1 - cos) / batch size, loss = CE + 0 * KL(T=4) + 25 * feature
  loss, zero_grad, backward, SGD (lr 0.05, momentum 0.9, wd 5e-4); fp32, NCHW contiguous, cuDNN benchmark on
  CUDA. The published loop also does per-step bookkeeping: the KL term is computed although its weight is 0,
  top-1/top-5 accuracy, and `loss.item()` (a device sync). `official` includes it, as published;
  `official, no bookkeeping` leaves it out, so the figure can be read both ways.
- pekd online eager: the real Trainer (built as pekd.train builds it, experiment=cifar100_r32x4_r8x4) running
  Trainer.train_step + Trainer.optimizer_step, its defaults on: channels_last, trainer.amp=auto (bf16 on CUDA GPUs
  of capability >= 8.0, fp16 on older ones; bf16 on a CPU with native bf16 kernels, fp32 on one without), one
  stacked projector GEMM.
- pekd online eager, amp=off: the same in fp32, run only where trainer.amp=auto picks a lower precision (CUDA,
  or a CPU with native bf16 such as AVX-512 BF16), so what the AMP default gives is told apart from the rest.
- pekd online compiled: the same with trainer.compile=true (torch.compile of the training module and the online
  teacher); compilation happens in the warm-up steps, which are not timed.
- pekd bank: the same, with the teacher's features given as a feature bank gives them (fp16 rows, upcast on the
  device) and no teacher forward. The bank's memory-mapped gather is left out (bench/teacher_modes.py measures
  it at 0.005% of a step).

Every candidate sees one fixed batch of 64 random 32x32 CIFAR-sized images already on the device: data loading
is the same work for both and is left out (pekd normalises uint8 on the device inside its step, the official
code in its loader workers; the official candidate gets the normalised tensor). Candidates are interleaved
(bench/timing.py); each printed ratio is official time / pekd time, so > 1 means pekd trains more images/s.
Goals: on a CPU, online >= 1.1x and bank >= 2.5x; on a GPU, online >= 3x.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.timing import interleaved, table
from pekd.data.batch import Batch
from pekd.data.order import Plan
from pekd.data.sources import CIFAR100_MEAN, CIFAR100_STD
from pekd.engine.distributed import DistEnv
from pekd.engine.precision import amp_dtype
from pekd.engine.trainer import Trainer
from pekd.methods import TrainModule, build_method
from pekd.models import build_model
from pekd.teacher.online import OnlineTeacher
from pekd.train import compose_config

TEACHER, STUDENT, CLASSES, Q, BETA, T_KD = "resnet32x4", "resnet8x4", 100, 3, 25.0, 4.0
BASELINE = "official"


def synchronize(device: torch.device) -> None:
    """A timed call ends when the device has finished its kernels, not when they are queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> str:
    """What the figures were measured on: the CUDA device, or the CPU model and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {torch.get_num_threads()} torch threads"


def fixed_batch(batch: int, device: torch.device) -> Batch:
    """One random uint8 CIFAR-sized batch, as a pipeline yields it, already on the device."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (batch,), generator=g)
    return Batch(images, labels, torch.arange(batch), torch.zeros(batch, dtype=torch.long)).to(device)


def normalised(batch: Batch) -> torch.Tensor:
    """The official loader's output for the batch: normalised fp32, NCHW contiguous."""
    mean = torch.tensor(CIFAR100_MEAN, device=batch.images.device).view(1, -1, 1, 1)
    std = torch.tensor(CIFAR100_STD, device=batch.images.device).view(1, -1, 1, 1)
    return ((batch.images.float() - mean) / std).contiguous()


class OfficialStep:
    """One optimizer step of the published PEFD loop, re-created from its description (see the module doc)."""

    def __init__(self, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, bookkeeping: bool,
                 sync: bool = True) -> None:
        """sync: wait for the device at the end of every step (latency); False leaves it to the caller, who times
        several steps queued back to back as a training loop runs them (bench/host_overhead.py)."""
        torch.manual_seed(0)
        self.student = build_model(STUDENT, CLASSES).to(x.device)
        d_s, d_t = self.student.feature_dim, teacher.feature_dim
        self.projectors = nn.ModuleList(nn.Linear(d_s, d_t) for _ in range(Q)).to(x.device)
        params = list(self.student.parameters()) + list(self.projectors.parameters())
        self.optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.teacher, self.x, self.y, self.bookkeeping, self.sync = teacher, x, y, bookkeeping, sync
        self.meters: tuple[float, torch.Tensor, torch.Tensor] | None = None  # loss, top-1, top-5 of the last step

    def __call__(self) -> None:
        self.student.train()
        self.projectors.train()
        self.teacher.eval()
        feat_s, logit_s = self.student(self.x)
        with torch.no_grad():
            feat_t, logit_t = self.teacher(self.x)
        loss_cls = F.cross_entropy(logit_s, self.y)
        f_1, f_2, f_3 = (torch.relu(p(feat_s)) for p in self.projectors)
        f_s = (f_1 + f_2 + f_3) / Q
        u = f_s / f_s.pow(2).sum(1, keepdim=True).sqrt()
        v = feat_t / feat_t.pow(2).sum(1, keepdim=True).sqrt()
        loss_feat = (1 - (u * v).sum(1, keepdim=True)).sum() / f_s.shape[0]
        loss = loss_cls + BETA * loss_feat
        if self.bookkeeping:
            loss = loss + 0.0 * kl_div_t(logit_s, logit_t)  # computed every step although alpha = 0
            hits = logit_s.topk(5, dim=1).indices.eq(self.y[:, None])
            self.meters = (loss.item(), hits[:, 0].float().mean(), hits.any(1).float().mean())  # .item(): a sync
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.sync:
            synchronize(self.x.device)


def kl_div_t(logit_s: torch.Tensor, logit_t: torch.Tensor) -> torch.Tensor:
    """Hinton KD as RepDistiller writes it: KL(softmax(t/T) || softmax(s/T)) summed, * T^2 / batch."""
    log_p_s = F.log_softmax(logit_s / T_KD, dim=1)
    p_t = F.softmax(logit_t / T_KD, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * T_KD**2 / logit_s.shape[0]


class GivenFeatures:
    """Teacher features handed over as teacher.mode=bank does: stored fp16 (bank.dtype's default) on the host,
    moved to the images' device and upcast every step; no teacher forward."""

    def __init__(self, features: torch.Tensor) -> None:
        self.rows = features.detach().to("cpu", torch.float16)

    def __call__(self, images: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, None]:
        return self.rows.to(images.device, non_blocking=True).float(), None


def online_copy(teacher: nn.Module) -> OnlineTeacher:
    """The official candidates' teacher (same weights) as pekd runs it; one copy per trainer, so a trainer that
    changes its teacher (channels_last, compilation) leaves the others' alone."""
    model = build_model(TEACHER, CLASSES).to(next(teacher.parameters()).device)
    model.load_state_dict(teacher.state_dict())
    return OnlineTeacher(model, channels_last=True)


def pekd_trainer(overrides: list[str], teacher: Any, d_t: int, device: torch.device, run_dir: Path) -> Trainer:
    """The Trainer pekd.train builds for the recipe (no loaders: the bench feeds its own batch)."""
    cfg = compose_config(["experiment=cifar100_r32x4_r8x4", "teacher.weights=random-init", "data.workers=0",
                          "trainer.progress=false", f"run_dir={run_dir}", *overrides])
    torch.manual_seed(cfg.seed)
    student = build_model(cfg.model.name, CLASSES)
    method = build_method(cfg.method, student.feature_dim, d_t)
    return Trainer(cfg, DistEnv(0, 1, 0, device), run_dir, TrainModule(student, method), teacher, None, None,
                   CIFAR100_MEAN, CIFAR100_STD, Plan.make(cfg.data.batch_size, 1))


def pekd_step(trainer: Trainer, batch: Batch) -> Callable[[], None]:
    """One optimizer step as Trainer._steps takes it: train_step, then optimizer_step (scaler, SGD, zero_grad,
    the per-step schedule). The periodic finiteness/stop check (every trainer.sync_every_steps steps) and the
    log steps are left out here; bench/trainer_overhead.py times them."""

    def step() -> None:
        trainer.train_step([batch])
        trainer.optimizer_step()
        synchronize(trainer.device)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (after 2 warm-up steps per candidate)")
    ap.add_argument("--reps", type=int, default=1, help="steps per candidate per round (more on a GPU: short steps)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default); 1 is steadier on a shared machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # the official code sets it; so does pekd without trainer.deterministic
    batch = fixed_batch(args.batch, device)
    x = normalised(batch)
    torch.manual_seed(1)
    teacher = build_model(TEACHER, CLASSES).to(device).eval()
    with torch.no_grad():
        feat_t, _ = teacher(x)

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        d_t = teacher.feature_dim

        def online(*overrides: str) -> Callable[[], None]:
            return pekd_step(pekd_trainer(list(overrides), online_copy(teacher), d_t, device, run_dir), batch)

        candidates: dict[str, Callable[[], None]] = {
            BASELINE: OfficialStep(teacher, x, batch.labels, bookkeeping=True),
            "official, no bookkeeping": OfficialStep(teacher, x, batch.labels, bookkeeping=False),
            "pekd online eager": online(),
            "pekd bank": pekd_step(pekd_trainer([], GivenFeatures(feat_t), d_t, device, run_dir), batch),
        }
        if amp_dtype("auto", device) is not None:  # separate what the AMP default gives from the rest
            candidates["pekd online eager, amp=off"] = online("trainer.amp=off")
        candidates["pekd online compiled"] = online("trainer.compile=true")
        times = interleaved(candidates, rounds=args.rounds, reps=args.reps, warmup=2)

    dtype = amp_dtype("auto", device)
    amp = "fp32" if dtype is None else str(dtype).removeprefix("torch.")
    print(f"\n{TEACHER} -> {STUDENT} PEFD (q={Q}, beta={BETA:g}), batch {args.batch}, 32px, fixed batch on the "
          f"device; {machine(device)}; official fp32 NCHW, pekd trainer.amp=auto ({amp}) channels_last; median of "
          f"{args.rounds} rounds of {args.reps} interleaved steps\n")
    print(table(times, BASELINE, unit_items=args.batch))
    bare = times["official, no bookkeeping"]
    print(f"\nthe official loop's per-step bookkeeping (KL at alpha=0, top-1/5, loss.item()) is "
          f"{100 * (times[BASELINE] - bare) / times[BASELINE]:.1f}% of its step")
    online_goal = 3.0 if device.type == "cuda" else 1.1
    goals = {"pekd online eager": online_goal, "pekd online compiled": online_goal, "pekd online eager, amp=off": None,
             "pekd bank": None if device.type == "cuda" else 2.5}
    for name in (k for k in candidates if k.startswith("pekd")):
        ratio, goal = times[BASELINE] / times[name], goals.get(name)
        verdict = "" if goal is None else f"  goal >= {goal:g}x: {'met' if ratio >= goal else 'NOT met'}"
        print(f"{name}: pekd / official = {ratio:.2f}x ({args.batch / times[name]:.0f} vs "
              f"{args.batch / times[BASELINE]:.0f} images/s; vs the official loop without its bookkeeping "
              f"{bare / times[name]:.2f}x){verdict}")


if __name__ == "__main__":
    main()
