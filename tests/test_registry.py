"""Backbones and methods are declared once, as data: a toy backbone and a toy method from new files only
(tests/toy_plugins/) are registered and pretrained, fine-tuned and evaluated at the smoke profile; overrides of an
unknown key are one line that lists the valid keys."""

import json

import numpy as np
import pytest
import torch

from easytune_lab import pipeline
from easytune_lab.cli import main
from easytune_lab.diffusion.registry import BACKBONES, backbone_spec, register_backbone
from easytune_lab.diffusion.train import load_backbone, pretrain_config
from easytune_lab.errors import UserError
from easytune_lab.finetune.methods import METHODS, method_spec, register_method
from easytune_lab.finetune.train import OVERRIDES, expected_updates, finetune_config

from toy_plugins import toy_backbone, toy_method


@pytest.fixture(scope="module")
def plugins():
    register_backbone(toy_backbone.SPEC)
    register_method(toy_method.SPEC)
    yield
    BACKBONES.unregister("toy")
    METHODS.unregister("toy-last-step")


@pytest.fixture(scope="module")
def wb(plugins, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("EASYTUNE_THREADS", "1")
    torch.set_num_threads(1)
    yield pipeline.workbench("smoke", seed=0, device="cpu", cache=tmp_path_factory.mktemp("cache"))
    mp.undo()


def test_a_toy_backbone_and_method_pretrain_finetune_and_evaluate(wb):
    base = wb.backbone("toy")
    model, config, manifest = load_backbone(base)
    assert type(model) is toy_backbone.ToyBackbone and manifest["backbone"] == "toy" and config.steps == 6
    assert isinstance(config.model, toy_backbone.ToyConfig)
    assert json.loads((base / "metrics.json").read_text())["steps"] == 6

    cfg = wb.finetune_config("toy-last-step")
    assert cfg.lr == 3e-4 and expected_updates(cfg) == 1   # the method's tuned smoke lr, from its spec
    tuned = wb.finetune("toy-last-step", backbone="toy", reward="plain", iterations=2)
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert metrics["method"] == "toy-last-step" and metrics["optimizer_steps"] == 2
    assert metrics["log"]["optimizer_steps"] == [1, 2]
    assert all(np.isfinite(r) for r in metrics["log"]["reward"])
    before = load_backbone(base)[0].state_dict()
    after = load_backbone(tuned)[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)   # the toy policy's update moved weights

    for run in (base, tuned):
        scores = wb.evaluation(run)
        assert np.isfinite(scores["fid"]["mean"]) and 0.0 <= scores["r_precision_top1"]["mean"] <= 1.0


def test_the_toy_backbone_through_the_command_line(plugins, wb, tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["pretrain", "--backbone", "toy", "--data", str(wb.data), "--iterations", "2", "--device", "cpu",
                 "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["steps"] == 2
    assert main(["pretrain", "--backbone", "nope", "--data", str(wb.data), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--backbone: unknown backbone 'nope'" in err[0] and "toy" in err[0], err


def test_registry_names_and_refusals(plugins):
    assert BACKBONES.names()[:3] == ("mdm", "mld", "lcm") and "toy" in BACKBONES
    assert METHODS.names()[:7] == ("easytune", "easytune-chain", "draft", "draft-lv", "alignprop", "drtune", "refl")
    assert backbone_spec("lcm").teacher == "mld" and backbone_spec("lcm").native_sampler
    assert not backbone_spec("mld").motion_space and backbone_spec("mdm").motion_space
    with pytest.raises(UserError, match="already registered"):
        register_backbone(toy_backbone.SPEC)
    with pytest.raises(UserError, match="already registered"):
        register_method(toy_method.SPEC)
    with pytest.raises(UserError, match=r"unknown method 'sgd' \(choose from easytune, "):
        method_spec("sgd")


def _one_line(exc) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_an_unknown_finetune_override_is_one_line_listing_the_valid_keys():
    with pytest.raises(UserError) as exc:
        finetune_config("easytune", "smoke", lr=1e-5, learning_rate=1e-5)
    message = _one_line(exc)
    assert message.startswith("finetune: unknown option 'learning_rate' (valid: ")
    for key in ("iterations", "sample_steps", "lr", "k", "train_steps", "reward_on", "reg_weight", "lora_rank"):
        assert key in message.split("(valid: ")[1]
    assert set(message.split("(valid: ")[1].rstrip(")").split(", ")) == set(OVERRIDES)
    with pytest.raises(UserError, match="unknown options 'a', 'b'"):
        finetune_config("easytune", "smoke", a=1, b=None)   # unknown even when None


def test_an_unknown_pretrain_or_workbench_override_is_one_line(tmp_path):
    with pytest.raises(UserError) as exc:
        pretrain_config("mdm", "smoke", iterations_=3)
    assert _one_line(exc).startswith("pretrain: unknown option 'iterations_' (valid: backbone, profile, model, steps,")
    wb = pipeline.workbench("smoke", seed=0, device="cpu", cache=tmp_path)
    with pytest.raises(UserError) as exc:
        wb.finetune_config("easytune", reward_onn="x_t")
    assert "unknown option 'reward_onn'" in _one_line(exc) and "reward_on" in str(exc.value)


def test_overrides_replace_known_fields_in_their_section():
    default = finetune_config("draft", "smoke")
    cfg = finetune_config("draft", "smoke", lr=2e-5, k=3, reward_on="x_t", grad_clip=0.5, lora_rank=None)
    assert (cfg.lr, cfg.policy.k, cfg.loop.reward_on, cfg.loop.grad_clip) == (2e-5, 3, "x_t", 0.5)
    assert default.lr == 1e-4 and default.policy.k == 10 and default.loop.reward_on == "x0_hat"   # not mutated
    assert finetune_config("draft", "smoke").policy is not default.policy


@pytest.mark.parametrize("method", ["easytune", "easytune-chain", "draft", "alignprop", "drtune", "refl"])
@pytest.mark.parametrize("train_steps", ["all", "uniform", "last", "weighted"])
def test_updates_per_trajectory_is_what_the_policy_plans(method, train_steps):
    cfg = finetune_config(method, "smoke", train_steps=train_steps, sample_steps=12)
    plans = method_spec(method).make_policy(cfg.policy).plan(cfg.sample_steps, np.random.default_rng(0))
    assert expected_updates(cfg) == sum(p.update for p in plans)


def test_registry_names_keep_their_declared_order_whatever_is_imported_first():
    from easytune_lab.diffusion.registry import Registry

    reg = Registry("thing", {"a": "json:dumps", "b": "json:loads", "c": "json:JSONDecoder"})
    reg["c"], reg["a"]                       # resolve out of order
    reg.register("d", object())
    assert reg.names() == ("a", "b", "c", "d")
    reg.unregister("d")
    assert reg.names() == ("a", "b", "c")


def test_a_backbone_tuned_lr_applies_to_that_backbone_only():
    import dataclasses

    from easytune_lab.finetune.methods import METHODS, method_spec, register_method
    from easytune_lab.finetune.train import PROFILES, finetune_config

    spec = method_spec("draft")
    tuned = dataclasses.replace(spec, lr={**spec.lr, "quick/toy": 1.25e-3})
    register_method(tuned, replace=True)
    try:
        assert finetune_config("draft", "quick", backbone="toy").lr == 1.25e-3
        assert finetune_config("draft", "quick", backbone="mdm").lr == spec.tuned_lr("quick")
        assert finetune_config("draft", "quick").lr == spec.tuned_lr("quick")
        assert finetune_config("draft", "smoke", backbone="toy").lr == PROFILES["smoke"].lr   # another profile
        assert finetune_config("draft", "quick", backbone="toy", lr=2e-6).lr == 2e-6         # an override wins
    finally:
        register_method(spec, replace=True)
    assert METHODS["draft"] is spec
