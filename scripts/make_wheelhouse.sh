#!/usr/bin/env bash
# Make bench/wheelhouse/: the small packages pekd imports that a GPU compute node's image typically lacks, as
# wheels, so that bench/gpu_check.sh runs on a node with no network and its own torch (docs/gpu_check.md).
#
#   bash scripts/make_wheelhouse.sh [DIR]        # on a machine that reaches PyPI; DIR defaults to bench/wheelhouse
#
# Versions are constraints.txt's (the tested set). The pure-Python ones are py3-none-any wheels that serve any
# Python and platform; antlr4-python3-runtime is published as an sdist only, so pip builds its wheel here. PyYAML
# and safetensors are compiled: their manylinux x86_64 wheels for CPython 3.11-3.13 go in (safetensors' one abi3
# wheel serves all three). The scientific stack (numpy, scipy, scikit-learn, matplotlib, tensorboard: ~75 MiB for
# one Python) stays out -- the repository travels to a device node under 64 MiB -- and a node that lacks it gets a
# wheelhouse of its own from scripts/wheelhouse.py. bench/gpu_check/deps.py installs from these folders only what
# the node's Python is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-bench/wheelhouse}
PY=${PYTHON:-python3}
# hydra-core and omegaconf (pekd.config, pekd.train), their antlr4 runtime, PyYAML and packaging, submitit (the SLURM
# launcher, imported by pekd.engine.distributed under SLURM and by the preemption path) and its cloudpickle, tqdm
# (progress) and safetensors (exports).
PURE=(hydra-core omegaconf antlr4-python3-runtime packaging submitit cloudpickle tqdm)
COMPILED=(PyYAML safetensors)
PYTHONS=(3.11 3.12 3.13)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)
MAX_MIB=20

declare -A PIN
for name in "${PURE[@]}" "${COMPILED[@]}"; do
    PIN[$name]=$(grep -i "^${name}==" constraints.txt || true)
    if [[ -z ${PIN[$name]} ]]; then
        echo "error: constraints.txt pins no version of $name; add it (the tested set) and run this again" >&2
        exit 2
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
quiet() { grep -v "is neither a file nor a directory" || true; }
for name in "${PURE[@]}"; do
    if [[ $name == antlr4-python3-runtime ]]; then
        "$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$tmp" "${PIN[$name]}" 2>&1 | quiet
    else
        "$PY" -m pip download -q --no-deps --only-binary=:all: --no-cache-dir -d "$tmp" "${PIN[$name]}" 2>&1 | quiet
    fi
done
if find "$tmp" -name '*.whl' ! -name '*-py3-none-any.whl' ! -name '*-py2.py3-none-any.whl' | grep .; then
    echo "error: the wheels above are not pure Python: they would not install on another Python or platform" >&2
    exit 1
fi
for name in "${COMPILED[@]}"; do
    for version in "${PYTHONS[@]}"; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --no-cache-dir -d "$tmp" --implementation cp \
            --python-version "$version" "${PLATFORMS[@]/#/--platform=}" "${PIN[$name]}" 2>&1 | quiet
    done
done
size=$(du -sm "$tmp" | cut -f1)
if [[ $size -gt $MAX_MIB ]]; then
    echo "error: the wheelhouse is $size MiB, over the $MAX_MIB MiB that may travel with the repository" >&2
    exit 1
fi
mkdir -p "$DIR"
rm -f "$DIR"/*.whl
cp "$tmp"/*.whl "$DIR"/
echo "wheelhouse $DIR: $(ls "$DIR" | tr '\n' ' ')($(du -sh "$DIR" | cut -f1))"
