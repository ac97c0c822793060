"""Submit pekd training runs to SLURM (or run them locally) with submitit.

    pekd submit [options] [hydra overrides ...]
    pekd submit -m method.beta=5,25,100 method.q=1,3     # a sweep: one SLURM job array
    pekd submit --resume RUN_DIR [RUN_DIR ...]           # resubmit runs with their own config

(`pekd-submit` and, in a checkout, `python launchers/submit.py` are the same command.)

One task per GPU (--gpus per node x --nodes); on CPU-only clusters --gpus 0 runs --tasks-per-node tasks per
node over gloo. --runs-per-gpu K packs K single-process runs of a sweep onto each GPU instead, one array task per
pack (pekd.cluster.packing). Every run gets a run directory fixed now and named by its content (the config's name
and hash; a sweep's folder by its fixed overrides and swept keys), so a job that is preempted, times out or crashes is
requeued and resumes there (pekd.cluster.launch), and the same command typed again maps to the same directories and
resumes them. Every check that can fail - the overrides, the partition, the folder, an existing run
directory - runs before anything is submitted.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pekd.cluster.launch_guard import drop_busy
from pekd.cluster.packing import PackedJob, check_args, describe, packs, runs_per_task
from pekd.cluster.sbatch import DEFAULT_ARRAY_PARALLELISM, ScriptPreview, gres_gpus, site_parameters, time_limit
from pekd.cluster.submit_checks import (
    check_folder,
    check_gpu_build,
    check_inputs,
    check_partition,
    check_run_dir,
    controller_reachable,
    gpu_requirement,
    signal_lead_warning,
)
from pekd.config import Config
from pekd.engine.status import completed
from pekd.errors import PekdError, user_errors_exit


@dataclass
class PlannedRun:
    """One point of the submission: its overrides, composed config and run directory."""

    overrides: list[str]
    cfg: DictConfig
    run_dir: Path


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="pekd submit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Anything else is a Hydra override, e.g. experiment=cifar100_r56_r20.")
    ap.add_argument("-m", "--multirun", action="store_true",
                    help="sweep: comma lists and range() in overrides expand to one job array")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpus", type=int, default=1, help="GPUs per node, one task each; 0: CPU tasks over gloo")
    ap.add_argument("--tasks-per-node", type=int, default=1, help="tasks per node with --gpus 0")
    ap.add_argument("--runs-per-gpu", type=int, default=1, metavar="K",
                    help="pack K runs of a sweep onto each GPU (K processes of world size 1, under CUDA MPS where "
                    "the node has it), --gpus x K runs per array task; with --gpus 0, K CPU runs per task. Each run "
                    "keeps its run directory, requeue and report row (default 1: a task per run)")
    ap.add_argument("--cpus-per-gpu", type=int, help="CPUs per task (per GPU; per task with --gpus 0)")
    ap.add_argument("--mem-per-gpu", type=float, help="memory in GB per GPU (per task with --gpus 0)")
    ap.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    ap.add_argument("--time", type=time_limit, default=24 * 60, help="time limit per job: minutes (90), "
                    "H:M:S (24:00:00) or D-H:M:S (1-00:00:00); M:S (1:30) is refused, as SLURM would read it as "
                    "minutes:seconds; runs that need longer are requeued until done")
    ap.add_argument("--account")
    ap.add_argument("--qos")
    ap.add_argument("--constraint")
    ap.add_argument("--exclude", help="nodes to avoid, e.g. node[01-03]")
    ap.add_argument("--gres", help="generic resources per node, e.g. gpu:a100:8 (its GPU count must equal --gpus; "
                    "it then replaces --gpus-per-node in the script)")
    ap.add_argument("--setup", action="append", metavar="LINE", help="a shell line the job runs before training, "
                    "e.g. \"module load cuda/12.4\" or \"source /shared/venv/bin/activate\" (repeatable, in order)")
    ap.add_argument("--array-parallelism", type=int, default=DEFAULT_ARRAY_PARALLELISM,
                    help="array tasks (sweep points) running at once (default %(default)s)")
    ap.add_argument("--after", action="append", metavar="JOB", help="start after job JOB completed successfully "
                    "(afterok; repeatable), e.g. the teacher's job id")
    ap.add_argument("--dependency", help="a raw sbatch --dependency spec, e.g. afterany:1234 or singleton")
    ap.add_argument("--sbatch", action="append", metavar="KEY[=VALUE]", help="any other sbatch option, without "
                    "its dashes, e.g. --sbatch mail-type=END --sbatch reservation=big (repeatable)")
    ap.add_argument("--job-name", help="default: the config's name, else 'pekd'")
    ap.add_argument("--folder", type=Path, default=Path("runs"),
                    help="shared run root: run directories, submitit logs (submitit/), launch records")
    ap.add_argument("--signal-delay", type=int, default=120,
                    help="seconds before the time limit at which SLURM sends USR2 (time to checkpoint); a --time "
                    "no longer than this is warned about")
    ap.add_argument("--max-requeues", type=int, default=100,
                    help="time limits/preemptions a run may span (a 100-epoch ImageNet run spans many)")
    ap.add_argument("--max-failures", type=int, default=3,
                    help="crashes in a row without a new checkpoint before a job stops requeueing")
    ap.add_argument("--dry-run", action="store_true", help="check everything, print the sbatch script, exit; "
                    "off the cluster (no srun or controller) it previews the script and lists what it could not check")
    ap.add_argument("--local", action="store_true", help="run here with submitit's LocalExecutor (no SLURM), "
                    "wait for the runs and print the report")
    ap.add_argument("--parallel", type=int, default=1, help="with --local: runs trained side by side (set "
                    "trainer.threads so that they share the cores)")
    ap.add_argument("--resume", nargs="+", type=Path, metavar="RUN_DIR",
                    help="resubmit existing run directories with their own config.yaml (resources from here)")
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_intermixed_args(argv)
    for name in ("nodes", "time", "max_requeues", "max_failures", "tasks_per_node", "parallel", "array_parallelism",
                 "runs_per_gpu"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.gpus < 0:
        ap.error("--gpus must be 0 or more")
    if args.local and args.nodes > 1:
        ap.error("--local runs on this machine: one node")
    if args.local and (args.setup or args.gres or args.after or args.dependency or args.sbatch):
        ap.error("--local runs on this machine: --setup, --gres, --after, --dependency and --sbatch are for SLURM")
    if args.resume and (args.overrides or args.multirun):
        ap.error("--resume takes run directories only: their config.yaml says what to train (no overrides, no -m)")
    return args


def expand_overrides(overrides: list[str], multirun: bool) -> tuple[list[list[str]], list[str]]:
    """The override list of every point, and the keys that vary (Hydra's own sweep syntax, parsed by Hydra)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise PekdError(f"cannot parse overrides: {' '.join(str(e).split())}") from None
    choices: list[list[str]] = []
    swept: list[str] = []
    for o in parsed:
        if not o.is_sweep_override():
            choices.append([o.input_line])
            continue
        if not multirun:
            raise PekdError(f"{o.input_line!r} is a sweep; add -m to submit one job per value")
        if not o.is_discrete_sweep():
            raise PekdError(f"{o.input_line!r}: only lists (a,b,c) and range() sweeps can be submitted")
        key = o.get_key_element()
        choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        swept.append(key)
    return [list(point) for point in itertools.product(*choices)], swept


def point_slug(point: list[str], swept: list[str]) -> str:
    """A run directory name from the swept values: 'beta=5_q=1' (full keys where last parts collide)."""
    short = [k.split(".")[-1] for k in swept]
    names = short if len(set(short)) == len(short) else swept
    values = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in point}
    slug = "_".join(f"{n}={values[k]}" for n, k in zip(names, swept, strict=True))
    return re.sub(r"[^\w.=,+-]", "-", slug)


