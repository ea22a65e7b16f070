"""scripts/device_check.sh (``easytune bench paper``) at smoke on a CPU: the GPU check's code path, end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

from easytune_lab.finetune.paper_check import CHECK_METHODS, CURVE_METHODS

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_check.sh"


def test_device_check_script_at_smoke_on_cpu(smoke_runs, tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PROFILE": "smoke", "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(out),
           "DATA": str(smoke_runs["data"]), "BASE": str(smoke_runs["base"]), "REWARD": str(smoke_runs["reward"]),
           "STEPS": "2,4", "NO_PROGRESS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["complete"] and result["profile"] == "smoke"
    assert result["device"]["type"] == "cpu" and result["device"]["name"]
    assert result["memory_measure"] == "autograd_saved_bytes"
    rows = {(r["method"], r["steps"]): r for r in result["memory"]}
    assert set(rows) == {(m.label, t) for m in CHECK_METHODS for t in (2, 4)}
    for row in rows.values():
        assert row["trajectory_seconds"] > 0 and row["sampling_seconds"] > 0 and row["peak_bytes"] > 0
    # the shape of Fig. 6 on the saved-bytes measure: EasyTune flat in T, DRaFT-T and the chain growing
    assert rows[("easytune", 4)]["peak_bytes"] == rows[("easytune", 2)]["peak_bytes"]
    assert rows[("draft-50", 4)]["peak_bytes"] > 1.5 * rows[("draft-50", 2)]["peak_bytes"]
    assert rows[("easytune-chain", 4)]["peak_bytes"] > 1.5 * rows[("easytune-chain", 2)]["peak_bytes"]
    assert rows[("easytune-last10", 4)]["options"] == {"train_steps": "last", "num_train_steps": 4}
    assert result["train_step"]["seconds"] > 0
    curves = result["reward_curve"]["curves"]
    assert set(curves) == set(CURVE_METHODS)
    assert all(len(c["reward"]) >= 2 for c in curves.values())
    assert "done" in proc.stdout
