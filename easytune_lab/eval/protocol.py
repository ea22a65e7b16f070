"""The T2M evaluation protocol: a set of motions -> evaluator embeddings -> every metric, over replications.

One replication of the ``t2m`` protocol (the default), as T2M's evaluation loaders do it (Guo et al. 2022,
``Text2MotionDatasetV2`` with ``drop_last``, ``EvaluatorModelWrapper``; MDM and MLD evaluate the same way):

1. Every clip of the split is one row; its caption is drawn per replication (a clip with several captions gets a
   different one each time) and the rows are shuffled. Each row's ground-truth motion is cropped at a random
   offset to a multiple of ``unit_length`` (4) frames, and one row in three (T2M's ``'double'`` coin) is one unit
   shorter still — ground truth included; the draws are reproducible from the replication's seed
   (:func:`t2m_crop`). Each row holds the caption text (the generator's prompt), its tokens (what the evaluator
   reads) and that length.
2. A *motion source* produces one motion per row — the ground truth itself (``gt``), a generator's sample for the
   row's caption and length, or a sanity baseline — so gt and generated motions are judged on the same texts.
3. Every motion is zero-padded to ``max_motion_length`` (196) frames before the evaluator sees it, so its
   embedding does not depend on the other motions of its batch.
4. Metrics from the embeddings, on the complete groups of 32 rows only (the loader's ``drop_last``): R-Precision
   top-1/2/3 and MM-Dist per group, FID against a second, independent draw of the ground truth (T2M iterates its
   ground-truth loader again), Diversity (300 pairs) and, when asked, MultiModality (``mm_texts`` rows x
   ``mm_repeats`` generations, 10 pairs).

The ``legacy`` protocol (this workbench's earlier evaluation, kept to compare with earlier results) crops every
clip at its start to a multiple of 4 frames, pads each batch to its longest motion, takes FID against the whole
split's start crops and FID and Diversity over every row (the incomplete last group included).

Replications are summarised as mean ± 1.96·std/√n (:func:`easytune_lab.eval.metrics.replicate`; T2M uses 20).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.humanml import HumanMLDataset, read_motion, read_split
from ..diffusion.generate import load_generator
from ..errors import UserError
from ..motion.features import recover_from_ric
from ..runs import read_manifest
from ..runtime import progress_bar as tqdm
from . import metrics as M
from .evaluator import LoadedEvaluator, embed_motions, embed_text_tensors
from .oracle import oracle_accuracy

# A motion source: (captions, lengths, rows) -> raw (un-normalised) features, one (length_i, D) array per row.
MotionSource = Callable[[list[str], np.ndarray, "EvalRows"], Sequence[np.ndarray]]

BASELINES = ("gt", "noise", "repeat", "shuffled")
PROTOCOLS, MAX_MOTION_LENGTH, UNIT_LENGTH = M.PROTOCOLS, M.MAX_MOTION_LENGTH, M.UNIT_LENGTH
METRIC_KEYS = ("r_precision_top1", "r_precision_top2", "r_precision_top3", "fid", "mm_dist", "diversity")


@dataclass
class ProtocolConfig:
    """The protocol's constants (T2M's values by default)."""

    split: str = "test"
    replications: int = 20
    group_size: int = M.R_PRECISION_GROUP  # R-Precision batch
    diversity_times: int = M.DIVERSITY_TIMES
    multimodality: bool = False
    mm_texts: int = 100  # rows that get several generations
    mm_repeats: int = 30  # generations per such row
    mm_times: int = M.MULTIMODALITY_TIMES
    seed: int = 0
    max_text_len: int = 20
    protocol: str = PROTOCOLS[0]  # "t2m" (T2M's loaders exactly) or "legacy" (start crops, batch padding)
    max_motion_length: int = MAX_MOTION_LENGTH  # t2m: every motion padded to this many frames
    unit_length: int = UNIT_LENGTH

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise UserError(f"--protocol: must be one of {', '.join(PROTOCOLS)} (got '{self.protocol}')")

    @property
    def t2m(self) -> bool:
        return self.protocol == "t2m"


def t2m_crop(length: int, unit_length: int, rng: np.random.Generator) -> tuple[int, int]:
    """T2M's evaluation crop of a ``length``-frame clip: ``(offset, frames)``.

    ``frames`` is ``length`` cut down to a multiple of ``unit_length``; with probability 1/3 (T2M's coin over
    ``['single', 'single', 'double']``, drawn only when ``unit_length < 10``) one unit shorter still. ``offset`` is
    uniform in ``[0, length - frames]``.
    """
    units = length // unit_length
    if unit_length < 10 and rng.integers(3) == 2 and units > 1:
        units -= 1
    frames = units * unit_length
    return int(rng.integers(length - frames + 1)), frames


@dataclass
class EvalRows:
    """One replication's rows, in evaluation order."""

    clip_index: np.ndarray  # (N,) index of each row's clip in the dataset
    motion_ids: list[str]  # clip names (``<id>`` or ``<id>@a-b``)
    captions: list[str]  # caption text, the generator's prompt
    token_ids: torch.Tensor  # (N, L) int64
    pos_one_hot: torch.Tensor  # (N, L, 15)
    sent_lens: torch.Tensor  # (N,)
    lengths: np.ndarray  # (N,) ground-truth lengths (multiples of 4)
    seed: int = 0  # the replication's seed (generators sample with it)
    gt_motions: list[np.ndarray] | None = None  # (lengths[i], D) raw ground-truth crops, one per row

    def __len__(self) -> int:
        return len(self.captions)


