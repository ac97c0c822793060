#!/usr/bin/env bash
# One unattended set-up path for a fresh Debian machine: system packages, a virtual environment, pekd itself.
# Idempotent: every step checks whether it is already done, so `make demo` / `make test` can call it each time.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libturbojpeg0-dev libopencv-dev pkg-config dataset-fashion-mnist
              slurmctld slurmd slurm-client munge)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "[setup] apt-get install ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [[ ! -x .venv/bin/python ]]; then
    echo "[setup] creating .venv with $PY"
    "$PY" -m venv .venv
fi

# Reinstall only when the dependency list changed.
stamp=".venv/.pekd-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "[setup] pip install -e .[dev] (first time: several minutes; ffcv builds from source)"
    pip() {  # quiet, minus the notes some machines' pip configs print about absent local indexes
        local log rc=0
        log=$(mktemp)
        .venv/bin/pip install -q "$@" >"$log" 2>&1 || rc=$?
        grep -v "is neither a file nor a directory" "$log" >&2 || true
        rm -f "$log"
        return "$rc"
    }
    pip --upgrade pip setuptools wheel
    # ffcv's setup.py imports numpy and needs it at build time; torch first so pip reuses the local wheel.
    pip torch==2.14.1 torchvision==0.29.1 numpy "Cython<3.2"
    pip --no-build-isolation ffcv==1.0.2
    pip -e ".[dev]"
    echo "$want" > "$stamp"
fi
