"""What trainer.analyze saves per run: the diagnostics from the final evaluation's forward pass, against the
evaluation followed by pekd.analyze's second pass.

`python -m bench.fused_analysis RUN_DIR [--rounds 3]` on a completed PEFD run (the demo's
runs/demo/pefd_q3/seed0): three candidates, interleaved in one process, each with the teacher's outputs already
cached (as for every run of a sweep but the first in a process): the run's final evaluation alone; the evaluation
feeding the diagnostics plus the training-set pass (trainer.analyze=true); the evaluation and then the second pass
(pekd.analyze). One thread, fp32, the run's own loaders.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

import torch

from bench.timing import interleaved, table


def main() -> None:
    from pekd.analyze import analyze, check_run
    from pekd.data.pipelines import build_eval_loader
    from pekd.data.sources import run_sources
    from pekd.engine import checkpoint as ckpt
    from pekd.engine.evaluation import Inputs, evaluate
    from pekd.methods import TrainModule, build_method
    from pekd.models import build_model, feature_dim
    from pekd.science.fused_analysis import FinalEvalAnalysis

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = check_run(args.run_dir, "student.pt")
    train_src, test_src = run_sources(cfg)
    hit = ckpt.newest_valid(args.run_dir / "checkpoints")
    assert hit is not None, "the run has no valid checkpoint"
    student = build_model(cfg.model.name, train_src.num_classes, train_src.in_chans)
    module = TrainModule(student, build_method(cfg.method, student.feature_dim, feature_dim(cfg.teacher.name),
                                               train_src.num_classes))
    module.load_state_dict(hit[1]["model"])
    fmt = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    device = torch.device("cpu")
    module.to(memory_format=fmt)
    loader = build_eval_loader(test_src, cfg.data, rank=0, world=1)
    inputs = Inputs(test_src.mean, test_src.std, device, fmt)
    hook = FinalEvalAnalysis(cfg, args.run_dir, module, train_src, test_src, device, fmt)
    scratch = args.run_dir / "bench-analysis"  # the fused candidate writes its analysis.json here, not in the run
    scratch.mkdir(exist_ok=True)
    hook.run_dir = scratch

    def eval_only() -> None:
        evaluate(module.student, loader, inputs, nullcontext)

    def fused() -> None:
        evaluate(module.student, loader, inputs, nullcontext, observe=hook.start())
        hook.finish()

    def second_pass() -> None:
        evaluate(module.student, loader, inputs, nullcontext)
        analyze(args.run_dir, cfg, "student.pt")

    times = interleaved({"final evaluation": eval_only, "evaluation + fused diagnostics": fused,
                         "evaluation, then pekd.analyze": second_pass}, rounds=args.rounds, reps=1, warmup=1)
    print(f"{args.run_dir}: {cfg.model.name} <- {cfg.teacher.name} ({cfg.method.name}), {len(test_src)} test / "
          f"{len(train_src)} train images, 1 thread, fp32\n")
    print(table(times, "final evaluation", item="runs/s"))
    base = times["final evaluation"]
    extra_fused, extra_second = times["evaluation + fused diagnostics"] - base, \
        times["evaluation, then pekd.analyze"] - base
    print(f"\ndiagnostics per run: fused {extra_fused:.2f} s, second pass {extra_second:.2f} s; saved "
          f"{extra_second - extra_fused:.2f} s per run ({(extra_second - extra_fused) / max(extra_second, 1e-9):.0%})")


if __name__ == "__main__":
    main()
