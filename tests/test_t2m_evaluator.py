"""The published T2M evaluator: a checkpoint in the published format loads and embeds as the reference architecture.

The reference below is written from the published layer shapes only (key names and shapes of ``finest.tar``) with
functional ops — convolutions, a hand-written GRU recursion, layer norm — independent of ``easytune_lab.eval.t2m``.
"""

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from easytune_lab.cli import main
from easytune_lab.errors import UserError
from easytune_lab.eval.evaluator import embed_motions, embed_texts
from easytune_lab.eval.t2m import load_t2m_evaluator
from helpers import write_random_dataset

# the published sizes: dim_movement_enc_hidden, dim_movement_latent, dim_motion_hidden, dim_word, dim_text_hidden,
# dim_coemb_hidden, dim_pos_ohot
HID, LAT, MOT, WORD, TXT, EMB, POS = 512, 512, 1024, 300, 512, 512, 15
META_RUN = {"t2m": "Comp_v6_KLD01", "kit": "Comp_v6_KLD005"}
DIMS = {"t2m": 263, "kit": 251}
GLOVE_WORDS = ["unk", "sos", "eos", "a", "person", "walk", "forward", "slowly", "left", "arm"]
# T2M's POS_enumerator order; VIP words take their list's category
POS_ORDER = ["VERB", "NOUN", "DET", "ADP", "NUM", "AUX", "PRON", "ADJ", "ADV", "Loc_VIP", "Body_VIP", "Obj_VIP",
             "Act_VIP", "Desc_VIP", "OTHER"]
VIP = {"walk": "Act_VIP", "forward": "Loc_VIP", "left": "Loc_VIP", "slowly": "Desc_VIP", "arm": "Body_VIP"}


def bigru_shapes(in_dim, hidden, out_dim):
    shapes = {"input_emb.weight": (hidden, in_dim), "input_emb.bias": (hidden,), "hidden": (2, 1, hidden),
              "output_net.0.weight": (hidden, 2 * hidden), "output_net.0.bias": (hidden,),
              "output_net.1.weight": (hidden,), "output_net.1.bias": (hidden,),
              "output_net.3.weight": (out_dim, hidden), "output_net.3.bias": (out_dim,)}
    for suffix in ("", "_reverse"):
        shapes.update({f"gru.weight_ih_l0{suffix}": (3 * hidden, hidden), f"gru.weight_hh_l0{suffix}": (3 * hidden, hidden),
                       f"gru.bias_ih_l0{suffix}": (3 * hidden,), f"gru.bias_hh_l0{suffix}": (3 * hidden,)})
    return shapes


def published_shapes(dim_pose):
    return {
        "movement_encoder": {"main.0.weight": (HID, dim_pose - 4, 4), "main.0.bias": (HID,),
                             "main.3.weight": (LAT, HID, 4), "main.3.bias": (LAT,),
                             "out_net.weight": (LAT, LAT), "out_net.bias": (LAT,)},
        "text_encoder": {"pos_emb.weight": (WORD, POS), "pos_emb.bias": (WORD,), **bigru_shapes(WORD, TXT, EMB)},
        "motion_encoder": bigru_shapes(LAT, MOT, EMB),
    }


def write_evaluator_dir(root, dataset="t2m", seed=0):
    """DIR as the download scripts unpack it, with random weights in the published format."""
    g = torch.Generator().manual_seed(seed)
    state = {module: {k: 0.05 * torch.randn(shape, generator=g) for k, shape in keys.items()}
             for module, keys in published_shapes(DIMS[dataset]).items()}
    state.update(epoch=97, iter=12345, opt_text_encoder={"state": {}, "param_groups": []})
    ckpt = root / dataset / "text_mot_match" / "model" / "finest.tar"
    ckpt.parent.mkdir(parents=True)
    torch.save(state, ckpt)
    rng = np.random.default_rng(seed)
    meta = root / dataset / META_RUN[dataset] / "meta"
    meta.mkdir(parents=True)
    np.save(meta / "mean.npy", rng.normal(size=DIMS[dataset]).astype(np.float32))
    np.save(meta / "std.npy", rng.uniform(0.5, 2.0, size=DIMS[dataset]).astype(np.float32))
    glove = root / "glove"
    glove.mkdir(exist_ok=True)
    order = rng.permutation(len(GLOVE_WORDS))  # rows in another order than the word list
    vectors = np.zeros((len(GLOVE_WORDS), WORD), np.float32)
    for word, row in zip(GLOVE_WORDS, order):
        vectors[row] = rng.normal(size=WORD)
    np.save(glove / "our_vab_data.npy", vectors)
    (glove / "our_vab_words.pkl").write_bytes(pickle.dumps(GLOVE_WORDS))
    (glove / "our_vab_idx.pkl").write_bytes(pickle.dumps({w: int(r) for w, r in zip(GLOVE_WORDS, order)}))
    return state, {w: vectors[r] for w, r in zip(GLOVE_WORDS, order)}


