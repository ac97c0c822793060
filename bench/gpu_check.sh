#!/usr/bin/env bash
# The GPU check: what only a CUDA node can show about pekd, in one command that fits a 10-minute slot on a bare,
# offline compute node (docs/gpu_check.md says what each step checks and how to read the table).
#
#   bash bench/gpu_check.sh [OUT_DIR] [--fashion-mnist DIR] [--phases sc] [--wheelhouse DIR]...
#
# Any Python with torch will do (PYTHON=..., default python3): no venv, no set-up, no network. pekd runs from
# this checkout (PYTHONPATH); what pekd needs and the node lacks (hydra-core, omegaconf, antlr4, submitit, PyYAML,
# packaging, ...) installs from bench/wheelhouse/ and each --wheelhouse DIR (GPU_CHECK_WHEELHOUSE, for a node that
# lacks more: scripts/wheelhouse.py) into a scratch folder that every step and its child processes see. If a
# requirement is absent from both, the deps row names each one and the steps after it are NOT CHECKED. After the
# set-up (deps, preflight), the headline first: (s) speed, one bench at a time, at most GPU_CHECK_SPEED_S (300) s
# -- pekd vs the official loop, pipelined pekd.train images/s, K runs on the GPU at once, the GPU-busy fraction;
# then (c) correctness, its steps side by side, at most GPU_CHECK_CORRECTNESS_S (170) s; every step under its own
# `timeout`. --phases s or c runs one of the two (after the set-up). Without CUDA (the CPU rehearsal) every CUDA
# step reports NOT CHECKED -- those with a harness of their own rehearse it on the CPU first. The summary table
# comes last; OUT_DIR (default $OUT, else ./gpu_check_out) gets gpu_check.json, gpu_check.log and the steps' logs.
# Exit status: 0 when no check FAILed.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

OUT_DIR=${OUT:-$REPO/gpu_check_out}
FASHION=${PEKD_FASHION_MNIST:-}
PHASES=sc
while (($#)); do
    case $1 in
        --fashion-mnist) FASHION=$2; shift 2 ;;
        --phases) PHASES=$2; shift 2 ;;
        --wheelhouse)
            [[ -d $2 ]] || { echo "error: --wheelhouse $2 is not a folder" >&2; exit 2; }
            GPU_CHECK_WHEELHOUSE=${GPU_CHECK_WHEELHOUSE:+$GPU_CHECK_WHEELHOUSE:}$(cd "$2" && pwd); shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) OUT_DIR=$1; shift ;;
    esac
done
PY=${PYTHON:-python3}
SPEED_S=${GPU_CHECK_SPEED_S:-300} CORRECTNESS_S=${GPU_CHECK_CORRECTNESS_S:-170}
TOTAL_S=${GPU_CHECK_TOTAL_S:-480}  # on a GPU the correctness phase ends by then, however long the set-up took
START=$(date +%s)
# Without CUDA the speed steps rehearse their harnesses on tiny inputs and the correctness steps rehearse theirs on a
# login machine's few, busy cores: the rehearsal gives the phases CPU_SPEED_S and CPU_CORRECTNESS_S instead.
CPU_SPEED_S=${GPU_CHECK_CPU_SPEED_S:-360} CPU_CORRECTNESS_S=${GPU_CHECK_CPU_PHASE_S:-400}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pekd_gpu_check.XXXXXX")
RESULTS=$WORK/results LOGS=$WORK/logs SITE=$WORK/site
mkdir -p "$RESULTS" "$LOGS"
export GPU_CHECK_RESULTS=$RESULTS GPU_CHECK_WORK=$WORK PYTHONUNBUFFERED=1 GPU_CHECK_WHEELHOUSE=${GPU_CHECK_WHEELHOUSE:-}
# Training processes start cold, as on a user's node (tests/train_helpers.spawn would fork them from a server that
# imported torch: right for the suite's time, not for a check of what a GPU node does from a plain start).
export PEKD_TESTS_COLD=1
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
TEE_PID=$!

note() { "$PY" -m bench.gpu_check.common "$@"; }

# blocked NAME: true (and NAME recorded NOT CHECKED) when the deps step found pekd's requirements absent: a step
# would only fail on its first import, which the deps row already names.
blocked() {
    [[ $1 != deps && -s $WORK/deps/absent ]] || return 1
    note record "$1" "NOT CHECKED" "pekd's requirements are absent here: $(paste -sd, "$WORK/deps/absent" \
        | sed 's/,/, /g') (the deps row)" >/dev/null
    note show "$1" 0
}

# step NAME SECONDS COMMAND...: run COMMAND (which records NAME's result) under `timeout`, capped by what is left
# of the phase; a step that times out or dies without a result is recorded here: FAIL when it overran its own
# limit or died, NOT CHECKED when the phase's budget, not the step, cut it short.
step() {
    local name=$1 own=$2 left t rc t0
    shift 2
    blocked "$name" && return
    left=$((PHASE_END - $(date +%s)))
    ((GPUS > 0)) || own=$left  # the CPU rehearsal: the phase's budget is the only limit (shared, loaded cores)
    t=$((own < left ? own : left))
    if ((t < 10)); then
        note record "$name" "NOT CHECKED" "phase $PHASE's ${PHASE_BUDGET} s were spent before this step could start"
        return
    fi
    t0=$(date +%s)
    timeout -k 15 "$t" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    if ((rc == 124 || rc == 137)) && ((t < own)); then
        note record "$name" "NOT CHECKED" "phase $PHASE's ${PHASE_BUDGET} s ran out $t s into it (own limit $own s)" \
            >/dev/null
    elif ((rc == 124 || rc == 137)); then
        note record "$name" FAIL "timed out after its own limit of $t s" >/dev/null
    elif [[ ! -f $RESULTS/$name.json ]]; then
        note record "$name" FAIL "exited with status $rc without a result: see $name.log" >/dev/null
    fi
    note show "$name" $(($(date +%s) - t0))
    if grep -q '"FAIL"' "$RESULTS/$name.json"; then
        sed 's/^/      | /' "$LOGS/$name.log" | tail -n 25
    fi
}

