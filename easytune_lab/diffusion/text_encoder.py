"""Text conditioning of the backbones: a small transformer trained on the dataset vocabulary (default), or a
frozen sentence encoder loaded from a LOCAL Hugging Face directory (never downloaded).

MDM and MLD condition on one pooled sentence embedding (CLIP's in the papers); here the default encoder learns
that embedding jointly with the denoiser. Captions are split with :func:`easytune_lab.data.text.plain_tokens`
(lower-case words, no lemmatiser), the same rule for training captions and for free-text prompts, and framed as
``<sos> words <eos>`` (T2M framing).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from .attention import TransformerEncoder
from .embedding import sinusoidal_table
from ..data.text import Vocabulary, plain_tokens
from ..errors import UserError
from ..runs import check_model_dir, hf_pickle_kwargs


@dataclass
class TextEncoderConfig:
    """``kind``: ``transformer`` (trained here) or ``pretrained`` (frozen, from ``pretrained_path``)."""

    kind: str = "transformer"
    dim: int = 128
    layers: int = 2
    heads: int = 4
    ff: int = 256
    dropout: float = 0.1
    max_words: int = 32
    pretrained_path: str | None = None


def build_text_vocabulary(texts: Iterable[str]) -> Vocabulary:
    """Vocabulary of the plain words of ``texts``, most frequent first (ties alphabetical)."""
    counts = Counter(tok.word for text in texts for tok in plain_tokens(text))
    return Vocabulary(sorted(counts, key=lambda w: (-counts[w], w)))


def tokenize(texts: Sequence[str], vocab: Vocabulary, max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``<sos> w_1 .. w_n <eos>`` ids padded with ``<pad>`` (B, max_words + 2) and the valid-token mask."""
    size = max_words + 2
    ids = torch.full((len(texts), size), vocab.pad_id, dtype=torch.long)
    for b, text in enumerate(texts):
        words = [vocab.sos_id, *(vocab.id(t.word) for t in plain_tokens(text)[:max_words]), vocab.eos_id]
        ids[b, : len(words)] = torch.tensor(words)
    return ids, ids != vocab.pad_id


class TextTransformer(nn.Module):
    """Word embeddings + sinusoidal positions -> transformer encoder -> mean over valid tokens -> (B, dim)."""

    def __init__(self, vocab_size: int, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(vocab_size, config.dim, padding_idx=0)
        self.register_buffer("pos", sinusoidal_table(config.max_words + 2, config.dim), persistent=False)
        layer = nn.TransformerEncoderLayer(config.dim, config.heads, config.ff, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.pos[: ids.shape[1]].to(self.embed.weight.dtype)
        h = self.norm(self.encoder(h, src_key_padding_mask=~mask))
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


class PretrainedSentenceEncoder:
    """A frozen Hugging Face encoder from a local directory, mean-pooled over tokens (sentence-transformers style).

    Not an ``nn.Module`` on purpose: its weights are not part of the backbone's checkpoint.
    """

    def __init__(self, path: str, device: torch.device | str = "cpu"):
        p = Path(path)
        if not p.is_dir():
            raise UserError(f"--text-encoder {path}: local model directory not found (models are never downloaded)")
        if not (p / "config.json").is_file():
            raise UserError(f"{p}: no config.json; expected a Hugging Face model directory")
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise UserError(f"--text-encoder {path}: the 'transformers' package is not installed "
                            "(pip install transformers)") from None
        check_model_dir(p, "--text-encoder")
        self.tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(p), local_files_only=True, **hf_pickle_kwargs()).eval().to(device)
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    def to(self, device) -> "PretrainedSentenceEncoder":
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(device)
        h = self.model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


class TextConditioner(nn.Module):
    """``texts -> (B, dim)`` sentence embeddings, with either encoder."""

    def __init__(self, config: TextEncoderConfig, vocab: Vocabulary):
        super().__init__()
        self.config, self.vocab = config, vocab
        self.register_buffer("_device_ref", torch.zeros(0), persistent=False)  # follows .to(device)
        if config.kind == "transformer":
            self.encoder = TextTransformer(len(vocab), config)
            self.dim = config.dim
            self._frozen = None
        elif config.kind == "pretrained":
            if not config.pretrained_path:
                raise UserError("--text-encoder: a pretrained encoder needs a local directory path")
            self.encoder = None
            self._frozen = PretrainedSentenceEncoder(config.pretrained_path)
            self.dim = self._frozen.dim
        else:
            raise UserError(f"text encoder: unknown kind '{config.kind}' (choose transformer or pretrained)")

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """Words of ``texts`` missing from the vocabulary (each is read as ``<unk>``), in order of appearance; none
        for a pretrained encoder, whose tokenizer covers any text."""
        if self._frozen is not None:
            return []
        return list(dict.fromkeys(t.word for text in texts for t in plain_tokens(text) if t.word not in self.vocab))

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        if self._frozen is not None:
            device = self._device()
            return self._frozen.to(device)(texts).to(device)
        ids, mask = tokenize(texts, self.vocab, self.config.max_words)
        device = self._device()
        return self.encoder(ids.to(device), mask.to(device))

    def _device(self) -> torch.device:
        return self._device_ref.device
