"""Config schemas: dataclasses registered in Hydra's ConfigStore, so a typo'd key is an error, not a default.

Each section sits next to the code that reads it in spirit: `data` feeds pekd.data, `method` pekd.methods,
`trainer` pekd.engine. `validate()` checks the values no type system can (names, ranges, combinations) and raises
one PekdError naming the key and the fix.

The package is everything between a command line and a composed config: where the config folders are (dirs.py),
what an override may ask before composition (overrides.py), `pekd train --help` read from the folders (help.py)
and the run directory a config names (run_names.py). Those are imported before any run starts -- `pekd train
--help` among them -- so this module imports nothing beyond the standard library: Hydra's ConfigStore (a quarter
of a second, omegaconf included) is imported by register(), which only composition calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from pekd.errors import PekdError

# OmegaConf's marker of a mandatory value: omegaconf.MISSING is this string, and OmegaConf.structured reads a default
# equal to it as "must be set". Spelled out so that importing the schema does not import omegaconf.
MISSING = "???"


@dataclass
class ModelConfig:
    """The student backbone."""

    name: str = MISSING
    weights: str = ""  # optional local state dict to start from


@dataclass
class TeacherConfig:
    """The frozen teacher: an architecture, its local weights, and how its signal reaches the student."""

    name: str = ""
    weights: str = ""  # torchvision state dict or RepDistiller {'model': state_dict}; empty = none (demo trains one)
    mode: str = "online"  # online: run frozen each step | bank: read precomputed features | none
    bank: str = ""  # feature bank folder for mode=bank


@dataclass
class BankConfig:
    """Feature bank layout (teacher.mode=bank and pekd.precompute)."""

    # null (unset): every view where the augmentation has finitely many (cifar: 162, flip: 2, none: 1), shown as
    # the online pipeline draws them -- the online recipe exactly; K = 1 for data.augment=imagenet (continuous).
    # K: K views per sample drawn once (keyed by bank.seed), the training seed picks which one an epoch shows --
    # "K fixed views per image", not the online recipe (pekd.teacher.bank_views)
    views: int | None = None
    seed: int = 0  # the key of drawn views: view k of sample i comes from (bank.seed, i, k): one bank, every seed
    dtype: str = "float16"
    chunk: int = 1024  # samples per precompute chunk (the unit of resume)
    # teacher.mode=online shows the bank's views too: an online run that sees exactly what a bank run sees, to check
    # a bank against the teacher or to measure what K drawn views cost (an exact bank's views are the online ones)
    online_same_views: bool = False
    # store the teacher's logits beside each feature row, for Hinton KD (method.kd_weight>0) in bank mode: 4 bytes
    # (float32) or 2 per class per row. A KD run's precompute stores them without being asked; this makes a bank
    # built for feature runs (FD, PEFD) serve the same sweep's KD runs too
    logits: bool = False


@dataclass
class DataConfig:
    """What to read and how to feed it."""

    source: str = MISSING  # cifar100 | imagefolder | fashion_mnist | digits
    root: str = ""
    pipeline: str = "torch"  # torch | ffcv | dali | device (the images in device memory: CIFAR, Fashion-MNIST)
    batch_size: int = 64  # global batch of one optimizer step, over all processes and accumulation steps
    max_micro_batch: int = 0  # per-process memory cap: accumulation steps are added to fit it (0 = no cap)
    eval_batch_size: int = 256
    workers: int = 2
    subset: int = 0  # train on the first n of a permutation keyed by split_seed (0 = all)
    val_subset: int = 0  # evaluate on the first n of a permutation keyed by split_seed (0 = all)
    split_seed: int = 0  # which samples subset/val_subset take: fixed across a seed sweep, so runs share a test set
    augment: str = "cifar"  # cifar: pad-4 crop + flip | imagenet: RandomResizedCrop + flip | flip | none
    image_size: int = 32  # training crop side
    eval_resize: int = 0  # eval: resize shorter side to this, then center-crop image_size (0 = no resize)
    train_beton: str = ""  # ffcv: .beton paths written by `python -m pekd.write_dataset`
    val_beton: str = ""
    os_cache: bool = True  # ffcv: read the .beton through the page cache (False: ffcv's own process cache)
    dali_device: str = "cpu"  # dali: cpu | mixed (GPU decode)
    on_corrupt: str = "error"  # error | skip (corrupt images are counted and skipped)


@dataclass
class MethodConfig:
    """The distillation method and its loss weights."""

    name: str = "pefd"  # ce | kd | fd | pefd
    ce_weight: float = 1.0
    beta: float = 25.0  # feature-loss weight (fd, pefd)
    q: int = 3  # number of projectors (pefd)
    projector: str = "linear_relu"  # linear_relu | mlp_bn
    kd_weight: float = 0.0  # Hinton KD term weight; 1.0 for method=kd
    temperature: float = 4.0
    label_smoothing: float = 0.0  # of the CE term (torch's cross_entropy label_smoothing; 0 = the paper's CE)
    logit_projector: bool = False  # kd only: a trained Linear(classes, classes) on the student's logits before KD


@dataclass
class TrainerConfig:
    """Optimisation recipe and the engine's switches."""

    epochs: int = 240
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    lr_gamma: float = 0.1
    lr_scaling: str = "none"  # none | linear (lr * global_batch / 256)
    schedule: str = "step"  # step: x lr_gamma at each of `milestones` | cosine: to 0 over the epochs after warmup
    # Linear warmup over this many epochs (fractions allowed), per optimizer step from lr * warmup_start_factor;
    # 0 = off. The step schedule's milestones stay at their epochs.
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.01
    no_wd_bn_bias: bool = False  # no weight decay on normalisation layers' weights and on any bias
    ema_decay: float = 0.0  # EMA of the student per optimizer step, evaluated and exported as ema.pt (0 = off)
    amp: str = "auto"  # auto (bf16 from Ampere on, fp16 on older GPUs; CPU: bf16 if native) | bf16 | fp16 | off
    analyze: bool = False  # analysis.json (pekd.analyze's diagnostics) from the final evaluation's own pass
    channels_last: bool = True
    grad_clip: float = 0.0  # max grad norm (0 = off)
    sync_bn: bool = False
    deterministic: bool = False
    # torch.compile the training module (student + projectors) and the online teacher: false | true (= default) |
    # default | reduce-overhead (CUDA graphs of the step too; eager, with one log line, where graphs cannot be)
    compile: bool | str = False
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    ckpt_every_steps: int = 0  # also checkpoint every N optimizer steps (0 = epoch ends only)
    keep_last: int = 2
    log_every_steps: int = 20
    # Steps between the device->host reads that check the losses are finite and agree on a stop request (also at
    # log steps, checkpoints and epoch ends); a stop waits up to this many steps. 1 = check every step.
    sync_every_steps: int = 10
    eval_every_epochs: int = 1
    max_steps: int = 0  # stop after this many optimizer steps in total (0 = run all epochs); for tests and benches
    progress: bool = True
    audit_samples: bool = False  # append every step's sample indices to logs/samples-rank<r>.txt (data audits)
    # Seconds a collective may wait for the other ranks before it fails (torch's own default, 30 min, kept a job
    # with a hung rank idle that long); must exceed the longest legitimate wait, e.g. rank 0 saving a checkpoint.
    dist_timeout_s: int = 300
    # The run directory's lease (pekd.engine.lease): rank 0 renews it every lease_stale_s / 6 s (10 s at most);
    # a lease with no heartbeat for lease_stale_s is taken over. A second starter waits up to lease_wait_s for a
    # live lease to end before it is refused (0: refused at once, naming the owner).
    lease_stale_s: float = 60.0
    lease_wait_s: float = 0.0


