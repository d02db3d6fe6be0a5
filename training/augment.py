"""Differentiable augmentation of the images the discriminator sees: random translation and cutout.

With a few thousand training images the discriminator memorises them and stops teaching the generator
(Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data"; Zhao et al. 2020,
"Differentiable Augmentation for Data-Efficient GAN Training"). Augmenting *every* image D sees, real and
generated alike, with transforms that are differentiable in the pixel values lets G's gradient pass through
and, because both distributions get the same transform, does not teach G to produce augmented images.

Two transforms, each drawn independently per image from the global torch RNG (so a seeded run repeats):

* ``'translation'``: shift by whole pixels, ``dx, dy`` uniform in ``[-r, r]`` with ``r = round(size / 8)``
  (+-4 px at 32 px); pixels shifted in from outside are ``fill``.
* ``'cutout'``: set a ``round(ratio * H) x round(ratio * W)`` rectangle (ratio 1/2) to ``fill``; its centre
  pixel is uniform over the image's pixels (rows ``cy - h // 2`` to ``cy - h // 2 + h - 1``), clipped at the border.

``fill = 0`` is mid-grey for images in [-1, 1]; what matters is that reals and fakes get the same.
"""

import torch

TRANSFORMS = ('translation', 'cutout')


def parse_policy(policy):
    """``'translation,cutout'`` -> ``('translation', 'cutout')``; ``''``, ``None`` or ``'none'`` -> ``()``."""
    if policy is None or policy.strip().lower() in ('', 'none'):
        return ()
    names = tuple(name.strip() for name in policy.split(','))
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f'augmentation policy must be a comma-separated subset of {", ".join(TRANSFORMS)} '
                         f'(or "none"), got {policy!r}')
    return names


def translate(x, max_shift, fill=0.0, generator=None):
    """Shift each image of an NCHW batch by its own random whole-pixel offset.

    The offsets ``dy, dx`` are uniform in ``[-max_shift, max_shift]``, drawn as one
    ``torch.randint(0, 2 * max_shift + 1, [2, N], generator=generator)`` on the CPU (the global RNG when
    ``generator`` is None); pixels shifted in from outside are ``fill``. ``max_shift = 0`` returns ``x``.
    Differentiable in ``x`` to any order (it is an indexing of the padded images).
    """
    if max_shift == 0:
        return x
    N, _C, H, W = x.shape
    padded = torch.nn.functional.pad(x, [max_shift] * 4, value=fill)
    offsets = torch.randint(0, 2 * max_shift + 1, [2, N], generator=generator).to(x.device)
    rows = offsets[0, :, None] + torch.arange(H, device=x.device)       # [N, H] rows of the padded images
    cols = offsets[1, :, None] + torch.arange(W, device=x.device)       # [N, W]
    batch = torch.arange(N, device=x.device)[:, None, None]
    # Advanced indices around a slice put their dimensions first: the result is [N, H, W, C].
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x, ratio=0.5, fill=0.0):
    """Set a random rectangle of each NCHW image to ``fill``; see the module docstring."""
    N, _C, H, W = x.shape
    hy, hx = int(round(ratio * H)), int(round(ratio * W))
    cy = torch.randint(0, H, [N, 1], device=x.device)                  # Centre pixel, uniform over the image.
    cx = torch.randint(0, W, [N, 1], device=x.device)
    ys = torch.arange(H, device=x.device)[None]
    xs = torch.arange(W, device=x.device)[None]
    in_y = (ys >= cy - hy // 2) & (ys < cy - hy // 2 + hy)             # [N, H]
    in_x = (xs >= cx - hx // 2) & (xs < cx - hx // 2 + hx)             # [N, W]
    cut = (in_y[:, :, None] & in_x[:, None, :])[:, None]               # [N, 1, H, W]
    return torch.where(cut, torch.as_tensor(fill, dtype=x.dtype, device=x.device), x)


def augment(x, policy):
    """Apply the transforms named in ``policy`` (a tuple from :func:`parse_policy`) in order."""
    for name in policy:
        x = translate(x, max_shift=round(min(x.shape[2:]) / 8)) if name == 'translation' else cutout(x)
    return x