class GroundTruth:
    """The ground-truth clips of a split, raw features.

    ``motions`` holds each clip cropped at its start to a multiple of 4 frames (the ``legacy`` protocol's crop,
    and what the ``repeat`` baseline repeats); :meth:`rows` with ``crop="t2m"`` crops at random offsets instead,
    as T2M's evaluation loader does (:func:`t2m_crop`).

    ``max_clips`` > 0 keeps a fixed subset of that many clips (drawn with a fixed seed, in split order), for quick
    evaluations during training; FID is then taken against the subset's own ground truth.
    """

    def __init__(self, root: str | Path, split: str, ev: LoadedEvaluator, max_text_len: int = 20,
                 max_clips: int = 0):
        self.dataset = HumanMLDataset(root, split, mode="eval", max_text_len=max_text_len, vocab=ev.vocab,
                                      normalise=False)
        if self.dataset.spec.dim != ev.config.feature_dim:
            raise UserError(f"{root}: feature width {self.dataset.spec.dim} does not match the evaluator's "
                            f"{ev.config.feature_dim}")
        if 0 < max_clips < len(self.dataset.clips):
            keep = np.random.default_rng((max_clips, 5)).choice(len(self.dataset.clips), max_clips, replace=False)
            self.dataset.clips = [self.dataset.clips[i] for i in np.sort(keep)]
        self.motions = [self._motion(i) for i in range(len(self.dataset))]

    def _motion(self, index: int) -> np.ndarray:
        item = self.dataset[index]
        return item.features.numpy()

    def rows(self, replication_seed: int, crop: str = "legacy", unit_length: int = UNIT_LENGTH) -> EvalRows:
        """All clips, captions drawn with ``replication_seed``, shuffled with it; ground truth cropped at the start
        (``crop="legacy"``) or as T2M's loader does (``crop="t2m"``, one generator per clip keyed by the seed and
        the clip, so a row's crop does not depend on the shuffle)."""
        if crop not in PROTOCOLS:
            raise UserError(f"crop: must be one of {', '.join(PROTOCOLS)} (got '{crop}')")
        self.dataset.seed = replication_seed
        order = np.random.default_rng((replication_seed, 1)).permutation(len(self.dataset))
        items = [self.dataset[int(i)] for i in order]
        if crop == "legacy":
            motions = [self.motions[int(i)] for i in order]
        else:
            motions = []
            for i in order:
                full = self.dataset.clip_features(int(i))
                offset, frames = t2m_crop(len(full), unit_length, np.random.default_rng((replication_seed, 2, int(i))))
                motions.append(np.array(full[offset: offset + frames], dtype=np.float32))
        return EvalRows(
            clip_index=order, motion_ids=[it.motion_id for it in items], captions=[it.caption for it in items],
            token_ids=torch.stack([it.token_ids for it in items]),
            pos_one_hot=torch.stack([it.pos_one_hot for it in items]),
            sent_lens=torch.tensor([it.sent_len for it in items]),
            lengths=np.array([len(m) for m in motions]), seed=replication_seed, gt_motions=motions)

    def source(self) -> MotionSource:
        """The ground truth of each row (the row's own crop)."""
        return lambda captions, lengths, rows: list(rows.gt_motions)