@dataclass
class TrackerConfig:
    """An optional experiment tracker beside TensorBoard and metrics.csv (pekd.engine.tracker): the same scalars,
    rank 0 only. Compute nodes often have no network, hence offline by default: `wandb sync` from a login node."""

    name: str = "none"  # none | wandb (the extra: pip install 'pekd[wandb]')
    project: str = "pekd"
    entity: str = ""  # W&B team or user (empty: the account's default, decided when syncing)
    mode: str = "offline"  # offline: write the run under tracker.dir only | online: stream it (needs network)
    dir: str = ""  # where the tracker's files go (empty: the run directory, i.e. <run_dir>/wandb/)


@dataclass
class Config:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    seed: int = 0  # the training seed: initialisation, data order, per-step randomness, bank view picks
    run_dir: str = ""  # empty: runs/<name>-<hash of the config>, so the same command resumes the same run
    on_existing: str = "resume"  # resume (same config only) | overwrite | fail
    paper_top1: float = 0.0  # the paper's reported student top-1 for this recipe, shown by pekd.report
    name: str = ""


def register() -> None:
    """Register the schema under 'pekd_schema' (configs/config.yaml lists it first in its defaults)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="pekd_schema", node=Config)


CHOICES: dict[str, tuple[str | bool, ...]] = {
    "teacher.mode": ("online", "bank", "none"),
    "data.pipeline": ("torch", "ffcv", "dali", "device"),
    "data.augment": ("cifar", "imagenet", "flip", "none"),
    "data.dali_device": ("cpu", "mixed"),
    "data.on_corrupt": ("error", "skip"),
    "method.name": ("ce", "kd", "fd", "pefd"),
    "method.projector": ("linear_relu", "mlp_bn"),
    "trainer.amp": ("auto", "bf16", "fp16", "off"),
    "trainer.compile": (False, True, "default", "reduce-overhead"),
    "trainer.lr_scaling": ("none", "linear"),
    "trainer.schedule": ("step", "cosine"),
    "bank.dtype": ("float16", "float32"),
    "on_existing": ("resume", "overwrite", "fail"),
    "tracker.name": ("none", "wandb"),
    "tracker.mode": ("offline", "online"),
}


# Numeric ranges: key -> (test, what the value must be). Out of range, these fail later and badly: a zero
# divisor mid-epoch, a DataLoader traceback, a loss that goes non-finite, or a checkpoint count that cannot be
# honoured (a run must always keep the checkpoint it resumes from).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.batch_size": (lambda v: v > 0, "must be positive"),
    "data.eval_batch_size": (lambda v: v > 0, "must be positive"),
    "data.max_micro_batch": (lambda v: v >= 0, "must be 0 (no cap) or a positive per-process batch"),
    "data.workers": (lambda v: v >= 0, "must be 0 (load in the main process) or a positive worker count"),
    "data.subset": (lambda v: v >= 0, "must be 0 (all samples) or a positive sample count"),
    "data.val_subset": (lambda v: v >= 0, "must be 0 (all samples) or a positive sample count"),
    "bank.views": (lambda v: v is None or v > 0, "must be positive, or null (every view of a finite augmentation)"),
    "bank.chunk": (lambda v: v > 0, "must be positive"),
    "method.ce_weight": (lambda v: v >= 0, "must be 0 or positive (a negative weight maximises the loss)"),
    "method.kd_weight": (lambda v: v >= 0, "must be 0 or positive (a negative weight maximises the loss)"),
    "method.beta": (lambda v: v >= 0, "must be 0 or positive (a negative weight maximises the loss)"),
    "method.q": (lambda v: v >= 1, "must be at least 1 projector"),
    "method.temperature": (lambda v: 0 < v < math.inf, "must be positive and finite (the paper's KD uses 4)"),
    "method.label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1) (0 = off; 0.1 is the usual value)"),
    "trainer.epochs": (lambda v: v > 0, "must be positive"),
    "trainer.lr": (lambda v: 0 < v < math.inf, "must be positive and finite"),
    "trainer.momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "trainer.weight_decay": (lambda v: 0 <= v < math.inf, "must be 0 or positive"),
    "trainer.lr_gamma": (lambda v: 0 < v < math.inf, "must be positive (0.1 divides the lr by 10 at a milestone)"),
    "trainer.grad_clip": (lambda v: 0 <= v < math.inf, "must be 0 (off) or a positive max grad norm"),
    "trainer.threads": (lambda v: v >= 0, "must be 0 (torch's default) or a positive thread count"),
    "trainer.ckpt_every_steps": (lambda v: v >= 0, "must be 0 (epoch ends only) or a positive step count"),
    "trainer.keep_last": (lambda v: v >= 1, "must be at least 1: a run resumes from its newest checkpoint"),
    "trainer.log_every_steps": (lambda v: v >= 1, "must be at least 1 step"),
    "trainer.sync_every_steps": (lambda v: v >= 1, "must be at least 1 step (1 = check every step)"),
    "trainer.warmup_epochs": (lambda v: 0 <= v < math.inf, "must be 0 (off) or a positive number of epochs"),
    "trainer.warmup_start_factor": (lambda v: 0 < v <= 1, "must be in (0, 1]: the first step's lr is lr * it"),
    "trainer.ema_decay": (lambda v: 0 <= v < 1, "must be in [0, 1) (0 = off; e.g. 0.9998 per step)"),
    "trainer.eval_every_epochs": (lambda v: v >= 1, "must be at least 1 epoch"),
    "trainer.max_steps": (lambda v: v >= 0, "must be 0 (run all epochs) or a positive step count"),
    "trainer.dist_timeout_s": (lambda v: v > 0, "must be positive seconds"),
    "trainer.lease_stale_s": (lambda v: 0 < v < math.inf, "must be positive seconds (60 is usual)"),
    "trainer.lease_wait_s": (lambda v: 0 <= v < math.inf, "must be 0 (refuse at once) or positive seconds"),
    "seed": (lambda v: v >= 0, "must be 0 or a positive integer (torch seeds are non-negative)"),
    "data.split_seed": (lambda v: v >= 0, "must be 0 or a positive integer (seeds are non-negative)"),
    "bank.seed": (lambda v: v >= 0, "must be 0 or a positive integer (seeds are non-negative)"),
}


def as_current(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config (a config.yaml an older pekd may have written) in this pekd's terms. bank.views defaulted
    to 1 before exact banks (now null: every view of a finite augmentation): where the run shows no bank's views
    (teacher.mode online without bank.online_same_views, or none) that 1 trains exactly as null does, so it is read
    as null, and the run resumes with the command that started it."""
    same_views = flat.get("teacher.mode") == "bank" or (flat.get("teacher.mode") == "online"
                                                        and flat.get("bank.online_same_views"))
    if flat.get("bank.views") == 1 and not same_views:
        return {**flat, "bank.views": None}
    return flat


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: Any) -> None:
    """Check values and combinations; raise one PekdError naming the key and the fix."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise PekdError(f"{key}={value!r} is not one of {list(allowed)}; fix the override or config file")
    for key, (ok, rule) in RANGES.items():
        value = _get(cfg, key)
        if not ok(value):  # written so that NaN fails every rule too
            raise PekdError(f"{key}={value} {rule}; fix the override or config file")
    if cfg.trainer.nesterov and cfg.trainer.momentum == 0:
        raise PekdError("trainer.nesterov=true needs trainer.momentum > 0; set a momentum or trainer.nesterov=false")
    milestones = list(cfg.trainer.milestones)
    if any(m <= 0 for m in milestones) or any(a >= b for a, b in pairwise(milestones)):
        raise PekdError(f"trainer.milestones={milestones} must be positive epochs in strictly increasing order "
                        "(each one multiplies the lr by trainer.lr_gamma once), e.g. [150,180,210]")
    warmup = cfg.trainer.warmup_epochs
    if warmup >= cfg.trainer.epochs:
        raise PekdError(f"trainer.warmup_epochs={warmup} must be shorter than trainer.epochs={cfg.trainer.epochs}; "
                        "lower it (5 is usual for ImageNet)")
    if cfg.trainer.schedule == "step" and milestones and milestones[0] <= warmup:
        raise PekdError(f"trainer.milestones={milestones} must come after the warmup (trainer.warmup_epochs="
                        f"{warmup}); move the first milestone later or shorten the warmup")
    needs_teacher = cfg.method.name != "ce" or cfg.method.kd_weight > 0
    if needs_teacher and cfg.teacher.mode == "none":
        raise PekdError(f"method.name={cfg.method.name} needs a teacher but teacher.mode=none; "
                        "set teacher.mode=online (or bank) and teacher.name")
    if needs_teacher and not cfg.teacher.name:
        raise PekdError(f"method.name={cfg.method.name} needs a teacher; set teacher.name (and teacher.weights)")
    if needs_teacher and cfg.teacher.mode == "online" and not cfg.teacher.weights:
        raise PekdError(f"teacher.weights is empty for teacher.name={cfg.teacher.name}: a random teacher teaches "
                        "nothing; point it at a trained checkpoint (torchvision or RepDistiller format)")
    if cfg.method.logit_projector and cfg.method.name != "kd":
        raise PekdError(f"method.logit_projector=true is an option of method=kd (the official code's kd1proj), not "
                        f"of method.name={cfg.method.name}; drop it or use method=kd")
    if cfg.teacher.mode == "bank" and not cfg.teacher.bank:
        raise PekdError("teacher.mode=bank needs teacher.bank=<folder written by `python -m pekd.precompute`>")
    if cfg.data.pipeline == "ffcv" and not cfg.data.train_beton:
        raise PekdError("data.pipeline=ffcv needs data.train_beton (and data.val_beton); write them with "
                        "`python -m pekd.write_dataset`")
