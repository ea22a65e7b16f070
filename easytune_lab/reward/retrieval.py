"""Retrieval reward R(x, c) and its noise-aware variant R(x_t, t, c).

A TMR-style pair of encoders maps a motion (normalised HumanML3D 263-d features, padded, with a frame mask)
and a caption into one L2-normalised space. The reward is the scaled cosine similarity

    R(x, c) = τ · E_M(x) · E_T(c)                    (EasyTune, reward model; τ a learned logit scale)

which is differentiable with respect to the motion features, so a diffusion model can be fine-tuned by
back-propagating through it. The noise-aware variant adds a timestep embedding to the motion encoder and is
trained on motions noised with the backbone's forward process

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)         (DDPM, Ho et al. 2020, Eq. 4)

at t ~ U(1, t_max) as well as clean ones (t = 0), so R(x_t, t, c) ranks intermediate motions of an SDE
trajectory. Training uses the symmetric InfoNCE loss (CLIP / TMR, Petrovich et al. 2023), with negatives whose
captions are near-identical to the positive's removed from the denominator (TMR's filtering).

Motion encoder: frames are grouped in patches of ``patch`` frames (HumanML3D lengths are multiples of 4, the
T2M evaluator's ``unit_length``), projected, prefixed by a learned summary token, given sinusoidal positions,
and passed through a transformer encoder; the summary token's output is projected and L2-normalised.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.text import Vocabulary, plain_tokens
from ..diffusion.attention import TransformerEncoder
from ..diffusion.backbone import frame_mask as lengths_mask
from ..diffusion.schedule import NoiseSchedule
from ..diffusion.embedding import sinusoidal_embedding
from ..errors import UserError
from ..runs import (WEIGHTS, check_model_dir, hf_pickle_kwargs, load_state_strict, load_tensors, manifest_config,
                    read_manifest, save_tensors, weights_file)

PAD_ID = 0   # data.text.Vocabulary's <pad>


@dataclass
class RewardModelConfig:
    """Sizes of the retrieval reward (one instance per profile, see :mod:`easytune_lab.reward.train`)."""

    feat_dim: int = 263            # HumanML3D features (251 for KIT)
    patch: int = 4                 # frames per motion token (T2M unit_length)
    max_frames: int = 196          # HumanML3D's maximum motion length (frames at 20 fps)
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    dropout: float = 0.1
    embed_dim: int = 128           # shared embedding space
    vocab_size: int = 2            # set from the dataset vocabulary
    text_layers: int = 2
    max_words: int = 32
    init_logit_scale: float = 1 / 0.07   # τ, CLIP's initial 1/temperature
    max_logit_scale: float = 100.0
    noise_aware: bool = False      # add a timestep embedding: R(x_t, t, c)
    num_train_timesteps: int = 1000
    schedule: str = "cosine"       # the backbone's noise schedule (linear | scaled_linear | cosine)
    text_model_path: str = ""      # optional frozen local HF model; "" = vocabulary transformer


# ----------------------------------------------------------------------------------------------------------
# noise schedule: the backbone's own (easytune_lab.diffusion.schedule); here t = 0 means the clean motion

def alphas_cumprod_for(schedule: str, num_train_timesteps: int = 1000) -> torch.Tensor:
    """ᾱ_t for t = 0..T−1 of the backbone's schedule (:class:`easytune_lab.diffusion.schedule.NoiseSchedule`:
    DDPM linear, latent-diffusion scaled_linear, or the cosine schedule of Nichol & Dhariwal 2021)."""
    return NoiseSchedule.create(schedule, num_train_timesteps).alphas_cumprod.float()


def noise_motion(x0: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM Eq. 4); rows with t = 0 stay clean."""
    t = t.to(x0.device).long()
    if noise is None:
        noise = torch.randn_like(x0)
    ab = alphas_cumprod.to(x0.device, x0.dtype)[t.clamp(min=0)]
    ab = torch.where(t > 0, ab, torch.ones_like(ab)).view(-1, *([1] * (x0.dim() - 1)))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


# ----------------------------------------------------------------------------------------------------------
# tokenisation of captions

