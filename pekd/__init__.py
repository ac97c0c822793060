"""pekd: distributed training jobs for projector-ensemble feature distillation (PEFD, NeurIPS 2022).

The top level holds the commands and nothing else but errors.py (the one user-error type they all print): train,
train_cli (`pekd train`'s command line, parsed before the heavy imports), precompute, write_dataset, evaluate,
analyze, demo, study, and cli/__main__ (`pekd <command>`). Everything they are built from lives in a package named
after its concern: models, methods, data, teacher and engine (a training run), config (schema, config folders,
override checks), report (`pekd report`'s statistics and outputs), science (what analyze, demo and study share),
cluster (SLURM: submit, launch, status). docs/architecture.md draws the map.
"""

import os as _os

__version__ = "0.1.0"

# cuBLAS reads CUBLAS_WORKSPACE_CONFIG once per process, when its first handle is made (the first matmul): set
# later, a trainer.deterministic=true run after any other work in the process would fail at its first matmul. So
# pekd reserves a fixed workspace as soon as it is imported, before anything can run. ":4096:8" (8 x 4 MiB, the
# 32 MiB NVIDIA recommends on Hopper) is one of the two settings cuBLAS documents as reproducible, and harmless
# to a run that is not deterministic. A value the user set is kept (pekd.engine.determinism checks it).
_os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
