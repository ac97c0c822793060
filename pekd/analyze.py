"""`python -m pekd.analyze RUN_DIR [RUN_DIR ...] [--weights student.pt|best.pt]`: what distillation did.

The diagnostics the extended PEFD paper ("Understanding the Effects of Projectors in Knowledge Distillation")
measures, for a trained student and its teacher: train vs test top-1 and their gap, linear CKA between the
student's (and the projector ensemble's) pooled features and the teacher's, and calibration (ECE, mean
confidence minus accuracy). The run is rebuilt from its own config.yaml -- the same train subset and test set,
the evaluation transform on both (no augmentation) -- and each set is read once, every model seeing each batch,
with streaming accumulators (O(d^2) memory, never an n x n matrix). Writes RUN_DIR/analysis.json (a flat object
that pekd.report reads) and prints a short table per run. Models run in eval mode, fp32, in the run's memory
format, so with trainer.amp=off the test top-1 equals the run's own last evaluation. For a projector ensemble it
also measures, per projector, the fraction of output units no test image activates, and the final alignment (mean 1
- cos between the ensemble's projection and the teacher's feature; for equal feature sizes the student's own
feature's too, FD's alignment); for KD with a logit projector, the test top-1 of the projector's output beside the
raw logits' (the checkpoint's projector, as the run's own final evaluation reads the live one). A run trained with
trainer.analyze=true wrote the same analysis.json from its final evaluation's forward pass
(pekd.science.fused_analysis); this second pass is for the others.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pekd.engine.rundir import read_run_config
from pekd.errors import PekdError, user_errors_exit
from pekd.science.diagnostics import KEYS, Meters, Models, TeacherOutputs, observe, results

WEIGHTS = ("student.pt", "best.pt")
__all__ = ["KEYS", "WEIGHTS", "analyze", "main", "teacher_cache"]


def check_run(run_dir: Path, weights: str) -> DictConfig:
    """The run's resolved config, after the checks that need no model: fail on any run before analysing one."""
    if not run_dir.is_dir():
        raise PekdError(f"{str(run_dir)!r} is not a directory; pass a run directory made by `python -m pekd.train`")
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise PekdError(f"{str(run_dir)!r} has no config.yaml, so it is not a pekd run directory; pass the folder "
                        "`python -m pekd.train` wrote (run_dir=...)")
    cfg = OmegaConf.create(read_run_config(cfg_file, "restore it from the run's backup, or retrain the run"))
    if "split_seed" not in cfg.data:
        if cfg.data.subset or cfg.data.val_subset:
            raise PekdError(f"{str(cfg_file)!r} predates data.split_seed: its subsets were drawn with seed="
                            f"{cfg.seed}; add `split_seed: {cfg.seed}` under data: in that file to analyse it")
        OmegaConf.update(cfg, "data.split_seed", 0, force_add=True)
    if not (run_dir / weights).is_file():
        raise PekdError(f"{str(run_dir / weights)!r} not found: the run has not finished (student.pt is written "
                        "at the end, best.pt after the first evaluation); finish or resume it, or pick --weights")
    t = cfg.teacher
    if has_teacher(cfg) and not Path(t.weights).is_file():
        raise PekdError(f"teacher.weights={t.weights!r} in {str(cfg_file)!r} not found (a relative path is read "
                        f"from {str(Path.cwd())!r}); run from the directory the run was trained in, or fix the path "
                        "in config.yaml")
    return cfg


def has_teacher(cfg: DictConfig) -> bool:
    """A configured teacher with weights is measured whatever the method: a CE run of an experiment is compared
    with the teacher its distilled siblings learn from."""
    t = cfg.teacher
    return bool(t.name) and bool(t.weights)


def build_models(cfg: DictConfig, run_dir: Path, weights: str, num_classes: int, in_chans: int) -> Models:
    """Student from the exported weights, frozen teacher, and for PEFD the projectors from the newest checkpoint."""
    from pekd.models import build_model, load_weights

    student = build_model(cfg.model.name, num_classes, in_chans)
    load_weights(student, str(run_dir / weights), config_key="model.name")
    models = Models(student)
    if has_teacher(cfg):
        models.teacher = build_model(cfg.teacher.name, num_classes, in_chans)
        load_weights(models.teacher, str(cfg.teacher.weights))
    if cfg.method.name == "pefd" or cfg.method.get("logit_projector"):
        _attach_projector(models, cfg, run_dir, weights, num_classes, in_chans)
    return models