class CaptionTokenizer:
    """Captions -> word ids with a :class:`easytune_lab.data.text.Vocabulary` built from the training captions.

    Words are the caption's own lower-case words (``data.text.plain_tokens``), not its lemmatised tags, so
    any free-text prompt given to :meth:`Reward.score` is tokenised exactly as the training captions were.
    Ids follow the T2M framing ``<sos> words <eos>`` padded with ``<pad>`` = 0.
    """

    def __init__(self, vocab, max_words: int = 30):
        self.vocab = vocab
        self.max_words = max_words

    @classmethod
    def from_captions(cls, captions: Sequence[str], max_words: int = 30, min_count: int = 1) -> "CaptionTokenizer":
        counts = Counter(t.word for c in captions for t in plain_tokens(c))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(Vocabulary(words), max_words)

    def __len__(self) -> int:
        return len(self.vocab)

    def batch(self, texts: Sequence[str], device=None) -> torch.Tensor:
        """(B, L) int64 word ids, L = the longest framed caption of the batch."""
        rows, used = [], []
        for text in texts:
            ids, _, n = self.vocab.encode(plain_tokens(text), self.max_words)
            rows.append(torch.from_numpy(ids))
            used.append(n)
        out = torch.stack(rows)[:, : max(used)]
        return out.to(device) if device is not None else out


# ----------------------------------------------------------------------------------------------------------
# encoders

def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal embedding (Vaswani et al. 2017, §3.5) of integer positions or timesteps, sines first
    (:func:`~easytune_lab.diffusion.embedding.sinusoidal_embedding`)."""
    return sinusoidal_embedding(positions, dim, "sin_cos")


def _encoder(cfg: RewardModelConfig, layers: int) -> TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return TransformerEncoder(layer, layers, enable_nested_tensor=False)


class MotionEncoder(nn.Module):
    """E_M(x) or E_M(x_t, t): patched frames + summary token -> transformer -> L2-normalised embedding."""

    def __init__(self, cfg: RewardModelConfig):
        super().__init__()
        self.cfg = cfg
        self.proj_in = nn.Linear(cfg.feat_dim * cfg.patch, cfg.d_model)
        self.summary = nn.Parameter(torch.randn(1, 1, cfg.d_model) * 0.02)
        self.time_mlp = (nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.SiLU(), nn.Linear(cfg.d_model, cfg.d_model))
                         if cfg.noise_aware else None)
        self.encoder = _encoder(cfg, cfg.n_layers)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.proj_out = nn.Linear(cfg.d_model, cfg.embed_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D) normalised features, mask (B, T) True on real frames, t (B,) timesteps or None."""
        B, T, D = x.shape
        p = self.cfg.patch
        pad = (-T) % p
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad), value=False)
        x = x * mask[..., None].to(x.dtype)                     # padding never reaches the encoder
        n = x.shape[1] // p
        tokens = self.proj_in(x.reshape(B, n, p * D))
        token_mask = mask.reshape(B, n, p).any(-1)
        h = torch.cat([self.summary.expand(B, -1, -1), tokens], dim=1)
        h = h + sinusoidal(torch.arange(n + 1, device=x.device), self.cfg.d_model)
        if self.time_mlp is not None:
            if t is None:
                t = torch.zeros(B, dtype=torch.long, device=x.device)
            t = torch.as_tensor(t, device=x.device).reshape(-1).expand(B)
            h = h + self.time_mlp(sinusoidal(t, self.cfg.d_model).to(h.dtype))[:, None, :]
        keep = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=x.device), token_mask], dim=1)
        h = self.encoder(h, src_key_padding_mask=~keep)
        return F.normalize(self.proj_out(self.norm(h[:, 0])), dim=-1)


class TextEncoder(nn.Module):
    """E_T(c) over dataset-vocabulary word ids: embedding + summary token -> transformer -> unit vector."""

    def __init__(self, cfg: RewardModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD_ID)
        self.summary = nn.Parameter(torch.randn(1, 1, cfg.d_model) * 0.02)
        self.encoder = _encoder(cfg, cfg.text_layers)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.proj_out = nn.Linear(cfg.d_model, cfg.embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, L = ids.shape
        h = torch.cat([self.summary.expand(B, -1, -1), self.embed(ids)], dim=1)
        h = h + sinusoidal(torch.arange(L + 1, device=ids.device), self.cfg.d_model)
        keep = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=ids.device), ids != PAD_ID], dim=1)
        h = self.encoder(h, src_key_padding_mask=~keep)
        return F.normalize(self.proj_out(self.norm(h[:, 0])), dim=-1)


