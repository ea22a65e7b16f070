"""Captions of a HumanML3D / KIT-ML directory: parsing, POS categories, vocabulary.

A caption file ``texts/<id>.txt`` holds one caption per line::

    a man kicks with his left leg.#a/DET man/NOUN kick/VERB with/ADP his/DET left/ADJ leg/NOUN#0.0#0.0

i.e. ``caption#tokens#start#end`` where ``tokens`` are space-separated ``word/POS`` pairs (lemmatised words,
spaCy universal POS tags) and ``start``/``end`` are seconds. ``0.0#0.0`` means the caption describes the whole
motion; other tags describe the sub-clip ``features[int(start * fps):int(end * fps)]`` (T2M's loader; a NaN tag
counts as 0.0, as there).

Token ids and POS one-hots follow the T2M text pipeline (Guo et al. 2022, ``Text2MotionDatasetV2`` and
``WordVectorizer``): a sentence of at most ``max_text_len`` tokens is framed as ``sos + tokens + eos`` (longer ones
are cropped first), giving ``max_text_len + 2`` positions of which ``sent_len`` are used. The POS one-hot has the
evaluator's 15 categories; words of a few closed "very important" lists override their tag (``left`` ->
``Loc_VIP``, ``walk`` -> ``Act_VIP``, ...), and words missing from the vocabulary count as ``OTHER``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import UserError
from ..io import write_json

# The T2M evaluator's POS categories, in its index order.
POS_CATEGORIES: tuple[str, ...] = (
    "VERB", "NOUN", "DET", "ADP", "NUM", "AUX", "PRON", "ADJ", "ADV",
    "Loc_VIP", "Body_VIP", "Obj_VIP", "Act_VIP", "Desc_VIP", "OTHER",
)
POS_INDEX: dict[str, int] = {name: i for i, name in enumerate(POS_CATEGORIES)}
NUM_POS = len(POS_CATEGORIES)

# Words whose category overrides their POS tag (T2M WordVectorizer's VIP lists).
VIP_WORDS: dict[str, frozenset[str]] = {
    "Loc_VIP": frozenset({"left", "right", "clockwise", "counterclockwise", "anticlockwise", "forward", "back",
                          "backward", "up", "down", "straight", "curve"}),
    "Body_VIP": frozenset({"arm", "chin", "foot", "feet", "face", "hand", "mouth", "leg", "waist", "eye", "knee",
                           "shoulder", "thigh"}),
    "Obj_VIP": frozenset({"stair", "dumbbell", "chair", "window", "floor", "car", "ball", "handrail", "baseball",
                          "basketball"}),
    "Act_VIP": frozenset({"walk", "run", "swing", "pick", "bring", "kick", "put", "squat", "throw", "hop", "dance",
                          "jump", "turn", "stumble", "stop", "sit", "lift", "lower", "raise", "wash", "stand",
                          "kneel", "stroll", "rub", "bend", "balance", "flap", "jog", "shuffle", "lean", "rotate",
                          "spin", "spread", "climb"}),
    "Desc_VIP": frozenset({"slowly", "carefully", "fast", "careful", "slow", "quickly", "happy", "angry", "sad",
                           "happily", "angrily", "sadly"}),
}

PAD, UNK, SOS, EOS = "<pad>", "<unk>", "<sos>", "<eos>"
SPECIALS: tuple[str, ...] = (PAD, UNK, SOS, EOS)


class CaptionError(UserError):
    """A malformed caption line or file; the message names the file and line."""


@dataclass(frozen=True)
class Token:
    """One ``word/POS`` pair of a caption line."""

    word: str
    pos: str

    def __str__(self) -> str:
        return f"{self.word}/{self.pos}"


@dataclass(frozen=True)
class Caption:
    """One parsed caption line: text, tagged tokens, and the clip it describes (seconds; 0.0/0.0 = whole)."""

    text: str
    tokens: tuple[Token, ...]
    start: float = 0.0
    end: float = 0.0

    @property
    def whole(self) -> bool:
        """True when the caption describes the whole motion (T2M: both tags 0.0)."""
        return self.start == 0.0 and self.end == 0.0

    @property
    def words(self) -> list[str]:
        return [t.word for t in self.tokens]

    def clip_frames(self, fps: float) -> tuple[int, int]:
        """Frame range ``[int(start*fps), int(end*fps))`` of a sub-clip caption (T2M's rounding)."""
        return int(self.start * fps), int(self.end * fps)

    def to_line(self) -> str:
        """The line as written in a caption file (inverse of :func:`parse_caption_line`)."""
        return f"{self.text}#{' '.join(map(str, self.tokens))}#{self.start}#{self.end}"


def parse_token(item: str) -> Token:
    """``"word/POS"`` -> :class:`Token` (the last ``/`` separates the tag); raises ``ValueError`` if malformed."""
    word, sep, pos = item.rpartition("/")
    if not sep or not word or not pos:
        raise ValueError(f"token '{item}' is not word/POS")
    return Token(word, pos)


MAX_TAG_SECONDS = 1e6  # sub-clip tags are seconds into a motion; larger ones overflow a frame index


def _parse_tag(value: str, name: str) -> float:
    try:
        tag = float(value)
    except ValueError:
        raise ValueError(f"{name} tag '{value}' is not a number") from None
    if math.isnan(tag):  # T2M treats a NaN tag as 0.0
        return 0.0
    if math.isinf(tag) or tag < 0 or tag > MAX_TAG_SECONDS:
        raise ValueError(f"{name} tag '{value}' must be a number of seconds in [0, {MAX_TAG_SECONDS:g}]")
    return tag


def parse_caption_line(line: str, where: str = "caption") -> Caption:
    """Parse ``caption#word/POS ...#start#end``; raise :class:`CaptionError` naming ``where`` if malformed."""
    try:
        fields = line.rstrip("\r\n").split("#")
        if not line.strip():
            raise ValueError("empty line")
        if len(fields) != 4:
            raise ValueError(f"expected 4 '#'-separated fields (caption#tokens#start#end), got {len(fields)}")
        text, token_field, start_s, end_s = (f.strip() for f in fields)
        if not text:
            raise ValueError("empty caption text")
        if not token_field:
            raise ValueError("no word/POS tokens")
        tokens = tuple(parse_token(item) for item in token_field.split())
        start, end = _parse_tag(start_s, "start"), _parse_tag(end_s, "end")
        if not (start == 0.0 and end == 0.0) and end <= start:
            raise ValueError(f"clip end {end} s is not after its start {start} s")
    except ValueError as exc:
        raise CaptionError(f"{where}: {exc}") from None
    return Caption(text, tokens, start, end)


def read_caption_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """Non-trailing lines of a caption file as (1-based line number, text); UserError if unreadable."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: caption file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable caption file ({type(exc).__name__}: {exc})") from None
    lines = raw.rstrip().splitlines() if raw.strip() else []
    return list(enumerate(lines, start=1))


def parse_caption_file(path: str | os.PathLike) -> list[Caption]:
    """All captions of ``texts/<id>.txt``; raises UserError at the first malformed or empty line, or if none."""
    path = Path(path)
    numbered = read_caption_lines(path)
    if not numbered:
        raise CaptionError(f"{path}: no captions (empty file)")
    return [parse_caption_line(line, where=f"{path}: line {n}") for n, line in numbered]


def caption_problems(path: str | os.PathLike) -> tuple[list[Caption], list[str]]:
    """Parse a caption file without stopping: (good captions, one problem line per bad line / unreadable file)."""
    path = Path(path)
    try:
        numbered = read_caption_lines(path)
    except UserError as exc:
        return [], [str(exc)]
    if not numbered:
        return [], [f"{path}: no captions (empty file)"]
    captions, problems = [], []
    for n, line in numbered:
        try:
            captions.append(parse_caption_line(line, where=f"{path}: line {n}"))
        except CaptionError as exc:
            problems.append(str(exc))
    return captions, problems


_WORD_RE = re.compile(r"[a-z0-9']+")


def plain_tokens(text: str) -> list[Token]:
    """Tokens for free text without tags (e.g. a prompt): lower-case words, POS from the VIP lists or OTHER."""
    return [Token(w, "OTHER") for w in _WORD_RE.findall(text.lower())]


def pos_category(word: str, pos: str, known: bool = True) -> str:
    """The evaluator's category for one token (T2M WordVectorizer): OTHER if unknown, VIP list, tag, or OTHER."""
    if not known:
        return "OTHER"
    for category, words in VIP_WORDS.items():
        if word in words:
            return category
    return pos if pos in POS_INDEX else "OTHER"


def frame_tokens(tokens: Sequence[Token], max_text_len: int) -> list[Token]:
    """``sos + tokens[:max_text_len] + eos`` (T2M framing; sos/eos are tagged OTHER)."""
    return [Token(SOS, "OTHER"), *tokens[:max_text_len], Token(EOS, "OTHER")]


class Vocabulary:
    """Word <-> id map with ``<pad>``=0, ``<unk>``=1, ``<sos>``=2, ``<eos>``=3, then words by frequency."""

    def __init__(self, words: Iterable[str] = ()):
        self.itos: list[str] = list(SPECIALS)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        for w in words:
            if w not in self.stoi:
                self.stoi[w] = len(self.itos)
                self.itos.append(w)

    pad_id, unk_id, sos_id, eos_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[Caption], min_count: int = 1) -> "Vocabulary":
        """Vocabulary of the words in ``captions`` seen at least ``min_count`` times (most frequent first)."""
        counts = Counter(w for c in captions for w in c.words)
        ordered = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(ordered)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def id(self, word: str) -> int:
        return self.stoi.get(word, self.unk_id)

    def encode(self, tokens: Sequence[Token], max_text_len: int = 20) -> tuple[np.ndarray, np.ndarray, int]:
        """T2M-framed ids (int64, ``max_text_len+2``, padded with ``<pad>``), POS one-hots
        (float32, ``(max_text_len+2, 15)``, zero rows at padding) and the used length ``sent_len``."""
        if max_text_len < 1:
            raise UserError(f"--max-text-len: must be at least 1 (got {max_text_len})")
        framed = frame_tokens(tokens, max_text_len)
        size = max_text_len + 2
        ids = np.full(size, self.pad_id, dtype=np.int64)
        pos = np.zeros((size, NUM_POS), dtype=np.float32)
        for i, tok in enumerate(framed):
            if tok.word in (SOS, EOS):
                ids[i] = self.sos_id if tok.word == SOS else self.eos_id
                pos[i, POS_INDEX["OTHER"]] = 1.0
            else:
                ids[i] = self.id(tok.word)
                pos[i, POS_INDEX[pos_category(tok.word, tok.pos, known=tok.word in self.stoi)]] = 1.0
        return ids, pos, len(framed)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words for ids, stopping at ``<eos>`` and skipping ``<sos>``/``<pad>``."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.sos_id):
                continue
            out.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return out

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, {"format": "easytune-vocabulary", "version": 1, "words": self.itos})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: vocabulary file not found") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a vocabulary JSON file ({exc})") from None
        words = data.get("words") if isinstance(data, dict) else None
        if (not isinstance(words, list) or data.get("format") != "easytune-vocabulary"
                or list(words[:len(SPECIALS)]) != list(SPECIALS) or not all(isinstance(w, str) for w in words)
                or len(set(words)) != len(words)):
            raise UserError(f"{path}: not an easytune vocabulary (expected format 'easytune-vocabulary', "
                            f"specials {list(SPECIALS)} first, unique words)")
        return cls(words[len(SPECIALS):])
