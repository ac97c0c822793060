"""`python -m pekd.train experiment=... [key=value ...]`: compose the config with Hydra and train one run.

Works alone, under torchrun, and inside a SLURM/submitit task (the process group comes from the environment).
A user error prints one line and exits with status 2; a preempted run exits with status 3 after checkpointing
(run the same command again to resume).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from pekd.config import register, validate
from pekd.config.dirs import CONFIG_DIR, CONFIG_DIR_ENV, CONFIG_PATH_ENV, searchpath_override
from pekd.errors import PekdError

if TYPE_CHECKING:  # torch is imported where it is used, so `--help` answers before the heavy imports
    import torch

log = logging.getLogger("pekd")


def compose_config(overrides: list[str], config_dir: str | Path | None = None, check_names: bool = True) -> DictConfig:
    """Hydra compose of configs/config.yaml (and the user's PEKD_CONFIG_PATH folders); unknown keys, names and bad
    values become one PekdError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from pekd.config import Config
    from pekd.config.overrides import check_model_names, check_override, check_schema_keys

    register()
    folder = Path(config_dir or CONFIG_DIR).resolve()
    if not (folder / "config.yaml").is_file():
        raise PekdError(f"no config.yaml in {str(folder)!r}; set {CONFIG_DIR_ENV} to pekd's configs/ folder (or "
                        "unset it to use the configs installed with pekd)")
    try:  # the user's overrides: no hydra.* (pekd's own search path is added below), no sweeps
        for o in OverridesParser.create().parse_overrides(list(overrides)):
            check_override(o)
    except HydraException as e:
        raise PekdError(f"bad override: {' '.join(str(e).split())}") from None
    overrides = searchpath_override() + list(overrides)
    try:
        with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
            # config.yaml lists `optional experiment`: Hydra silently skips a name it cannot find, so a typo
            # would train the default recipe instead of the one asked for
            recipes = GlobalHydra.instance().config_loader().get_group_options("experiment", config_name="config",
                                                                               overrides=overrides)
            for o in OverridesParser.create().parse_overrides(overrides):
                name = o.value()
                if o.key_or_group == "experiment" and isinstance(name, str) and name not in recipes:
                    raise PekdError(f"experiment={name!r}: no such recipe in configs/experiment/ or the "
                                    f"experiment/ folder of a {CONFIG_PATH_ENV} entry; choose one of {recipes}")
            cfg = compose("config", overrides=overrides)
        check_schema_keys(cfg, Config)
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        cause = f" ({e.__cause__})" if e.__cause__ else ""
        msg = " ".join(f"{e}{cause}".split())
        raise PekdError(f"bad config: {msg}; see `python -m pekd.train --help` and `--cfg job` for the valid "
                        "groups and keys") from None
    if check_names:  # launchers/submit.py checks them with the run's files, to list every problem at once
        check_model_names(cfg)
    validate(cfg)
    if not cfg.run_dir:
        from pekd.config.run_names import default_run_dir

        OmegaConf.update(cfg, "run_dir", str(default_run_dir(cfg)))
    return cfg


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one run described by cfg; returns results (status 'completed', 'preempted' or 'stopped')."""
    import torch

    from pekd.data.extras import require
    from pekd.data.order import Plan
    from pekd.data.pipelines import build_eval_loader, build_train_loader
    from pekd.data.sources import run_sources
    from pekd.engine import checkpoint as ckpt
    from pekd.engine import determinism
    from pekd.engine.devices import describe
    from pekd.engine.distributed import backend, broadcast_object, init_distributed
    from pekd.engine.logs import setup_logging
    from pekd.engine.precision import NAMES, amp_dtype
    from pekd.engine.rundir import prepare
    from pekd.engine.tracker import require_tracker
    from pekd.engine.trainer import Trainer
    from pekd.methods import TrainModule, build_method
    from pekd.models import build_model, load_weights
    from pekd.teacher.bank_views import resolve as resolve_bank_views
    from pekd.teacher.fingerprint import check_teacher_unchanged

    validate(cfg)
    require(cfg.data.pipeline)  # a missing FFCV/DALI extra is one error before any work, not a traceback later
    require_tracker(cfg.tracker)  # likewise tracker.name=wandb without the wandb extra
    env = init_distributed(cfg.trainer.dist_timeout_s)
    run_dir = Path(str(broadcast_object(str(cfg.run_dir)))).resolve()
    cfg = cfg.copy()
    OmegaConf.update(cfg, "run_dir", str(run_dir))
    threads = cfg.trainer.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    determinism.configure(cfg.trainer.deterministic, env.device)

    train_src, val_src = run_sources(cfg)
    plan = Plan.make(cfg.data.batch_size, env.world, cfg.data.max_micro_batch)
    if len(train_src) < plan.global_batch:  # checked before the run directory gets its first byte
        raise PekdError(f"the training set has {len(train_src)} samples, fewer than one global batch "
                        f"(data.batch_size={plan.global_batch}); lower data.batch_size or use more data")
    same_views = cfg.teacher.mode == "bank" or (cfg.teacher.mode == "online" and cfg.bank.online_same_views)
    views = resolve_bank_views(cfg, train_src) if same_views else None  # the start line says which

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    student = build_model(cfg.model.name, train_src.num_classes, train_src.in_chans)
    if cfg.model.weights:
        load_weights(student, cfg.model.weights)
    # the teacher's (discarded) init must not shift the projectors' init; only this process's own GPU is forked
    # (by default fork_rng saves and restores every visible GPU's generator, making a context on each of them)
    with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []):
        teacher, d_t = _build_teacher(cfg, train_src, env.device, build_model, load_weights)
    method = build_method(cfg.method, student.feature_dim, d_t, train_src.num_classes)
    if method.needs.feature and teacher is None:
        raise PekdError(f"method.name={cfg.method.name} needs teacher features; set teacher.mode=online or bank")

    problem, lease = None, None
    if env.is_main:  # rank 0 alone inspects and writes the run directory (holding its lease); every rank raises
        try:
            _, lease = prepare(run_dir, cfg)
            if teacher is not None and cfg.teacher.mode == "online":  # a bank checks its own teacher's sha256
                check_teacher_unchanged(run_dir, cfg.teacher.weights)
        except PekdError as e:
            problem = str(e)
    problem = broadcast_object(problem)
    if problem:
        if lease is not None:
            lease.release()
        raise PekdError(str(problem))
    try:
        setup_logging(run_dir, env.rank)
        log.info("run %s: %s -> %s with %s on %s, backend %s, amp %s, world %d (%d accumulation steps of %d per "
                 "process)%s", run_dir, cfg.teacher.name if teacher is not None else "-", cfg.model.name,
                 cfg.method.name, describe(env.device), backend(), NAMES[amp_dtype(cfg.trainer.amp, env.device)],
                 env.world, plan.accum, plan.micro, f"; {views.note()}" if views else "")

        rows = teacher.rows if cfg.teacher.mode == "bank" and teacher is not None else None  # gathered by the pipeline
        train_loader = build_train_loader(train_src, cfg.data, plan=plan, rank=env.rank, seed=cfg.seed,
                                          bank_views=views.K if views else 0, bank_seed=cfg.bank.seed,
                                          exact=bool(views and views.exact), rows=rows)
        eval_loader = build_eval_loader(val_src, cfg.data, rank=env.rank, world=env.world)
        torch.set_num_threads(threads)  # building an FFCV loader sets the process's thread count to its worker count
        trainer = Trainer(cfg, env, run_dir, TrainModule(student, method), teacher, train_loader, eval_loader,
                          train_src.mean, train_src.std, plan,
                          data_sets={"train": train_src.identity(), "eval": val_src.identity()}, lease=lease)
        found, problem = None, None
        if env.is_main:
            try:
                hit = ckpt.newest_to_resume(run_dir / "checkpoints")
                found = str(hit[0]) if hit else None
            except PekdError as e:
                problem = str(e)
        found, problem = broadcast_object((found, problem))  # type: ignore[misc]
        if problem:
            raise PekdError(str(problem))
        if found:
            trainer.resume(ckpt.load(Path(str(found))), Path(str(found)))
        if cfg.trainer.analyze:  # the diagnostics from the final evaluation's forward pass
            if env.world > 1:
                raise PekdError("trainer.analyze=true needs one process (under DDP each rank evaluates its own "
                                "shard); train with trainer.analyze=false and run `python -m pekd.analyze RUN_DIR`")
            from pekd.science.fused_analysis import FinalEvalAnalysis

            trainer.final_eval = FinalEvalAnalysis(cfg, run_dir, trainer.module, train_src, val_src, env.device,
                                                   trainer.memory_format)
        results = trainer.fit()
        if trainer.final_eval is not None and results["status"] == "completed":
            trainer.final_eval.finish()
        return results
    finally:
        if lease is not None:
            lease.release()


def run_to_completion(overrides: list[str], rerun: str = "the same command") -> dict[str, Any]:
    """One run in this process for drivers that run many (pekd.demo, pekd.study; also in their pool workers):
    a run that stops before completing (a signal) is an error telling the user what to rerun to resume it."""
    import time

    from pekd.engine.distributed import shutdown

    cfg = compose_config(overrides)
    t0 = time.perf_counter()
    try:
        results = run(cfg)
    finally:
        shutdown()
    if results["status"] == "preempted":  # a stop signal: the driver, too, exits with a stopped run's status
        print(f"run {cfg.run_dir} stopped at a step boundary and checkpointed; rerun {rerun} to resume it",
              file=sys.stderr, flush=True)
        raise SystemExit(3)
    if results["status"] != "completed":
        raise PekdError(f"run {cfg.run_dir} stopped with status {results['status']}; rerun {rerun} to resume it")
    return {"run_dir": str(cfg.run_dir), "last_top1": results["last_top1"], "seconds": time.perf_counter() - t0}


def _build_teacher(cfg: DictConfig, src: Any, device: torch.device, build_model: Any,
                   load_weights: Any) -> tuple[Any, int | None]:
    tcfg = cfg.teacher
    needed = cfg.method.name != "ce" or cfg.method.kd_weight > 0  # CE-only ignores a configured teacher
    if tcfg.mode == "none" or not tcfg.name or not needed:
        return None, None
    if tcfg.mode == "bank":
        from pekd.teacher.bank import BankTeacher

        teacher = BankTeacher.open(tcfg.bank, cfg, src)
        return teacher, teacher.feature_dim
    from pekd.teacher.online import OnlineTeacher

    model = build_model(tcfg.name, src.num_classes, src.in_chans)
    load_weights(model, tcfg.weights)
    return OnlineTeacher(model.to(device), cfg.trainer.channels_last), model.feature_dim


def main(argv: list[str] | None = None) -> None:
    """`python -m pekd.train`: the same command as `pekd train` (pekd.train_cli)."""
    from pekd.train_cli import main as train_main

    train_main(argv)


if __name__ == "__main__":
    main()