# cuda_step NAME SECONDS COMMAND...: a step with nothing to rehearse without CUDA.
cuda_step() {
    blocked "$1" && return
    if ((GPUS > 0)); then step "$@"; else note record "$1" "NOT CHECKED" "no CUDA device" >/dev/null; note show "$1" 0; fi
}

# phase NAME TITLE BUDGET
phase() {
    PHASE=$1 PHASE_START=$(date +%s) PHASE_BUDGET=$3
    PHASE_END=$((PHASE_START + PHASE_BUDGET))
    echo "== phase ($1) $2: at most $PHASE_BUDGET s"
}
end_phase() { echo "$PHASE $(($(date +%s) - PHASE_START))" >>"$WORK/phases"; }

echo "pekd GPU check: $PY, repo $REPO, scratch $WORK, output $OUT_DIR, Fashion-MNIST '${FASHION:-none given}'," \
    "wheelhouses bench/wheelhouse${GPU_CHECK_WHEELHOUSE:+:$GPU_CHECK_WHEELHOUSE}"
SPEED=(headline pipelined_train runs_per_gpu gpu_busy bank_vs_online trainer_overhead)
CORRECTNESS=(nccl_1proc ddp2_resume bank_bf16 compiled_run sync_audit determinism fashion_mnist)
CHECKS=(deps preflight)
[[ $PHASES == *s* ]] && CHECKS+=("${SPEED[@]}")
[[ $PHASES == *c* ]] && CHECKS+=("${CORRECTNESS[@]}")
# The ranks of the multi-process steps meet on 127.0.0.1. A fresh network namespace (`unshare -n`, how the CPU
# rehearsal shuts the network out) starts with its loopback down: bring it up there, and only there.
if ! "$PY" -c 'import socket; socket.create_connection(socket.create_server(("127.0.0.1", 0)).getsockname(), 2)' \
        2>/dev/null; then
    echo "   the loopback interface is down (a fresh network namespace?): ip link set lo up"
    ip link set lo up || echo "   could not bring it up: the multi-process steps cannot meet on 127.0.0.1"
fi
GPUS=0  # until the preflight has counted them: the set-up's steps run within its budget alone
phase setup "deps and preflight" 150
step deps 150 env PYTHONPATH="$PYTHONPATH" "$PY" -m bench.gpu_check.deps "$SITE"
export PYTHONPATH=$REPO:$SITE${PYTHONPATH#"$REPO"}  # pekd, then the wheelhouse, then the node's own path
step preflight 150 "$PY" -m bench.gpu_check.preflight "$FASHION"
GPUS=$(cat "$WORK/preflight/gpus" 2>/dev/null || echo 0)
end_phase
if ((GPUS == 0)); then
    SPEED_S=$CPU_SPEED_S CORRECTNESS_S=$CPU_CORRECTNESS_S
    echo "   no CUDA device: the CPU rehearsal's phases may take $CPU_SPEED_S s (speed) and $CPU_CORRECTNESS_S s" \
        "(correctness)"
fi
if [[ $PHASES == *s* ]]; then
    # the headline first, then the pipelined runs; one at a time, so each has the GPU to itself
    phase s "speed (one bench at a time, few rounds)" "$SPEED_S"
    step headline 200 "$PY" -m bench.gpu_check.headline
    step pipelined_train 120 "$PY" -m bench.gpu_check.pipelined
    step runs_per_gpu 100 "$PY" -m bench.gpu_check.runs_per_gpu
    step gpu_busy 80 "$PY" -m bench.gpu_check.gpu_busy
    cuda_step bank_vs_online 60 "$PY" -m bench.gpu_check.speed bank_vs_online
    cuda_step trainer_overhead 45 "$PY" -m bench.gpu_check.speed trainer_overhead
    end_phase
fi
if [[ $PHASES == *c* ]]; then
    if ((GPUS > 0)); then
        left=$((START + TOTAL_S - $(date +%s)))
        CORRECTNESS_S=$((left < CORRECTNESS_S ? left : CORRECTNESS_S))
    fi
    phase c "correctness" "$CORRECTNESS_S"
    # side by side: each step is small next to an H200 and 16 cores, and the phase's wall time is the longest
    cuda_step nccl_1proc 60 "$PY" -m bench.gpu_check.nccl &
    step ddp2_resume 170 "$PY" -m bench.gpu_check.resume &
    step bank_bf16 150 "$PY" -m bench.gpu_check.bank &
    cuda_step compiled_run 170 "$PY" -m bench.gpu_check.compiled &
    step sync_audit 170 "$PY" -m bench.gpu_check.sync_audit &
    step determinism 150 "$PY" -m bench.gpu_check.determinism &
    step fashion_mnist 150 "$PY" -m bench.gpu_check.fashion "$FASHION" &
    wait $(jobs -p)  # these steps only: a bare `wait` would also wait for the log's tee
    end_phase
fi

tar -czf "$OUT_DIR/step_logs.tar.gz" -C "$WORK" logs
"$PY" -m bench.gpu_check.summary "$RESULTS" "$OUT_DIR/gpu_check.json" "$WORK/phases" "${CHECKS[@]}"
status=$?
rm -rf "$WORK"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null  # gpu_check.log is complete before OUT_DIR is collected
exit $status
