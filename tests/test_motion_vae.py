"""The MLD-style motion VAE: frame patches and z-conditioned decoder queries (the ``quick`` profile's options)."""

import dataclasses

import pytest
import torch

from easytune_lab.diffusion.backbone import frame_mask
from easytune_lab.diffusion.latent import MotionVAE, VAEConfig, mld_profile


# these tests build float32 models: keep them independent of a default dtype set elsewhere
pytestmark = pytest.mark.usefixtures("float32_default")


def _vae(**options) -> MotionVAE:
    torch.manual_seed(0)
    config = VAEConfig(latent_tokens=2, latent_dim=8, d_model=32, layers=1, heads=4, ff=64, dropout=0.0, **options)
    return MotionVAE(config, feature_dim=6, max_frames=40).eval()


@pytest.mark.parametrize("options", [{}, {"patch": 3, "z_queries": True}, {"patch": 4}])
def test_vae_ignores_padding_and_writes_zeros_there(options):
    vae = _vae(**options)
    mask = frame_mask([10, 7])  # 10 frames: not a multiple of 3 or 4, so the last patch is partial
    x = torch.randn(2, 10, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mu, logvar = vae.encode(x, mask)
        assert mu.shape == logvar.shape == (2, 2, 8)
        x2 = x.clone()
        x2[1, 7:] = 50.0
        assert torch.allclose(vae.encode(x2, mask)[0], mu, atol=1e-5)
        rec = vae.decode(mu, mask)
        assert rec.shape == (2, 10, 6) and torch.all(rec[1, 7:] == 0)


@pytest.mark.parametrize("options", [{}, {"patch": 4, "z_queries": True}])
def test_decoder_output_depends_on_z_at_every_frame(options):
    vae = _vae(**options)
    mask = frame_mask([12, 12])
    z = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = vae.decode(z, mask)
        b = vae.decode(z.flip(0), mask)
    per_frame = (a - b.flip(0)).abs().amax(-1)
    assert torch.allclose(per_frame, torch.zeros_like(per_frame), atol=1e-6)  # same z, same frames
    assert (a[0] - a[1]).abs().amax(-1).min() > 1e-4  # different z differ at every frame


def test_z_queries_give_the_reconstruction_gradient_a_direct_path_to_z():
    """With ``z_queries`` every query reads z: at initialisation the reconstruction's gradient w.r.t. z is larger
    than through attention to the z tokens alone (the path the decoder of the quick run failed to learn)."""
    mask = frame_mask([16, 16])
    x = torch.randn(2, 16, 6, generator=torch.Generator().manual_seed(3))
    norms = []
    for options in ({"patch": 4}, {"patch": 4, "z_queries": True}):
        vae = _vae(**options)
        z = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(4), requires_grad=True)
        (vae.decode(z, mask) - x).pow(2).mean().backward()
        norms.append(float(z.grad.norm()))
    assert norms[1] > 2 * norms[0]


def test_paper_profile_keeps_mld_vae_and_quick_uses_patches():
    paper = mld_profile("paper").model.vae
    assert (paper.latent_tokens, paper.latent_dim, paper.layers, paper.patch, paper.z_queries) == (1, 256, 9, 1, False)
    quick = mld_profile("quick").model.vae
    assert quick.patch > 1 and quick.z_queries
    assert dataclasses.asdict(mld_profile("smoke").model.vae)["patch"] == 1