def noise_source(gt: GroundTruth, seed: int) -> MotionSource:
    """Sanity baseline: Gaussian noise shaped like the motions (same lengths; each feature with the data's
    Mean/Std, no temporal structure)."""
    mean, std = gt.dataset.mean, gt.dataset.std

    def source(captions, lengths, rows):
        rng = np.random.default_rng((seed, 7))
        return [(mean + std * rng.standard_normal((int(n), len(mean)))).astype(np.float32) for n in lengths]

    return source


def repeat_source(gt: GroundTruth) -> MotionSource:
    """Sanity baseline: one ground-truth motion (the split's first clip) for every row, cropped to each length."""
    first = gt.motions[0]

    def source(captions, lengths, rows):
        out = []
        for n in lengths:
            reps = int(np.ceil(int(n) / len(first)))
            out.append(np.concatenate([first] * reps)[: int(n)])
        return out

    return source


def shuffled_source(gt: GroundTruth) -> MotionSource:
    """Sanity baseline: each row gets the ground-truth motion of the next row, so every caption is paired with
    another real motion (the floor of R-Precision and of the oracle's accuracy)."""
    return lambda captions, lengths, rows: [rows.gt_motions[i] for i in np.roll(np.arange(len(rows)), 1)]


# --------------------------------------------------------------------------------------------- generator runs


Generator = Callable[[list[str], np.ndarray, int], Sequence[np.ndarray]]  # (texts, lengths, seed) -> raw features


