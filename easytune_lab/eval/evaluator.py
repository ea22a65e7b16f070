"""The text–motion matching evaluator (T2M style, Guo et al. 2022, Sec. 4 / the "TexMotMatch" model).

Two encoders map a caption and a motion to 512-d embeddings whose Euclidean distance measures how well they
match; every T2M metric (:mod:`easytune_lab.eval.metrics`) is computed from these embeddings.

* Motion side: normalised HumanML3D features *without* the last 4 foot-contact dims (T2M feeds
  ``motions[..., :-4]``) -> two ``Conv1d(k=4, s=2, p=1)`` + dropout + LeakyReLU(0.2) layers, which downsample time
  by 4 (the "unit length") -> linear -> bidirectional GRU over the ``length // 4`` valid steps -> the final
  forward and backward hidden states -> MLP (linear, LayerNorm, LeakyReLU, linear) -> 512-d.
* Text side: word embedding + linear(POS one-hot, 15 T2M categories) -> linear -> bidirectional GRU over the
  ``sent_len`` framed tokens (``sos ... eos``) -> final hidden states -> the same MLP head -> 512-d.

Difference from T2M: T2M uses frozen 300-d GloVe vectors and a movement encoder pre-trained as an autoencoder; here
word embeddings are learned from the dataset's vocabulary (no external downloads) and the movement encoder is
trained jointly with the matching loss. Training lives in :mod:`easytune_lab.eval.evaluator_train`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..data.text import NUM_POS, Vocabulary, parse_caption_line, plain_tokens
from ..errors import UserError
from ..io import atomic_path
from ..runs import load_state_strict, load_tensors, manifest_config, read_manifest, read_normalisation, weights_file

EVALUATOR_KIND = "evaluator"
VOCABULARY_FILE = "vocabulary.json"
NORMALISATION_FILE = "normalisation.npz"
UNIT_LENGTH = 4  # T2M: the movement encoder downsamples time by 4


@dataclass
class EvaluatorConfig:
    """Sizes of the matching model. Defaults are T2M's (paper profile)."""

    feature_dim: int = 263  # HumanML3D t2m features (KIT: 251)
    foot_contact_dims: int = 4  # dropped from the motion input, as in T2M
    movement_hidden: int = 512  # conv channels
    movement_latent: int = 512  # movement code per 4 frames
    motion_hidden: int = 1024  # motion GRU width
    word_dim: int = 300  # word embedding width (GloVe width in T2M)
    text_hidden: int = 512  # text GRU width
    output_dim: int = 512  # embedding width
    dropout: float = 0.2
    max_text_len: int = 20  # tokens per caption before framing (T2M max_text_len)

    @classmethod
    def from_dict(cls, d: dict) -> "EvaluatorConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(0.2, inplace=True),
                         nn.Linear(hidden, out_dim))


class MovementEncoder(nn.Module):
    """Two strided 1-D convolutions: (B, T, F) -> (B, T // 4, latent) (T2M ``MovementConvEncoder``)."""

    def __init__(self, in_dim: int, hidden: int, latent: int, dropout: float):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv1d(in_dim, hidden, 4, 2, 1), nn.Dropout(dropout), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv1d(hidden, latent, 4, 2, 1), nn.Dropout(dropout), nn.LeakyReLU(0.2, inplace=True),
        )
        self.out = nn.Linear(latent, latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.convs(x.transpose(1, 2)).transpose(1, 2))


