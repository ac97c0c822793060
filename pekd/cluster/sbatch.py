"""The sbatch options a site needs beyond submitit's defaults, read from submit.py's command line.

Sites differ in what a job must say: `module load` lines before the first Python, GPUs as typed GRES
(`gpu:a100:8`), a cap on how many array tasks run at once (a 200-point sweep must not ask for 200 GPUs at once),
a dependency on an earlier job (teachers before students), and options no launcher can foresee (`--mail-type`,
`--reservation`, `--licenses`). Each maps onto a submitit parameter (setup, gres, array_parallelism,
additional_parameters), so the script submitit renders - and `--dry-run` prints - is the one sbatch gets.
"""

from __future__ import annotations

import math
import re
from typing import Any

import submitit

from pekd.errors import PekdError

# Options submit.py sets itself: a pass-through must not silently fight them.
OWN_OPTIONS = {"job-name", "time", "nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task", "partition",
               "account", "qos", "constraint", "exclude", "gres", "dependency", "array", "output", "error",
               "signal", "open-mode", "mem-per-gpu", "mem", "requeue", "wckey"}
DEFAULT_ARRAY_PARALLELISM = 8
_TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<clock>\d+(?::\d+){0,2})$")
_JOB_ID = re.compile(r"^\d+(?:_\d+)?$")


def slurm_minutes(text: str, what: str = "--time") -> int | None:
    """A SLURM time ('M', 'M:S', 'H:M:S', 'D-H', 'D-H:M', 'D-H:M:S'; 'infinite') in whole minutes, seconds rounded
    up as SLURM does; None for no limit."""
    if text.strip().lower() in ("infinite", "unlimited", "n/a"):
        return None
    match = _TIME.match(text.strip())
    if not match:
        raise PekdError(f"{what} {text!r} is not a SLURM time; write minutes (90), H:M:S (24:00:00) or "
                        "D-H:M:S (1-00:00:00)")
    days, parts = match["days"], [int(p) for p in match["clock"].split(":")]
    if days is not None:
        hours, mins, secs = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        hours, mins, secs = 0, parts[0], 0
    else:
        hours, mins, secs = ([0] + parts)[-3:]
    return (int(days or 0) * 24 + hours) * 60 + mins + math.ceil(secs / 60)


def time_limit(text: str) -> int:
    """--time: a limit in minutes (at least 1; a job needs a time limit to be requeued before it).

    SLURM reads `1:30` as 1 minute 30 seconds (M:S) where most people mean an hour and a half, and the job then
    ends at its first time limit, 2 minutes in; two fields without a day are therefore refused here, naming both
    readings. sinfo's own limits do use M:S (`30:00`), which slurm_minutes reads as SLURM does."""
    clock = text.strip()
    if re.fullmatch(r"\d+:\d+", clock):
        mins, secs = (int(p) for p in clock.split(":"))
        raise PekdError(f"--time {text!r} is ambiguous: SLURM reads it as {mins} min {secs} s (M:S), not "
                        f"{mins} h {secs} min; write minutes ({mins * 60 + secs}) or H:M:S ({mins}:{secs:02d}:00) "
                        f"for {mins} h {secs} min, or 0:{mins:02d}:{secs:02d} if you mean M:S")
    minutes = slurm_minutes(text)
    if minutes is None or minutes < 1:
        raise PekdError(f"--time {text!r}: give a positive time limit (runs longer than it are requeued until done)")
    return minutes


def gres_gpus(gres: str) -> int | None:
    """The GPU count a --gres string asks for per node ('gpu:a100:8' -> 8, 'gpu:2,nvme:1' -> 2); None if no GPUs."""
    for item in gres.split(","):
        fields = item.split(":")
        if fields[0] == "gpu":
            count = fields[-1] if len(fields) > 1 and fields[-1].isdigit() else "1"
            return int(count)
    return None


def dependency(after: list[str], spec: str | None) -> str | None:
    """--after JOB (repeatable: start when those jobs completed successfully) and/or a raw --dependency spec."""
    for job in after:
        if not _JOB_ID.match(job):
            raise PekdError(f"--after {job!r} is not a SLURM job id (e.g. 1234 or 1234_5); use --dependency for "
                            "other kinds (afterany:1234, singleton)")
    parts = [f"afterok:{':'.join(after)}"] if after else []
    if spec:
        parts.append(spec)
    return ",".join(parts) or None


def pass_through(options: list[str]) -> dict[str, Any]:
    """--sbatch KEY[=VALUE] (repeatable) -> submitit's additional_parameters: any option this launcher lacks."""
    params: dict[str, Any] = {}
    for option in options:
        key, has_value, value = option.lstrip("-").partition("=")
        key = key.strip()
        if not key or not re.match(r"^[a-z][a-z0-9-]*$", key):
            raise PekdError(f"--sbatch {option!r}: write an sbatch option without its dashes, e.g. "
                            "--sbatch mail-type=END or --sbatch exclusive")
        if key in OWN_OPTIONS:
            raise PekdError(f"--sbatch {key}: submit.py sets --{key} itself; use its own option (see --help)")
        params[key] = value if has_value else True
    return params


def site_parameters(args: Any) -> dict[str, Any]:
    """The SLURM-only submitit parameters (slurm_ prefixed) for setup lines, GRES, array cap, dependency, extras."""
    params: dict[str, Any] = {"slurm_array_parallelism": args.array_parallelism}
    if args.setup:
        params["slurm_setup"] = list(args.setup)
    if args.gres:
        params["slurm_gres"] = args.gres
    dep = dependency(args.after or [], args.dependency)
    if dep:
        params["slurm_dependency"] = dep
    extra = pass_through(args.sbatch or [])
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


class ScriptPreview(submitit.SlurmExecutor):
    """A SlurmExecutor that renders its sbatch script where there is no srun (--dry-run off the cluster): submitit
    refuses to build a SlurmExecutor without srun on PATH, although rendering the script needs none."""

    @classmethod
    def affinity(cls) -> int:
        return 1

    def _internal_process_submissions(self, delayed_submissions: list[Any]) -> list[Any]:
        raise PekdError("a script preview (--dry-run without SLURM) cannot submit jobs")

    def set(self, params: dict[str, Any]) -> None:
        """Take AutoExecutor-style parameters (generic names and slurm_-prefixed ones), as AutoExecutor would."""
        generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        native = {k.removeprefix("slurm_"): v for k, v in params.items() if k.startswith("slurm_")}
        self.update_parameters(**self._convert_parameters(generic), **native)