def generator_source(run_dir: str | Path, device: torch.device | str = "cpu", **sampling) -> Generator:
    """A generator run directory as ``(texts, lengths, seed) -> raw HumanML3D features`` (one array per text).

    ``sampling`` (``sampler``, ``steps``, ``guidance``; None keeps the run's default) is passed to every call.

    Uses :func:`easytune_lab.diffusion.generate.load_generator` ``(run, device).generate(texts, lengths, seed)``.
    Raises UserError when ``run_dir`` is not a run or is a run of a non-generating kind.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    kind = manifest.get("kind")
    if kind in ("evaluator", "reward", "eval"):
        raise UserError(f"--model {run_dir}: is a '{kind}' run, not a generator (a backbone or fine-tuned run)")
    model = load_generator(run_dir, torch.device(device))
    options = {k: v for k, v in sampling.items() if v is not None}
    return lambda texts, lengths, seed: model.generate(list(texts), [int(n) for n in lengths], seed=int(seed),
                                                       **options)


def generated_source(generate: Generator) -> MotionSource:
    """A generator as a motion source: each row's caption and ground-truth length, the replication's seed."""
    return lambda captions, lengths, rows: generate(captions, lengths, rows.seed)


# ------------------------------------------------------------------------------------------------------ oracle


def load_actions(root: str | Path) -> dict[str, object] | None:
    """Per-motion actions from ``ROOT/attributes.jsonl`` (procedural data), or None when absent."""
    path = Path(root) / "attributes.jsonl"
    if not path.is_file():
        return None
    actions = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            motion_id = str(record["id"])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}: line {n} is not a JSON object with an 'id'") from None
        if "actions" in record and not _valid_actions(record["actions"]):
            raise UserError(f"{path}: line {n}: 'actions' must be a list of objects with a 'family' and integer "
                            "frames 0 <= start < end")
        actions[motion_id] = record.get("actions", record)
    return actions


def _valid_actions(actions) -> bool:
    def frame(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    return isinstance(actions, list) and all(
        isinstance(a, dict) and isinstance(a.get("family"), str) and frame(a.get("start")) and frame(a.get("end"))
        and a["start"] < a["end"] for a in actions)


def oracle_function():
    """The rule-based judge of procedural motions, :func:`easytune_lab.eval.oracle.oracle_accuracy`."""
    return oracle_accuracy


def features_to_joints(features: np.ndarray) -> np.ndarray:
    return np.asarray(recover_from_ric(np.asarray(features, dtype=np.float32)))


def oracle_check(run_dir: str | Path, data_dir: str | Path, num: int = 24, split: str = "test", seed: int = 0,
                 device: str = "cpu") -> dict:
    """Rule-based oracle accuracy (:func:`easytune_lab.eval.oracle.oracle_accuracy`) of generations for the
    first ``num`` motions of a procedural ``split`` (first caption, ground-truth length rounded down to a
    multiple of 4), next to the same score of the ground-truth motions themselves."""
    actions = load_actions(data_dir)
    if actions is None:
        raise FileNotFoundError(f"{data_dir}: no attributes.jsonl (not procedural data)")
    gen = load_generator(run_dir, device)
    ids = [m for m in read_split(data_dir, split) if m in actions][:num]
    texts, lengths, gt = [], [], []
    for motion_id in ids:
        feats, captions = read_motion(data_dir, motion_id)
        n = min(feats.shape[0], gen.max_frames) // 4 * 4
        texts.append(captions[0])
        lengths.append(n)
        gt.append(features_to_joints(feats[:n]))
    start = time.perf_counter()
    motions = gen.generate(texts, lengths, seed=seed)
    seconds = time.perf_counter() - start
    claims = [actions[m] for m in ids]
    return {"split": split, "motions": len(ids), "seconds": round(seconds, 1),
            "generated": oracle_accuracy([features_to_joints(m) for m in motions], claims),
            "ground_truth": oracle_accuracy(gt, claims),
            "shuffled_claims": oracle_accuracy([features_to_joints(m) for m in motions], claims[1:] + claims[:1])}


# ------------------------------------------------------------------------------------------------------ protocol


def complete_rows(n: int, config: ProtocolConfig) -> int:
    """Rows that count for FID and Diversity: the complete groups (``t2m``, T2M's ``drop_last``) or all (``legacy``)."""
    return (n // config.group_size) * config.group_size if config.t2m else n


def replication_metrics(text_emb: np.ndarray, motion_emb: np.ndarray, gt_emb: np.ndarray, config: ProtocolConfig,
                        rng: np.random.Generator) -> dict[str, float]:
    """All embedding metrics of one replication (rows already in evaluation order)."""
    top = M.r_precision(text_emb, motion_emb, top_k=3, group_size=config.group_size)
    used = motion_emb[: complete_rows(len(motion_emb), config)]
    return {
        "r_precision_top1": float(top[0]), "r_precision_top2": float(top[1]), "r_precision_top3": float(top[2]),
        "fid": M.frechet_distance(gt_emb, used),
        "mm_dist": M.matching_score(text_emb, motion_emb, group_size=config.group_size),
        "diversity": M.diversity(used, times=min(config.diversity_times, len(used)), rng=rng),
    }


def reference_embeddings(ev: LoadedEvaluator, gt: GroundTruth, config: ProtocolConfig, rep_seed: int) -> np.ndarray:
    """The ground-truth embeddings FID compares against: ``t2m``, a second draw of the split (its own shuffle,
    captions and crops; complete groups only), as T2M iterates its ground-truth loader again; ``legacy``, every
    clip's start crop."""
    if not config.t2m:
        return embed_motions(ev, gt.motions, normalised=False)
    rows = gt.rows(REFERENCE_SEED + rep_seed, crop="t2m", unit_length=config.unit_length)
    motions = rows.gt_motions[: complete_rows(len(rows), config)]
    return embed_motions(ev, motions, normalised=False, pad_to=config.max_motion_length)


REFERENCE_SEED = 2**31  # offset of the FID reference draw's seed (kept apart from every replication's own)


def evaluate(ev: LoadedEvaluator, gt: GroundTruth, source: MotionSource, config: ProtocolConfig,
             mm_generate: Generator | None = None,
             actions: dict | None = None, oracle=None, progress: bool = False) -> dict:
    """Run ``config.replications`` replications of the protocol on motions from ``source``.

    Returns ``{metric: {"mean", "ci95"}}`` for :data:`METRIC_KEYS`, plus ``multimodality`` when ``mm_generate``
    is given and ``oracle_accuracy`` when ``actions`` and ``oracle`` are, and ``per_replication`` values.
    """
    if len(gt.motions) < config.group_size:
        raise UserError(f"--split {config.split}: {len(gt.motions)} clips, fewer than one R-Precision group of "
                        f"{config.group_size}")
    pad_to = config.max_motion_length if config.t2m else None
    gt_emb = None if config.t2m else reference_embeddings(ev, gt, config, 0)
    per_rep: list[dict[str, float]] = []
    for r in tqdm(range(config.replications), desc="eval", unit="rep", disable=not progress):
        rep_seed = config.seed * 1000 + r
        rows = gt.rows(rep_seed, crop=config.protocol, unit_length=config.unit_length)
        motions = list(source(rows.captions, rows.lengths, rows))
        if len(motions) != len(rows):
            raise UserError(f"motion source returned {len(motions)} motions for {len(rows)} rows")
        text_emb = embed_text_tensors(ev, rows.token_ids, rows.pos_one_hot, rows.sent_lens)
        motion_emb = embed_motions(ev, motions, lengths=[len(m) for m in motions], normalised=False, pad_to=pad_to)
        ref_emb = gt_emb if gt_emb is not None else reference_embeddings(ev, gt, config, rep_seed)
        rng = np.random.default_rng((rep_seed, 3))
        values = replication_metrics(text_emb, motion_emb, ref_emb, config, rng)
        if mm_generate is not None:
            k = min(config.mm_texts, len(rows))
            texts = [c for c in rows.captions[:k] for _ in range(config.mm_repeats)]
            lengths = np.repeat(rows.lengths[:k], config.mm_repeats)
            mm_motions = list(mm_generate(texts, lengths, rep_seed + 10**6))
            mm_emb = embed_motions(ev, mm_motions, lengths=[len(m) for m in mm_motions], normalised=False,
                                   pad_to=pad_to)
            mm_emb = mm_emb.reshape(k, config.mm_repeats, -1)
            values["multimodality"] = M.multimodality(mm_emb, times=min(config.mm_times, config.mm_repeats), rng=rng)
        if actions is not None and oracle is not None:
            ids = [clip_motion_id(name) for name in rows.motion_ids]
            keep = [i for i, mid in enumerate(ids) if mid in actions]
            if keep:
                result = oracle([features_to_joints(motions[i]) for i in keep], [actions[ids[i]] for i in keep])
                values["oracle_accuracy"] = float(result["overall"])
        per_rep.append(values)
    summary = {key: M.mean_ci95([v[key] for v in per_rep]) for key in per_rep[0]}
    summary["per_replication"] = per_rep
    return summary


def clip_motion_id(clip_name: str) -> str:
    """``<id>@a-b`` -> ``<id>`` (sub-clip names carry their frame range)."""
    return clip_name.split("@", 1)[0]
