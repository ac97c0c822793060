#!/usr/bin/env bash
# The demo's time on a CPU without native bf16, measured on any x86 CPU as a ratio in one sitting.
#
# Usage: bash bench/demo_time.sh [REFERENCE_COMMIT [SITTINGS]]   (default: cbbabc1, 2)
#
# torch restricted to AVX2 kernels and no native bf16 (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2) trains the
# demo in fp32 as an AVX2-only EPYC does, with that EPYC's numbers to the last digit; only the clock differs. So the
# current demo is timed against a reference demo whose time on the slow CPU is known (cbbabc1: the 6-seed demo with
# a second analysis pass, 569 s idle on a 2-core AVX2-only EPYC), alternating which goes first in each sitting, and
# the ratio scales the known time. Both run from clean worktrees of this repository, each with the current .venv
# (the reference commit's pekd first on PYTHONPATH), into fresh run folders. Run it on an otherwise idle machine.
set -euo pipefail
ref=${1:-cbbabc1}
sittings=${2:-2}
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
python=$repo/.venv/bin/python
work=$(mktemp -d)
trap 'git -C "$repo" worktree remove --force "$work/new" >/dev/null 2>&1 || true;
      git -C "$repo" worktree remove --force "$work/ref" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$repo" worktree add --detach -q "$work/new" HEAD
git -C "$repo" worktree add --detach -q "$work/ref" "$ref"
export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
"$python" -c "import torch; assert not torch.ops.mkldnn._is_mkldnn_bf16_supported(), 'bf16 still native';
print('torch', torch.__version__, 'CPU capability', torch.backends.cpu.get_cpu_capability(), 'native bf16: no')"

demo() {  # demo NAME SITTING -> prints the demo's seconds
    local tree=$work/$1
    local start=$SECONDS
    (cd "$tree" && PYTHONPATH=$tree "$python" -m pekd.demo --out "$work/runs-$1-$2" > "$work/$1-$2.log" 2>&1) \
        || { tail -20 "$work/$1-$2.log" >&2; exit 1; }
    echo $((SECONDS - start))
}

for s in $(seq 1 "$sittings"); do
    if (( s % 2 )); then new=$(demo new "$s"); old=$(demo ref "$s"); else old=$(demo ref "$s"); new=$(demo new "$s"); fi
    echo "sitting $s: HEAD demo ${new} s, $ref demo ${old} s, ratio $(awk "BEGIN {printf \"%.3f\", $new / $old}")"
    grep -h "in all" "$work/new-$s.log" | sed 's/  TensorBoard.*//; s/^/    HEAD: /'
    grep -h "in all" "$work/ref-$s.log" | sed "s/  TensorBoard.*//; s/^/    $ref: /"
done
echo "scale the reference's time on the slow CPU by the ratios (cbbabc1: 569 s idle on a 2-core AVX2-only EPYC)"
