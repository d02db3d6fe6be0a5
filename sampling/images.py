"""Turning generator output into images on disk: labels and PNG batches with a progress bar.

The generic helpers (uint8 conversion, PNG files, grids) live in torch_utils/images.py, where training can
reach them too; they are re-exported here for the sampling code and the scripts.
"""

import os

import numpy as np
from tqdm import tqdm

from torch_utils.images import load_png, make_grid, png_problem, save_png, to_uint8  # noqa: F401 (re-exported)


def label_font(size):
    """Pillow's embedded font at ``size`` pixels (scalable in Pillow >= 10.1), else its small bitmap font."""
    import PIL.ImageFont
    try:
        return PIL.ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return PIL.ImageFont.load_default()


def write_images(batches, names, outdir, grid=False, desc='Generating'):
    """Save the images of an iterable of NCHW float batches as ``outdir/names[i]``, with a progress bar.

    With ``grid``, all images are also tiled into ``outdir/grid.png``. Returns the number written.
    """
    num_written = 0
    grid_images = []
    with tqdm(total=len(names), unit='img', desc=desc, disable=None) as bar:
        for img in batches:
            for array in to_uint8(img):
                save_png(os.path.join(outdir, names[num_written]), array)
                num_written += 1
                if grid:
                    grid_images.append(array)
            bar.update(len(img))
    if grid and grid_images:
        save_png(os.path.join(outdir, 'grid.png'), make_grid(np.stack(grid_images)))
    return num_written
