"""StyleGAN2 losses: non-saturating logistic GAN loss, lazy R1 and path-length regularisation.

The training loop runs the loss in *phases* (as NVlabs' loop does):

* ``'Gmain'``: generator loss softplus(-D(G(z))).
* ``'Greg'``: path-length penalty (only when ``pl_weight > 0``).
* ``'Gboth'``: both at once (used when G is not regularised lazily).
* ``'Dmain'``: discriminator loss softplus(D(G(z))) + softplus(-D(x)).
* ``'Dreg'``: R1 penalty gamma/2 * ||grad_x D(x)||^2 on real images.
* ``'Dboth'``: both at once.

Lazy regularisation (StyleGAN2, Karras et al. 2020, appendix B): the regularisers run only every
``interval`` minibatches and the training loop passes ``gain = interval`` so that their average
strength is unchanged.
"""

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils.ops import upfirdn2d
from training import augment as augmentation

PHASES = ('Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth')


class StyleGAN2Loss:
    """Losses of a StyleGAN2 generator ``G`` and discriminator ``D``.

    Parameters
    ----------
    G, D : torch.nn.Module
        The networks being trained (``networks_stylegan2.Generator`` / ``Discriminator``).
    r1_gamma : float, default=10
        Weight of the R1 penalty on real images; 0 disables it.
    style_mixing_prob : float, default=0
        Probability that a minibatch mixes the styles of two latents at a random layer.
    pl_weight : float, default=0
        Weight of the path-length penalty; 0 disables it.
    pl_batch_shrink : int, default=2
        The path-length penalty uses batch_size // pl_batch_shrink samples.
    pl_decay : float, default=0.01
        Decay of the running mean path length.
    blur_init_sigma : float, default=0
        Standard deviation (pixels) of a Gaussian blur applied to every image D sees at the start
        of training, fading linearly to none over ``blur_fade_kimg`` thousand images.
    blur_fade_kimg : float, default=0
    augment : str, optional
        Differentiable augmentation of every image D sees, real and generated (and the R1 penalty is taken
        through it): a comma-separated subset of ``'translation,cutout'``; see ``training/augment.py``.
        None or ``'none'``: no augmentation.
    device : torch.device or None
        Where the running path-length mean lives (default: G's device).
    """

    def __init__(self, G, D, r1_gamma=10, style_mixing_prob=0, pl_weight=0, pl_batch_shrink=2, pl_decay=0.01,
                 blur_init_sigma=0, blur_fade_kimg=0, augment=None, device=None):
        self.G = G
        self.D = D
        self.r1_gamma = r1_gamma
        self.style_mixing_prob = style_mixing_prob
        self.pl_weight = pl_weight
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        self.blur_init_sigma = blur_init_sigma
        self.blur_fade_kimg = blur_fade_kimg
        self.augment_policy = augmentation.parse_policy(augment)
        device = device if device is not None else next(G.parameters()).device
        self.pl_mean = torch.zeros([], device=device)

    def run_G(self, z, c, update_emas=False):
        """Images and the ws that made them; styles of a second latent mix in with style_mixing_prob."""
        ws = self.G.mapping(z, c, update_emas=update_emas)
        if self.style_mixing_prob > 0 and torch.rand([]).item() < self.style_mixing_prob:
            cutoff = int(torch.randint(1, ws.shape[1], []).item())
            ws_mix = self.G.mapping(torch.randn_like(z), c, update_emas=False)
            ws = torch.cat([ws[:, :cutoff], ws_mix[:, cutoff:]], dim=1)
        img = self.G.synthesis(ws, update_emas=update_emas)
        return img, ws

    def run_D(self, img, c, blur_sigma=0, update_emas=False):
        img = augmentation.augment(img, self.augment_policy)
        img = gaussian_blur(img, blur_sigma)
        return self.D(img, c, update_emas=update_emas)

    def blur_sigma(self, cur_nimg):
        if self.blur_fade_kimg <= 0:
            return 0
        return max(1 - cur_nimg / (self.blur_fade_kimg * 1e3), 0) * self.blur_init_sigma

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg):
        """Backpropagate the loss of ``phase`` (scaled by ``gain``) into the networks' ``.grad``.

        Parameters
        ----------
        phase : str
            One of PHASES. 'Greg' / 'Gboth' do nothing for the path-length part when pl_weight is 0,
            'Dreg' / 'Dboth' nothing for R1 when r1_gamma is 0.
        real_img : Tensor [N, C, H, W]
            Real images in [-1, 1].
        real_c, gen_c : Tensor [N, c_dim]
        gen_z : Tensor [N, z_dim]
        gain : float
            Multiplies the loss (the phase's interval for lazy regularisation).
        cur_nimg : int
            Images shown so far (for the blur schedule).

        Returns
        -------
        dict of str to Tensor
            Detached per-sample statistics: 'Loss/G/loss', 'Loss/scores/fake', 'Loss/D/loss', ...
        """
        assert phase in PHASES, f'unknown phase {phase!r}'
        do_Gmain = phase in ('Gmain', 'Gboth')
        do_Dmain = phase in ('Dmain', 'Dboth')
        do_Gpl = phase in ('Greg', 'Gboth') and self.pl_weight != 0
        do_Dr1 = phase in ('Dreg', 'Dboth') and self.r1_gamma != 0
        blur_sigma = self.blur_sigma(cur_nimg)
        stats = {}

        if do_Gmain:
            gen_img, _gen_ws = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img, gen_c, blur_sigma=blur_sigma)
            loss_G = F.softplus(-gen_logits)  # -log(sigmoid(D(G(z)))): the non-saturating loss.
            loss_G.mean().mul(gain).backward()
            stats['Loss/scores/fake'] = gen_logits.detach()
            stats['Loss/G/loss'] = loss_G.detach()

        if do_Gpl:
            batch_size = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
            gen_img, gen_ws = self.run_G(gen_z[:batch_size], gen_c[:batch_size])
            # Random image-space direction, scaled so that the expected length does not depend on resolution.
            pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
            pl_grads = torch.autograd.grad(outputs=[(gen_img * pl_noise).sum()], inputs=[gen_ws], create_graph=True)[0]
            pl_lengths = pl_grads.square().sum(dim=2).mean(dim=1).sqrt()
            pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
            self.pl_mean.copy_(pl_mean.detach())
            pl_penalty = (pl_lengths - pl_mean).square()
            loss_Gpl = pl_penalty * self.pl_weight
            loss_Gpl.mean().mul(gain).backward()
            stats['Loss/pl_penalty'] = pl_penalty.detach()
            stats['Loss/G/reg'] = loss_Gpl.detach()

        loss_Dgen = 0
        if do_Dmain:
            # w_avg tracks the mapping's output here, where G runs without gradients.
            with torch.no_grad():
                gen_img, _gen_ws = self.run_G(gen_z, gen_c, update_emas=True)
            gen_logits = self.run_D(gen_img, gen_c, blur_sigma=blur_sigma, update_emas=True)
            loss_Dgen = F.softplus(gen_logits)  # -log(1 - sigmoid(D(G(z)))).
            loss_Dgen.mean().mul(gain).backward()
            stats['Loss/scores/fake'] = gen_logits.detach()

        if do_Dmain or do_Dr1:
            real_img_tmp = real_img.detach().requires_grad_(do_Dr1)
            real_logits = self.run_D(real_img_tmp, real_c, blur_sigma=blur_sigma)
            loss = 0
            if do_Dmain:
                loss_Dreal = F.softplus(-real_logits)  # -log(sigmoid(D(x))).
                loss = loss + loss_Dreal
                stats['Loss/scores/real'] = real_logits.detach()
                stats['Loss/D/loss'] = (loss_Dgen + loss_Dreal).detach()
            if do_Dr1:
                # create_graph: the penalty's own gradient w.r.t. D's weights is a second derivative.
                r1_grads = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_img_tmp], create_graph=True)[0]
                r1_penalty = r1_grads.square().sum(dim=[1, 2, 3])
                loss = loss + r1_penalty * (self.r1_gamma / 2)
                stats['Loss/r1_penalty'] = r1_penalty.detach()
                stats['Loss/D/reg'] = (r1_penalty * (self.r1_gamma / 2)).detach()
            loss.mean().mul(gain).backward()

        return stats


def gaussian_blur(img, sigma):
    """Blur NCHW images with a separable Gaussian of standard deviation ``sigma`` pixels (0 = none)."""
    radius = int(np.floor(sigma * 3))
    if radius <= 0:
        return img
    taps = torch.arange(-radius, radius + 1, device=img.device, dtype=torch.float32)
    f = torch.exp(-0.5 * (taps / sigma).square())
    return upfirdn2d.filter2d(img, f / f.sum())