def sweep_folder(root: Path, job_name: str, points: list[list[str]], swept: list[str]) -> Path:
    """<root>/<job name>-<hash of the fixed overrides and the swept keys>: the same sweep typed again (or with
    more values of a swept key, e.g. more seeds) lands in the same folder, and its finished points resume."""
    fixed = sorted(o for o in points[0] if o.split("=", 1)[0] not in swept)
    digest = hashlib.sha256(json.dumps([fixed, sorted(swept)]).encode()).hexdigest()[:8]
    return root / f"{job_name}-{digest}"


def resumed_runs(run_dirs: list[Path]) -> list[PlannedRun]:
    """Existing run directories, each with its own resolved config.yaml (checked against the schema)."""
    from pekd.config import register, validate

    register()
    runs = []
    for d in run_dirs:
        d = d.resolve()
        if not (d / "config.yaml").is_file():
            raise PekdError(f"--resume {str(d)!r}: no config.yaml there, not a pekd run directory; give the folder "
                            "that holds config.yaml and checkpoints/")
        try:
            cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(d / "config.yaml"))
        except Exception as e:  # omegaconf raises several types for a damaged or foreign file
            raise PekdError(f"--resume {str(d)!r}: config.yaml does not fit pekd's schema ({e}); was it written "
                            "by another pekd version?") from None
        assert isinstance(cfg, DictConfig)
        validate(cfg)
        OmegaConf.update(cfg, "run_dir", str(d))
        OmegaConf.update(cfg, "on_existing", "resume")
        runs.append(PlannedRun([], cfg, d))
    return runs


