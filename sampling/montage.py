"""Montages like the MaGNET authors': naive samples above MaGNET / polarity samples, one column group per setting.

A montage has one column group per truncation psi (the same latents in every group, so that a column shows one
latent at several psi) or, for a conditional network, per class (naive latents of that class against the
polarity draw within the class). In each group, ``rows`` rows of naive samples (rows ``0 .. n - 1`` of batch seed
``seed``, :mod:`sampling.latents`) sit above ``rows`` rows of bank latents resampled with polarity rho
(:class:`sampling.samplers.PolaritySource`, the draw of ``generate_magnet.py``), ``n = rows * cols``. Group titles
are written above the groups and the two kinds of rows are named on the left (Pillow text).
"""

import dataclasses

import numpy as np

from sampling import latents, samplers
from sampling.video import render

DEFAULT_PSIS = (0.3, 0.5, 0.7, 0.9, 1.0)
LABEL_WIDTH = 130
HEADER_HEIGHT = 24
GROUP_GAP = 10     # White pixels between column groups.
KIND_GAP = 6       # White pixels between the naive and the polarity rows.


@dataclasses.dataclass
class Group:
    """One column group: its title, truncation psi, and the naive and polarity latents with their labels."""

    title: str
    psi: float
    naive: tuple
    polarity: tuple


def method_label(rho):
    """'MaGNET rho=1' for rho = 1, else 'polarity rho=R'."""
    return 'MaGNET rho=1' if rho == 1 else f'polarity rho={rho:+g}'


def _select(G, bank, num, rho, top_k, seed, class_idx=None):
    source = samplers.PolaritySource(bank, G.z_dim, G.c_dim, rho=rho, top_k=top_k, class_idx=class_idx,
                                     normalizes_z=bool(getattr(G, 'normalizes_z', True)))
    drawn = source.draw(num, seed)
    return drawn.z, drawn.c


def psi_groups(G, bank, num, rho=1.0, top_k=None, seed=0, psis=DEFAULT_PSIS):
    """One group per psi; the same naive and polarity latents in each. For a conditional network the naive
    latents take the classes of the polarity draw, column for column."""
    z_pol, c_pol = _select(G, bank, num, rho, top_k, seed)
    z_naive = latents.z_batch(seed, num, G.z_dim).astype(np.float32)
    return [Group(f'psi {psi:g}', float(psi), (z_naive, c_pol), (z_pol, c_pol)) for psi in psis]


def class_groups(G, bank, num, rho=1.0, top_k=None, seed=0, psi=1.0, classes=None):
    """One group per class of a conditional network: the same naive z in each, against the draw within the class."""
    if G.c_dim == 0:
        raise ValueError('column groups per class need a conditional network; group by psi')
    z_naive = latents.z_batch(seed, num, G.z_dim).astype(np.float32)
    groups = []
    for k in (range(G.c_dim) if classes is None else classes):
        c = latents.one_hot(np.full([num], k), G.c_dim)
        groups.append(Group(f'class {k}', float(psi), (z_naive, c), _select(G, bank, num, rho, top_k, seed, class_idx=k)))
    return groups


def _block(images, rows, cols):
    side_h, side_w = images.shape[1:3]
    block = np.full([rows * side_h, cols * side_w, images.shape[3]], 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, cols)
        block[r * side_h:(r + 1) * side_h, col * side_w:(col + 1) * side_w] = image
    return block


def make_montage(G, groups, rows, cols, kind_labels=('naive', 'MaGNET rho=1'), scale=1, noise_mode='const'):
    """The montage as uint8 [H, W] (grayscale networks) or [H, W, 3]; see the module docstring for the layout."""
    import PIL.Image
    import PIL.ImageDraw

    from sampling.images import label_font
    side = int(G.img_resolution) * scale
    block_h, block_w = rows * side, cols * side
    channels = int(G.img_channels)
    height = HEADER_HEIGHT + 2 * block_h + KIND_GAP
    width = LABEL_WIDTH + len(groups) * block_w + (len(groups) - 1) * GROUP_GAP
    canvas = np.full([height, width, channels], 255, dtype=np.uint8)
    for g, group in enumerate(groups):
        x = LABEL_WIDTH + g * (block_w + GROUP_GAP)
        for kind, (z, c) in enumerate((group.naive, group.polarity)):
            images = render(G, z=z[:rows * cols], c=c[:rows * cols], truncation_psi=group.psi, noise_mode=noise_mode)
            if scale > 1:
                images = images.repeat(scale, axis=1).repeat(scale, axis=2)
            y = HEADER_HEIGHT + kind * (block_h + KIND_GAP)
            canvas[y:y + block_h, x:x + block_w] = _block(images, rows, cols)
    image = PIL.Image.fromarray(canvas[:, :, 0] if channels == 1 else canvas)
    draw = PIL.ImageDraw.Draw(image)
    font = label_font(14)
    black = 0 if channels == 1 else (0, 0, 0)
    for g, group in enumerate(groups):
        x = LABEL_WIDTH + g * (block_w + GROUP_GAP) + block_w // 2
        draw.text((x, HEADER_HEIGHT // 2), group.title, fill=black, font=font, anchor='mm')
    for kind, label in enumerate(kind_labels):
        y = HEADER_HEIGHT + kind * (block_h + KIND_GAP) + block_h // 2
        draw.text((6, y), label, fill=black, font=font, anchor='lm')
    return np.asarray(image)

# ----------------------------------------------------------------------------
