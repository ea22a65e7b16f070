"""The transformer encoder every model here uses: ``nn.TransformerEncoder`` without torch's inference fast path on
a CPU.

Without gradient, ``nn.TransformerEncoderLayer`` switches to a native kernel (``_transformer_encoder_layer_fwd``
with ``_masked_softmax`` for the padding mask). On a CPU that kernel is the slower one: the quick MDM's guided
denoising step costs 78 ms of CPU time with it against 62 ms without (batch 8), 1.09 s against 0.79 s at batch 64
(the evaluation's generation batch), torch 2.13, one thread. The regular path gives the same outputs to float32
rounding (4e-6). On CUDA the fast path is left as torch chooses. ``runtime.FAST_PATHS["cpu_attention"]`` switches
this off (the previous path, kept for the tests).
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime import FAST_PATHS


class TransformerEncoder(nn.TransformerEncoder):
    """``nn.TransformerEncoder`` (same parameters and state dict) that runs the regular path on a CPU."""

    def forward(self, src: torch.Tensor, mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool | None = None) -> torch.Tensor:
        if src.device.type != "cpu" or not FAST_PATHS["cpu_attention"]:
            return super().forward(src, mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        enabled = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return super().forward(src, mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        finally:
            torch.backends.mha.set_fastpath_enabled(enabled)