def plan_runs(args: argparse.Namespace) -> tuple[list[PlannedRun], Path, str]:
    """Compose and check every point; returns the runs, the directory to point TensorBoard at, the job name."""
    from pekd.config.run_names import LEGACY_NAME, default_run_dir, prefer_existing, readable_name
    from pekd.train import compose_config

    if args.resume:
        runs = resumed_runs(args.resume)
        job_name = args.job_name or readable_name(runs[0].cfg)
        tb = runs[0].run_dir if len(runs) == 1 else Path(os.path.commonpath([r.run_dir for r in runs]))
        for r in runs:
            if args.gpus == 0 and (reason := gpu_requirement(r.cfg)):
                raise PekdError(f"--gpus 0, but {reason}; submit with --gpus N")
        return runs, tb, job_name
    points, swept = expand_overrides(args.overrides, args.multirun)
    user_run_dir = any(o.split("=", 1)[0].lstrip("+") == "run_dir" for o in args.overrides)
    if user_run_dir and len(points) > 1:
        raise PekdError("run_dir= names one run; a sweep gets one run directory per point under --folder")
    cfgs = [compose_config(point, check_names=False) for point in points]
    job_name = args.job_name or readable_name(cfgs[0])
    root = args.folder.resolve()
    if len(points) == 1:
        base = default_run_dir(cfgs[0], root)
    else:  # a sweep typed again finds its folder, also one named before ad-hoc runs had readable names
        base = sweep_folder(root, job_name, points, swept)
        if not (args.job_name or cfgs[0].name):
            base = prefer_existing(base, sweep_folder(root, LEGACY_NAME, points, swept))
    runs = []
    for point, cfg in zip(points, cfgs, strict=True):
        if user_run_dir:
            run_dir = Path(str(cfg.run_dir)).resolve()
        else:
            run_dir = base / point_slug(point, swept) if len(points) > 1 else base
        OmegaConf.update(cfg, "run_dir", str(run_dir))
        OmegaConf.resolve(cfg)  # ${oc.env:...} means what it means now, on every requeue
        if args.gpus == 0 and (reason := gpu_requirement(cfg)):
            raise PekdError(f"--gpus 0, but {reason}; submit with --gpus N")
        check_run_dir(run_dir, cfg)
        runs.append(PlannedRun(point, cfg, run_dir))
    if len({r.run_dir for r in runs}) < len(runs):
        raise PekdError("two sweep points map to the same run directory; make the swept values distinct")
    return runs, (base if len(runs) > 1 else runs[0].run_dir), job_name


