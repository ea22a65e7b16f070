#!/usr/bin/env bash
# The fault handling on a CUDA device (CI has none): strict loading of a run onto the GPU, a NaN weight refused
# before sampling (exit 3), a checkpoint resumed on the GPU, a second writer refused (exit 4). About a minute on
# one GPU. Usage: scripts/gpu_check_faults.sh [WORKDIR]
set -u
PY=${PYTHON:-python}
W=${1:-$(mktemp -d)}
fail() { echo "FAIL: $*"; exit 1; }
expect() {  # expect CODE TEXT -- command...
  local code=$1 text=$2; shift 3
  "$@" 2>"$W/err" >/dev/null; local rc=$?
  [ "$rc" = "$code" ] || fail "exit $rc (expected $code): $* :: $(cat "$W/err")"
  [ "$(wc -l <"$W/err")" = 1 ] || fail "not one line: $(cat "$W/err")"
  grep -q -- "$text" "$W/err" || fail "line does not name '$text': $(cat "$W/err")"
}
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || fail "no CUDA device"
$PY -m easytune_lab.cli data synth --out "$W/data" --num-motions 240 --seed 5 --no-progress >/dev/null || fail synth
$PY -m easytune_lab.cli pretrain --data "$W/data" --profile smoke --iterations 4 --checkpoint-every 2 --stop-after 2 \
    --out "$W/mdm" --device cuda --no-progress >/dev/null || fail pretrain
$PY -m easytune_lab.cli pretrain --data "$W/data" --out "$W/mdm" --resume --device cuda --no-progress >/dev/null \
    || fail "resume on cuda"
$PY -m easytune_lab.cli sample --run "$W/mdm" --text "a person walks" --device cuda --out "$W/ok.npy" >/dev/null \
    || fail "sample on cuda"
$PY -c "import numpy as np, sys; sys.exit(0 if np.isfinite(np.load('$W/ok.npy')).all() else 1)" || fail "NaN motions"
cp -r "$W/mdm" "$W/nan"
$PY - "$W/nan/weights.safetensors" <<'EOF' || fail "damaging weights"
import sys
from easytune_lab.runs import load_tensors, save_tensors
t = load_tensors(sys.argv[1]); k = next(k for k, v in t.items() if v.is_floating_point())
t[k] = t[k].clone().fill_(float("nan")); save_tensors(sys.argv[1], t, allow_nonfinite=True)
EOF
expect 3 "NaN" -- $PY -m easytune_lab.cli sample --run "$W/nan" --text "a person walks" --device cuda --out "$W/nan.npy"
[ ! -e "$W/nan.npy" ] || fail "NaN sample written"
$PY -m easytune_lab.cli pretrain --data "$W/data" --profile smoke --iterations 200 --out "$W/busy" --device cuda \
    --no-progress >/dev/null 2>&1 & first=$!
for _ in $(seq 600); do [ -s "$W/.busy.lock" ] && break; sleep 0.1; done
expect 4 "pid $first" -- $PY -m easytune_lab.cli pretrain --data "$W/data" --profile smoke --iterations 200 \
    --out "$W/busy" --device cuda --no-progress
wait $first || fail "the first writer failed"
echo "OK: fault handling on $($PY -c 'import torch; print(torch.cuda.get_device_name(0))') ($W)"