class FrozenTextModel(nn.Module):
    """A frozen local Hugging Face text model (e.g. a sentence-transformers folder) + a trainable projection.

    Only a local directory is accepted and nothing is ever downloaded (``local_files_only=True``); sentence
    embedding = mean of the last hidden states over real tokens (the sentence-transformers mean pooling).
    """

    def __init__(self, cfg: RewardModelConfig):
        super().__init__()
        path = Path(cfg.text_model_path)
        if not path.is_dir():
            raise UserError(f"--text-model {path}: local model directory not found (models are never downloaded)")
        try:
            from transformers import AutoModel, AutoTokenizer  # type: ignore
        except ImportError:
            raise UserError(f"--text-model {path}: the 'transformers' package is not installed") from None

        check_model_dir(path, "--text-model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True, **hf_pickle_kwargs())
        except (OSError, ValueError) as exc:
            raise UserError(f"--text-model {path}: cannot load a local model ({exc})") from None
        self.backbone = [model.eval().requires_grad_(False)]  # a list keeps it out of state_dict/parameters
        self.proj_out = nn.Linear(model.config.hidden_size, cfg.embed_dim)

    @torch.no_grad()
    def sentence_embeddings(self, texts: Sequence[str], device) -> torch.Tensor:
        model = self.backbone[0].to(device)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=64, return_tensors="pt").to(device)
        hidden = model(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        feats = self.sentence_embeddings(texts, self.proj_out.weight.device)
        return F.normalize(self.proj_out(feats), dim=-1)


# ----------------------------------------------------------------------------------------------------------
# InfoNCE with near-duplicate filtering

def identical_captions(ids: torch.Tensor) -> torch.Tensor:
    """(B, B) float matrix, 1 where two captions have the same word ids (same words after lower-casing and
    dropping punctuation), else 0 — the near-duplicate detector of the vocabulary text encoder."""
    return (ids[:, None, :] == ids[None, :, :]).all(-1).float()


def info_nce(motion_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
             caption_similarity: torch.Tensor | None = None, threshold: float = 0.95) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of B aligned pairs (CLIP Eq.; TMR §3.2).

    ``logits = τ · E_M E_Tᵀ``; the loss is the mean of cross-entropy(text→motion) and (motion→text) with the
    diagonal as target. Off-diagonal pairs whose captions are near-identical (``caption_similarity >=
    threshold``) are not negatives: their logits are masked out of both softmax denominators, as TMR does
    with its text-embedding similarity filter, so two motions described by the same sentence are not pushed
    apart.
    """
    logits = logit_scale * motion_emb @ text_emb.T
    if caption_similarity is not None:
        dup = caption_similarity >= threshold
        dup.fill_diagonal_(False)
        logits = logits.masked_fill(dup, float("-inf"))
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


# ----------------------------------------------------------------------------------------------------------
# the reward

class Reward(nn.Module):
    """R(x, c) = τ · E_M(x) · E_T(c), or R(x_t, t, c) when ``cfg.noise_aware``.

    Differentiable with respect to the motion features. ``tokenizer`` maps captions to vocabulary ids (not
    needed with a frozen HF text model).
    """

    def __init__(self, cfg: RewardModelConfig, tokenizer: CaptionTokenizer | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.motion_encoder = MotionEncoder(cfg)
        self.text_encoder: nn.Module = FrozenTextModel(cfg) if cfg.text_model_path else TextEncoder(cfg)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale)))
        self.register_buffer("alphas_cumprod", alphas_cumprod_for(cfg.schedule, cfg.num_train_timesteps),
                             persistent=False)

    @property
    def device(self) -> torch.device:
        return self.log_logit_scale.device

    def logit_scale(self) -> torch.Tensor:
        """τ, clamped to ``max_logit_scale`` (CLIP)."""
        return self.log_logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def text_ids(self, texts: Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise UserError("reward: this reward has no vocabulary; pass word ids or load it with load_reward")
        return self.tokenizer.batch(texts, device=self.device)

    def embed_text(self, texts: Sequence[str] | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
        """E_T(c) from captions (strings) or from word ids (B, L)."""
        if isinstance(self.text_encoder, FrozenTextModel):
            if texts is None:
                raise ValueError("a frozen text model needs caption strings")
            return self.text_encoder(texts)
        if ids is None:
            ids = self.text_ids(texts)
        return self.text_encoder(ids.to(self.device))

    def embed_motion(self, features: torch.Tensor, mask: torch.Tensor | None = None,
                     lengths: torch.Tensor | Sequence[int] | None = None, t=None) -> torch.Tensor:
        """E_M(x) or E_M(x_t, t); the mask is built from ``lengths`` if not given (all frames if neither)."""
        mask = frame_mask(features, mask, lengths)
        if t is not None and not torch.is_tensor(t):
            t = torch.full((features.shape[0],), int(t), dtype=torch.long, device=features.device)
        return self.motion_encoder(features, mask, t if self.cfg.noise_aware else None)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, texts: Sequence[str] | None = None,
                ids: torch.Tensor | None = None, t=None, lengths=None, text_emb: torch.Tensor | None = None
                ) -> torch.Tensor:
        """(B,) rewards of aligned (motion, caption) pairs; ``text_emb``: E_T(c) already computed."""
        m = self.embed_motion(features, mask, lengths, t)
        c = self.embed_text(texts, ids) if text_emb is None else text_emb
        return self.logit_scale() * (m * c).sum(-1)

    def score(self, features_or_latents: torch.Tensor, texts: Sequence[str], lengths=None, t=None,
              decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
              text_emb: torch.Tensor | None = None) -> torch.Tensor:
        """R(x, c) per sample; for latent backbones pass ``decode`` (latents -> normalised 263-d features).

        Gradients flow through ``decode`` into the latents. ``t`` is the noise level of the input (0 or None
        = clean); a plain reward ignores it.
        """
        x = decode(features_or_latents) if decode is not None else features_or_latents
        return self.forward(x, texts=texts, t=t, lengths=lengths, text_emb=text_emb)

    def similarity(self, motion_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """(N_text, N_motion) reward matrix τ · E_T E_Mᵀ."""
        return self.logit_scale() * text_emb @ motion_emb.T


def frame_mask(features: torch.Tensor, mask: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
    """Bool (B, T) mask of real frames from an explicit mask, from lengths, or all True."""
    B, T = features.shape[:2]
    if mask is not None:
        return mask.to(features.device).bool()
    if lengths is None:
        return torch.ones(B, T, dtype=torch.bool, device=features.device)
    return lengths_mask(torch.as_tensor(lengths).reshape(-1), T, features.device)


# ----------------------------------------------------------------------------------------------------------
# run directories

REWARD_KINDS = ("reward", "reward-spl")
VOCAB_FILE = "vocab.json"


def save_reward(reward: Reward, run_dir) -> None:
    """Write ``RUN/weights.safetensors`` (+ ``RUN/vocab.json`` for the vocabulary text encoder).

    The manifest (written by the caller with :func:`easytune_lab.runs.make_manifest`) must hold the model
    config under ``config["model"]``. A frozen HF text model is not copied; its path is in the config.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if reward.tokenizer is not None:
        reward.tokenizer.vocab.save(run_dir / VOCAB_FILE)
    save_tensors(run_dir / WEIGHTS, reward.state_dict())


def load_reward(run_dir, device="cpu", trainable: bool = False) -> Reward:
    """Load a trained reward (``easytune reward train`` or ``reward spl`` run) in eval mode on ``device``.

    By default its parameters are frozen (``requires_grad=False``): fine-tuning back-propagates through the
    reward into the motion only. ``trainable=True`` is for further reward training (SPL).
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest.get("kind") not in REWARD_KINDS:
        raise UserError(f"{run_dir}: is a '{manifest.get('kind')}' run, expected a reward run")
    fields = {f.name for f in dataclasses.fields(RewardModelConfig)}
    with manifest_config(run_dir):
        model = manifest["config"]["model"]
        cfg = RewardModelConfig(**{k: v for k, v in model.items() if k in fields})
    tokenizer = None
    if not cfg.text_model_path:
        tokenizer = CaptionTokenizer(Vocabulary.load(run_dir / VOCAB_FILE), cfg.max_words)
    with manifest_config(run_dir):
        reward = Reward(cfg, tokenizer)
    load_state_strict(reward, load_tensors(weights_file(run_dir)), weights_file(run_dir))
    reward.requires_grad_(trainable)
    return reward.to(torch.device(device) if isinstance(device, str) else device).eval()
