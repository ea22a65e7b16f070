"""Loader, captions and vocabulary of easytune_lab.data (T2M / HumanML3D conventions)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from easytune_lab.data.humanml import (SKELETONS, HumanMLDataset, collate_motions, denormalise, infer_skeleton,
                                       load_mean_std, motion_clips, normalise, read_motion)
from easytune_lab.data.text import (POS_CATEGORIES, POS_INDEX, Caption, CaptionError, Token, Vocabulary,
                                    parse_caption_file, parse_caption_line)
from easytune_lab.errors import UserError
from easytune_lab.io import write_npy, write_text
from helpers import CAPTION_TEMPLATES, small_dataset, wrap_fixture, write_random_dataset

FIXTURE_ID = "012314"
THREE_CAPTIONS = [f"{text}#{tokens}#0.0#0.0" for text, tokens in CAPTION_TEMPLATES[:3]]


@pytest.fixture()
def fixture_root(fixture_dir, tmp_path):
    return wrap_fixture(fixture_dir, tmp_path / "fx", captions=THREE_CAPTIONS)


# ------------------------------------------------------------------------------------ the real sample

def test_real_fixture_loads_normalised_and_cropped(fixture_dir, fixture_root):
    raw = np.load(fixture_dir / "new_joint_vecs" / f"{FIXTURE_ID}.npy")
    mean, std = np.load(fixture_dir / "Mean.npy"), np.load(fixture_dir / "Std.npy")
    assert raw.shape == (170, 263)

    ds = HumanMLDataset(fixture_root, "train", mode="eval")
    assert ds.skeleton == "t2m" and len(ds) == 1
    item = ds[0]
    assert item.length == 168 and item.length % 4 == 0           # 170 frames -> multiple of 4, from the start
    assert item.features.shape == (168, 263) and item.features.dtype == torch.float32
    np.testing.assert_allclose(item.features.numpy(), (raw[:168] - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.denormalise(item.features).numpy(), raw[:168], rtol=1e-5, atol=1e-4)

    feats, captions = read_motion(fixture_root, FIXTURE_ID)
    np.testing.assert_array_equal(feats, raw)
    assert captions == [c.split("#")[0] for c in THREE_CAPTIONS]
    feats, captions = read_motion(fixture_dir, FIXTURE_ID)  # the bare fixture has no texts/
    assert feats.shape == (170, 263) and captions == []


def test_real_fixture_train_crop_is_a_unit_multiple_at_a_random_offset(fixture_dir, fixture_root):
    raw = np.load(fixture_dir / "new_joint_vecs" / f"{FIXTURE_ID}.npy")
    mean, std = load_mean_std(fixture_root)
    ds = HumanMLDataset(fixture_root, "train", mode="train")
    torch.manual_seed(0)
    offsets = set()
    for _ in range(40):
        item = ds[0]
        assert item.length == 168
        denorm = denormalise(item.features.numpy(), mean, std)
        matches = [o for o in range(0, 3) if np.allclose(denorm, raw[o:o + 168], atol=1e-4)]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert offsets == {0, 1, 2}  # 170 - 168 + 1 possible offsets, all drawn in 40 tries


def test_collated_mask_matches_lengths(fixture_root, tmp_path):
    rand_root = write_random_dataset(tmp_path / "rand", num_motions=10, seed=3)
    items = [HumanMLDataset(fixture_root, "train", mode="eval")[0]]
    rand = HumanMLDataset(rand_root, "train", mode="eval")
    items += [rand[i] for i in range(4)]
    batch = collate_motions(items)
    lengths = [it.length for it in items]
    assert batch.features.shape == (5, max(lengths), 263)
    assert batch.lengths.tolist() == lengths
    assert batch.mask.dtype == torch.bool
    for b, n in enumerate(lengths):
        assert batch.mask[b, :n].all() and not batch.mask[b, n:].any()
        torch.testing.assert_close(batch.features[b, :n], items[b].features)
        assert torch.count_nonzero(batch.features[b, n:]) == 0
    assert batch.token_ids.shape == (5, 22) and batch.pos_one_hot.shape == (5, 22, 15)
    assert batch.sent_lens.tolist() == [it.sent_len for it in items]
    assert collate_motions(items, pad_to=210).features.shape[1] == 210
    with pytest.raises(ValueError):
        collate_motions(items, pad_to=10)


# ------------------------------------------------------------------------------------ modes

def test_eval_mode_is_deterministic(tmp_path_factory):
    root = small_dataset(tmp_path_factory)
    a = HumanMLDataset(root, "test", mode="eval", seed=7)
    b = HumanMLDataset(root, "test", mode="eval", seed=7)
    assert len(a) == len(b) > 0
    torch.manual_seed(1)
    first = [a[i] for i in range(len(a))]
    torch.manual_seed(2)
    for i, item in enumerate(first):
        other = b[i]
        assert item.caption == other.caption and item.motion_id == other.motion_id
        assert torch.equal(item.features, other.features) and torch.equal(item.token_ids, other.token_ids)
        assert torch.equal(item.features, a[i].features)


def test_train_mode_covers_several_captions(fixture_root):
    ds = HumanMLDataset(fixture_root, "train", mode="train")
    torch.manual_seed(0)
    seen = [ds[0].caption for _ in range(60)]
    counts = {c: seen.count(c) for c in set(seen)}
    assert set(counts) == {c.split("#")[0] for c in THREE_CAPTIONS}
    assert min(counts.values()) >= 8  # roughly uniform over the three captions (expected 20 each)
    eval_ds = HumanMLDataset(fixture_root, "train", mode="eval")
    assert len({eval_ds[0].caption for _ in range(10)}) == 1


# ------------------------------------------------------------------------------------ clips and lengths

def test_motion_clips_follow_t2m_subclip_rule():
    spec = SKELETONS["t2m"]
    whole = parse_caption_line("a person walks.#a/DET person/NOUN walk/VERB#0.0#0.0")
    sub = parse_caption_line("a person waves.#a/DET person/NOUN wave/VERB#1.0#4.5")        # frames 20-90
    short = parse_caption_line("a person nods.#a/DET person/NOUN nod/VERB#1.0#2.0")        # 20 frames: dropped
    clips = motion_clips("m", 150, [whole, sub, short], spec)
    assert [(c.start, c.length, c.name) for c in clips] == [(0, 150, "m"), (20, 70, "m@20-90")]
    assert clips[0].captions == [whole] and clips[1].captions == [sub]
    assert motion_clips("m", 200, [whole], spec) == []          # T2M keeps [40, 200)
    assert len(motion_clips("m", 199, [whole], spec)) == 1
    assert motion_clips("m", 39, [whole], spec) == []
    assert len(motion_clips("m", 30, [whole], SKELETONS["kit"])) == 1  # KIT keeps [24, 200)
    kit_sub = motion_clips("m", 150, [sub], SKELETONS["kit"])    # 12.5 fps: frames 12-56
    assert [(c.start, c.length) for c in kit_sub] == [(12, 44)]


def test_dataset_drops_motions_out_of_range_and_keeps_lengths_in_range(tmp_path):
    root = write_random_dataset(tmp_path / "d", num_motions=10, seed=1, subclip_every=0)
    caption = f"{CAPTION_TEMPLATES[1][0]}#{CAPTION_TEMPLATES[1][1]}#0.0#0.0\n"
    for motion_id, length in (("000000", 30), ("000001", 250)):
        write_npy(root / "new_joint_vecs" / f"{motion_id}.npy", np.ones((length, 263), np.float32))
        write_text(root / "texts" / f"{motion_id}.txt", caption)
    ds = HumanMLDataset(root, "train", mode="eval")
    assert ds.dropped_ids == ["000000", "000001"]
    assert len(ds) == 4 and all(40 <= ds[i].length < 200 and ds[i].length % 4 == 0 for i in range(len(ds)))


def test_kit_width_is_inferred_with_its_minimum_length(tmp_path):
    root = write_random_dataset(tmp_path / "kit", num_motions=10, dim=251, min_len=24, max_len=40, seed=2,
                                subclip_every=0)
    ds = HumanMLDataset(root, "train", mode="eval")
    assert ds.skeleton == "kit" and ds.spec.fps == 12.5
    assert len(ds) == 6 and all(ds[i].features.shape[1] == 251 for i in range(len(ds)))
    with pytest.raises(UserError, match="Mean.npy"):
        HumanMLDataset(root, "train", skeleton="t2m")


def test_infer_skeleton_and_normalise_roundtrip():
    assert infer_skeleton(263) == "t2m" and infer_skeleton(251) == "kit"
    with pytest.raises(UserError, match="100"):
        infer_skeleton(100)
    rng = np.random.default_rng(0)
    x, mean, std = rng.normal(size=(7, 263)), rng.normal(size=263), rng.uniform(0.5, 2, size=263)
    np.testing.assert_allclose(denormalise(normalise(x, mean, std), mean, std), x)
    xt = torch.from_numpy(x)
    torch.testing.assert_close(normalise(xt, mean, std), torch.from_numpy((x - mean) / std))


# ------------------------------------------------------------------------------------ read_motion errors

def test_read_motion_errors_name_the_file(fixture_root):
    with pytest.raises(UserError, match="nosuch.npy"):
        read_motion(fixture_root, "nosuch")
    with pytest.raises(UserError, match="not a valid motion id"):
        read_motion(fixture_root, "../012314")
    write_text(fixture_root / "new_joint_vecs" / "broken.npy", "not an npy file")
    with pytest.raises(UserError, match="broken.npy: not an .npy file"):
        read_motion(fixture_root, "broken")
    write_npy(fixture_root / "new_joint_vecs" / "flat.npy", np.zeros(10, np.float32))
    with pytest.raises(UserError, match="flat.npy"):
        read_motion(fixture_root, "flat")
    write_npy(fixture_root / "new_joint_vecs" / "nan.npy", np.full((50, 263), np.nan, np.float32), allow_nonfinite=True)  # damaged on purpose
    with pytest.raises(UserError, match="nan.npy: 13150 NaN"):
        read_motion(fixture_root, "nan")
    write_text(fixture_root / "texts" / f"{FIXTURE_ID}.txt", "a caption without tags\n")
    with pytest.raises(UserError, match=r"012314.txt: line 1"):
        read_motion(fixture_root, FIXTURE_ID)


# ------------------------------------------------------------------------------------ captions

def test_parse_caption_line_fields_and_tags():
    cap = parse_caption_line("a man kicks.#a/DET man/NOUN kick/VERB#1.5#4.25")
    assert cap.text == "a man kicks." and cap.words == ["a", "man", "kick"]
    assert cap.tokens[1] == Token("man", "NOUN") and (cap.start, cap.end) == (1.5, 4.25) and not cap.whole
    assert cap.clip_frames(20) == (30, 85)
    assert parse_caption_line("a.#a/DET#nan#nan").whole  # T2M reads a NaN tag as 0.0
    assert parse_caption_line(cap.to_line()) == cap
    assert parse_caption_line("up/down.#up/down/ADV#0.0#0.0").tokens == (Token("up/down", "ADV"),)
    ok = parse_caption_line("x#x/NOUN#0#0")
    assert ok.whole and ok.clip_frames(20) == (0, 0)


@pytest.mark.parametrize("line, why", [
    ("", "empty line"),
    ("a man kicks.", "expected 4"),
    ("a man kicks.#a/DET man/NOUN#0.0", "expected 4"),
    ("#a/DET#0.0#0.0", "empty caption"),
    ("a man.##0.0#0.0", "no word/POS"),
    ("a man.#a/DET man#0.0#0.0", "'man' is not word/POS"),
    ("a man.#a/DET man/#0.0#0.0", "not word/POS"),
    ("a man.#a/DET#zero#0.0", "start tag 'zero'"),
    ("a man.#a/DET#0.0#-1", "end tag '-1'"),
    ("a man.#a/DET#3.0#2.0", "not after its start"),
])
def test_malformed_caption_lines_raise_with_location(line, why):
    with pytest.raises(CaptionError, match=f"texts/x.txt: line 4: .*{why}"):
        parse_caption_line(line, where="texts/x.txt: line 4")


def test_parse_caption_file_reports_line_numbers(tmp_path):
    path = tmp_path / "t.txt"
    write_text(path, "a.#a/DET#0.0#0.0\nb.#b/NOUN#0.0#0.0\n\n")
    assert [c.text for c in parse_caption_file(path)] == ["a.", "b."]
    write_text(path, "a.#a/DET#0.0#0.0\n\nb.#b/NOUN#0.0#0.0\n")
    with pytest.raises(CaptionError, match="t.txt: line 2: empty line"):
        parse_caption_file(path)
    write_text(path, "   \n")
    with pytest.raises(CaptionError, match="t.txt: no captions"):
        parse_caption_file(path)


# ------------------------------------------------------------------------------------ vocabulary

def _caps(*lines: str) -> list[Caption]:
    return [parse_caption_line(line) for line in lines]


def test_vocabulary_order_encode_and_pos_categories():
    vocab = Vocabulary.build(_caps("a.#a/DET person/NOUN walk/VERB left/ADJ#0#0",
                                   "b.#a/DET person/NOUN and/CCONJ quickly/ADV#0#0"))
    assert vocab.itos[:4] == ["<pad>", "<unk>", "<sos>", "<eos>"]
    assert vocab.itos[4:6] == ["a", "person"]  # most frequent first
    assert len(vocab) == 4 + 6

    tokens = _caps("c.#a/DET person/NOUN walk/VERB left/ADJ and/CCONJ zebra/NOUN 3/NUM#0#0")[0].tokens
    ids, pos, sent_len = vocab.encode(tokens, max_text_len=10)
    assert sent_len == 9 and ids.shape == (12,) and pos.shape == (12, len(POS_CATEGORIES))
    assert ids[0] == vocab.sos_id and ids[8] == vocab.eos_id and (ids[9:] == vocab.pad_id).all()
    assert ids[6] == vocab.unk_id and vocab.decode(ids) == ["a", "person", "walk", "left", "and", "<unk>", "<unk>"]
    expected = ["OTHER", "DET", "NOUN", "Act_VIP", "Loc_VIP", "OTHER", "OTHER", "OTHER", "OTHER"]
    assert [POS_CATEGORIES[i] for i in pos[:9].argmax(1)] == expected  # CCONJ and unknown words -> OTHER
    assert (pos[:9].sum(1) == 1).all() and (pos[9:] == 0).all()
    assert POS_INDEX["OTHER"] == 14 and POS_INDEX["Loc_VIP"] == 9 and POS_INDEX["VERB"] == 0


def test_encode_crops_long_sentences_like_t2m():
    vocab = Vocabulary(["w"])
    tokens = [Token("w", "NOUN")] * 25
    ids, pos, sent_len = vocab.encode(tokens, max_text_len=20)
    assert sent_len == 22 and ids[0] == vocab.sos_id and ids[-1] == vocab.eos_id
    assert (ids[1:21] == vocab.id("w")).all() and pos.sum() == 22


def test_vocabulary_save_load_roundtrip_and_errors(tmp_path):
    vocab = Vocabulary.build(_caps("a.#a/DET person/NOUN walk/VERB#0#0"))
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded == vocab and loaded.id("walk") == vocab.id("walk") != vocab.unk_id
    (tmp_path / "bad.json").write_text(json.dumps({"format": "easytune-vocabulary", "words": ["a", "b"]}))
    with pytest.raises(UserError, match="bad.json"):
        Vocabulary.load(tmp_path / "bad.json")
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(UserError, match="garbage.json"):
        Vocabulary.load(tmp_path / "garbage.json")


def test_eval_split_uses_the_train_vocabulary(tmp_path_factory):
    root = small_dataset(tmp_path_factory)
    train = HumanMLDataset(root, "train", mode="eval")
    test = HumanMLDataset(root, "test", mode="eval")
    assert test.vocab == train.vocab and len(train.vocab) > 4
    assert not math.isnan(float(test[0].features.sum()))


def test_torch_dataloader_batches_cover_the_split(tmp_path_factory):
    from torch.utils.data import DataLoader

    from easytune_lab.data.humanml import MotionBatch

    ds = HumanMLDataset(small_dataset(tmp_path_factory), "val", mode="eval")
    batches = list(DataLoader(ds, batch_size=5, shuffle=False, collate_fn=collate_motions))
    assert all(isinstance(b, MotionBatch) for b in batches)
    assert sum(len(b) for b in batches) == len(ds)
    assert [n for b in batches for n in b.motion_ids] == [c.name for c in ds.clips]
    assert all(int(b.mask.sum()) == int(b.lengths.sum()) for b in batches)


def test_default_vocabulary_is_the_same_for_every_split_even_with_dropped_motions(tmp_path):
    root = write_random_dataset(tmp_path / "d", num_motions=10, seed=4, subclip_every=0)
    write_npy(root / "new_joint_vecs" / "000000.npy", np.ones((30, 263), np.float32))   # dropped: too short
    write_text(root / "texts" / "000000.txt", "a zebra trots.#a/DET zebra/NOUN trot/VERB#0.0#0.0\n")
    train = HumanMLDataset(root, "train", mode="eval")
    assert train.dropped_ids == ["000000"] and "zebra" in train.vocab
    assert HumanMLDataset(root, "test", mode="eval").vocab == train.vocab
