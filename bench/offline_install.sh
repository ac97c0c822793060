#!/usr/bin/env bash
# docs/install.md's offline route, end to end, as a user takes it: a wheelhouse built here for a node that has only
# torch and torchvision, installed on that node with `pip install --no-index --find-links WHEELHOUSE pekd` with the
# network shut out (`unshare -n`), then `pekd --help`, `python -m pekd.train --help` and a 2-step training run on
# sklearn's digits there. Too slow for the test suite (docs/development.md): about 2.5 min, plus 5 min once for
# the node.
#
#   bash bench/offline_install.sh            # on a machine that reaches PyPI; as root (else unshare -rn)
#
# The node: a venv made without --system-site-packages that holds only $NODE_TORCH (default torch==2.14.1
# torchvision==0.29.1: the pair that lies on this machine's disk for Python 3.11; PyPI's torchvision does not
# import beside the CPU torch 2.13.0 there), made once at $NODE_VENV (default /tmp/pekd_node_venv, 5.5 GB) and
# copied with hard links for each run, so it stays torch-only. pip on the node reads no configuration
# (PIP_CONFIG_FILE=/dev/null), as on a bare node. Exit status 0 when every step worked.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3.11}
NODE=${NODE_VENV:-/tmp/pekd_node_venv}
read -r -a TORCH <<<"${NODE_TORCH:-torch==2.14.1 torchvision==0.29.1}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pekd_offline.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
OFFLINE=(unshare -n)
[[ $(id -u) -eq 0 ]] || OFFLINE=(unshare -rn)
took() { echo "   ($((SECONDS - $1)) s)"; }

t=$SECONDS
if [[ ! -x $NODE/bin/python ]]; then
    echo "== the node, once: $PY -m venv $NODE; pip install ${TORCH[*]}"
    "$PY" -m venv "$NODE"
    "$NODE/bin/python" -m pip install -q "${TORCH[@]}" 2>&1 | grep -v "is neither a file nor a directory" || true
    took "$t"
fi
"$NODE/bin/python" -c 'import torch, torchvision' || { echo "error: $NODE has no working torch" >&2; exit 1; }
node_py=$("$NODE/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
"$NODE/bin/python" -m pip list --format=freeze 2>/dev/null >"$WORK/node.txt"
echo "== the node ($NODE, Python $node_py): $(wc -l <"$WORK/node.txt") distributions:" \
    "$(grep -iE '^(torch|torchvision|numpy|pillow)==' "$WORK/node.txt" | tr '\n' ' ')"

t=$SECONDS
echo "== here, with network: $PY scripts/wheelhouse.py WHEELHOUSE --have node.txt --python-version $node_py"
"$PY" "$REPO/scripts/wheelhouse.py" "$WORK/wheelhouse" --have "$WORK/node.txt" --python-version "$node_py" \
    | sed -n '1p;$p;/node.s own/p'
took "$t"

t=$SECONDS
cp -al "$NODE" "$WORK/node"
echo "== on the node, offline: pip install --no-index --find-links WHEELHOUSE pekd"
PIP_CONFIG_FILE=/dev/null "${OFFLINE[@]}" "$WORK/node/bin/python" -m pip install -q --no-index \
    --find-links "$WORK/wheelhouse" pekd
took "$t"

mkdir "$WORK/elsewhere"
cd "$WORK/elsewhere"
echo "== on the node, offline, from another folder: pekd --help; python -m pekd.train --help; a 2-step run"
"${OFFLINE[@]}" "$WORK/node/bin/pekd" --help >/dev/null
"${OFFLINE[@]}" "$WORK/node/bin/python" -m pekd.train --help >/dev/null
t=$SECONDS
env -u PYTHONPATH "${OFFLINE[@]}" "$WORK/node/bin/pekd" train data=digits model=resnet8 method=ce teacher=none \
    trainer.max_steps=2 data.workers=0 trainer.progress=false run_dir=run
"$WORK/node/bin/python" -c 'import json, sys; r = json.load(open("run/results.json"))
sys.exit(f"results.json: {r}" if r["global_step"] != 2 else 0)'
took "$t"
echo "offline install: OK (pekd $("$WORK/node/bin/python" -c 'import pekd; print(pekd.__version__, pekd.__file__)'))"
