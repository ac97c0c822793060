"""What launchers/submit.py checks before anything is queued: a job refused by sbatch, or failing at its start
after hours in the queue, for a reason visible on the login node is an hour lost -- so every such reason is one
`error:` line and exit 2 here, nothing submitted."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pekd.cluster.sbatch import slurm_minutes
from pekd.errors import PekdError


def check_gpu_build(gpus: int) -> None:
    """--gpus N > 0 needs a torch built with CUDA: tasks run this same Python, and a CPU-only build would sit on
    the allocated GPUs and fail at start (pekd.engine.distributed's device check) after waiting in the queue."""
    if gpus <= 0:
        return
    import torch

    if torch.version.cuda is None:
        raise PekdError(f"--gpus {gpus}, but this Python's torch {torch.__version__} is a CPU-only build; install "
                        "the CUDA build that matches the nodes' NVIDIA driver (docs/install.md), or submit with "
                        "--gpus 0 for CPU tasks")


def gpu_requirement(cfg: DictConfig) -> str | None:
    """Why this config cannot sensibly run without GPUs (None if it can)."""
    if cfg.trainer.amp == "fp16":
        return "trainer.amp=fp16 needs CUDA"
    if cfg.data.pipeline == "dali" and cfg.data.dali_device == "mixed":
        return "data.dali_device=mixed decodes on the GPU"
    if cfg.data.source == "imagefolder" and cfg.data.image_size >= 160:
        return f"an ImageNet-scale recipe ({cfg.data.image_size}px images) would take months on CPUs"
    return None


def check_inputs(cfgs: list[DictConfig], waits: bool) -> None:
    """Every run's teacher, data, bank and .betons on this node, and its model names: one `error:` line per problem
    and exit 2, nothing queued. A job that waits for another (--after) may name a teacher that job is to write."""
    from pekd.cluster.preflight import inputs_problems

    problems, notes = inputs_problems(cfgs, pending_teacher_ok=waits)
    for note in notes:
        print(f"note: {note}, but the job waits for its dependency, which must write it", file=sys.stderr)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def check_folder(folder: Path) -> None:
    """The run root must be writable (and, for SLURM, visible from the compute nodes): try creating a file in
    it, or in the nearest existing folder above it (nothing is created before everything has been checked)."""
    probe = folder.resolve()
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(20, "not a directory")
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise PekdError(f"--folder {str(folder)!r} is not writable ({e.strerror}); choose another folder") \
            from None


def controller_reachable() -> bool:
    """Whether sinfo answers (a --dry-run off the cluster previews the script and says what it could not check)."""
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def check_partition(partition: str | None, minutes: int) -> None:
    """The partition exists (sinfo's list) and allows --time: sbatch would refuse either only after the
    whole sweep was planned, with a less helpful message."""
    if shutil.which("sinfo") is None:
        raise PekdError("sinfo not found: this is not a SLURM login node (--local runs on this machine)")
    out = subprocess.run(["sinfo", "-h", "-o", "%P %l"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise PekdError(f"sinfo failed ({' '.join(out.stderr.split()) or 'no message'}); is this a SLURM login node? "
                        "(--local runs here)")
    limits: dict[str, str] = {}
    default = None
    for name, limit in (line.split() for line in out.stdout.splitlines() if line.strip()):
        if name.endswith("*"):
            name = default = name[:-1]
        limits[name] = limit
    if partition is not None and partition not in limits:
        raise PekdError(f"unknown partition {partition!r}; sinfo lists: {', '.join(sorted(limits)) or '(none)'}")
    target = partition or default
    cap = slurm_minutes(limits[target], f"partition {target}'s time limit") if target else None
    if cap is not None and minutes > cap:
        raise PekdError(f"--time {minutes} exceeds the {cap}-minute limit of partition {target!r}; ask for at "
                        "most that (runs are requeued across time limits anyway)")


def signal_lead_warning(minutes: int, signal_delay_s: int) -> str | None:
    """Why the stop signal would come too early (None when it does not). SLURM sends USR2 --signal-delay seconds
    before the time limit (`#SBATCH --signal=USR2@N`); a limit no longer than that is signalled as the job starts,
    so every start checkpoints at its first step boundary and is requeued, until --max-requeues runs out."""
    if minutes * 60 > signal_delay_s:
        return None
    return (f"--time {minutes} (minutes) is not longer than --signal-delay {signal_delay_s} s: SLURM sends the stop "
            "signal (USR2) that many seconds before the time limit, so each start of the job would stop and requeue "
            f"before training; give --time more than {math.ceil(signal_delay_s / 60)} minutes or a shorter "
            "--signal-delay")


def check_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse, before submitting, what the job would refuse after waiting in the queue."""
    from pekd.engine.rundir import config_differences, read_run_config

    if not (run_dir.is_dir() and any(run_dir.iterdir())) or cfg.on_existing == "overwrite":
        return
    if cfg.on_existing == "fail":
        raise PekdError(f"run directory {str(run_dir)!r} is not empty and on_existing=fail")
    old_file = run_dir / "config.yaml"
    if not old_file.is_file():
        raise PekdError(f"run directory {str(run_dir)!r} is not empty and holds no pekd run (no config.yaml); "
                        "choose another run_dir or on_existing=overwrite")
    old = read_run_config(old_file, "restore it, or choose another run_dir or on_existing=overwrite")
    new = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(new, dict)
    diff = config_differences(old, new)
    if diff:
        raise PekdError(f"run directory {str(run_dir)!r} holds a run of another config (differs in "
                        f"{', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}); resubmit with its config, "
                        "another run_dir, or on_existing=overwrite")
