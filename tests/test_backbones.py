"""Backbone networks: masking, text dropping, shapes, text tokenisation, local-only pretrained encoders."""

import pytest
import torch

from easytune_lab.diffusion.backbone import Condition, frame_mask
from easytune_lab.diffusion.denoiser import MDMBackbone, mdm_profile
from easytune_lab.diffusion.latent import MLDBackbone, mld_profile
from easytune_lab.diffusion.trajectory import sample
from easytune_lab.diffusion.text_encoder import (TextConditioner, TextEncoderConfig, build_text_vocabulary,
                                                 tokenize)
from easytune_lab.errors import UserError

CAPTIONS = ["a person walks forward", "someone jumps twice", "a man waves his left hand"]
VOCAB = build_text_vocabulary(CAPTIONS)


# these tests build float32 models: keep them independent of a default dtype set elsewhere
pytestmark = pytest.mark.usefixtures("float32_default")



def _mdm(dim=12):
    torch.manual_seed(0)
    return MDMBackbone(mdm_profile("smoke", dim).model, VOCAB).eval()


def _mld(dim=12):
    torch.manual_seed(0)
    return MLDBackbone(mld_profile("smoke", dim).model, VOCAB).eval()


def test_tokenize_frames_sentences_and_maps_unknown_words():
    ids, mask = tokenize(["A person walks!", "zebra"], VOCAB, max_words=4)
    assert ids.shape == (2, 6)
    assert ids[0, 0] == VOCAB.sos_id and ids[0, 4] == VOCAB.eos_id and mask[0].sum() == 5
    assert VOCAB.decode(ids[0].tolist()) == ["a", "person", "walks"]
    assert ids[1, 1] == VOCAB.unk_id and mask[1].sum() == 3
    assert VOCAB.itos[4] == "a"  # the most frequent word first ("a" appears twice)


def test_mdm_padding_does_not_leak_and_dropped_text_ignores_the_caption():
    model = _mdm()
    lengths = [8, 5]
    cond = model.condition(CAPTIONS[:2], lengths)
    x = torch.randn(2, 8, 12, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        out = model.denoiser(x, t, cond)
        x2 = x.clone()
        x2[1, 5:] = 100.0  # change only the padded frames of item 1
        out2 = model.denoiser(x2, t, cond)
        assert out.shape == (2, 8, 12)
        assert torch.allclose(out[1, :5], out2[1, :5], atol=1e-5)
        assert torch.equal(out[0], out2[0])
        other = model.condition(CAPTIONS[1:], lengths)
        assert not torch.allclose(model.denoiser(x, t, other), out)
        assert torch.equal(model.denoiser(x, t, other, drop_text=True), model.denoiser(x, t, cond, drop_text=True))


def test_condition_dropout_zeroes_only_dropped_items():
    cond = Condition(text=torch.ones(3, 4), mask=frame_mask([2, 3, 1]))
    dropped = cond.drop_text(torch.tensor([True, False, True]))
    assert dropped.text.sum(1).tolist() == [4.0, 0.0, 4.0]
    assert dropped.lengths.tolist() == [2, 3, 1]


def test_mld_vae_masks_and_latent_denoiser_shapes():
    model = _mld()
    mask = frame_mask([8, 4])
    x = torch.randn(2, 8, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mu, logvar = model.vae.encode(x, mask)
        assert mu.shape == (2, 1, 16) and logvar.shape == (2, 1, 16)
        x2 = x.clone()
        x2[1, 4:] = -50.0
        assert torch.allclose(model.vae.encode(x2, mask)[0], mu, atol=1e-5)
        rec = model.vae.decode(mu, mask)
        assert rec.shape == (2, 8, 12) and torch.all(rec[1, 4:] == 0)
        cond = model.condition(CAPTIONS[:2], [8, 4])
        assert model.sample_shape(cond) == (2, 1, 16)
        eps = model.denoiser(torch.randn(2, 1, 16), torch.tensor([3, 900]), cond)
        assert eps.shape == (2, 1, 16)
        out = sample(model.predictor(), model.sample_shape(cond), model.schedule, 3, cond, "ddim", guidance=7.5,
                     generator=torch.Generator().manual_seed(0))
        assert model.decode(out, cond).shape == (2, 8, 12)
    assert model.predictor().prediction == "eps" and _mdm().predictor().prediction == "x0"


def test_mld_stages_split_parameters():
    model = _mld()
    vae = {id(p) for p in model.stage_parameters("vae")}
    den = {id(p) for p in model.stage_parameters("denoiser")}
    assert vae and den and not (vae & den)
    assert vae | den == {id(p) for p in model.parameters()}


def test_pretrained_text_encoder_is_local_only(tmp_path):
    with pytest.raises(UserError, match="not found"):
        TextConditioner(TextEncoderConfig(kind="pretrained", pretrained_path=str(tmp_path / "missing")), VOCAB)
    with pytest.raises(UserError, match="config.json"):
        TextConditioner(TextEncoderConfig(kind="pretrained", pretrained_path=str(tmp_path)), VOCAB)
    with pytest.raises(UserError, match="unknown kind"):
        TextConditioner(TextEncoderConfig(kind="clip"), VOCAB)


def _lcm():
    from easytune_lab.diffusion.consistency import LCMBackbone, lcm_profile

    torch.manual_seed(0)
    config = lcm_profile("smoke", 12).model
    config.mld = mld_profile("smoke", 12).model
    return LCMBackbone(config, VOCAB).eval()


def test_lcm_consistency_boundary_grid_and_ema():
    model = _lcm()
    assert model.grid()[:2] == [19, 39] and model.grid()[-1] == 999 and len(model.grid()) == 50
    cond = model.condition(CAPTIONS[:2], [8, 4])
    z = torch.randn(2, 1, 16)
    with torch.no_grad():
        assert torch.equal(model.consistency(model.student, z, torch.tensor([-1, -1]), cond), z)  # f(z, 0) = z
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.target.parameters()]
    model.after_step("distill")
    for b, p_t, p in zip(before, model.target.parameters(), model.student.parameters()):
        assert torch.allclose(p_t, 0.95 * b + 0.05 * p, atol=1e-6)
    params = {id(p) for p in model.stage_parameters("distill")}
    assert params == {id(p) for p in model.student.parameters()}
    assert not any(p.requires_grad for p in model.teacher.parameters())
