"""The standard T2M evaluator (Guo et al. 2022), loaded from its published files, as a model of this workbench.

Every text-to-motion paper (T2M, MDM, MLD, EasyTune's Tab. 1) reports R-Precision, FID, MM-Dist and Diversity
with one pre-trained text–motion matching model. ``easytune eval --evaluator t2m:DIR`` (``kit:DIR`` for KIT-ML)
uses it; ``DIR`` is laid out as the motion repositories' download scripts unpack it::

    DIR/t2m/text_mot_match/model/finest.tar       torch.save dict: movement_encoder, text_encoder, motion_encoder
                                                  (state dicts), epoch (extra keys such as optimiser states ignored)
    DIR/t2m/Comp_v6_KLD01/meta/{mean,std}.npy     (263,) the evaluator's feature normalisation
    DIR/kit/...                                   the same for KIT-ML (251-d features; meta under Comp_v6_KLD005)
    DIR/glove/our_vab_data.npy                    (V, 300) float GloVe vectors of the caption vocabulary
    DIR/glove/our_vab_words.pkl                   list of the V words
    DIR/glove/our_vab_idx.pkl                     dict word -> row of our_vab_data.npy

The architecture (module and parameter names as in the published checkpoints):

* ``movement_encoder`` (MovementConvEncoder): ``main`` = Conv1d(D-4, 512, k=4, s=2, p=1), Dropout(0.2),
  LeakyReLU(0.2), Conv1d(512, 512, 4, 2, 1), Dropout, LeakyReLU; ``out_net`` = Linear(512, 512). Input: the
  normalised features without the last 4 foot-contact dims, padded to 196 frames; output: one code per 4 frames.
* ``motion_encoder`` (MotionEncoderBiGRUCo): ``input_emb`` Linear(512, 1024) -> bidirectional GRU(1024) over
  ``length // 4`` codes from the learned initial state ``hidden`` (2, 1, 1024) -> [h_fwd, h_bwd] ->
  ``output_net`` = Linear(2048, 1024), LayerNorm, LeakyReLU(0.2), Linear(1024, 512).
* ``text_encoder`` (TextEncoderBiGRUCo): GloVe vector + ``pos_emb`` Linear(15, 300)(POS one-hot) ->
  ``input_emb`` Linear(300, 512) -> bidirectional GRU(512) over ``sent_len`` tokens (``sos ... eos``) from
  ``hidden`` (2, 1, 512) -> ``output_net`` = Linear(1024, 512), LayerNorm, LeakyReLU(0.2), Linear(512, 512).

Words are vectorised as T2M's WordVectorizer does: a word missing from the GloVe list takes the ``unk`` vector
and the ``OTHER`` category; a known word takes its VIP category (:data:`easytune_lab.data.text.VIP_WORDS`) or its
POS tag (:data:`easytune_lab.data.text.POS_CATEGORIES`, 15 one-hots).

Files are read safely: the checkpoint with ``torch.load(weights_only=True)`` and strict key and shape checks, the
two ``.pkl`` files with an unpickler that admits only plain containers, strings and ints (anything else needs
``--allow-pickle``). A missing or malformed file is a one-line UserError naming it.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..data.text import NUM_POS, SPECIALS, Vocabulary
from ..errors import UserError
from .evaluator import EvaluatorConfig, LoadedEvaluator, UNIT_LENGTH, load_evaluator


@dataclass(frozen=True)
class T2MLayout:
    """Where one dataset's evaluator files lie under ``DIR`` and the feature width they expect."""

    dataset: str  # "t2m" (HumanML3D) or "kit" (KIT-ML)
    feature_dim: int
    meta_run: str  # the generator run whose meta/{mean,std}.npy normalise the evaluator's input

    def checkpoint(self, root: Path) -> Path:
        return root / self.dataset / "text_mot_match" / "model" / "finest.tar"

    def meta(self, root: Path, name: str) -> Path:
        return root / self.dataset / self.meta_run / "meta" / f"{name}.npy"

    @staticmethod
    def glove(root: Path, name: str) -> Path:
        return root / "glove" / f"our_vab_{name}"


LAYOUTS = {"t2m": T2MLayout("t2m", 263, "Comp_v6_KLD01"), "kit": T2MLayout("kit", 251, "Comp_v6_KLD005")}
CHECKPOINT_MODULES = ("movement_encoder", "text_encoder", "motion_encoder")