# ------------------------------------------------------------------------------- reference (functional ops)


def gru_last(x, p, prefix_hidden, suffix, h0):
    """Final hidden state of one GRU direction over the rows of x (T, H), PyTorch's gate equations."""
    w_ih, w_hh = p[f"gru.weight_ih_l0{suffix}"].double(), p[f"gru.weight_hh_l0{suffix}"].double()
    b_ih, b_hh = p[f"gru.bias_ih_l0{suffix}"].double(), p[f"gru.bias_hh_l0{suffix}"].double()
    h = h0
    for x_t in x:
        gi, gh = w_ih @ x_t + b_ih, w_hh @ h + b_hh
        r = torch.sigmoid(gi[:prefix_hidden] + gh[:prefix_hidden])
        z = torch.sigmoid(gi[prefix_hidden:2 * prefix_hidden] + gh[prefix_hidden:2 * prefix_hidden])
        n = torch.tanh(gi[2 * prefix_hidden:] + r * gh[2 * prefix_hidden:])
        h = (1 - z) * n + z * h
    return h


def bigru_reference(x, steps, p, hidden):
    """x (T, in) -> output_net([h_fwd, h_bwd]) over the first ``steps`` rows."""
    e = x[:steps].double() @ p["input_emb.weight"].double().T + p["input_emb.bias"].double()
    h0 = p["hidden"].double()
    fwd = gru_last(e, p, hidden, "", h0[0, 0])
    bwd = gru_last(e.flip(0), p, hidden, "_reverse", h0[1, 0])
    y = torch.cat([fwd, bwd]) @ p["output_net.0.weight"].double().T + p["output_net.0.bias"].double()
    y = F.layer_norm(y, (hidden,), p["output_net.1.weight"].double(), p["output_net.1.bias"].double())
    y = F.leaky_relu(y, 0.2)
    return y @ p["output_net.3.weight"].double().T + p["output_net.3.bias"].double()