def _attach_projector(models: Models, cfg: DictConfig, run_dir: Path, weights: str, num_classes: int,
                      in_chans: int) -> None:
    """The projectors (PEFD's ensemble, KD's logit projector) are not exported; they live with their student in
    the newest valid checkpoint."""
    from pekd.engine import checkpoint as ckpt
    from pekd.methods import TrainModule, build_method
    from pekd.models import build_model

    pefd = cfg.method.name == "pefd"
    if pefd and models.teacher is None:
        models.notes.append("no teacher weights in config.yaml: projector CKA not measured")
        return
    hit = ckpt.newest_valid(run_dir / "checkpoints")
    if hit is None:
        what = "projector CKA" if pefd else "the projected logits' top-1"
        models.notes.append(f"no valid checkpoint in {str(run_dir / 'checkpoints')!r}: {what} not measured")
        return
    path, state = hit
    d_t = models.teacher.feature_dim if models.teacher is not None else None
    module = TrainModule(build_model(cfg.model.name, num_classes, in_chans),
                         build_method(cfg.method, models.student.feature_dim, d_t, num_classes))
    try:
        module.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise PekdError(f"checkpoint {str(path)!r} does not hold this run's student and projectors "
                        f"({str(e).splitlines()[0]}); was config.yaml edited after training?") from None
    if pefd:
        models.projector = module.method.projector
    else:
        models.logit_projector = module.method.logit_projector
    if not _same_weights(module.student, models.student):
        models.projector_student = module.student
        models.notes.append(f"{weights} differs from the student in {path.name}: the projectors are measured on "
                            f"that checkpoint's student, the one they were trained with")


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@torch.no_grad()
def measure(loader: Any, models: Models, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
            memory_format: torch.memory_format, features: bool, cached: TeacherOutputs | None = None) -> Meters:
    """One pass over loader, every model on each batch; features=False skips CKA and the projector (the training
    set's pass). `cached`: the teacher's outputs on this set, filled where this pass computes them."""
    m = Meters()
    mu = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    sigma = torch.tensor(std, device=device).view(1, -1, 1, 1)
    for batch in loader:
        index = batch.index
        batch = batch.to(device)
        x = batch.images
        if x.dtype == torch.uint8:  # as Trainer.prepare: pipelines may also hand over normalised floats
            x = (x.float() - mu) / sigma
        x = x.contiguous(memory_format=memory_format)
        feat_s, logits_s = models.student(x)
        observe(m, models, x, batch.labels, index, feat_s, logits_s, cached, features)
    return m


# Per process: runs of one invocation (or one demo worker) share their teacher's outputs on each set.
_TEACHER_OUTPUTS: dict[str, TeacherOutputs] = {}


def teacher_cache(cfg: DictConfig, source: Any, split: str) -> TeacherOutputs:
    """This process's store of the teacher's outputs on one set (host memory, filled as passes compute them)."""
    return _TEACHER_OUTPUTS.setdefault(_cache_key(cfg, source, split), TeacherOutputs(len(source)))


def _cache_key(cfg: DictConfig, source: Any, split: str) -> str:
    """What the teacher's outputs on a set depend on: the teacher, its weights file, the images and transform."""
    import json

    weights = Path(cfg.teacher.weights).resolve()
    d = cfg.data
    return json.dumps([cfg.teacher.name, str(weights), weights.stat().st_mtime_ns, source.identity(), split,
                       d.pipeline, d.image_size, d.eval_resize, d.train_beton, d.val_beton,
                       bool(cfg.trainer.channels_last)], sort_keys=True, default=str)


