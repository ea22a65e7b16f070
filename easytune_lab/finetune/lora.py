"""LoRA fine-tuning of a backbone's denoiser with peft (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large
Language Models", arXiv 2106.09685).

A targeted weight W0 (d_out × d_in) is used as ``W0 + (α/r)·B A`` with A (r × d_in) and B (d_out × r); B starts at
zero, so the adapted model starts as the base model (LoRA Sec. 4.1). Only A and B are trainable and handed to the
optimiser; W0 stays bit-identical, and no copy of the model is made.

Targets (MDM's ``MotionTransformer`` and MLD/LCM's ``LatentDenoiser`` share the names):

* ``self_attn``: every layer's ``nn.MultiheadAttention``, its fused q/k/v projection and its output projection
  (:mod:`easytune_lab.finetune.lora_attention` explains why these need their own layer);
* ``linear1``, ``linear2``: the feed-forward layers of every encoder layer;
* ``inp``, ``out``: the input and output projections of the denoiser.

The timestep MLP and the text projection stay frozen by default (add ``time.mlp.0``... to ``target_modules``).
``dropout`` applies to the ``nn.Linear`` targets (peft's attention layer has none).

``nn.TransformerEncoderLayer`` has an inference fast path (``torch._transformer_encoder_layer_fwd``, taken in eval
mode without gradient) that reads the layers' base weights directly and would silently skip every adapter in
sampling; it is switched off while an adapted denoiser runs.

A LoRA run stays a normal backbone run: ``weights.safetensors`` holds the merged weights ``W0 + (α/r)·B A`` under the
base model's names (``easytune eval``/``sample`` and ``load_generator`` read it unchanged) and ``adapter.safetensors``
holds A and B under peft's module names, with the LoRA options in its metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..runs import WEIGHTS, config_to_dict, save_tensors

ADAPTER = "adapter.safetensors"
DEFAULT_TARGETS = ("self_attn", "linear1", "linear2", "inp", "out")
MIN_PEFT = (0, 14)  # lora.MultiheadAttention


@dataclass
class LoraConfig:
    """LoRA options of a fine-tuning run (``rank`` 0: full fine-tuning of the denoiser)."""

    rank: int = 0                     # r
    alpha: float | None = None        # α; None: α = r (scale α/r = 1)
    dropout: float = 0.0              # dropout on the input of the Linear targets' A
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank


def check_lora(cfg: LoraConfig) -> None:
    """UserError for bad options, or for LoRA asked without peft installed."""
    if not isinstance(cfg.rank, int) or cfg.rank < 0:
        raise UserError(f"--lora-rank: must be an integer >= 0 (0 = full fine-tuning; got {cfg.rank})")
    if not cfg.enabled:
        return
    if cfg.alpha is not None and not cfg.alpha > 0:
        raise UserError(f"--lora-alpha: must be > 0 (got {cfg.alpha})")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"lora dropout: must be in [0, 1) (got {cfg.dropout})")
    if not cfg.target_modules:
        raise UserError("lora target_modules: empty (nothing to adapt)")
    _peft()


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("--lora-rank: LoRA needs peft, which is not installed "
                        "(pip install easytune_lab[lora])") from None
    version = tuple(int(v) for v in re.findall(r"\d+", peft.__version__)[:2])
    if version < MIN_PEFT:
        raise UserError(f"--lora-rank: needs peft >= {'.'.join(map(str, MIN_PEFT))} (found {peft.__version__}; "
                        "pip install -U 'easytune_lab[lora]')")
    if not hasattr(getattr(torch.backends, "mha", None), "set_fastpath_enabled"):
        raise UserError(f"--lora-rank: needs torch >= 2.2 (found {torch.__version__})")
    return peft


# ------------------------------------------------------------------------------------------------- injection


def trainable_parameters(net: nn.Module, cfg: LoraConfig, seed: int) -> list[nn.Parameter]:
    """The parameters a fine-tuning run trains: all of ``net`` (rank 0), or LoRA adapters injected into ``net`` in
    place (rank > 0; A drawn from a generator seeded with ``seed``, the global RNG left as it was)."""
    if not cfg.enabled:
        params = list(net.parameters())
        for p in params:
            p.requires_grad_(True)
        return params
    return add_lora(net, cfg, seed)


def add_lora(net: nn.Module, cfg: LoraConfig, seed: int = 0) -> list[nn.Parameter]:
    """Inject LoRA adapters into ``net`` (in place); return the adapters' parameters, in module order."""
    peft = _peft()
    from .lora_attention import ExactMultiheadAttention

    targets = _resolve_targets(net, cfg)
    config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha if cfg.alpha is not None else cfg.rank,
                             lora_dropout=cfg.dropout, target_modules=targets, bias="none")
    config._register_custom_module({nn.MultiheadAttention: ExactMultiheadAttention})
    net.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft.inject_adapter_in_model(config, net)
    net.register_forward_pre_hook(_fastpath_off)
    net.register_forward_hook(_fastpath_restore, always_call=True)
    params = [p for name, p in net.named_parameters() if p.requires_grad]
    if not params or not all(".lora_" in name for name, p in net.named_parameters() if p.requires_grad):
        raise RuntimeError("LoRA injection left base parameters trainable or added no adapter")
    return params


