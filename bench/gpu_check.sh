#!/usr/bin/env bash
# The GPU paths in one short run (about 5 minutes): NCCL DDP, fp16+GradScaler and bf16 AMP, interrupt-resume
# equality on CUDA, DALI mixed decode, resnet18 images/s, and the feature bank's step vs the online teacher.
# Run it on a CUDA machine after `make setup`:
#   bash bench/gpu_check.sh 2>&1 | tee gpu_check.log
# Figures go into the README with the date and the GPU's name.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# No CUBLAS_WORKSPACE_CONFIG here: trainer.deterministic sets it itself (tests/test_cuda.py checks that).
status=0
run() { echo; echo "### $*"; "$@" || { echo "FAILED: $*"; status=1; }; }

run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
ngpu=$($PY -c "import torch; print(torch.cuda.device_count())")
# NCCL needs one GPU per rank; with a single GPU the 2-rank checks share it over gloo (CUDA tensors).
[[ $ngpu -lt 2 ]] && export PEKD_DIST_BACKEND=gloo
tiny="data=digits model=resnet8 trainer.progress=false data.workers=0 method=ce teacher=none trainer.epochs=1"
for amp in fp16 bf16; do
    run $PY -m torch.distributed.run --standalone --nproc_per_node 2 -m pekd.train $tiny trainer.amp=$amp \
        run_dir=/tmp/gpu_check_$amp on_existing=overwrite
done
PEKD_DIST_BACKEND= run $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m pekd.train $tiny \
    trainer.amp=fp16 run_dir=/tmp/gpu_check_nccl on_existing=overwrite
run $PY -m pytest -q -x tests/test_distributed.py -k "bit_exact or ddp_matches"
run $PY -m pytest -q -x -rs tests/test_dali.py   # mixed decoding on the process's own GPU
# CUDA determinism, rank 0's BatchNorm buffers on every rank, a USR2 during evaluation, autocast forward only
run $PY -m pytest -q -x -rs tests/test_cuda.py tests/test_eval_ddp.py tests/test_epoch_end.py tests/test_train_step.py
for amp in bf16 fp16; do run $PY -m bench.gpu_throughput --model resnet18 --amp $amp; done
run $PY -m bench.loaders --dali-mixed --workers 8
run $PY -m bench.teacher_modes --size 224 --batch 64 --rounds 15
run $PY -m bench.official_loop --device cuda --rounds 15 --reps 10
run $PY -m bench.trainer_overhead --device cuda --rounds 15 --reps 3
# No device->host sync on the hot path: warn mode names each synchronising call site once. Expected only:
# checks.py (agree), metrics.py (reduce), Trainer.save_checkpoint, evaluation.py; with fp16 also GradScaler.step,
# with trainer.ema_decay>0 AveragedModel.update_parameters. Nothing from step.py or prefetch.py.
run $PY -W default -c "import sys, torch; torch.cuda.set_sync_debug_mode('warn'); from pekd.train import main; main(sys.argv[1:])" \
    $tiny trainer.amp=bf16 run_dir=/tmp/gpu_check_sync on_existing=overwrite
run $PY -m pekd.train $tiny trainer.amp=bf16 trainer.compile=true run_dir=/tmp/gpu_check_compile on_existing=overwrite
exit $status
