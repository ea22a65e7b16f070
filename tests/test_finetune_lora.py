"""LoRA fine-tuning (peft) on a smoke MDM: only adapters train, the run stays a normal backbone run, resume is exact."""

from __future__ import annotations

import json
import sys

import pytest
import torch

pytest.importorskip("peft")

from easytune_lab.cli import main  # noqa: E402
from easytune_lab.errors import UserError  # noqa: E402
from easytune_lab.finetune.lora import ADAPTER  # noqa: E402
from easytune_lab.finetune.train import Finetuner, finetune_config, run_finetune  # noqa: E402
from easytune_lab.runs import load_tensors  # noqa: E402

from helpers import finetune_inputs, run_cli  # noqa: E402

CPU = torch.device("cpu")
RANK = 4
FAST = dict(sample_steps=4, eval_captions=4)   # short trajectories: these tests are about state, not reward


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return finetune_inputs(tmp_path_factory)


def lora_tuner(runs, **overrides) -> Finetuner:
    cfg = finetune_config("easytune", "smoke", lora_rank=RANK, **FAST, **overrides)
    return Finetuner(cfg, runs["base"], runs["reward"], runs["data"], CPU)


def test_only_adapters_train_and_the_base_weights_stay_bit_identical(runs):
    tuner = lora_tuner(runs)
    net = tuner.backbone.net
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert [p for g in tuner.optimizer.param_groups for p in g["params"]] == tuner.params
    # smoke MDM: d = 64, ff = 128, 2 layers, 263 features; r (d_in + d_out) per adapted matrix
    d, ff, feats = 64, 128, 263
    per_layer = (d + 3 * d) + (d + d) + (d + ff) + (ff + d)     # q/k/v in_proj, out_proj, linear1, linear2
    expected = RANK * ((feats + d) + (d + feats) + 2 * per_layer)  # + inp, out
    n_lora = sum(p.numel() for p in tuner.params)
    n_base = sum(p.numel() for n, p in net.named_parameters() if ".lora_" not in n)
    assert n_lora == expected == 8760
    assert n_lora < 0.1 * n_base

    before = {k: v.clone() for k, v in tuner.backbone.state_dict().items()}
    for _ in range(2):
        stats = tuner.iteration()
        assert stats.grad_norms and all(0 < g < float("inf") for g in stats.grad_norms)
    after = tuner.backbone.state_dict()
    assert after.keys() == before.keys()
    for key, value in after.items():
        if ".lora_" in key:   # every adapter moved: none is bypassed (e.g. by attention's own weight reads)
            assert not torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, before[key]), key


