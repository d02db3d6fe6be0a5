"""A generator without a mapping network (ProGAN, BigGAN, NVAE) is sampled through ``G(z, c, ...)`` alone."""

import numpy as np
import pytest
import torch

from sampling import hub_sampler, samplers, volume
from sampling.synthesis import has_mapping, synthesize


class WholeGenerator(torch.nn.Module):
    """z -> tanh(linear) reshaped to a 1 x 4 x 4 image; truncation scales z; the label adds an offset."""

    def __init__(self, z_dim=6, c_dim=0):
        super().__init__()
        self.z_dim, self.c_dim, self.img_resolution, self.img_channels = z_dim, c_dim, 4, 1
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn([16, z_dim], generator=generator) / z_dim ** 0.5)
        self.embed = torch.nn.Parameter(torch.randn([16, max(c_dim, 1)], generator=generator))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, noise_mode='const'):
        x = (z * truncation_psi) @ self.weight.T
        if self.c_dim:
            x = x + c @ self.embed.T
        return torch.tanh(x).reshape(-1, 1, 4, 4)


def test_has_mapping_tells_stylegan_from_a_whole_generator():
    from helpers import tiny_generator
    assert has_mapping(tiny_generator())
    assert not has_mapping(WholeGenerator())


def test_pixel_space_of_a_whole_generator_is_its_jacobian():
    G = WholeGenerator().eval().requires_grad_(False)
    z = torch.randn([3, G.z_dim], generator=torch.Generator().manual_seed(1))
    f = volume.make_space_fn(G, 'pixel')
    assert f.z_dim == G.z_dim and not f.normalizes_z
    svals = volume.jacobian_singular_values(f, z, method='exact')
    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(lambda v: G(v[None], None).reshape(-1), z[i])
        expected = torch.linalg.svdvals(jac.double())
        torch.testing.assert_close(svals[i].double(), expected, rtol=1e-5, atol=1e-6)


def test_style_space_and_w_scores_need_a_mapping():
    G = WholeGenerator()
    with pytest.raises(ValueError, match='mapping network'):
        volume.make_space_fn(G, 'style')
    with pytest.raises(ValueError, match='mapping network'):
        hub_sampler.score_batch(G, hub_sampler.HubSearch(space='w', batch_size=50, top=3), 0)
    with pytest.raises(samplers.SamplerSpecError, match='space=z'):
        samplers.build('hubness:k=5,t=3,space=w,batch=50', G)
    with pytest.raises(ValueError, match='mapping network'):
        next(synthesize(G, ws=np.zeros([1, 1, 4], np.float32)))


def test_hub_scores_in_z_of_a_whole_generator():
    G = WholeGenerator()
    chunk = hub_sampler.score_batch(G, hub_sampler.HubSearch(space='z', batch_size=50, top=3), 0)
    assert len(chunk) == 3 and 'w' not in chunk
    images = next(synthesize(G, z=chunk.latents, c=chunk.labels))
    assert images.shape == (3, 1, 4, 4)
