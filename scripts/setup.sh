#!/usr/bin/env bash
# One unattended set-up path for a development checkout: system packages (the only step that needs root), a
# virtual environment, and pekd with every extra at the exact versions of constraints.txt (the tested set).
# Idempotent: every step checks whether it is already done, so `make demo` / `make test` can call it each time.
# Without root (and without password-less sudo) the apt step is skipped with a note: pekd and the torch pipeline
# still install; the FFCV extra and the SLURM tests need the packages it names (docs/install.md has the other
# routes: a plain `pip install`, conda for FFCV, an offline wheelhouse).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libturbojpeg0-dev libopencv-dev pkg-config dataset-fashion-mnist
              slurmctld slurmd slurm-client munge nftables)
missing=()
if command -v dpkg >/dev/null; then
    for p in "${APT_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
fi
if ((${#missing[@]})); then
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=(sudo); else SUDO=(none); fi
    fi
    if [[ ${SUDO[*]-} == none ]]; then
        echo "[setup] not root: skipping apt-get install ${missing[*]} (FFCV builds and the SLURM tests need them)"
    else
        echo "[setup] apt-get install ${missing[*]}"
        "${SUDO[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: pekd needs Python 3.11 or newer; $PY is $("$PY" -V 2>&1). Set PYTHON=/path/to/python3.x" >&2
    exit 2
fi
if [[ ! -x .venv/bin/python ]]; then
    echo "[setup] creating .venv with $PY"
    "$PY" -m venv .venv
fi

# Reinstall only when the dependency ranges or the tested set changed.
stamp=".venv/.pekd-installed"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "[setup] pip install -c constraints.txt -e .[dev,...] (first time: several minutes; ffcv builds from source)"
    pip() {  # quiet, minus the notes some machines' pip configs print about absent local indexes
        local log rc=0
        log=$(mktemp)
        .venv/bin/pip install -q -c constraints.txt "$@" >"$log" 2>&1 || rc=$?
        grep -v "is neither a file nor a directory" "$log" >&2 || true
        rm -f "$log"
        return "$rc"
    }
    pip --upgrade pip setuptools wheel
    # ffcv's setup.py imports numpy and needs it at build time; torch first so pip reuses the local wheel.
    pip torch torchvision numpy Cython
    extras="dev,dali-cu13,wandb"  # wandb: tests/test_tracker.py runs the tracker offline
    if pkg-config --exists libturbojpeg opencv4 2>/dev/null; then
        pip --no-build-isolation ffcv
        extras+=",ffcv"
    else
        echo "[setup] no libturbojpeg/OpenCV headers: skipping the ffcv extra (data.pipeline=ffcv and its tests)"
    fi
    pip -e ".[$extras]"
    echo "$want" > "$stamp"
fi
