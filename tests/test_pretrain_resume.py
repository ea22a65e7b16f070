"""Pretraining writes checkpoints, and an interrupted run resumed from one ends with the same weights."""

import json

import numpy as np
import pytest
import torch

from easytune_lab.cli import main
from easytune_lab.runs import load_tensors

WORDS = ["walks", "forward", "jumps", "waves", "left", "right", "hand", "slowly", "turns", "around"]


# these tests build float32 models: keep them independent of a default dtype set elsewhere
pytestmark = pytest.mark.usefixtures("float32_default")



def make_dataset(root, num=12, dim=263, seed=0):
    """A tiny HumanML3D-format directory: smooth random features of 40–64 frames with two-word captions."""
    rng = np.random.default_rng(seed)
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    ids = []
    for i in range(num):
        mid = f"{i:06d}"
        n = int(rng.integers(40, 65))
        feats = np.cumsum(rng.normal(size=(n, dim)).astype(np.float32) * 0.1, axis=0)
        np.save(root / "new_joint_vecs" / f"{mid}.npy", feats)
        w1, w2 = rng.choice(WORDS, 2, replace=False)
        (root / "texts" / f"{mid}.txt").write_text(
            f"a person {w1} {w2}.#a/DET person/NOUN {w1}/VERB {w2}/ADV#0.0#0.0\n")
        ids.append(mid)
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    all_feats = np.concatenate([np.load(root / "new_joint_vecs" / f"{m}.npy") for m in ids])
    np.save(root / "Mean.npy", all_feats.mean(0).astype(np.float32))
    np.save(root / "Std.npy", (all_feats.std(0) + 1e-3).astype(np.float32))
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    torch.set_num_threads(1)
    return make_dataset(tmp_path_factory.mktemp("data"))


def _pretrain(data, out, *extra):
    argv = ["pretrain", "--backbone", "mdm", "--data", str(data), "--profile", "smoke", "--out", str(out),
            "--iterations", "6", "--checkpoint-every", "2", "--batch-size", "4", "--device", "cpu", "--no-progress",
            *extra]
    assert main(argv) == 0


def test_resume_after_interruption_equals_uninterrupted_run(tiny_data, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    _pretrain(tiny_data, full)
    _pretrain(tiny_data, cut, "--stop-after", "3")
    manifest = json.loads((cut / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["steps_done"] == 3
    assert not (cut / "weights.safetensors").exists()
    state = json.loads((cut / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    assert main(["pretrain", "--backbone", "mdm", "--data", str(tiny_data), "--out", str(cut), "--resume",
                 "--device", "cpu", "--no-progress"]) == 0

    a, b = load_tensors(full / "weights.safetensors"), load_tensors(cut / "weights.safetensors")
    assert a.keys() == b.keys() and len(a) > 10
    start = load_tensors(full / "checkpoint" / "weights.safetensors")
    assert all(torch.equal(start[k], a[k]) for k in a)  # the last checkpoint holds the final state
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = json.loads((full / "metrics.json").read_text())["log"]
    lb = json.loads((cut / "metrics.json").read_text())["log"]
    assert la == lb and la["step"][-1] == 6
    # the checkpoint carries the optimiser moments
    fresh = load_tensors(cut / "checkpoint" / "optimizer.safetensors")
    assert float(fresh[next(k for k in fresh if k.endswith(".exp_avg_sq"))].abs().sum()) > 0


def test_resume_refuses_a_changed_step_count_and_missing_run(tiny_data, tmp_path, capsys):
    assert main(["pretrain", "--backbone", "mdm", "--data", str(tiny_data), "--out", str(tmp_path / "none"),
                 "--resume", "--device", "cpu"]) == 2
    assert "run directory does not exist" in capsys.readouterr().err


def test_sample_command_writes_denormalised_features(tiny_data, tmp_path):
    run = tmp_path / "run"
    _pretrain(tiny_data, run)
    out = tmp_path / "x.npy"
    assert main(["sample", "--run", str(run), "--text", "a person walks forward", "--text", "a person jumps",
                 "--num", "2", "--length", "42", "--sample-steps", "5", "--device", "cpu", "--out", str(out)]) == 0
    x = np.load(out)
    assert x.shape == (4, 40, 263)  # 42 frames rounded down to a multiple of 4
    assert np.isfinite(x).all()
    # de-normalised: the scale follows Std.npy (tiny here), not unit variance
    std = np.load(tiny_data / "Std.npy")
    assert np.abs(x - np.load(tiny_data / "Mean.npy")).mean() < 20 * std.mean()
    again = tmp_path / "y.npy"
    main(["sample", "--run", str(run), "--text", "a person walks forward", "--text", "a person jumps",
          "--num", "2", "--length", "42", "--sample-steps", "5", "--device", "cpu", "--out", str(again)])
    assert np.array_equal(np.load(again), x)  # same seed, same samples


@pytest.mark.parametrize("stop", [4, 5])  # at the VAE -> denoiser boundary, and inside the denoiser stage
def test_mld_resume_across_stages(tiny_data, tmp_path, stop):
    common = ["pretrain", "--backbone", "mld", "--data", str(tiny_data), "--profile", "smoke", "--iterations", "8",
              "--checkpoint-every", "3", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "full")]) == 0
    assert main([*common, "--out", str(tmp_path / "cut"), "--stop-after", str(stop)]) == 0
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == stop
    assert main(["pretrain", "--backbone", "mld", "--data", str(tiny_data), "--out", str(tmp_path / "cut"),
                 "--resume", "--device", "cpu", "--no-progress"]) == 0
    a = load_tensors(tmp_path / "full" / "weights.safetensors")
    b = load_tensors(tmp_path / "cut" / "weights.safetensors")
    assert float(a["latent_scale"]) != 1.0  # measured when the denoiser stage began
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_lcm_distillation_resumes_exactly_and_samples_in_few_steps(tiny_data, tmp_path):
    teacher = tmp_path / "mld"
    assert main(["pretrain", "--backbone", "mld", "--data", str(tiny_data), "--iterations", "4", "--batch-size", "4",
                 "--device", "cpu", "--no-progress", "--out", str(teacher)]) == 0
    common = ["pretrain", "--backbone", "lcm", "--teacher", str(teacher), "--data", str(tiny_data), "--iterations", "4",
              "--checkpoint-every", "2", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "full")]) == 0
    assert main([*common, "--out", str(tmp_path / "cut"), "--stop-after", "2"]) == 0
    assert main([*common[:5], "--data", str(tiny_data), "--out", str(tmp_path / "cut"), "--resume",
                 "--device", "cpu", "--no-progress"]) == 0
    a = load_tensors(tmp_path / "full" / "weights.safetensors")
    b = load_tensors(tmp_path / "cut" / "weights.safetensors")
    t = load_tensors(teacher / "weights.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(a["teacher.out.weight"], t["denoiser.out.weight"])        # the teacher stays frozen
    assert not torch.equal(a["student.out.weight"], t["denoiser.out.weight"])    # the student moved
    for steps in ("1", "2", "4"):
        out = tmp_path / f"s{steps}.npy"
        assert main(["sample", "--run", str(tmp_path / "full"), "--text", "a person waves", "--length", "40",
                     "--sample-steps", steps, "--device", "cpu", "--out", str(out)]) == 0
        assert np.load(out).shape == (1, 40, 263)
