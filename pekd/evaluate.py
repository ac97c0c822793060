"""`python -m pekd.evaluate RUN_DIR | STUDENT_FILE [key=value ...]`: top-1/top-5 of an exported student.

RUN_DIR: its final student (student.pt) on the run's own evaluation set (config.yaml: data, subsets, memory
format, trainer.amp); a file inside a run directory (best.pt, ema.pt) is evaluated the same way. Any other
STUDENT_FILE (a pekd export, which says which model it is) needs the data to use: `data=cifar100 data.root=...`,
composed as `python -m pekd.train` composes it. Overrides change the run's config the same way, e.g.
`data.eval_batch_size=512` or `data.root=/elsewhere`. One process, on the GPU when there is one. With
trainer.amp=off the run's own last top-1 is reproduced exactly.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pekd.errors import PekdError, user_errors_exit


def target_config(target: Path, overrides: list[str]) -> tuple[Path, DictConfig]:
    """The student file to evaluate and the config whose evaluation set and settings apply."""
    from pekd.config import Config, validate
    from pekd.train import compose_config

    student = target / "student.pt" if target.is_dir() else target
    run_cfg = student.parent / "config.yaml"
    if not student.is_file():
        raise PekdError(f"{str(student)!r} not found: pass a finished run directory or an exported student file")
    if not run_cfg.is_file():  # evaluation needs no method or teacher: the ones given are ignored
        return student, compose_config(["method=ce", "teacher=none", *overrides])
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(run_cfg), OmegaConf.from_dotlist(overrides))
    except Exception as e:  # omegaconf's validation errors have several types
        raise PekdError(f"bad override for {str(run_cfg)!r} ({' '.join(str(e).split())}); a run directory takes "
                        "key=value overrides of its config.yaml, e.g. data.root=...") from None
    assert isinstance(cfg, DictConfig)
    validate(cfg)  # an override's value, as pekd.train checks it (data.val_subset=-5 evaluated all 10,000 images)
    return student, cfg


def evaluate_student(target: Path, overrides: list[str]) -> dict[str, Any]:
    """top1, top5 (percent), images and the files used, as the trainer's own evaluation computes them."""
    from pekd.data.pipelines import build_eval_loader
    from pekd.data.sources import build_source
    from pekd.engine.evaluation import Inputs, evaluate
    from pekd.engine.precision import amp_dtype, autocast
    from pekd.models import load_student

    student_file, cfg = target_config(target, overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_student(str(student_file))  # first: a file that is no student is the problem to name, not the data
    d = cfg.data
    source = build_source(d.source, d.root, "val").subset(d.val_subset, d.split_seed)
    if model.num_classes != source.num_classes or len(model.mean) != source.in_chans:
        raise PekdError(f"{str(student_file)!r} is a {model.num_classes}-class, {len(model.mean)}-channel model; "
                        f"data.source={d.source} has {source.num_classes} classes and {source.in_chans} channels")
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    dtype = amp_dtype(cfg.trainer.amp, device)

    def context() -> AbstractContextManager[Any]:
        return autocast(device, dtype)

    result = evaluate(model, build_eval_loader(source, d, rank=0, world=1), Inputs(model.mean, model.std, device,
                                                                                    memory_format), context)
    assert result is not None  # nothing asks it to stop
    return {"top1": result[0], "top5": result[1], "images": len(source), "student": str(student_file),
            "data": f"{d.source} val"}


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    r = evaluate_student(Path(args[0]), args[1:])
    print(f"{r['student']}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  ({r['images']} images, {r['data']})")


if __name__ == "__main__":
    main()