def motion_reference(raw, mean, std, state):
    """T2M: normalise, zero-pad to 196, drop the 4 foot contacts, movement convs, GRU over length // 4 codes."""
    n = len(raw)
    x = torch.zeros(196, raw.shape[1], dtype=torch.float64)
    x[:n] = torch.from_numpy((raw - mean) / std).double()
    mv = {k: v.double() for k, v in state["movement_encoder"].items()}
    h = x[:, :-4].T[None]
    h = F.leaky_relu(F.conv1d(h, mv["main.0.weight"], mv["main.0.bias"], stride=2, padding=1), 0.2)
    h = F.leaky_relu(F.conv1d(h, mv["main.3.weight"], mv["main.3.bias"], stride=2, padding=1), 0.2)
    codes = h[0].T @ mv["out_net.weight"].T + mv["out_net.bias"]
    return bigru_reference(codes, n // 4, state["motion_encoder"], MOT)


def text_reference(tokens, word2vec, state):
    """T2M's WordVectorizer and TextEncoderBiGRUCo on ``word/POS`` tokens framed by sos/eos."""
    rows = []
    for token in ["sos/OTHER", *tokens, "eos/OTHER"]:
        word, pos = token.split("/")
        one_hot = torch.zeros(POS, dtype=torch.float64)
        if word in word2vec:
            vec = word2vec[word]
            category = VIP.get(word, pos if pos in POS_ORDER else "OTHER")
        else:
            vec, category = word2vec["unk"], "OTHER"
        one_hot[POS_ORDER.index(category)] = 1
        p = state["text_encoder"]
        rows.append(torch.from_numpy(vec).double() + p["pos_emb.weight"].double() @ one_hot + p["pos_emb.bias"].double())
    return bigru_reference(torch.stack(rows), len(rows), state["text_encoder"], TXT)


@pytest.mark.parametrize("dataset", ["t2m", "kit"])
def test_published_checkpoint_loads_and_embeds_as_the_reference(tmp_path, dataset):
    state, word2vec = write_evaluator_dir(tmp_path, dataset)
    ev = load_t2m_evaluator(f"{dataset}:{tmp_path}")
    assert ev.config.feature_dim == DIMS[dataset] and ev.manifest["epoch"] == 97
    loaded = {m: getattr(ev.model, m).state_dict() for m in state if m in published_shapes(263)}
    for module, keys in published_shapes(DIMS[dataset]).items():
        assert set(loaded[module]) == set(keys)
        for key in keys:
            assert torch.equal(loaded[module][key], state[module][key]), (module, key)

    rng = np.random.default_rng(1)
    mean, std = np.load(tmp_path / dataset / META_RUN[dataset] / "meta" / "mean.npy"), \
        np.load(tmp_path / dataset / META_RUN[dataset] / "meta" / "std.npy")
    motions = [(mean + std * rng.normal(size=(n, DIMS[dataset]))).astype(np.float32) for n in (196, 60, 41)]
    got = embed_motions(ev, motions, normalised=False, pad_to=196)
    for motion, emb in zip(motions, got):
        want = motion_reference(motion, mean, std, state).numpy()
        np.testing.assert_allclose(emb, want, rtol=1e-4, atol=1e-4)

    line = "a person walks forward slowly.#a/DET person/NOUN walk/VERB forward/ADV slowly/ADV zebra/NOUN left/ADJ#0.0#0.0"
    tokens = line.split("#")[1].split()
    np.testing.assert_allclose(embed_texts(ev, [line])[0], text_reference(tokens, word2vec, state).numpy(),
                               rtol=1e-4, atol=1e-4)


def bad_file_cases(root):
    ckpt = root / "t2m" / "text_mot_match" / "model" / "finest.tar"
    idx = root / "glove" / "our_vab_idx.pkl"

    def wrong_shape():
        state = torch.load(ckpt, weights_only=True)
        state["motion_encoder"]["input_emb.weight"] = torch.zeros(1024, 256)
        torch.save(state, ckpt)

    def renamed_key():
        state = torch.load(ckpt, weights_only=True)
        state["text_encoder"]["pos_embedding.weight"] = state["text_encoder"].pop("pos_emb.weight")
        torch.save(state, ckpt)

    def code_in_pickle():
        idx.write_bytes(pickle.dumps({w: np.int64(i) for i, w in enumerate(GLOVE_WORDS)}))

    cases = {
        "missing checkpoint": (lambda: ckpt.unlink(), ckpt, "missing"),
        "not a checkpoint": (lambda: ckpt.write_bytes(b"garbage"), ckpt, "not a loadable"),
        "wrong shape": (wrong_shape, ckpt, "input_emb.weight"),
        "renamed key": (renamed_key, ckpt, "pos_emb.weight"),
        "missing mean": (lambda: (root / "t2m" / "Comp_v6_KLD01" / "meta" / "mean.npy").unlink(),
                         root / "t2m" / "Comp_v6_KLD01" / "meta" / "mean.npy", "missing"),
        "missing words": (lambda: (root / "glove" / "our_vab_words.pkl").unlink(),
                          root / "glove" / "our_vab_words.pkl", "missing"),
        "pickle with globals": (code_in_pickle, idx, "--allow-pickle"),
    }
    assert tuple(cases) == BAD_FILE_CASES
    return cases


BAD_FILE_CASES = ("missing checkpoint", "not a checkpoint", "wrong shape", "renamed key", "missing mean",
                  "missing words", "pickle with globals")


@pytest.mark.parametrize("case", BAD_FILE_CASES)
def test_bad_or_missing_file_is_one_line_naming_it(tmp_path, capsys, case):
    write_evaluator_dir(tmp_path)
    data = write_random_dataset(tmp_path / "data", num_motions=6)
    spoil, path, words = bad_file_cases(tmp_path)[case]
    spoil()
    rc = main(["eval", "--model", "gt", "--evaluator", f"t2m:{tmp_path}", "--data", str(data), "--device", "cpu",
               "--replications", "1", "--out", str(tmp_path / "out.json"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(path) in err and words in err, err
    assert not (tmp_path / "out.json").exists()
    if case == "pickle with globals":  # admitted when the user trusts the file
        ev = load_t2m_evaluator(f"t2m:{tmp_path}", allow_pickle=True)
        assert len(ev.vocab) > len(GLOVE_WORDS)


def test_eval_cli_with_the_published_evaluator(tmp_path):
    write_evaluator_dir(tmp_path)
    data = write_random_dataset(tmp_path / "data", num_motions=60, seed=2)
    out = tmp_path / "gt.json"
    assert main(["eval", "--model", "gt", "--evaluator", f"t2m:{tmp_path}", "--data", str(data), "--split", "train",
                 "--device", "cpu", "--replications", "1", "--out", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert np.isfinite(result["fid"]["mean"]) and 0 <= result["r_precision_top1"]["mean"] <= 1
    assert result["manifest"]["parents"]["evaluator"] == f"t2m:{tmp_path}"
