#!/usr/bin/env bash
# Throughput and the optimised path on a CUDA GPU (CI has none; run this on a GPU machine with a CUDA torch).
#   scripts/gpu_check_throughput.sh [OUT_DIR]
# 1. `easytune bench throughput --profile quick --device cuda` (quick-size models at initialisation): every method's
#    trajectory against the sampling-only floor, timed with CUDA synchronisation, into OUT_DIR/throughput_cuda.json;
# 2. the same with --reference-path (the previous code path) for comparison;
# 3. the optimised path against the reference path on CUDA: samples and applied gradients within 1e-5 (float32;
#    the attention fast path is left to torch on CUDA, fused AdamW runs its CUDA kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/easytune-gpu-check}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run this on a GPU machine')"
export PYTHONPATH=$PWD
"$py" -m easytune_lab.cli bench throughput --profile quick --device cuda --repeats 3 --no-progress \
  --out "$out/throughput_cuda.json"
"$py" -m easytune_lab.cli bench throughput --profile quick --device cuda --repeats 3 --no-progress --reference-path \
  --out "$out/throughput_cuda_reference.json"
"$py" - "$out" <<'PY'
import contextlib, sys, tempfile
from pathlib import Path
import numpy as np, torch
from easytune_lab.finetune.throughput import init_runs
from easytune_lab.finetune.train import Finetuner, finetune_config
from easytune_lab.runtime import reference_path

device = torch.device("cuda")
runs = init_runs("smoke", Path(tempfile.mkdtemp()), None, 0, device)

def trajectory(method, reference):
    with reference_path() if reference else contextlib.nullcontext():
        tuner = Finetuner(finetune_config(method, "smoke", seed=3, batch_size=3), runs["base"], runs["reward"],
                          runs["data"], device)
        grads, step = [], tuner.optimizer.step
        def recording(*a, **k):
            grads.append(torch.cat([p.grad.detach().flatten() for p in tuner.params]))
            return step(*a, **k)
        tuner.optimizer.step = recording
        texts, lengths = tuner.prompts.draw(3, np.random.default_rng(0))
        tuner.iteration(probe_kind="none", texts=texts, lengths=lengths)
        with torch.no_grad():
            x = tuner.generator.sample_normalised(texts, lengths, seed=1, steps=5)
    return grads, x

for method in ("easytune", "draft"):
    (g1, x1), (g0, x0) = trajectory(method, False), trajectory(method, True)
    dg = max(float((a - b).abs().max()) for a, b in zip(g1, g0))
    dx = float((x1 - x0).abs().max())
    print(f"{method}: max |gradient difference| {dg:.2e}, max |sample difference| {dx:.2e}")
    assert dg <= 1e-5 and dx <= 1e-5, method
print("GPU check passed")
PY
