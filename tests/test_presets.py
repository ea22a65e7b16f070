"""Presets as data: the authors' configuration (official) and the fair one, resolved per method and profile; the
official EasyTune plan on a float64 toy trajectory; the CLI records the preset and its options in the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from easytune_lab.errors import UserError
from easytune_lab.finetune.loop import LoopConfig, run_trajectory
from easytune_lab.finetune.methods import method_spec
from easytune_lab.finetune.presets import PRESETS, preset
from easytune_lab.finetune.train import expected_updates, finetune_config, schedule_length


def test_official_resolves_to_the_authors_settings():
    easy, draft = (finetune_config(m, "quick", preset="official") for m in ("easytune", "draft"))
    for cfg in (easy, draft):
        assert (cfg.batch_size, cfg.guidance, cfg.lr, cfg.weight_decay, cfg.lr_schedule, cfg.schedule_clock) == \
            (64, 7.5, 1e-5, 0.0, "cosine", "updates")
        assert cfg.loop.grad_clip == 1.0 and cfg.loop.reward_scale == "unit" and cfg.preset == "official"
        assert cfg.warmup == 7
    assert (easy.policy.train_steps, easy.policy.num_train_steps, easy.loop.gradient_at) == ("last", 10, "start")
    assert expected_updates(easy) == 10 and expected_updates(draft) == 1 and draft.policy.k == 50
    assert (easy.iterations, draft.iterations) == (25, 10)          # the authors' 10 : 4 epochs
    # warm-up counted in optimiser steps: EasyTune is out of it within its first trajectory, DRaFT after 7 of 10
    assert schedule_length(easy) == 250 and schedule_length(draft) == 10
    assert preset("official").reward == "spl-official"


def test_fair_gives_equal_trajectories_a_trajectory_clock_and_each_methods_tuned_lr():
    cfgs = {m: finetune_config(m, "quick", preset="fair") for m in ("easytune", "draft", "refl")}
    assert {c.iterations for c in cfgs.values()} == {16} and {c.schedule_clock for c in cfgs.values()} == {"trajectories"}
    for m, c in cfgs.items():
        assert c.lr == method_spec(m).lr["quick"] and c.batch_size == 8 and c.loop.gradient_at == "live"
        assert schedule_length(c) == 16
    assert cfgs["easytune"].policy.train_steps == "all" and cfgs["easytune"].loop.reward_scale == "tau"
    assert preset("fair").reward == "spl"


def test_explicit_options_override_a_preset_and_unknown_presets_are_one_line():
    cfg = finetune_config("easytune", "quick", preset="official", lr=3e-6, gradient_at="live")
    assert cfg.lr == 3e-6 and cfg.loop.gradient_at == "live" and cfg.batch_size == 64
    with pytest.raises(UserError, match="unknown preset 'authors'.*official"):
        finetune_config("easytune", "quick", preset="authors")
    for name in PRESETS:                                      # every preset resolves for every method and profile
        for method in ("easytune", "easytune-chain", "draft", "draft-lv", "alignprop", "drtune", "refl"):
            for profile in ("smoke", "quick", "paper"):
                assert finetune_config(method, profile, preset=name).preset == name


def test_the_official_plan_trains_exactly_the_last_ten_steps_with_one_update_each(float32_default):
    """On a float64 toy trajectory of T = 50: graphs only at steps 40..49, one optimiser step after each."""
    from test_finetune_loop import ToyNet, ToyTrajectory, reward

    torch.set_default_dtype(torch.float64)
    cfg = finetune_config("easytune", "quick", preset="official")
    policy = method_spec("easytune").make_policy(cfg.policy)
    plans = policy.plan(50, np.random.default_rng(0))
    net = ToyNet()
    params = list(net.parameters())
    steps = []
    opt = torch.optim.SGD(params, lr=1e-3)
    opt.step = (lambda step: (lambda *a, **k: (steps.append(len(net.calls) - 1), step(*a, **k))[1]))(opt.step)
    stats = run_trajectory(ToyTrajectory(net, 50), policy, plans, reward, opt, params,
                           LoopConfig(grad_clip=1.0, gradient_at="start", reward_scale="unit"))
    assert stats.graph_calls == list(range(40, 50)) and [i for i, g in net.calls if g] == list(range(40, 50))
    assert stats.optimizer_steps == 10 and steps == list(range(40, 50))   # an update right after each trained step


def test_cli_preset_is_saved_in_the_manifest(smoke_runs, tmp_path, capsys):
    from easytune_lab.cli import main

    out = tmp_path / "official"
    assert main(["finetune", "--method", "easytune", "--base", str(smoke_runs["base"]), "--reward",
                 str(smoke_runs["reward"]), "--data", str(smoke_runs["data"]), "--profile", "smoke",
                 "--preset", "official", "--iterations", "2", "--batch-size", "4", "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    saved = json.loads((out / "manifest.json").read_text())["finetune"]
    assert saved["preset"] == "official" and saved["iterations"] == 2 and saved["batch_size"] == 4
    assert saved["loop"]["gradient_at"] == "start" and saved["loop"]["reward_scale"] == "unit"
    assert saved["schedule_clock"] == "updates" and saved["guidance"] == 7.5