def make_executor(args: argparse.Namespace, job_name: str) -> Any:
    """submitit's executor for the runs. On SLURM, srun ends every task once one fails (a rank must not wait for
    a dead peer), and the batch script then decides once whether to requeue (pekd.cluster.launch)."""
    import submitit

    from pekd.cluster.launch import batch_teardown

    packed = args.runs_per_gpu > 1  # one task holds all the node's GPUs and starts the runs itself
    tasks_per_node = 1 if packed else args.gpus if args.gpus > 0 else args.tasks_per_node
    # One folder per SLURM job. Not for --local: submitit's local controller creates its folder unformatted, which
    # left an empty literal `submitit/%j` beside the runs; a local job's files are named by its id anyway.
    folder = args.folder.resolve() / "submitit" / ("" if args.local else "%j")
    preview = args.dry_run and not args.local and shutil.which("srun") is None
    try:
        executor = ScriptPreview(folder, max_num_timeout=args.max_requeues) if preview else submitit.AutoExecutor(
            folder=folder, cluster="local" if args.local else "slurm", slurm_max_num_timeout=args.max_requeues)
    except RuntimeError as e:  # no srun on PATH
        raise PekdError(f"{e} (--local runs on this machine instead; --dry-run previews the script)") from None
    params: dict[str, Any] = {"timeout_min": args.time, "tasks_per_node": tasks_per_node, "name": job_name}
    gres_count = gres_gpus(args.gres) if args.gres else None
    if gres_count is not None and gres_count != args.gpus:
        raise PekdError(f"--gres {args.gres} asks for {gres_count} GPUs per node but --gpus is {args.gpus} (one task "
                        "per GPU); make them equal")
    if args.gpus > 0 and gres_count is None:
        params["gpus_per_node"] = args.gpus
    if args.cpus_per_gpu:
        params["cpus_per_task"] = args.cpus_per_gpu * (max(args.gpus, 1) if packed else 1)
    if not args.local:
        params |= {"nodes": args.nodes, "slurm_signal_delay_s": args.signal_delay,
                   "slurm_srun_args": ["--kill-on-bad-exit=1"],
                   "slurm_teardown": batch_teardown(sys.executable, folder)}
        optional = {"partition": args.partition, "account": args.account, "qos": args.qos,
                    "constraint": args.constraint, "exclude": args.exclude}
        params |= {f"slurm_{k}": v for k, v in optional.items() if v}
        params |= site_parameters(args)
        if args.mem_per_gpu and args.gpus > 0:
            params["slurm_mem_per_gpu"] = f"{args.mem_per_gpu:g}G"
    if args.mem_per_gpu and (args.gpus == 0 or args.local):
        params["mem_gb"] = args.mem_per_gpu * tasks_per_node
    if preview:
        executor.set(params)
    else:
        executor.update_parameters(**params)
    return executor


def sbatch_script(executor: Any, n_jobs: int) -> str:
    """The script submitit would hand to sbatch (through its renderer, so it is exactly that script)."""
    from submitit.slurm.slurm import _make_sbatch_string

    inner = getattr(executor, "_executor", executor)  # an AutoExecutor's SlurmExecutor, or a ScriptPreview
    return _make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder,
                               map_count=n_jobs if n_jobs > 1 else None, **inner.parameters)


def write_launch_record(folder: Path, job_ids: list[str], runs: list[PlannedRun], argv: list[str]) -> Path:
    """launches/<job id>.json under the run root: lets pekd.report flag runs that never wrote anything. job_ids
    names each run's job: the runs of a pack share their array task's."""
    record = {"submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": argv,
              "runs": [{"job_id": j, "run_dir": str(r.run_dir), "overrides": r.overrides}
                       for j, r in zip(job_ids, runs, strict=True)]}
    path = folder.resolve() / "launches" / f"{job_ids[0].split('_')[0]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def run_here(executor: Any, runs: list[PlannedRun], args: argparse.Namespace, argv: list[str],
             tb_dir: Path) -> list[Any]:
    """--local: at most --parallel runs at a time on this machine, then the same report a cluster sweep ends in.
    A run that fails is reported (its results.json says why), not raised: the others still finish."""
    from pekd.cluster.launch import TrainJob
    from pekd.report.cli import main as report

    jobs: list[Any] = []
    for r in runs:
        while sum(not j.done() for j in jobs) >= args.parallel:
            time.sleep(0.5)
        jobs.append(executor.submit(TrainJob(r.cfg, args.max_failures)))
        print(f"started {jobs[-1].job_id}: {r.run_dir}", flush=True)
    write_launch_record(args.folder, [j.job_id for j in jobs], runs, ["launchers/submit.py", *argv])
    for job, r in zip(jobs, runs, strict=True):
        job.wait()
        state = "done" if job.exception() is None else f"failed ({' '.join(str(job.exception()).split())[:200]})"
        print(f"  {job.job_id}: {r.run_dir}: {state}", flush=True)
    report([str(tb_dir)])
    return jobs