class BiGRUEncoder(nn.Module):
    """Linear -> bidirectional GRU over the valid steps -> [h_fwd, h_bwd] -> MLP head (T2M ``*BiGRUCo``)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.inp = nn.Linear(in_dim, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.h0 = nn.Parameter(torch.zeros(2, 1, hidden))  # learned initial state, as in T2M
        self.head = _head(2 * hidden, hidden, out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        packed = pack_padded_sequence(h, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, last = self.gru(packed, self.h0.expand(-1, x.shape[0], -1).contiguous())
        return self.head(torch.cat([last[0], last[1]], dim=-1))


class TextMotionEvaluator(nn.Module):
    """Caption and motion encoders into one 512-d space (distances = matching scores)."""

    def __init__(self, config: EvaluatorConfig, vocab_size: int):
        super().__init__()
        c = self.config = config
        self.vocab_size = vocab_size
        self.movement = MovementEncoder(c.feature_dim - c.foot_contact_dims, c.movement_hidden, c.movement_latent,
                                        c.dropout)
        self.motion_rnn = BiGRUEncoder(c.movement_latent, c.motion_hidden, c.output_dim)
        self.word_emb = nn.Embedding(vocab_size, c.word_dim, padding_idx=0)
        self.pos_emb = nn.Linear(NUM_POS, c.word_dim)
        self.text_rnn = BiGRUEncoder(c.word_dim, c.text_hidden, c.output_dim)

    def encode_motion(self, motion: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``motion`` (B, T, feature_dim) normalised, padded; ``lengths`` (B,) valid frames -> (B, output_dim)."""
        if motion.shape[-1] != self.config.feature_dim:
            raise ValueError(f"motion features have width {motion.shape[-1]}, evaluator expects "
                             f"{self.config.feature_dim}")
        x = motion[..., : self.config.feature_dim - self.config.foot_contact_dims]
        pad = (-x.shape[1]) % UNIT_LENGTH
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        codes = self.movement(x)
        steps = torch.div(lengths.to(torch.long), UNIT_LENGTH, rounding_mode="floor").clamp(1, codes.shape[1])
        return self.motion_rnn(codes, steps)

    def encode_text(self, word_ids: torch.Tensor, pos_onehot: torch.Tensor, sent_len: torch.Tensor) -> torch.Tensor:
        """``word_ids`` (B, L), ``pos_onehot`` (B, L, 15), ``sent_len`` (B,) -> (B, output_dim)."""
        x = self.word_emb(word_ids) + self.pos_emb(pos_onehot)
        return self.text_rnn(x, sent_len.to(torch.long))


# ----------------------------------------------------------------------------------------------------- loading


@dataclass
class LoadedEvaluator:
    """A trained evaluator with what is needed to feed it: vocabulary and the feature normalisation."""

    model: TextMotionEvaluator
    vocab: Vocabulary
    mean: np.ndarray  # (feature_dim,) Mean.npy of the training data
    std: np.ndarray  # (feature_dim,) Std.npy of the training data
    device: torch.device
    run_dir: Path
    manifest: dict

    @property
    def config(self) -> EvaluatorConfig:
        return self.model.config


