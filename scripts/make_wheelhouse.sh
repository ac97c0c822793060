#!/usr/bin/env bash
# Make bench/wheelhouse/: the pure-Python packages pekd imports that a typical GPU compute node lacks, as wheels,
# so that bench/gpu_check.sh runs on a node with no network and only its own torch (docs/gpu_check.md).
#
#   bash scripts/make_wheelhouse.sh [DIR]        # on a machine that reaches PyPI; DIR defaults to bench/wheelhouse
#
# Versions are constraints.txt's (the tested set). Every file is a py3-none-any wheel, so one wheelhouse serves
# any Python >= 3.11 on any platform; antlr4-python3-runtime is published as an sdist only, so pip builds its
# wheel here. Nothing binary and nothing the node already has (torch, numpy, PyYAML, packaging, ...) goes in:
# bench/gpu_check/deps.py installs from it only what the node's Python is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-bench/wheelhouse}
PY=${PYTHON:-python3}
# hydra-core and omegaconf (pekd.config, pekd.train), their antlr4 runtime, submitit (the SLURM launcher, imported
# by pekd.engine.distributed under SLURM and by the preemption path) and its cloudpickle.
NAMES=(hydra-core omegaconf antlr4-python3-runtime submitit cloudpickle)
MAX_MIB=20

pins=()
for name in "${NAMES[@]}"; do
    pin=$(grep -i "^${name}==" constraints.txt || true)
    if [[ -z $pin ]]; then
        echo "error: constraints.txt pins no version of $name; add it (the tested set) and run this again" >&2
        exit 2
    fi
    pins+=("$pin")
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
quiet() { grep -v "is neither a file nor a directory" || true; }
for pin in "${pins[@]}"; do
    if [[ $pin == antlr4-python3-runtime* ]]; then
        "$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$tmp" "$pin" 2>&1 | quiet
    else
        "$PY" -m pip download -q --no-deps --only-binary=:all: --no-cache-dir -d "$tmp" "$pin" 2>&1 | quiet
    fi
done

n=$(find "$tmp" -name '*.whl' | wc -l)
if [[ $n -ne ${#pins[@]} ]]; then
    echo "error: expected ${#pins[@]} wheels, pip produced $n in $tmp" >&2
    exit 1
fi
if find "$tmp" -name '*.whl' ! -name '*-py3-none-any.whl' ! -name '*-py2.py3-none-any.whl' | grep .; then
    echo "error: the wheels above are not pure Python: they would not install on another Python or platform" >&2
    exit 1
fi
size=$(du -sm "$tmp" | cut -f1)
if [[ $size -gt $MAX_MIB ]]; then
    echo "error: the wheelhouse is $size MiB, over the $MAX_MIB MiB that may travel with the repository" >&2
    exit 1
fi
mkdir -p "$DIR"
rm -f "$DIR"/*.whl
cp "$tmp"/*.whl "$DIR"/
echo "wheelhouse $DIR: $(ls "$DIR" | tr '\n' ' ')($(du -sh "$DIR" | cut -f1))"