def analyze(run_dir: Path, cfg: DictConfig, weights: str) -> tuple[dict[str, Any], list[str]]:
    """The analysis.json object of one run (checked by check_run) and notes worth printing with it."""
    from pekd.data.pipelines import build_eval_loader
    from pekd.data.sources import run_sources

    train_src, test_src = run_sources(cfg)
    models = build_models(cfg, run_dir, weights, train_src.num_classes, train_src.in_chans)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fmt = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    for model in (models.student, models.teacher, models.projector, models.projector_student):
        if model is not None:
            model.to(device, memory_format=fmt).eval()
    has_t = models.teacher is not None
    test = measure(build_eval_loader(test_src, cfg.data, rank=0, world=1), models, test_src.mean, test_src.std,
                   device, fmt, features=True, cached=teacher_cache(cfg, test_src, "test") if has_t else None)
    train = measure(build_eval_loader(train_src, train_eval_data(cfg), rank=0, world=1), models, train_src.mean,
                    train_src.std, device, fmt, features=False,
                    cached=teacher_cache(cfg, train_src, "train") if has_t else None)
    return results(test, train, models, weights, test_src.identity(), train_src.identity(),
                   "pekd.analyze"), models.notes


def train_eval_data(cfg: DictConfig) -> Any:
    """The data section that reads the training set with the evaluation transform (no augmentation): an FFCV run
    reads its train .beton."""
    data = cfg.data.copy()
    data.val_beton = cfg.data.train_beton
    return data


def format_table(run_dir: Path, cfg: DictConfig, a: dict[str, Any], notes: list[str]) -> str:
    """A few lines per run: accuracies and gap, calibration, similarity to the teacher."""
    def f(v: Any, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    teacher = cfg.teacher.name if a["teacher_test_top1"] is not None else "no teacher"
    lines = [f"{run_dir}: {a['weights']}, {cfg.model.name} <- {teacher} ({cfg.method.name}), "
             f"{a['n_train']} train / {a['n_test']} test images",
             f"  {'':8} {'train top-1':>11} {'test top-1':>10} {'gap':>6} {'ECE':>6} {'conf-acc':>8} "
             f"{'CKA to teacher':>14}",
             f"  {'student':8} {f(a['student_train_top1']):>11} {f(a['student_test_top1']):>10} "
             f"{f(a['train_test_gap']):>6} {f(a['student_ece']):>6} {f(a['student_overconfidence'], '+.2f'):>8} "
             f"{f(a['student_cka'], '.4f'):>14}"]
    if a["teacher_test_top1"] is not None:
        gap = a["teacher_train_top1"] - a["teacher_test_top1"]
        lines.append(f"  {'teacher':8} {f(a['teacher_train_top1']):>11} {f(a['teacher_test_top1']):>10} "
                     f"{f(gap):>6} {f(a['teacher_ece']):>6} {f(a['teacher_overconfidence'], '+.2f'):>8}")
    if a["projected_logits_test_top1"] is not None:
        lines.append(f"  logit projector's output (Linear(logits), dropped at test time), test top-1: "
                     f"{f(a['projected_logits_test_top1'])}")
    if a["student_cos_distance"] is not None:
        lines.append(f"  student feature, 1 - cos to teacher: {f(a['student_cos_distance'], '.4f')}")
    if a["projector_cka"] is not None:
        dead = ", ".join(f"{x:.1%}" for x in a["projector_dead_fractions"])
        lines.append(f"  projector ensemble output, CKA to teacher: {f(a['projector_cka'], '.4f')}, 1 - cos to "
                     f"teacher: {f(a['projector_cos_distance'], '.4f')}; dead output units per projector: {dead}")
    lines += [f"  note: {n}" for n in notes]
    return "\n".join(lines)


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    from pekd.engine.rundir import write_json

    parser = argparse.ArgumentParser(prog="python -m pekd.analyze", description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--weights", choices=WEIGHTS, default="student.pt",
                        help="the exported student to analyse (default: student.pt, the final one)")
    parser.add_argument("--quiet", action="store_true", help="write analysis.json only, print no tables")
    args = parser.parse_args(argv)
    configs = [check_run(d, args.weights) for d in args.run_dirs]  # every cheap check before any long pass
    for run_dir, cfg in zip(args.run_dirs, configs, strict=True):
        result, notes = analyze(run_dir, cfg, args.weights)
        write_json(run_dir / "analysis.json", result)
        if not args.quiet:
            print(format_table(run_dir, cfg, result, notes), flush=True)


if __name__ == "__main__":
    main()
