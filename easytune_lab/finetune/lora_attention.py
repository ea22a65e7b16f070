"""LoRA on ``nn.MultiheadAttention`` without touching its frozen weights (imported only when peft is installed).

``nn.MultiheadAttention`` has no ``nn.Linear`` to wrap: the fused query/key/value projection is a bare parameter
(``in_proj_weight``, 3d × d) and ``out_proj.weight`` is read as a tensor by ``F.multi_head_attention_forward``, so
``out_proj``'s own forward never runs and a LoRA on it as a Linear would never be applied. peft's
``lora.MultiheadAttention`` adapts both, but it adds ΔW into the base weights before every call and subtracts it
afterwards: in floating point (W + ΔW) − ΔW ≠ W, so the "frozen" weights drift a little with every forward.

:class:`ExactMultiheadAttention` keeps peft's layer (the same A, B, scaling and names, so peft's bookkeeping and
``get_delta_weight`` apply) and only changes the forward: the effective weights W + (α/r)·B A are handed to the
attention through ``torch.func.functional_call``, leaving the base parameters bit-identical (LoRA, Hu et al. 2022,
Sec. 4.1: ``h = W0 x + ΔW x`` with W0 frozen).
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import MultiheadAttention as PeftMultiheadAttention


class ExactMultiheadAttention(PeftMultiheadAttention):
    """peft's LoRA multi-head attention, forward with W + ΔW passed functionally (no merge/unmerge)."""

    def forward(self, query: torch.Tensor, *args: Any, **kwargs: Any):
        adapters = [a for a in self.active_adapters if a in self.lora_A]
        if self.disable_adapters or self.merged or not adapters:
            return super().forward(query, *args, **kwargs)
        attention = self.get_base_layer()
        out_proj = attention.out_proj                      # peft's lora.Linear around the output projection
        in_weight, out_weight = attention.in_proj_weight, out_proj.get_base_layer().weight
        for adapter in adapters:
            in_weight = in_weight + self.get_delta_weight(adapter).to(in_weight.dtype)
            out_weight = out_weight + out_proj.get_delta_weight(adapter).to(out_weight.dtype)
        weights = {"in_proj_weight": in_weight, "out_proj.base_layer.weight": out_weight}
        return torch.func.functional_call(attention, weights, (query, *args), kwargs)