def load_evaluator(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedEvaluator:
    """Load ``easytune evaluator train`` output (manifest, weights, vocabulary, normalisation), in eval mode."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir, kind=EVALUATOR_KIND)
    with manifest_config(run_dir):
        config = EvaluatorConfig.from_dict(manifest["config"]["model"])
    vocab = Vocabulary.load(run_dir / VOCABULARY_FILE)
    norm_path = run_dir / NORMALISATION_FILE
    if not norm_path.is_file():
        raise UserError(f"{norm_path}: missing")
    mean, std = read_normalisation(run_dir, config.feature_dim)
    device = torch.device(device)
    with manifest_config(run_dir):
        model = TextMotionEvaluator(config, len(vocab))
    load_state_strict(model, load_tensors(weights_file(run_dir)), weights_file(run_dir))
    model.to(device).eval()
    return LoadedEvaluator(model, vocab, mean, std, device, run_dir, manifest)


def save_normalisation(path: str | Path, mean: np.ndarray, std: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32))


# -------------------------------------------------------------------------------------------------- embedding


def encode_captions(vocab: Vocabulary, captions: Sequence[str], max_text_len: int) -> tuple[torch.Tensor, ...]:
    """Token ids, POS one-hots and lengths for captions.

    A caption may be a plain sentence or a full HumanML3D caption line (``text#word/POS ...#start#end``); plain
    sentences get their POS category from the T2M VIP word lists only (no tagger is used).
    """
    ids, pos, lens = [], [], []
    for caption in captions:
        if caption.count("#") == 3:
            tokens = parse_caption_line(caption).tokens
        else:
            tokens = tuple(plain_tokens(caption))
        i, p, n = vocab.encode(tokens, max_text_len)
        ids.append(i)
        pos.append(p)
        lens.append(n)
    return torch.from_numpy(np.stack(ids)), torch.from_numpy(np.stack(pos)), torch.tensor(lens)


@torch.no_grad()
def embed_text_tensors(ev: LoadedEvaluator, word_ids, pos_onehot, sent_len, batch_size: int = 256) -> np.ndarray:
    """Text embeddings (N, 512) from already-encoded tokens (as the dataset batches them)."""
    out = []
    for s in range(0, len(word_ids), batch_size):
        sl = slice(s, s + batch_size)
        emb = ev.model.encode_text(torch.as_tensor(word_ids[sl]).to(ev.device),
                                   torch.as_tensor(pos_onehot[sl]).float().to(ev.device),
                                   torch.as_tensor(sent_len[sl]))
        out.append(emb.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, ev.config.output_dim), np.float32)


def embed_texts(ev: LoadedEvaluator, captions: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Text embeddings (N, 512) of captions (plain sentences or HumanML3D caption lines)."""
    ids, pos, lens = encode_captions(ev.vocab, captions, ev.config.max_text_len)
    return embed_text_tensors(ev, ids, pos, lens, batch_size)


@torch.no_grad()
def embed_motions(ev: LoadedEvaluator, motions: Sequence[np.ndarray] | torch.Tensor, lengths=None,
                  normalised: bool = True, batch_size: int = 128, pad_to: int | None = None) -> np.ndarray:
    """Motion embeddings (N, 512).

    ``motions`` is a list of (T_i, feature_dim) arrays or a padded (N, T, feature_dim) tensor with ``lengths``.
    ``normalised=False`` means raw HumanML3D features, which are normalised here with the evaluator's Mean/Std
    (T2M evaluates with the evaluator's own statistics). Frames past each length are zero in normalised space.

    ``pad_to`` (T2M: ``max_motion_length`` = 196) pads every batch to that many frames, as T2M's evaluation
    loaders do, so a motion's embedding does not depend on which motions share its batch; a longer motion is a
    UserError. ``None`` pads to the longest motion of each batch (the ``legacy`` protocol).
    """
    if isinstance(motions, (list, tuple)):
        lengths = np.array([len(m) for m in motions]) if lengths is None else np.asarray(lengths)
    else:
        motions = torch.as_tensor(motions)
        if lengths is None:
            lengths = np.full(motions.shape[0], motions.shape[1])
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.min() < UNIT_LENGTH:
        raise UserError(f"motions: every motion needs at least {UNIT_LENGTH} frames (got {lengths.min()})")
    if pad_to is not None and len(lengths) and lengths.max() > pad_to:
        raise UserError(f"motions: a motion has {lengths.max()} frames, more than the protocol's "
                        f"max_motion_length {pad_to}")
    mean, std = torch.from_numpy(ev.mean), torch.from_numpy(ev.std)
    out = []
    for s in range(0, len(lengths), batch_size):
        lens = lengths[s:s + batch_size]
        frames = int(lens.max()) if pad_to is None else int(pad_to)
        if isinstance(motions, torch.Tensor):
            x = motions[s:s + batch_size, : min(frames, motions.shape[1])].float()
            if x.shape[1] < frames:
                x = torch.nn.functional.pad(x, (0, 0, 0, frames - x.shape[1]))
        else:
            x = torch.zeros(len(lens), frames, ev.config.feature_dim)
            for k, m in enumerate(motions[s:s + batch_size]):
                x[k, : len(m)] = torch.as_tensor(np.asarray(m), dtype=torch.float32)
        valid = torch.arange(x.shape[1])[None, :] < torch.from_numpy(lens)[:, None]
        if not normalised:
            x = (x - mean) / std
        if pad_to is not None or not normalised:
            x = x * valid[..., None]  # padding is zero in normalised space, as in T2M's loaders
        emb = ev.model.encode_motion(x.to(ev.device), torch.from_numpy(lens))
        out.append(emb.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, ev.config.output_dim), np.float32)
