"""The T2M-style evaluator: shapes, losses, end-to-end smoke training through the CLI, and `easytune eval gt`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from easytune_lab.cli import main
from easytune_lab.errors import UserError
from easytune_lab.eval.evaluator import EvaluatorConfig, TextMotionEvaluator, embed_motions, embed_texts, load_evaluator
from easytune_lab.eval.evaluator_train import infonce_loss, margin_loss, same_caption_mask

ACTIONS = [("walk", "VERB", "forward", "ADV"), ("jump", "VERB", "up", "ADV"), ("wave", "VERB", "hand", "NOUN"),
           ("kick", "VERB", "leg", "NOUN"), ("turn", "VERB", "around", "ADV"), ("sit", "VERB", "down", "ADV"),
           ("run", "VERB", "fast", "ADV"), ("raise", "VERB", "arm", "NOUN")]
SPEEDS = [("slowly", 0.5), ("quickly", 2.0)]


def write_toy_dataset(root: Path, n: int = 240, seed: int = 0) -> Path:
    """A tiny HumanML3D-format directory whose captions are recoverable from the motions: each action drives
    its own block of 8 feature dims with a sinusoid whose frequency depends on the speed word."""
    rng = np.random.default_rng(seed)
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    ids, all_feats = [], []
    for i in range(n):
        a, s = i % len(ACTIONS), (i // len(ACTIONS)) % len(SPEEDS)
        verb, vpos, obj, opos = ACTIONS[a]
        speed, freq = SPEEDS[s]
        t = int(rng.integers(40, 120))
        feats = 0.3 * rng.normal(size=(t, 263)).astype(np.float32)
        time = np.arange(t) / 20.0
        feats[:, 8 * a: 8 * a + 8] += 2.0 * np.sin(2 * np.pi * freq * time + rng.uniform(0, 6))[:, None]
        motion_id = f"{i:06d}"
        np.save(root / "new_joint_vecs" / f"{motion_id}.npy", feats)
        text = f"a person {verb}s {obj} {speed}."
        tokens = f"a/DET person/NOUN {verb}/{vpos} {obj}/{opos} {speed}/ADV"
        (root / "texts" / f"{motion_id}.txt").write_text(f"{text}#{tokens}#0.0#0.0\n")
        ids.append(motion_id)
        all_feats.append(feats)
    frames = np.concatenate(all_feats)
    np.save(root / "Mean.npy", frames.mean(0).astype(np.float32))
    np.save(root / "Std.npy", frames.std(0).astype(np.float32))
    order = rng.permutation(n)
    cut1, cut2 = int(0.6 * n), int(0.8 * n)
    for name, part in (("train", order[:cut1]), ("val", order[cut1:cut2]), ("test", order[cut2:])):
        (root / f"{name}.txt").write_text("\n".join(ids[k] for k in part) + "\n")
    return root


def test_encoders_shapes_and_padding_invariance():
    torch.manual_seed(0)
    cfg = EvaluatorConfig(movement_hidden=16, movement_latent=16, motion_hidden=16, word_dim=8, text_hidden=16,
                          dropout=0.0)
    model = TextMotionEvaluator(cfg, vocab_size=30).eval()
    x = torch.randn(3, 64, 263)
    lengths = torch.tensor([64, 40, 48])
    emb = model.encode_motion(x, lengths)
    assert emb.shape == (3, 512)
    # frames past the length do not change the embedding (only the GRU's valid steps count) ...
    x2 = x.clone()
    x2[1, 44:] = 99.0  # beyond 40 frames + the conv receptive field
    assert torch.allclose(model.encode_motion(x2, lengths)[1], emb[1], atol=1e-5)
    # ... and the 4 foot-contact dims are ignored
    x3 = x.clone()
    x3[..., -4:] = 5.0
    assert torch.allclose(model.encode_motion(x3, lengths), emb, atol=1e-6)
    ids = torch.randint(4, 30, (3, 22))
    pos = torch.zeros(3, 22, 15)
    t = model.encode_text(ids, pos, torch.tensor([5, 7, 22]))
    assert t.shape == (3, 512)


def test_losses_prefer_matching_pairs():
    torch.manual_seed(1)
    m = torch.randn(16, 8) * 5
    good, bad = m + 0.01 * torch.randn(16, 8), torch.randn(16, 8) * 5
    assert infonce_loss(good, m, 0.1) < 0.01 < infonce_loss(bad, m, 0.1)
    assert margin_loss(good, m, 10.0, shift=3) < margin_loss(bad, m, 10.0, shift=3)
    same = same_caption_mask(["a b", "c", "A b ", "c"])
    assert same.tolist() == [[False, False, True, False], [False, False, False, True],
                             [True, False, False, False], [False, True, False, False]]
    # excluding a duplicate caption removes it as a negative: a duplicate at zero distance costs nothing
    dup = torch.stack([m[0], m[0], m[2]])
    assert infonce_loss(dup, dup, 0.1, same_caption_mask(["x", "x", "y"])) < 1e-3
    assert float(infonce_loss(dup, dup, 0.1)) == pytest.approx(2 / 3 * np.log(2), abs=1e-3)  # rows 0, 1 tie


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    data = write_toy_dataset(root / "toy")
    out = root / "evaluator"
    rc = main(["evaluator", "train", "--data", str(data), "--profile", "smoke", "--out", str(out),
               "--device", "cpu", "--no-progress"])
    assert rc == 0
    return data, out


def test_smoke_training_through_cli_beats_chance(smoke_run):
    data, out = smoke_run
    for name in ("manifest.json", "weights.safetensors", "vocabulary.json", "normalisation.npz", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    val = metrics["val"]
    assert metrics["train_seconds"] > 0
    assert val["group_size"] == 32
    # 16 caption classes: a perfect class-level matcher gets ~ 1/2 top-1; chance is 1/32
    assert val["r_precision_top1"] > 3 * val["chance_top1"]
    assert val["r_precision_top3"] >= val["r_precision_top1"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "evaluator" and manifest["seed"] == 2022


def test_load_evaluator_embeds_texts_and_raw_motions(smoke_run):
    data, out = smoke_run
    ev = load_evaluator(out)
    texts = embed_texts(ev, ["a person jumps up quickly.", "a person sits down slowly."])
    assert texts.shape == (2, 512) and np.isfinite(texts).all()
    raw = [np.load(data / "new_joint_vecs" / "000000.npy"), np.load(data / "new_joint_vecs" / "000001.npy")]
    m_raw = embed_motions(ev, raw, normalised=False)
    normed = [(r - ev.mean) / ev.std for r in raw]
    np.testing.assert_allclose(m_raw, embed_motions(ev, normed), atol=1e-5)
    with pytest.raises(UserError):
        load_evaluator(data)  # not a run directory


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["evaluator", "train", "--data", str(tmp_path / "nope"), "--profile", "smoke",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err


def run_eval(data, evaluator, out, model, reps=3, extra=()):
    rc = main(["eval", "--model", model, "--evaluator", str(evaluator), "--data", str(data), "--split", "val",
               "--replications", str(reps), "--out", str(out), "--device", "cpu", "--no-progress", *extra])
    assert rc == 0
    return json.loads(out.read_text())


def test_eval_gt_and_sanity_baselines(smoke_run, tmp_path):
    data, ev_dir = smoke_run
    gt = run_eval(data, ev_dir, tmp_path / "gt.json", "gt")
    keys = ("r_precision_top1", "r_precision_top2", "r_precision_top3", "fid", "mm_dist", "diversity")
    for key in keys:
        assert set(gt[key]) == {"mean", "ci95"} and np.isfinite(gt[key]["mean"]), key
    assert "multimodality" not in gt
    legacy = run_eval(data, ev_dir, tmp_path / "gt_legacy.json", "gt", reps=1, extra=("--protocol", "legacy"))
    assert legacy["fid"]["mean"] < 1e-6  # legacy: the start crops against themselves
    assert legacy["manifest"]["config"]["protocol"] == "legacy" and gt["manifest"]["config"]["protocol"] == "t2m"
    assert gt["r_precision_top3"]["mean"] >= gt["r_precision_top1"]["mean"] > 3 / 32
    assert gt["manifest"]["kind"] == "eval" and gt["manifest"]["model"] == "gt"
    assert len(gt["per_replication"]) == 3
    noise = run_eval(data, ev_dir, tmp_path / "noise.json", "noise", reps=2)
    repeat = run_eval(data, ev_dir, tmp_path / "repeat.json", "repeat", reps=2)
    # t2m: gt's FID is against an independent draw of crops (one group of 32 here), so not zero but far below noise
    assert noise["fid"]["mean"] > 10 * gt["fid"]["mean"] > 0
    # one motion (cropped to each row's length) is far less diverse than the real motions
    assert repeat["diversity"]["mean"] < 0.25 * gt["diversity"]["mean"]
    # every caption paired with another real motion: same motions (so Diversity is unchanged), wrong pairs
    shuffled = run_eval(data, ev_dir, tmp_path / "shuffled.json", "shuffled", reps=2)
    assert shuffled["r_precision_top1"]["mean"] < gt["r_precision_top1"]["mean"]
    assert abs(shuffled["diversity"]["mean"] - gt["diversity"]["mean"]) < 0.25 * gt["diversity"]["mean"]
    if "oracle_accuracy" in gt:
        assert shuffled["oracle_accuracy"]["mean"] < gt["oracle_accuracy"]["mean"]


def test_eval_rejects_non_generator_runs(smoke_run, tmp_path, capsys):
    data, ev_dir = smoke_run
    args = ["eval", "--evaluator", str(ev_dir), "--data", str(data), "--out", str(tmp_path / "x.json")]
    assert main(["eval", "--model", str(ev_dir), *args[1:]]) == 2
    assert "not a generator" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "missing"), *args[1:]]) == 2
    assert main(["eval", "--model", "gt", "--multimodality", *args[1:]]) == 2
    assert "--multimodality" in capsys.readouterr().err
    assert main(["eval", "--model", "gt", "--sample-steps", "4", *args[1:]]) == 2  # baselines sample nothing
    assert "--sample-steps" in capsys.readouterr().err


def test_protocol_with_a_generator_and_multimodality(smoke_run):
    from easytune_lab.eval.protocol import GroundTruth, ProtocolConfig, evaluate, generated_source

    data, ev_dir = smoke_run
    ev = load_evaluator(ev_dir)
    gt = GroundTruth(data, "val", ev)
    by_caption = {}
    for motion in gt.dataset.clips:
        by_caption.setdefault(motion.captions[0].text, motion.motion_id)
    seen = []

    def generate(texts, lengths, seed):
        """A 'generator' that returns a real motion of the caption plus seed-dependent noise."""
        seen.append((list(texts), seed))
        rng = np.random.default_rng(seed)
        out = []
        for text, n in zip(texts, lengths):
            feats = np.load(data / "new_joint_vecs" / f"{by_caption[text]}.npy")
            reps = int(np.ceil(n / len(feats)))
            base = np.concatenate([feats] * reps)[:n]
            out.append(base + 0.5 * ev.std * rng.standard_normal(base.shape).astype(np.float32))
        return out

    config = ProtocolConfig(split="val", replications=2, mm_texts=5, mm_repeats=4, mm_times=3)
    result = evaluate(ev, gt, generated_source(generate), config, mm_generate=generate)
    assert seen[0][0] == gt.rows(0).captions  # rows are judged on the captions the generator received
    assert seen[0][1] != seen[2][1]  # each replication samples with its own seed
    assert result["multimodality"]["mean"] > 0
    assert result["fid"]["mean"] > 0
    assert result["r_precision_top3"]["mean"] > 3 / 32


def test_embeds_the_real_humanml3d_sample(smoke_run, fixture_dir):
    _, ev_dir = smoke_run
    ev = load_evaluator(ev_dir)
    feats = np.load(fixture_dir / "new_joint_vecs" / "012314.npy")  # (170, 263) raw HumanML3D features
    emb = embed_motions(ev, [feats, feats[:120]], normalised=False)
    assert emb.shape == (2, 512) and np.isfinite(emb).all()
    assert not np.allclose(emb[0], emb[1])  # the length matters


def test_t2m_margin_loss_also_trains(smoke_run, tmp_path):
    data, _ = smoke_run
    out = tmp_path / "margin"
    assert main(["evaluator", "train", "--data", str(data), "--profile", "smoke", "--out", str(out),
                 "--device", "cpu", "--no-progress", "--loss", "margin", "--epochs", "15"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 15
    assert metrics["val"]["r_precision_top1"] > 3 * metrics["val"]["chance_top1"]
    assert json.loads((out / "manifest.json").read_text())["config"]["loss"] == "margin"


def test_profiles_scale_up_to_t2m_sizes():
    from easytune_lab.eval.evaluator_train import profile_config

    sizes = {}
    for profile in ("smoke", "quick", "paper"):
        cfg = profile_config(profile)
        assert cfg.model.output_dim == 512
        sizes[profile] = sum(p.numel() for p in TextMotionEvaluator(cfg.model, 100).parameters())
    assert sizes["smoke"] < sizes["quick"] < sizes["paper"]
    paper = profile_config("paper").model
    assert (paper.movement_hidden, paper.motion_hidden, paper.text_hidden) == (512, 1024, 512)  # T2M's sizes
    with pytest.raises(UserError):
        profile_config("huge")