def test_lora_run_saves_merged_weights_that_sample_like_the_adapted_model(runs, tmp_path):
    from easytune_lab.diffusion.generate import load_generator

    out = tmp_path / "lora"
    assert main(["finetune", "--method", "easytune", "--base", str(runs["base"]), "--reward", str(runs["reward"]),
                 "--data", str(runs["data"]), "--profile", "smoke", "--out", str(out), "--lora-rank", str(RANK),
                 "--lora-alpha", "8", "--iterations", "2", "--sample-steps", "4", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finetune"]["lora"]["rank"] == RANK and manifest["finetune"]["lora"]["alpha"] == 8
    base, merged = load_tensors(runs["base"] / "weights.safetensors"), load_tensors(out / "weights.safetensors")
    assert merged.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.startswith("denoiser.") and k.endswith(("weight", "in_proj_weight")) for k in changed)
    adapter = load_tensors(out / ADAPTER)
    assert adapter and all(".lora_" in k for k in adapter)

    # the adapted model at the end of the run (its checkpoint) against the merged weights through load_generator
    tuner = lora_tuner(runs, lora_alpha=8)
    tuner.load_checkpoint(out)
    texts, lengths = ["a person walks forward", "someone jumps"], [60, 40]
    options = dict(seed=0, sampler="ddim", steps=10)
    live = tuner.generator.sample_normalised(texts, lengths, **options)
    saved = load_generator(out, "cpu").sample_normalised(texts, lengths, **options)
    plain = load_generator(runs["base"], "cpu").sample_normalised(texts, lengths, **options)
    torch.testing.assert_close(saved, live, rtol=0, atol=1e-4)
    assert (saved - plain).abs().max() > 1e-3   # the adapters changed what the model samples


def test_lora_resume_matches_uninterrupted_run(runs, tmp_path):
    cfg = finetune_config("easytune", "smoke", iterations=2, checkpoint_every=1, lora_rank=RANK, **FAST)
    run_finetune(cfg, runs["base"], runs["reward"], runs["data"], tmp_path / "full", CPU, progress=False)
    part = tmp_path / "part"
    run_finetune(cfg, runs["base"], runs["reward"], runs["data"], part, CPU, progress=False, stop_after=1)
    full_cfg = finetune_config("easytune", "smoke", iterations=2, checkpoint_every=1, **FAST)
    with pytest.raises(UserError, match="--lora-rank 4"):
        run_finetune(full_cfg, runs["base"], runs["reward"], runs["data"], part, CPU, progress=False, resume=True)
    run_finetune(cfg, runs["base"], runs["reward"], runs["data"], part, CPU, progress=False, resume=True)
    for name in ("weights.safetensors", ADAPTER):
        full, resumed = load_tensors(tmp_path / "full" / name), load_tensors(part / name)
        assert full.keys() == resumed.keys()
        for key in full:
            torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--lora-rank", "-1"], "--lora-rank: must be an integer in [0, 4096]"),
    (["--lora-rank", "65"], "--lora-rank: 65 exceeds the width 64"),
    (["--lora-rank", "4", "--lora-alpha", "0"], "--lora-alpha: must be a number in (0, 1e+06]"),
])
def test_bad_lora_options_give_one_line_errors(runs, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    code, err = run_cli(["finetune", "--method", "easytune", "--base", str(runs["base"]), "--reward",
                         str(runs["reward"]), "--data", str(runs["data"]), "--profile", "smoke", "--out", str(out),
                         "--no-progress", *extra], capsys)
    assert code == 2
    err = err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_lora_without_peft_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)   # import peft -> ImportError
    with pytest.raises(UserError, match=r"pip install easytune_lab\[lora\]"):
        finetune_config("easytune", "smoke", lora_rank=RANK)
    assert finetune_config("easytune", "smoke").lora.rank == 0   # full fine-tuning needs no peft


@pytest.mark.parametrize("kind", ["mdm", "mld"])
def test_adapted_denoisers_equal_their_merged_weights_with_and_without_grad(kind):
    # Without grad, nn.TransformerEncoderLayer's fast path would read the base weights and skip the adapters.
    import copy

    from easytune_lab.diffusion.backbone import Condition
    from easytune_lab.diffusion.denoiser import MotionTransformer, mdm_profile
    from easytune_lab.diffusion.latent import LatentDenoiser, mld_profile
    from easytune_lab.finetune.lora import LoraConfig, add_lora, merged_state_dict

    torch.manual_seed(0)
    config = (mdm_profile if kind == "mdm" else mld_profile)("smoke").model
    net = (MotionTransformer if kind == "mdm" else LatentDenoiser)(config, config.text.dim).eval()
    merged = copy.deepcopy(net)
    params = add_lora(net, LoraConfig(rank=RANK, alpha=8.0))
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)
    frames, dim = (12, config.feature_dim) if kind == "mdm" else (config.vae.latent_tokens, config.vae.latent_dim)
    x, t = torch.randn(2, frames, dim), torch.tensor([10, 700])
    cond = Condition(text=torch.randn(2, config.text.dim), mask=torch.arange(12)[None] < torch.tensor([[12], [8]]))
    merged.load_state_dict(merged_state_dict(net))
    with torch.no_grad():
        adapted, reference = net(x, t, cond), merged(x, t, cond)
    with_grad = net(x, t, cond)
    valid = cond.mask[..., None] if kind == "mdm" else torch.ones(1, dtype=torch.bool)
    torch.testing.assert_close(adapted * valid, reference * valid, rtol=0, atol=1e-5)
    torch.testing.assert_close(with_grad.detach() * valid, reference * valid, rtol=0, atol=1e-5)