@user_errors_exit
def main(argv: list[str] | None = None) -> list[Any]:
    """Returns the submitted submitit jobs (none for --dry-run), for Python callers that want to wait on them; the
    command line goes through console()."""
    from pekd.cluster.launch import TrainJob

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    check_args(args)
    check_gpu_build(args.gpus)
    runs, tb_dir, job_name = plan_runs(args)
    check_inputs([r.cfg for r in runs], waits=bool(args.after or args.dependency))
    check_folder(args.folder)
    if not args.local and (warning := signal_lead_warning(args.time, args.signal_delay)):
        print(f"warning: {warning}", file=sys.stderr)
    unchecked = []
    if not args.local and args.dry_run and not controller_reachable():
        unchecked.append(f"partition {args.partition or '(default)'} and its time limit: no SLURM controller "
                         "answers sinfo here")
    elif not args.local:
        check_partition(args.partition, args.time)
    if args.after and args.dry_run:
        unchecked.append(f"that job(s) {', '.join(args.after)} exist: sbatch checks the dependency at submission")
    executor = make_executor(args, job_name)
    per_task = runs_per_task(args) if args.runs_per_gpu > 1 else 1
    if args.dry_run:
        for line in unchecked:
            print(f"# not checked: {line}")
        if per_task > 1:
            print("\n".join(describe(packs(runs, per_task), args)))
        else:
            for r in runs:
                print(f"# run {r.run_dir}: {' '.join(r.overrides)}")
        if not args.local:
            print(sbatch_script(executor, len(packs(runs, per_task))))
        return []
    done = {r.run_dir for r in runs if completed(r.run_dir)}
    for d in sorted(done):
        print(f"already completed, not submitted: {d}")
    runs = [r for r in runs if r.run_dir not in done]
    runs = drop_busy(runs, args.folder, queue=not args.local)  # leased, queued or running: never twice
    if not runs:
        print(f"nothing to submit; results: pekd report {tb_dir}")
        return []
    for r in runs:
        r.run_dir.mkdir(parents=True, exist_ok=True)
    if args.local:
        return run_here(executor, runs, args, argv, tb_dir)
    groups = packs(runs, per_task)
    with executor.batch():
        jobs = [executor.submit(PackedJob([r.cfg for r in group], args.gpus, args.runs_per_gpu, args.max_failures)
                                if per_task > 1 else TrainJob(group[0].cfg, args.max_failures)) for group in groups]
    job_ids = [job.job_id for job, group in zip(jobs, groups, strict=True) for _ in group]
    record = write_launch_record(args.folder, job_ids, runs, ["launchers/submit.py", *argv])
    main_id = jobs[0].job_id.split("_")[0]
    kind = f"job {main_id}" if len(jobs) == 1 else f"job array {main_id}"
    packing = f", {per_task} per task" if per_task > 1 else ""
    counted = f" ({len(runs)} runs{packing})" if len(runs) > 1 else ""
    print(f"submitted {kind}{counted}; record {record}")
    for job_id, r in zip(job_ids, runs, strict=True):
        print(f"  {job_id}: {r.run_dir}")
    print(f"follow:  tail -f {runs[0].run_dir / 'logs' / 'rank0.log'}\n"
          f"         tail -f {jobs[0].paths.stderr}\n"
          f"         tensorboard --logdir {tb_dir}\n"
          f"results: pekd report {tb_dir}")
    return jobs


def console(argv: list[str] | None = None) -> None:
    """`pekd submit`, `pekd-submit` and `python launchers/submit.py`: exit status 0 after a submission. A console
    script exits with what its function returns, and main's list of jobs made it print the list and exit 1."""
    main(argv)


if __name__ == "__main__":
    console()