def t2m_config(feature_dim: int) -> EvaluatorConfig:
    """The published evaluator's sizes (EvaluatorModelWrapper: dim_movement_enc_hidden = dim_movement_latent = 512,
    dim_motion_hidden 1024, dim_word 300, dim_text_hidden = dim_coemb_hidden = 512, max_text_len 20)."""
    return EvaluatorConfig(feature_dim=feature_dim, foot_contact_dims=4, movement_hidden=512, movement_latent=512,
                           motion_hidden=1024, word_dim=300, text_hidden=512, output_dim=512, dropout=0.2,
                           max_text_len=20)


# ------------------------------------------------------------------------------------------------ architecture


def _output_net(hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2 * hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, out_dim))


class MovementConvEncoder(nn.Module):
    """(B, T, D-4) -> (B, T // 4, latent): two strided convolutions and a linear map."""

    def __init__(self, in_dim: int, hidden: int, latent: int, dropout: float = 0.2):
        super().__init__()
        self.main = nn.Sequential(nn.Conv1d(in_dim, hidden, 4, 2, 1), nn.Dropout(dropout), nn.LeakyReLU(0.2),
                                  nn.Conv1d(hidden, latent, 4, 2, 1), nn.Dropout(dropout), nn.LeakyReLU(0.2))
        self.out_net = nn.Linear(latent, latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_net(self.main(x.transpose(1, 2)).transpose(1, 2))


class _BiGRUCo(nn.Module):
    """input_emb -> bidirectional GRU from the learned ``hidden`` over the valid steps -> output_net."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.input_emb = nn.Linear(in_dim, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.output_net = _output_net(hidden, out_dim)
        self.hidden = nn.Parameter(torch.zeros(2, 1, hidden))

    def _encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.input_emb(x), lengths.to(torch.long).clamp(min=1).cpu(),
                                      batch_first=True, enforce_sorted=False)
        _, last = self.gru(packed, self.hidden.expand(-1, x.shape[0], -1).contiguous())
        return self.output_net(torch.cat([last[0], last[1]], dim=-1))


class MotionEncoderBiGRUCo(_BiGRUCo):
    def forward(self, codes: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return self._encode(codes, steps)


class TextEncoderBiGRUCo(_BiGRUCo):
    def __init__(self, word_dim: int, pos_dim: int, hidden: int, out_dim: int):
        super().__init__(word_dim, hidden, out_dim)
        self.pos_emb = nn.Linear(pos_dim, word_dim)

    def forward(self, word_vectors: torch.Tensor, pos_onehot: torch.Tensor, sent_len: torch.Tensor) -> torch.Tensor:
        return self._encode(word_vectors + self.pos_emb(pos_onehot), sent_len)


class T2MEvaluator(nn.Module):
    """The three published encoders plus the GloVe table (a buffer, not part of the checkpoint); the same
    ``encode_motion`` / ``encode_text`` interface as :class:`easytune_lab.eval.evaluator.TextMotionEvaluator`."""

    def __init__(self, config: EvaluatorConfig, word_vectors: torch.Tensor):
        super().__init__()
        c = self.config = config
        self.movement_encoder = MovementConvEncoder(c.feature_dim - c.foot_contact_dims, c.movement_hidden,
                                                    c.movement_latent, c.dropout)
        self.motion_encoder = MotionEncoderBiGRUCo(c.movement_latent, c.motion_hidden, c.output_dim)
        self.text_encoder = TextEncoderBiGRUCo(c.word_dim, NUM_POS, c.text_hidden, c.output_dim)
        self.register_buffer("word_vectors", torch.as_tensor(word_vectors, dtype=torch.float32), persistent=False)

    def encode_motion(self, motion: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``motion`` (B, T, D) normalised and zero-padded, ``lengths`` (B,) -> (B, 512); T2M's
        ``get_motion_embeddings`` without its reordering."""
        if motion.shape[-1] != self.config.feature_dim:
            raise ValueError(f"motion features have width {motion.shape[-1]}, evaluator expects "
                             f"{self.config.feature_dim}")
        x = motion[..., : self.config.feature_dim - self.config.foot_contact_dims]
        pad = (-x.shape[1]) % UNIT_LENGTH
        if pad:
            x = nn.functional.pad(x, (0, 0, 0, pad))
        codes = self.movement_encoder(x)
        steps = torch.div(lengths.to(torch.long), UNIT_LENGTH, rounding_mode="floor").clamp(1, codes.shape[1])
        return self.motion_encoder(codes, steps)

    def encode_text(self, word_ids: torch.Tensor, pos_onehot: torch.Tensor, sent_len: torch.Tensor) -> torch.Tensor:
        """``word_ids`` (B, L) rows of the GloVe table, ``pos_onehot`` (B, L, 15), ``sent_len`` (B,) -> (B, 512)."""
        return self.text_encoder(self.word_vectors[word_ids], pos_onehot, sent_len)


# ------------------------------------------------------------------------------------------------------ files


class PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers (dict, list, tuple), strings, ints, floats, bools and None only: those load
    through pickle opcodes, so every global lookup — the way a pickle runs code — is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refers to {module}.{name}")


def load_plain_pickle(path: Path, allow_pickle: bool = False):
    """A small ``.pkl`` of plain data (:class:`PlainUnpickler`); with ``allow_pickle``, any pickle."""
    if not path.is_file():
        raise UserError(f"{path}: missing")
    data = path.read_bytes()
    try:
        return (pickle.loads(data) if allow_pickle else PlainUnpickler(io.BytesIO(data)).load())
    except pickle.UnpicklingError as exc:
        if allow_pickle:
            raise UserError(f"{path}: not a readable pickle ({exc})") from None
        raise UserError(f"{path}: holds more than plain containers, strings and ints ({exc}); loading it could run "
                        f"code, pass --allow-pickle if you trust the file") from None
    except Exception as exc:  # truncated or foreign bytes: EOFError, ValueError, ...
        raise UserError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def _read_npy(path: Path) -> np.ndarray:
    """``path`` as a NumPy array (never unpickled); one line naming the file when it is missing or not an array."""
    if not path.is_file():
        raise UserError(f"{path}: missing")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: not a NumPy array file ({exc})") from None


def _load_vector(path: Path, dim: int) -> np.ndarray:
    arr = _read_npy(path)
    if arr.shape != (dim,) or not np.issubdtype(arr.dtype, np.floating):
        raise UserError(f"{path}: expected a float array of shape ({dim},), got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise UserError(f"{path}: holds non-finite values")
    return arr.astype(np.float32)


class GloveVocabulary(Vocabulary):
    """The GloVe word list as a :class:`Vocabulary` (``<pad>``, ``<unk>``, ``<sos>``, ``<eos>`` first) and the
    table of its vectors in id order: ``<unk>``/``<sos>``/``<eos>`` take the ``unk``/``sos``/``eos`` vectors
    (T2M frames captions with ``sos/OTHER`` ... ``eos/OTHER``), ``<pad>`` zeros (padding is never read)."""

    def __init__(self, word2vec: dict[str, np.ndarray], dim: int):
        super().__init__(w for w in word2vec if w not in SPECIALS)
        table = np.zeros((len(self.itos), dim), np.float32)
        unk = word2vec["unk"]
        for i, word in enumerate(self.itos):
            special = {"<unk>": "unk", "<sos>": "sos", "<eos>": "eos"}.get(word)
            if word == "<pad>":
                continue
            table[i] = word2vec.get(special, unk) if special else word2vec[word]
        self.table = table


def load_word_vectors(root: Path, dim: int = 300, allow_pickle: bool = False) -> GloveVocabulary:
    """``glove/our_vab_{data.npy,words.pkl,idx.pkl}`` as T2M's WordVectorizer reads them."""
    data_path = T2MLayout.glove(root, "data.npy")
    words_path, idx_path = T2MLayout.glove(root, "words.pkl"), T2MLayout.glove(root, "idx.pkl")
    vectors = _read_npy(data_path)
    if vectors.ndim != 2 or vectors.shape[1] != dim or not np.issubdtype(vectors.dtype, np.floating):
        raise UserError(f"{data_path}: expected a float array of shape (words, {dim}), got {vectors.dtype} "
                        f"{vectors.shape}")
    words = load_plain_pickle(words_path, allow_pickle)
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
        raise UserError(f"{words_path}: expected a list of words (strings)")
    index = load_plain_pickle(idx_path, allow_pickle)
    if not isinstance(index, dict) or not all(isinstance(k, str) for k in index):
        raise UserError(f"{idx_path}: expected a dict word -> row")
    word2vec = {}
    for word in words:
        row = index.get(word)
        if row is None:
            raise UserError(f"{idx_path}: has no row for the word '{word}' of {words_path.name}")
        if not isinstance(row, (int, np.integer)) or isinstance(row, bool) or not 0 <= int(row) < len(vectors):
            raise UserError(f"{idx_path}: row {row!r} of '{word}' is not an index into {data_path.name} "
                            f"({len(vectors)} rows)")
        word2vec[word] = vectors[int(row)]
    if "unk" not in word2vec:
        raise UserError(f"{words_path}: has no 'unk' word (T2M's vector for unknown words)")
    if not np.isfinite(vectors).all():
        raise UserError(f"{data_path}: holds non-finite values")
    return GloveVocabulary(word2vec, dim)


def load_checkpoint(path: Path, model: T2MEvaluator) -> int:
    """Load ``finest.tar`` into ``model`` with strict key and shape checks; returns its ``epoch``."""
    if not path.is_file():
        raise UserError(f"{path}: missing (the T2M evaluator checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals, truncated files, not a torch file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a loadable weights-only checkpoint ({first})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a dict, got {type(state).__name__}")
    missing = [k for k in (*CHECKPOINT_MODULES, "epoch") if k not in state]
    if missing:
        raise UserError(f"{path}: missing key(s) {', '.join(missing)} (expected {', '.join(CHECKPOINT_MODULES)}, "
                        f"epoch)")
    for name in CHECKPOINT_MODULES:
        module, given = getattr(model, name), state[name]
        if not isinstance(given, dict):
            raise UserError(f"{path}: '{name}' is not a state dict")
        expected = module.state_dict()
        absent = sorted(set(expected) - set(given))
        extra = sorted(set(given) - set(expected))
        if absent or extra:
            raise UserError(f"{path}: '{name}' does not match the T2M architecture (missing {absent[:3]}, "
                            f"unexpected {extra[:3]})")
        for key, tensor in expected.items():
            value = given[key]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(tensor.shape):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise UserError(f"{path}: '{name}.{key}' has shape {shape}, expected {tuple(tensor.shape)} "
                                f"(a {model.config.feature_dim}-d evaluator)")
            if not torch.isfinite(value).all():
                raise UserError(f"{path}: '{name}.{key}' holds non-finite values")
        module.load_state_dict(given, strict=True)
    epoch = state["epoch"]
    return int(epoch) if isinstance(epoch, (int, float)) or torch.is_tensor(epoch) else -1


def parse_evaluator_spec(spec: str) -> tuple[T2MLayout, Path] | None:
    """``t2m:DIR`` / ``kit:DIR`` -> (layout, DIR); anything else (a run directory) -> None."""
    prefix, sep, rest = str(spec).partition(":")
    if sep and prefix in LAYOUTS and rest:
        return LAYOUTS[prefix], Path(rest)
    return None


def load_t2m_evaluator(spec: str, device: str | torch.device = "cpu", allow_pickle: bool = False) -> LoadedEvaluator:
    """The published T2M (``t2m:DIR``) or KIT (``kit:DIR``) evaluator as a :class:`LoadedEvaluator`;
    ``allow_pickle`` (``--allow-pickle``) admits ``.pkl`` files beyond plain data."""
    parsed = parse_evaluator_spec(spec)
    if parsed is None:
        raise UserError(f"--evaluator {spec}: expected t2m:DIR or kit:DIR")
    layout, root = parsed
    if not root.is_dir():
        raise UserError(f"--evaluator {spec}: {root} is not a directory")
    config = t2m_config(layout.feature_dim)
    vocab = load_word_vectors(root, config.word_dim, allow_pickle=allow_pickle)
    mean = _load_vector(layout.meta(root, "mean"), layout.feature_dim)
    std = _load_vector(layout.meta(root, "std"), layout.feature_dim)
    if (std <= 0).any():
        raise UserError(f"{layout.meta(root, 'std')}: holds zero or negative values")
    model = T2MEvaluator(config, torch.from_numpy(vocab.table))
    epoch = load_checkpoint(layout.checkpoint(root), model)
    device = torch.device(device)
    model.to(device).eval()
    manifest = {"kind": "evaluator", "evaluator": f"{layout.dataset}:{root}", "source": "T2M (Guo et al. 2022)",
                "epoch": epoch, "config": {"model": config.__dict__}}
    return LoadedEvaluator(model, vocab, mean, std, device, root, manifest)


def resolve_evaluator(spec: str | Path, device: str | torch.device = "cpu",
                      allow_pickle: bool = False) -> LoadedEvaluator:
    """``--evaluator``: ``t2m:DIR`` / ``kit:DIR`` (the published evaluator) or a run of ``easytune evaluator train``."""
    if parse_evaluator_spec(str(spec)) is not None:
        return load_t2m_evaluator(str(spec), device, allow_pickle)

    return load_evaluator(spec, device)
