#!/usr/bin/env bash
# The GPU check: what only a CUDA node can show about pekd, in one command that fits a 10-minute slot on a bare,
# offline compute node (docs/gpu_check.md says what each step checks and how to read the table).
#
#   bash bench/gpu_check.sh [OUT_DIR] [--fashion-mnist DIR] [--phases ab] [--wheelhouse DIR]...
#
# Any Python with torch will do (PYTHON=..., default python3): no venv, no set-up, no network. pekd runs from
# this checkout (PYTHONPATH); what pekd needs and the node lacks (hydra-core, omegaconf, antlr4, submitit, PyYAML,
# packaging, ...) installs from bench/wheelhouse/ and each --wheelhouse DIR (GPU_CHECK_WHEELHOUSE, for a node that
# lacks more: scripts/wheelhouse.py) into a scratch folder that every step and its child processes see. If a
# requirement is absent from both, the deps row names each one and the steps after it are NOT CHECKED. Two phases,
# each at most GPU_CHECK_PHASE_S (240) seconds and every step under its own `timeout`: (a) correctness, its
# steps side by side; (b) speed, one bench at a time. Without CUDA (the CPU rehearsal) every CUDA step reports
# NOT CHECKED -- those with a harness of their own rehearse it on the CPU first. The summary table comes last;
# OUT_DIR (default $OUT, else ./gpu_check_out) gets gpu_check.json, gpu_check.log and the steps' logs.
# Exit status: 0 when no check FAILed.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

OUT_DIR=${OUT:-$REPO/gpu_check_out}
FASHION=${PEKD_FASHION_MNIST:-}
PHASES=ab
while (($#)); do
    case $1 in
        --fashion-mnist) FASHION=$2; shift 2 ;;
        --phases) PHASES=$2; shift 2 ;;
        --wheelhouse)
            [[ -d $2 ]] || { echo "error: --wheelhouse $2 is not a folder" >&2; exit 2; }
            GPU_CHECK_WHEELHOUSE=${GPU_CHECK_WHEELHOUSE:+$GPU_CHECK_WHEELHOUSE:}$(cd "$2" && pwd); shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) OUT_DIR=$1; shift ;;
    esac
done
PY=${PYTHON:-python3}
PHASE_S=${GPU_CHECK_PHASE_S:-240}
# Without CUDA phase (b) runs nothing, and phase (a)'s CPU rehearsals share a login machine's few, busy cores: the
# rehearsal gives phase (a) CPU_PHASE_S instead (the whole rehearsal stays under 8 minutes).
CPU_PHASE_S=${GPU_CHECK_CPU_PHASE_S:-400}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pekd_gpu_check.XXXXXX")
RESULTS=$WORK/results LOGS=$WORK/logs SITE=$WORK/site
mkdir -p "$RESULTS" "$LOGS"
export GPU_CHECK_RESULTS=$RESULTS GPU_CHECK_WORK=$WORK PYTHONUNBUFFERED=1 GPU_CHECK_WHEELHOUSE=${GPU_CHECK_WHEELHOUSE:-}
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
CHECKS=(deps preflight nccl_1proc ddp2_resume bank_bf16 compiled_run sync_audit determinism fashion_mnist
        resnet18_eager resnet18_compiled trainer_overhead bank_vs_online official_loop)
# The ranks of the multi-process steps meet on 127.0.0.1. A fresh network namespace (`unshare -n`, how the CPU
# rehearsal shuts the network out) starts with its loopback down: bring it up there, and only there.
if ! "$PY" -c 'import socket; socket.create_connection(socket.create_server(("127.0.0.1", 0)).getsockname(), 2)' \
        2>/dev/null; then
    echo "   the loopback interface is down (a fresh network namespace?): ip link set lo up"
    ip link set lo up || echo "   could not bring it up: the multi-process steps cannot meet on 127.0.0.1"
fi
GPUS=0
if [[ $PHASES == *a* ]]; then
    phase a "correctness" "$PHASE_S"
    step deps 60 env PYTHONPATH="$PYTHONPATH" "$PY" -m bench.gpu_check.deps "$SITE"
    export PYTHONPATH=$REPO:$SITE${PYTHONPATH#"$REPO"}  # pekd, then the wheelhouse, then the node's own path
    step preflight 90 "$PY" -m bench.gpu_check.preflight "$FASHION"
    GPUS=$(cat "$WORK/preflight/gpus" 2>/dev/null || echo 0)
    if ((GPUS == 0)); then
        PHASE_BUDGET=$CPU_PHASE_S PHASE_END=$((PHASE_START + CPU_PHASE_S))
        echo "   no CUDA device: the CPU rehearsal's phase (a) may take $CPU_PHASE_S s"
    fi
    # side by side: each step is small next to an H200 and 16 cores, and the phase's wall time is the longest
    cuda_step nccl_1proc 60 "$PY" -m bench.gpu_check.nccl &
    step ddp2_resume 200 "$PY" -m bench.gpu_check.resume &
    step bank_bf16 150 "$PY" -m bench.gpu_check.bank &
    cuda_step compiled_run 200 "$PY" -m bench.gpu_check.compiled &
    step sync_audit 200 "$PY" -m bench.gpu_check.sync_audit &
    step determinism 150 "$PY" -m bench.gpu_check.determinism &
    step fashion_mnist 150 "$PY" -m bench.gpu_check.fashion "$FASHION" &
    wait $(jobs -p)  # these steps only: a bare `wait` would also wait for the log's tee
    end_phase
fi
if [[ $PHASES == *b* ]]; then
    if [[ $PHASES != *a* ]]; then  # phase b alone still needs the wheelhouse and the device count
        PHASE_END=$(($(date +%s) + 120)) PHASE=b PHASE_BUDGET=120
        env PYTHONPATH="$PYTHONPATH" "$PY" -m bench.gpu_check.deps "$SITE" >"$LOGS/deps.log" 2>&1
        export PYTHONPATH=$REPO:$SITE${PYTHONPATH#"$REPO"}
        GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
        CHECKS=("${CHECKS[@]:9}")
    fi
    phase b "speed (one bench at a time, few rounds)" "$PHASE_S"
    for bench in resnet18_eager resnet18_compiled trainer_overhead bank_vs_online official_loop; do
        cuda_step "$bench" 150 "$PY" -m bench.gpu_check.speed "$bench"
    done
    end_phase
elif [[ $PHASES == a ]]; then
    CHECKS=("${CHECKS[@]:0:9}")
fi

tar -czf "$OUT_DIR/step_logs.tar.gz" -C "$WORK" logs
"$PY" -m bench.gpu_check.summary "$RESULTS" "$OUT_DIR/gpu_check.json" "$WORK/phases" "${CHECKS[@]}"
status=$?
rm -rf "$WORK"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null  # gpu_check.log is complete before OUT_DIR is collected
exit $status
