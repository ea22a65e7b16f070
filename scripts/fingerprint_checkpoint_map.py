#!/usr/bin/env python
# usage: python scripts/fingerprint_checkpoint_map.py AFTER.json BEFORE.json
"""Compare a fingerprint after the checkpoint-format change with the one before: fine-tuning checkpoints moved from
checkpoint/state.safetensors (model.*, optim.*, rng.*) to checkpoint/weights.safetensors + optimizer.safetensors
(state.*, rng.*). Map the new keys to the old names, list keys only in the new one, then run the script's compare."""
import json, sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from behaviour_fingerprint import compare
now, before = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
mapped, new_only = {}, []
for stage, nums in now.items():
    old = before.get(stage, {})
    if not any(k.startswith("checkpoint/state.safetensors:") for k in old):
        mapped[stage] = nums
        continue
    out = {}
    for k, v in nums.items():
        if k.startswith("checkpoint/weights.safetensors:"):
            k2 = "checkpoint/state.safetensors:model." + k[len("checkpoint/weights.safetensors:"):]
        elif k.startswith("checkpoint/optimizer.safetensors:state."):
            k2 = "checkpoint/state.safetensors:optim." + k[len("checkpoint/optimizer.safetensors:state."):]
        elif k.startswith("checkpoint/optimizer.safetensors:rng."):
            k2 = "checkpoint/state.safetensors:" + k[len("checkpoint/optimizer.safetensors:"):]
        else:
            k2 = k
        if k2 not in old:
            new_only.append(f"{stage}: {k}")
            continue
        out[k2] = v
    mapped[stage] = out
print("keys only after the change (dropped):", sorted({x.split(':', 1)[0] + ':' + x.split(':')[2] for x in new_only}))
sys.exit(compare(mapped, before, 1e-6))