def _resolve_targets(net: nn.Module, cfg: LoraConfig) -> list[str]:
    """Check every target names modules of ``net`` and that ``rank`` is below each targeted width."""
    names = dict(net.named_modules())
    found = []
    for target in cfg.target_modules:
        hits = {n: m for n, m in names.items() if n == target or n.endswith("." + target)}
        if not hits:
            raise UserError(f"lora target '{target}': no such module in the {type(net).__name__} "
                            f"(Linear layers: {', '.join(sorted({n.rsplit('.', 1)[-1] for n, m in names.items() if isinstance(m, nn.Linear)}))})")
        for name, module in hits.items():
            width = _width(module)
            if width is None:
                raise UserError(f"lora target '{target}': {name} is a {type(module).__name__}, not a Linear or "
                                "MultiheadAttention layer")
            if cfg.rank > width:
                raise UserError(f"--lora-rank: {cfg.rank} exceeds the width {width} of {name} (a rank above "
                                "min(d_in, d_out) is not low-rank)")
        found.append(target)
    return found


def _width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features)
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim
    return None


_FASTPATH: list[bool] = []


def _fastpath_off(module, args) -> None:
    _FASTPATH.append(torch.backends.mha.get_fastpath_enabled())
    torch.backends.mha.set_fastpath_enabled(False)


def _fastpath_restore(module, args, output) -> None:
    if _FASTPATH:
        torch.backends.mha.set_fastpath_enabled(_FASTPATH.pop())


# ------------------------------------------------------------------------------------------------- state


def has_lora(model: nn.Module) -> bool:
    return any(".lora_" in name for name, _ in model.named_parameters())


def _base_name(key: str) -> str:
    return key.replace(".base_layer", "")


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A and B of every adapter, under peft's names (``...linear1.lora_A.default.weight``)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state with every adapter folded in (W0 + (α/r)·B A) under the base model's names; the live
    model is not changed. Without adapters: ``model.state_dict()``."""
    if not has_lora(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    state = {_base_name(k): v for k, v in model.state_dict().items() if ".lora_" not in k}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            weight = "in_proj_weight" if isinstance(module.get_base_layer(), nn.MultiheadAttention) else "weight"
            key = _base_name(f"{name}.{weight}")
            for adapter in module.lora_A:
                state[key] = state[key] + module.get_delta_weight(adapter).to(state[key].dtype)
    return state


def save_weights(out: Path, backbone: nn.Module, cfg: LoraConfig) -> None:
    """``OUT/weights.safetensors`` (merged) and, for a LoRA run, ``OUT/adapter.safetensors``."""
    save_tensors(Path(out) / WEIGHTS, merged_state_dict(backbone))
    if cfg.enabled:
        save_tensors(Path(out) / ADAPTER, adapter_state_dict(backbone),
                     metadata={"lora": config_to_dict(cfg), "scale": cfg.scale})
