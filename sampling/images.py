"""Turning generator output into images on disk: NVlabs' uint8 conversion, PNG writing, grids."""

import os

import numpy as np
import torch
from tqdm import tqdm

import dnnlib


def to_uint8(img):
    """NVlabs' conversion of NCHW float images in about [-1, 1] to NHWC uint8.

    ``(img * 127.5 + 128).clamp(0, 255)`` then a truncating cast, computed in float32 on the
    images' device, exactly as generate.py and the metrics code do.
    """
    img = img.to(torch.float32).permute(0, 2, 3, 1)
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()


def save_png(path, array):
    """Write an HxW or HxWxC uint8 array as a PNG, atomically (pyspng's encoder where available, else Pillow)."""
    array = np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    with dnnlib.util.atomic_write(path) as f:
        f.write(_encode_png(array))


def _encode_png(array):
    # pyspng's PyPI releases (0.1.x) only decode; its encoder exists in newer builds.
    try:
        import pyspng
        if hasattr(pyspng, 'encode'):
            return pyspng.encode(array)
    except ImportError:
        pass
    import io

    import PIL.Image
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format='png')
    return buffer.getvalue()


def label_font(size):
    """Pillow's embedded font at ``size`` pixels (scalable in Pillow >= 10.1), else its small bitmap font."""
    import PIL.ImageFont
    try:
        return PIL.ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return PIL.ImageFont.load_default()


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_END = b'\x00\x00\x00\x00IEND\xaeB`\x82'


def png_problem(path, width=None, height=None):
    """Why the file at `path` is not a complete PNG of the given size (one phrase), or None if it is.

    Cheap (reads 24 bytes at the start and 12 at the end, no decoding): a killed or damaged write lacks the
    final IEND chunk; a foreign file has another signature or size.
    """
    try:
        with open(path, 'rb') as f:
            head = f.read(24)
            f.seek(0, os.SEEK_END)
            if f.tell() < 24 + len(_PNG_END):
                return 'is truncated or empty'
            f.seek(-len(_PNG_END), os.SEEK_END)
            tail = f.read()
    except OSError as err:
        return f'cannot be read ({err.strerror})'
    if head[:8] != _PNG_SIGNATURE or head[12:16] != b'IHDR':
        return 'is not a PNG file'
    if tail != _PNG_END:
        return 'is truncated (no PNG end marker)'
    size = int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')
    if (width is not None and size[0] != width) or (height is not None and size[1] != height):
        return f'is {size[0]}x{size[1]}, not {width}x{height}'
    return None


def load_png(path):
    """Read a PNG as a uint8 array (HxW for grayscale, HxWxC otherwise)."""
    try:
        import pyspng
        with open(path, 'rb') as f:
            return pyspng.load(f.read())
    except ImportError:
        import PIL.Image
        with PIL.Image.open(path) as image:
            return np.array(image)


def make_grid(images, cols=None, pad=0, pad_value=0):
    """Tile NHWC uint8 images into one HxWxC image, row by row; ``cols`` defaults to ceil(sqrt(N))."""
    images = np.asarray(images)
    num, height, width, channels = images.shape
    cols = cols or int(np.ceil(np.sqrt(num)))
    rows = int(np.ceil(num / cols))
    grid = np.full([rows * (height + pad) - pad, cols * (width + pad) - pad, channels], pad_value, dtype=images.dtype)
    for idx, image in enumerate(images):
        row, col = divmod(idx, cols)
        y, x = row * (height + pad), col * (width + pad)
        grid[y:y + height, x:x + width] = image
    return grid


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
