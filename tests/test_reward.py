"""Retrieval reward: gradients w.r.t. the motion, masking, noise, InfoNCE filtering, metrics, CLI end to end."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from easytune_lab.cli import main
from easytune_lab.errors import UserError
from easytune_lab.reward.metrics import batched_retrieval_metrics, ranks_of_targets, retrieval_metrics
from easytune_lab.reward.retrieval import (CaptionTokenizer, Reward, RewardModelConfig, alphas_cumprod_for,
                                           identical_captions, info_nce, load_reward, noise_motion)

ACTIONS = ["walks", "jumps", "waves", "kicks", "turns", "squats"]
SIDES = ["left", "right"]


def write_toy_dataset(root, n=96, seed=0, dim=263):
    """A tiny HumanML3D-format directory whose captions determine the motion (so retrieval is learnable)."""
    rng = np.random.default_rng(seed)
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    ids = []
    for i in range(n):
        a, s = rng.integers(len(ACTIONS)), rng.integers(len(SIDES))
        T = int(rng.integers(40, 80))
        t = np.arange(T)[:, None] / 20.0
        x = 0.3 * rng.standard_normal((T, dim))
        x[:, 10 * a:10 * a + 10] += np.sin(2 * np.pi * (a + 1) * 0.5 * t)
        x[:, 100 + s] += 2.0
        mid = f"{i:06d}"
        np.save(root / "new_joint_vecs" / f"{mid}.npy", x.astype(np.float32))
        words = ["a", "person", ACTIONS[a], "to", "the", SIDES[s]]
        text = " ".join(words)
        (root / "texts" / f"{mid}.txt").write_text(
            f"{text}.#{' '.join(w + '/NOUN' for w in words)}#0.0#0.0\n"
            f"someone {ACTIONS[a]} {SIDES[s]}.#someone/PRON {ACTIONS[a]}/VERB {SIDES[s]}/ADV#0.0#0.0\n")
        ids.append(mid)
    np.save(root / "Mean.npy", np.zeros(dim, np.float32))
    np.save(root / "Std.npy", np.ones(dim, np.float32))
    cut = int(0.6 * n)
    (root / "train.txt").write_text("\n".join(ids[:cut]) + "\n")
    (root / "val.txt").write_text("\n".join(ids[cut:cut + 4]) + "\n")
    (root / "test.txt").write_text("\n".join(ids[cut:]) + "\n")
    return root


def small_reward(noise_aware=False, seed=0):
    torch.manual_seed(seed)
    tok = CaptionTokenizer.from_captions([f"a person {a} to the {s}" for a in ACTIONS for s in SIDES], max_words=12)
    cfg = RewardModelConfig(d_model=32, n_layers=1, text_layers=1, n_heads=2, d_ff=64, embed_dim=16,
                            vocab_size=len(tok), noise_aware=noise_aware, dropout=0.0, max_words=12)
    return Reward(cfg, tok).eval()


@pytest.mark.parametrize("noise_aware", [False, True])
def test_reward_gradient_wrt_motion_is_finite_nonzero_and_masked(noise_aware):
    reward = small_reward(noise_aware)
    x = torch.randn(3, 48, 263, requires_grad=True)
    r = reward.score(x, ["a person walks to the left", "someone jumps right", "a person waves"],
                     lengths=[48, 40, 20], t=250 if noise_aware else None)
    assert r.shape == (3,)
    r.sum().backward()
    g = x.grad
    assert torch.isfinite(g).all()
    for b, n in enumerate([48, 40, 20]):
        assert g[b, :n].abs().sum() > 0          # real frames move the reward
        assert torch.equal(g[b, n:], torch.zeros_like(g[b, n:]))  # padding does not


def test_score_through_a_decoder_reaches_the_latents():
    reward = small_reward()
    decoder = torch.nn.Linear(8, 263)
    z = torch.randn(2, 32, 8, requires_grad=True)
    r = reward.score(z, ["a person kicks to the right", "a person turns"], lengths=[32, 32], decode=decoder)
    r.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # the same number as scoring the decoded features directly
    direct = reward.score(decoder(z).detach(), ["a person kicks to the right", "a person turns"], lengths=[32, 32])
    assert torch.allclose(r.detach(), direct, atol=1e-5)


def test_reward_is_scaled_cosine_and_time_matters_only_when_noise_aware():
    plain, aware = small_reward(False), small_reward(True)
    x = torch.randn(2, 40, 263)
    texts = ["a person walks to the left", "a person squats"]
    for reward in (plain, aware):
        r = reward.score(x, texts)
        m, c = reward.embed_motion(x), reward.embed_text(texts)
        assert torch.allclose(m.norm(dim=-1), torch.ones(2), atol=1e-5)
        assert torch.allclose(r, reward.logit_scale() * (m * c).sum(-1), atol=1e-5)
        assert r.abs().max() <= reward.logit_scale() + 1e-4
    assert torch.allclose(plain.score(x, texts, t=0), plain.score(x, texts, t=700))
    assert not torch.allclose(aware.score(x, texts, t=0), aware.score(x, texts, t=700))


def test_forward_noising_matches_the_closed_form():
    ab = alphas_cumprod_for("cosine", 1000)
    assert ab.shape == (1000,) and 0.99 < ab[0] <= 1 and ab[-1] < 1e-3 and bool((ab[1:] <= ab[:-1]).all())
    x0, eps = torch.randn(3, 8, 5), torch.randn(3, 8, 5)
    t = torch.tensor([0, 100, 750])
    xt = noise_motion(x0, t, ab, eps)
    assert torch.equal(xt[0], x0[0])  # t = 0 is the clean motion
    for i in (1, 2):
        a = ab[t[i]]
        assert torch.allclose(xt[i], a.sqrt() * x0[i] + (1 - a).sqrt() * eps[i], atol=1e-6)


def test_infonce_filters_identical_captions():
    tok = CaptionTokenizer.from_captions(["a person walks", "a person jumps"])
    ids = tok.batch(["A person walks.", "a person walks", "a person jumps"])
    dup = identical_captions(ids)
    assert dup.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    m = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    c = m.clone()
    c[1] = m[0]  # captions 0 and 1 say the same thing, so their embeddings coincide
    scale = torch.tensor(10.0)
    filtered = info_nce(m, c, scale, dup)
    plain = info_nce(m, c, scale)
    assert filtered < plain
    # by hand: text->motion rows drop the duplicate column
    logits = scale * m @ c.T
    keep = ~(dup.bool() & ~torch.eye(3, dtype=torch.bool))
    ce = lambda L: torch.stack([-(L[i, i] - torch.logsumexp(L[i][keep[i]], 0)) for i in range(3)]).mean()
    assert filtered.item() == pytest.approx(0.5 * (ce(logits) + ce(logits.T)).item(), rel=1e-5)


def test_retrieval_metrics_against_hand_counts():
    text = torch.eye(4)
    motion = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0.5, 0.9]])
    motion = torch.nn.functional.normalize(motion, dim=-1)
    sim = text @ motion.T
    ranks = ranks_of_targets(sim)
    assert ranks.tolist() == [1, 2, 3, 1]  # text 1: motion 2 above; text 2: motions 1 and 3 above
    m = retrieval_metrics(motion, text)
    assert m["t2m"]["R@1"] == 50.0 and m["t2m"]["R@2"] == 75.0 and m["t2m"]["R@3"] == 100.0
    assert m["t2m"]["median_rank"] == 1.0  # torch's lower median of [1, 1, 2, 3]
    assert m["m2t"]["R@1"] == 50.0
    b = batched_retrieval_metrics(torch.eye(70), torch.eye(70), batch_size=32)
    assert b["num_batches"] == 2 and b["n"] == 64 and b["t2m"]["R@1"] == 100.0
    with pytest.raises(ValueError):
        batched_retrieval_metrics(torch.eye(10), torch.eye(10), batch_size=32)


def test_missing_text_model_path_is_a_user_error(tmp_path):
    cfg = RewardModelConfig(text_model_path=str(tmp_path / "no-such-model"))
    with pytest.raises(UserError, match="no-such-model"):
        Reward(cfg)


def test_cli_smoke_train_spl_and_load(tmp_path, capsys):
    data = write_toy_dataset(tmp_path / "data")
    run = tmp_path / "reward"
    assert main(["reward", "train", "--data", str(data), "--profile", "smoke", "--out", str(run), "--seed", "1",
                 "--device", "cpu", "--noise-aware"]) == 0
    spl_run = tmp_path / "spl"
    assert main(["reward", "spl", "--reward", str(run), "--data", str(data), "--profile", "smoke",
                 "--out", str(spl_run), "--device", "cpu"]) == 0
    for r in (run, spl_run):
        assert {"manifest.json", "weights.safetensors", "metrics.json", "vocab.json"} <= {p.name for p in r.iterdir()}
    manifest = json.loads((spl_run / "manifest.json").read_text())
    assert manifest["kind"] == "reward-spl" and manifest["parents"]["reward"] == str(run.resolve())
    metrics = json.loads((run / "metrics.json").read_text())
    clean = metrics["retrieval"]["t=0"]
    for protocol in ("all", "batch32"):
        for direction in ("t2m", "m2t"):
            keys = set(clean[protocol][direction])
            assert keys == {"R@1", "R@2", "R@3", "R@5", "R@10", "median_rank"}
            assert 0 <= clean[protocol][direction]["R@1"] <= clean[protocol][direction]["R@10"] <= 100
    assert clean["all"]["n"] == metrics["test_items"] > 32
    spl_metrics = json.loads((spl_run / "metrics.json").read_text())
    assert len(spl_metrics["mined_pairs_per_epoch"]) == spl_metrics["spl"]["epochs"]
    # load_reward gives back the same scores as the trained model recorded
    reward = load_reward(run, "cpu")
    assert reward.cfg.noise_aware
    assert not any(p.requires_grad for p in reward.parameters())  # frozen: gradients go to the motion only
    assert all(p.requires_grad for p in load_reward(run, "cpu", trainable=True).parameters())
    x = torch.randn(2, 40, 263, requires_grad=True)
    r = reward.score(x, ["a person walks to the left", "someone kicks right"], t=100)
    r.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # a second load is deterministic
    assert torch.allclose(load_reward(run, "cpu").score(x.detach(), ["a person walks"], t=100)[0:1],
                          reward.score(x.detach(), ["a person walks"], t=100)[0:1])


def test_cli_official_spl_records_the_authors_settings_and_trains(tmp_path, capsys):
    from safetensors.torch import load_file

    data = write_toy_dataset(tmp_path / "data")
    run = tmp_path / "reward"
    assert main(["reward", "train", "--data", str(data), "--profile", "smoke", "--out", str(run), "--seed", "1",
                 "--device", "cpu"]) == 0
    out = tmp_path / "official"
    assert main(["reward", "spl", "--reward", str(run), "--data", str(data), "--profile", "smoke", "--out", str(out),
                 "--device", "cpu", "--spl-mode", "official"]) == 0
    spl = json.loads((out / "metrics.json").read_text())["spl"]    # batch: smoke's 32, below the official 64
    assert {k: spl[k] for k in ("mode", "gallery", "batch_size", "lr", "k", "weight", "threshold", "temperature")} \
        == {"mode": "official", "gallery": "batch", "batch_size": 32, "lr": 1e-5, "k": 10, "weight": 0.01,
            "threshold": 0.8, "temperature": 0.1}
    assert json.loads((out / "manifest.json").read_text())["config"]["spl"]["mode"] == "official"
    before, after = load_file(str(run / "weights.safetensors")), load_file(str(out / "weights.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)           # it trained
    from helpers import run_cli

    code, err = run_cli(["reward", "spl", "--reward", str(run), "--data", str(data), "--profile", "smoke",
                         "--out", str(tmp_path / "x"), "--device", "cpu", "--spl-mode", "authors"], capsys)
    assert code == 2 and "--spl-mode" in err and not (tmp_path / "x").exists()


def test_a_warm_started_noise_aware_reward_starts_as_the_plain_one_at_every_t():
    from easytune_lab.reward.train import RewardTrainConfig, warm_start

    plain = small_reward(noise_aware=False, seed=3)
    cfg = RewardTrainConfig(model=dataclasses.replace(plain.cfg, schedule="linear", noise_aware=True))
    aware = warm_start(plain, cfg).eval()
    assert aware.cfg.noise_aware and cfg.model is aware.cfg and aware.cfg.schedule == "linear"
    x = torch.randn(3, 24, 263)
    texts = ["a person walks to the left", "a person jumps to the right", "a person waves to the left"]
    with torch.no_grad():
        for t in (0, 100, 999):
            assert torch.equal(aware.score(x, texts, t=t), plain.score(x, texts))
    # it is a copy: training it leaves the plain reward as it was, and the time embedding is trainable
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    aware.train()
    aware.score(x, texts, t=torch.tensor([10, 500, 900])).sum().backward()
    assert aware.motion_encoder.time_mlp[-1].weight.grad.abs().sum() > 0
    torch.optim.SGD(aware.parameters(), lr=0.1).step()
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    with pytest.raises(UserError, match="--init"):          # noise-aware -> plain would drop the time embedding
        warm_start(aware, RewardTrainConfig(model=plain.cfg))


def test_cli_rewards_started_from_a_run(tmp_path, capsys):
    data = write_toy_dataset(tmp_path / "data")
    plain, aware, longer = tmp_path / "plain", tmp_path / "aware", tmp_path / "longer"
    common = ["--data", str(data), "--profile", "smoke", "--device", "cpu"]
    assert main(["reward", "train", *common, "--out", str(plain)]) == 0
    assert main(["reward", "train", *common, "--out", str(aware), "--noise-aware", "--init", str(plain)]) == 0
    assert main(["reward", "train", *common, "--out", str(longer), "--init", str(plain)]) == 0   # plain, continued
    vocab = load_reward(plain, "cpu").tokenizer.vocab.itos
    for run, noise_aware in ((aware, True), (longer, False)):
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["parents"]["init"] == str(plain.resolve())
        reward = load_reward(run, "cpu")
        assert reward.cfg.noise_aware == noise_aware and reward.tokenizer.vocab.itos == vocab
    # the continued run really trained on: its weights moved away from the run it started from
    x = torch.randn(2, 40, 263)
    assert not torch.equal(load_reward(longer, "cpu").score(x, ["a person walks", "someone kicks right"]),
                           load_reward(plain, "cpu").score(x, ["a person walks", "someone kicks right"]))
    # a plain reward cannot be continued from a noise-aware one; nothing is written
    assert main(["reward", "train", *common, "--out", str(tmp_path / "y"), "--init", str(aware)]) == 2
    assert "--init" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main(["reward", "train", *common, "--out", str(tmp_path / "z"), "--init", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "z").exists()


def test_cli_user_errors(tmp_path, capsys):
    assert main(["reward", "train", "--data", str(tmp_path / "nope"), "--profile", "smoke",
                 "--out", str(tmp_path / "r")]) == 2
    assert "--data" in capsys.readouterr().err
    data = write_toy_dataset(tmp_path / "data", n=40)
    assert main(["reward", "train", "--data", str(data), "--profile", "huge", "--out", str(tmp_path / "r")]) == 2
    assert main(["reward", "spl", "--reward", str(tmp_path / "missing"), "--data", str(data), "--profile",
                 "smoke", "--out", str(tmp_path / "s")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["reward", "train", "--data", str(data), "--profile", "smoke", "--out", str(tmp_path / "r"),
                 "--text-model", str(tmp_path / "no-model")]) == 2
    assert "--text-model" in capsys.readouterr().err


def test_cli_smoke_study_writes_summaries(tmp_path):
    data = write_toy_dataset(tmp_path / "data", n=90)
    results, runs_dir = tmp_path / "results", tmp_path / "runs"
    assert main(["reward", "study", "--data", str(data), "--profile", "smoke", "--runs", str(runs_dir),
                 "--results", str(results), "--seeds", "0", "--noise-seeds", "0", "--device", "cpu"]) == 0
    assert {p.name for p in runs_dir.iterdir()} == {"plain-s0", "spl-s0", "control-s0", "noise-aware-s0",
                                                       "continued-s0", "spl-official-s0"}
    # a second seed made by hand, to check the mean/spread arithmetic of the summary
    for name in ("plain", "spl", "control", "noise-aware", "continued", "spl-official"):
        src, dst = runs_dir / f"{name}-s0", runs_dir / f"{name}-s1"
        dst.mkdir()
        m = json.loads((src / "metrics.json").read_text())
        for key in ("before", "retrieval"):
            if key in m:
                m[key]["t=0"]["all"]["t2m"]["R@1"] += 10.0 if name == "spl" else 4.0
        (dst / "metrics.json").write_text(json.dumps(m))
        (dst / "manifest.json").write_text((src / "manifest.json").read_text())
    assert main(["reward", "study", "--data", str(data), "--runs", str(runs_dir), "--results", str(results),
                 "--summarise-only"]) == 0
    spl = json.loads((results / "spl.json").read_text())
    runs = json.loads((results / "runs.json").read_text())
    r1 = lambda kind, s, key="retrieval": runs[kind][s][key]["t=0"]["all"]["t2m"]["R@1"]
    assert spl["seeds"] == [0, 1]
    assert spl["all"]["before"]["values"] == [r1("spl", "0", "before"), r1("spl", "1", "before")]
    assert spl["all"]["before"]["mean"] == pytest.approx((r1("spl", "0", "before") + r1("spl", "1", "before")) / 2)
    assert spl["all"]["before"]["sd"] == pytest.approx(10.0 / math.sqrt(2))
    d0 = r1("spl", "0") - r1("control", "0")
    assert spl["all"]["spl_minus_control"]["values"] == pytest.approx([d0, d0 + 6.0])
    assert spl["all"]["spl_minus_control"]["ci95"] == pytest.approx(12.706 * 6.0 / math.sqrt(2) / math.sqrt(2))
    official = lambda s: runs["spl_official"][s]["retrieval"]["t=0"]["all"]["t2m"]["R@1"]
    assert spl["official_spl"]["all"]["minus_ours"]["values"] == pytest.approx(
        [official("0") - r1("spl", "0"), official("1") - r1("spl", "1")])
    assert spl["official_spl"]["config"]["mode"] == "official"
    noise = json.loads((results / "noise_aware.json").read_text())
    assert noise["timesteps"] == [0, 500] and noise["schedule"] == "cosine"
    assert set(noise["batch32"]["t=500"]) == {"plain", "noise_aware", "plain_continued"}
    assert noise["batch32"]["t=500"]["plain_continued"]["values"] == [
        runs["continued"][s]["retrieval"]["t=500"]["batch32"]["t2m"]["R@1"] for s in ("0", "1")]
    aware = json.loads((runs_dir / "noise-aware-s0" / "manifest.json").read_text())
    assert aware["parents"]["init"] == str((runs_dir / "plain-s0").resolve())   # started from the plain reward
    assert runs["control"]["0"]["spl"]["weight"] == 0.0
    # re-evaluating the finished runs at chosen noise levels gives their own metrics back (same split, same noise)
    import shutil

    for name in ("plain", "spl", "control", "noise-aware", "continued"):
        shutil.rmtree(runs_dir / f"{name}-s1")                       # the hand-made copies hold no weights
    out = tmp_path / "eval.json"
    assert main(["reward", "eval", "--reward", str(runs_dir / "plain-s0"), "--data", str(data),
                 "--timesteps", "0,500", "--out", str(out), "--device", "cpu"]) == 0
    own = json.loads((runs_dir / "plain-s0" / "metrics.json").read_text())["retrieval"]
    assert json.loads(out.read_text())["retrieval"] == own
    sweep = tmp_path / "sweep.json"
    assert main(["reward", "sweep", "--runs", str(runs_dir), "--data", str(data), "--timesteps", "500,900",
                 "--out", str(sweep), "--device", "cpu"]) == 0
    got = json.loads(sweep.read_text())
    assert got["timesteps"] == [500, 900] and got["seeds"]["noise_aware"] == [0]
    aware500 = json.loads((runs_dir / "noise-aware-s0" / "metrics.json").read_text())["retrieval"]["t=500"]
    assert got["batch32"]["t=500"]["noise_aware"]["values"] == [aware500["batch32"]["t2m"]["R@1"]]
    assert set(got["all"]["t=900"]) == {"plain", "noise_aware", "plain_continued"}


@pytest.mark.parametrize("args, message", [
    (["eval", "--timesteps", "0,1000"], "--timesteps"),
    (["eval", "--timesteps", "zero"], "--timesteps"),
    (["eval", "--out-csv"], "--out"),
    (["eval", "--no-run"], "--reward"),
    (["sweep", "--timesteps", "0"], "--runs"),
])
def test_cli_reward_eval_and_sweep_user_errors(tmp_path, capsys, args, message):
    data = write_toy_dataset(tmp_path / "data", n=40)
    kind, *rest = args
    common = ["--data", str(data), "--out", str(tmp_path / ("x.csv" if "--out-csv" in rest else "x.json"))]
    if kind == "eval":
        run = tmp_path / "missing"       # the arguments are checked before the run is read
        timesteps = rest[rest.index("--timesteps") + 1] if "--timesteps" in rest else "0"
        cmd = ["reward", "eval", "--reward", str(run), "--timesteps", timesteps, *common]
    else:
        cmd = ["reward", "sweep", "--runs", str(tmp_path / "empty"), "--timesteps", "0", *common]
    capsys.readouterr()
    try:
        code = main(cmd)
    except SystemExit as exc:  # options refused by argparse (e.g. the --out suffix) exit with one line too
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()
