"""Image datasets in NVlabs' layout: a folder or a zip of images plus an optional ``dataset.json``.

``ImageFolderDataset`` reads what ``dataset_tool.py`` writes (and what NVlabs' own dataset tool
writes): image files at any depth, and a ``dataset.json`` of the form
``{"labels": [["00000/img00000000.png", 6], ...]}`` whose names are relative, with forward slashes.
Integer labels are returned one-hot; lists of numbers are returned as float32 vectors.

Indexing follows NVlabs exactly, so that metrics computed on a subset are comparable with theirs:
images are sorted by relative name, ``max_size`` keeps a random subset drawn with
``np.random.RandomState(random_seed)`` (kept in sorted order), and ``xflip`` appends a mirrored copy
of every image (the dataset doubles in length).

Images are returned as uint8 numpy arrays [C, H, W] (grayscale PNGs give C = 1), labels as float32
numpy arrays. Problems with the data raise :class:`DatasetError` with a one-line message. The shape
of every image is checked when it is read (the first image at construction, the others in
``__getitem__``), so that opening a dataset of 70,000 images stays instant.
"""

import json
import os
import zipfile

import numpy as np
import torch

import dnnlib

# ----------------------------------------------------------------------------


class DatasetError(ValueError, IOError, dnnlib.util.UserError):
    """The dataset cannot be used; the message is one line saying what is wrong and what to do."""


_MAX_LABELS_BYTES = 1 << 30  # dataset.json of ImageNet's 1.28M labels is ~60 MB; a zip may declare anything.


class Dataset(torch.utils.data.Dataset):
    """Base class: NVlabs' indexing (subset, mirroring, one-hot labels) over raw images and labels.

    Subclasses implement ``_load_raw_image(raw_idx)`` (uint8 [C, H, W]) and ``_load_raw_labels()``
    (int64 [N] class indices, float32 [N, L] vectors, or None).

    Parameters
    ----------
    name : str
        Short name of the dataset (used in file names of cached statistics).
    raw_shape : list of int
        [number of raw images, C, H, W].
    max_size : int or None, default=None
        Keep at most this many raw images, a random subset drawn with ``random_seed``.
    use_labels : bool, default=False
        Return the labels; otherwise every label is an empty float32 array.
    xflip : bool, default=False
        Double the dataset with horizontally mirrored copies (the second half).
    random_seed : int, default=0
        Seed of the subset selection.
    """

    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._raw_labels = None
        self._label_shape = None

        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            # Shuffle all indices, keep the first max_size, restore sorted order (NVlabs' subset).
            np.random.RandomState(random_seed).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])

        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _get_raw_labels(self):
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            assert isinstance(labels, np.ndarray) and labels.shape[0] == self._raw_shape[0]
            assert labels.dtype in (np.float32, np.int64)
            if labels.dtype == np.int64:
                assert labels.ndim == 1
                if labels.size and labels.min() < 0:
                    raise DatasetError(f'{self._name}: class labels must be >= 0, found {labels.min()}')
            self._raw_labels = labels
        return self._raw_labels

    def close(self):
        """Release open file handles (the object stays usable; they are reopened on demand)."""

    def _load_raw_image(self, raw_idx):
        raise NotImplementedError

    def _load_raw_labels(self):
        raise NotImplementedError

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown may have torn down modules already.
            pass

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        image = self._load_raw_image(self._raw_idx[idx])
        if list(image.shape) != self.image_shape:
            raise DatasetError(f'{self._name}: {self._describe_raw(self._raw_idx[idx])} is '
                               f'{_shape_str(image.shape)} but the first image is {_shape_str(self.image_shape)}; '
                               'all images must have the same size and channels (convert with dataset_tool.py)')
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def _describe_raw(self, raw_idx):
        return f'image {raw_idx}'

    def get_label(self, idx):
        """The label of item ``idx``: float32 [label_dim] (one-hot for class labels)."""
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            label = onehot
        return label.copy()

    def get_details(self, idx):
        """Where item ``idx`` comes from: EasyDict(raw_idx, xflip, raw_label)."""
        return dnnlib.EasyDict(raw_idx=int(self._raw_idx[idx]), xflip=(int(self._xflip[idx]) != 0),
                               raw_label=self._get_raw_labels()[self._raw_idx[idx]].copy())

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        """[C, H, W]."""
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        return self.image_shape[0]

    @property
    def resolution(self):
        assert self.image_shape[1] == self.image_shape[2]
        return self.image_shape[1]

    @property
    def label_shape(self):
        if self._label_shape is None:
            raw_labels = self._get_raw_labels()
            if raw_labels.dtype == np.int64:
                self._label_shape = [int(raw_labels.max()) + 1 if raw_labels.size else 0]
            else:
                self._label_shape = list(raw_labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(size != 0 for size in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64

# ----------------------------------------------------------------------------


_IMAGE_EXTENSIONS = frozenset(['.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm'])


class ImageFolderDataset(Dataset):
    """Images in a folder or a zip archive, with optional labels from ``dataset.json``.

    Parameters
    ----------
    path : str
        A directory or a ``.zip`` file. Image files (png, jpg, ...) are found at any depth and
        ordered by their relative name.
    resolution : int or None, default=None
        Expected resolution; a dataset of another resolution is refused.
    use_labels : bool, default=False
        Read labels from ``dataset.json``. Every image must then have one. A dataset without
        ``dataset.json`` (or with ``"labels": null``) is unlabelled: ``has_labels`` is False.
    max_size, xflip, random_seed
        See :class:`Dataset`.

    Raises
    ------
    DatasetError
        The path is missing, holds no images, an image is unreadable, the images are not square
        with a power-of-two side, the resolution differs from ``resolution``, or labels are missing.
    """

    def __init__(self, path, resolution=None, use_labels=False, max_size=None, xflip=False, random_seed=0, **super_kwargs):
        self._path = path
        self._zipfile = None
        self._zipfile_pid = None

        if os.path.isdir(path):
            self._type = 'dir'
            self._all_fnames = set()
            for root, _dirs, files in os.walk(path):
                for fname in files:
                    self._all_fnames.add(os.path.relpath(os.path.join(root, fname), start=path))
        elif os.path.isfile(path) and _file_ext(path) == '.zip':
            self._type = 'zip'
            try:
                self._all_fnames = set(self._get_zipfile().namelist())
            except zipfile.BadZipFile:
                raise DatasetError(f'{path} is not a readable zip file; re-create it with dataset_tool.py') from None
        elif os.path.exists(path):
            raise DatasetError(f'{path} is neither a directory nor a .zip file; pass a folder or zip of images')
        else:
            raise DatasetError(f'dataset not found: {path}; pass a folder or a .zip of images '
                               '(create one with dataset_tool.py)')

        self._image_fnames = sorted(fname for fname in self._all_fnames if _file_ext(fname) in _IMAGE_EXTENSIONS)
        if len(self._image_fnames) == 0:
            raise DatasetError(f'no image files (png, jpg, ...) found in {path}')

        name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        raw_shape = [len(self._image_fnames)] + list(self._load_raw_image(0).shape)
        _, channels, height, width = raw_shape
        if height != width:
            raise DatasetError(f'{path}: images must be square, {self._image_fnames[0]} is {width}x{height}; '
                               'crop or resize them with dataset_tool.py')
        if width < 4 or width & (width - 1) != 0:
            raise DatasetError(f'{path}: image side must be a power of two >= 4, {self._image_fnames[0]} is '
                               f'{width}x{height}; resize with dataset_tool.py --resolution')
        if resolution is not None and width != resolution:
            raise DatasetError(f'{path}: images are {width}x{height}, expected {resolution}x{resolution}; '
                               'use a dataset of that resolution or another --resolution')
        super().__init__(name=name, raw_shape=raw_shape, use_labels=use_labels, max_size=max_size, xflip=xflip,
                         random_seed=random_seed, **super_kwargs)
        if use_labels:
            self._get_raw_labels()  # Report bad or missing labels now rather than mid-training.

    def _get_zipfile(self):
        assert self._type == 'zip'
        # A forked DataLoader worker inherits the parent's handle, and with it a file offset shared by every
        # process: concurrent reads then interleave and corrupt each other. Each process opens its own.
        if self._zipfile is None or self._zipfile_pid != os.getpid():
            self._zipfile = zipfile.ZipFile(self._path)
            self._zipfile_pid = os.getpid()
        return self._zipfile

    def _file_size(self, fname):
        if self._type == 'dir':
            return os.path.getsize(os.path.join(self._path, fname))
        return self._get_zipfile().getinfo(fname).file_size

    def _open_file(self, fname):
        if self._type == 'dir':
            return open(os.path.join(self._path, fname), 'rb')
        return self._get_zipfile().open(fname, 'r')

    def close(self):
        try:
            if self._zipfile is not None:
                self._zipfile.close()
        finally:
            self._zipfile = None

    def __getstate__(self):
        # Zip handles cannot cross into DataLoader worker processes; each worker reopens the archive.
        return dict(self.__dict__, _zipfile=None, _zipfile_pid=None)

    def _describe_raw(self, raw_idx):
        return self._image_fnames[raw_idx]

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        try:
            with self._open_file(fname) as f:
                data = f.read()
            image = _decode_image(data, _file_ext(fname))
        except DatasetError:
            raise
        except Exception as err:  # noqa: BLE001 -- decoders raise many types; all mean "unreadable".
            raise DatasetError(f'{self._path}: cannot read image {fname} ({type(err).__name__}: '
                               f'{str(err).splitlines()[0] if str(err) else "corrupt"}); replace or remove it') from None
        if image.dtype != np.uint8:
            raise DatasetError(f'{self._path}: image {fname} has {image.dtype} pixels; only 8-bit images are supported')
        if image.ndim == 2:
            image = image[:, :, np.newaxis]
        return image.transpose(2, 0, 1)

    def _load_raw_labels(self):
        fname = 'dataset.json'
        if fname not in self._all_fnames:
            return None
        if self._file_size(fname) > _MAX_LABELS_BYTES:
            raise DatasetError(f'{self._path}: dataset.json is larger than {_MAX_LABELS_BYTES >> 20} MiB; '
                               'that is not a label file')
        try:
            with self._open_file(fname) as f:
                labels = json.load(f)['labels']
        except (ValueError, KeyError, TypeError, RecursionError):
            raise DatasetError(f'{self._path}: dataset.json is not of the form {{"labels": [[name, label], ...]}}') from None
        if labels is None:
            return None
        try:
            labels = dict(labels)
        except (TypeError, ValueError):
            raise DatasetError(f'{self._path}: dataset.json labels must be a list of [file name, label] pairs') from None
        missing = [fname for fname in self._image_fnames if fname.replace('\\', '/') not in labels]
        if missing:
            raise DatasetError(f'{self._path}: dataset.json has no label for {len(missing)} of '
                               f'{len(self._image_fnames)} images (first: {missing[0]}); add them or train without labels')
        labels = np.array([labels[fname.replace('\\', '/')] for fname in self._image_fnames])
        if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
            return labels.astype(np.int64)
        if labels.ndim == 2 and np.issubdtype(labels.dtype, np.number):
            return labels.astype(np.float32)
        raise DatasetError(f'{self._path}: dataset.json labels must be class indices or equal-length lists of numbers')

# ----------------------------------------------------------------------------

# Dataset descriptions from files (NVlabs' ``training_set_kwargs`` in a network snapshot) are data: they
# may name our dataset class and give its plain options, and are never imported or called by name.

DATASET_CLASS_NAME = 'training.dataset.ImageFolderDataset'
_OPTION_TYPES = {  # Option -> (accepted types, whether None is allowed)
    'path':         ((str,), False),
    'resolution':   ((int, np.integer), True),
    'use_labels':   ((bool, np.bool_, int, np.integer), False),
    'max_size':     ((int, np.integer), True),
    'xflip':        ((bool, np.bool_, int, np.integer), False),
    'random_seed':  ((int, np.integer), False),
}


def check_dataset_kwargs(kwargs, source):
    """``kwargs`` (e.g. a snapshot's training_set_kwargs) as an EasyDict for :func:`open_dataset`, or DatasetError.

    Only our ImageFolderDataset and its plain options are admitted, with their key order kept (the repr
    of these kwargs names NVlabs' statistics cache). ``source`` names where they came from, for the message.
    """
    if not isinstance(kwargs, dict):
        raise DatasetError(f'{source} records a dataset description that is a {type(kwargs).__name__}, not a dict; '
                           'pass --data DIR|ZIP')
    class_name = kwargs.get('class_name', DATASET_CLASS_NAME)
    if class_name != DATASET_CLASS_NAME:
        shown = class_name if isinstance(class_name, str) else type(class_name).__name__
        raise DatasetError(f'{source} records dataset class {shown[:100]!r}; safe loading only opens '
                           f'{DATASET_CLASS_NAME} and never imports a class a file names: pass --data DIR|ZIP')
    out = dnnlib.EasyDict()
    for key, value in kwargs.items():
        if key == 'class_name':
            out[key] = value
            continue
        if key not in _OPTION_TYPES:
            raise DatasetError(f'{source} records dataset option {str(key)[:100]!r}, which {DATASET_CLASS_NAME} '
                               'does not take: pass --data DIR|ZIP')
        types, nullable = _OPTION_TYPES[key]
        if not (isinstance(value, types) or (nullable and value is None)):
            raise DatasetError(f'{source} records dataset option {key} = {str(value)[:100]!r}, which is not a '
                               f'{types[0].__name__}: pass --data DIR|ZIP')
        out[key] = value
    if 'path' not in out:
        raise DatasetError(f'{source} records a dataset without a path: pass --data DIR|ZIP')
    out.setdefault('class_name', DATASET_CLASS_NAME)
    return out


def open_dataset(class_name=DATASET_CLASS_NAME, **options):
    """Open ``ImageFolderDataset(**options)`` from dataset kwargs, without importing ``class_name``."""
    kwargs = check_dataset_kwargs(dict(class_name=class_name, **options), 'the dataset description')
    kwargs.pop('class_name')
    return ImageFolderDataset(**kwargs)

# ----------------------------------------------------------------------------


def _file_ext(fname):
    return os.path.splitext(fname)[1].lower()


def _shape_str(shape):
    channels, height, width = shape
    return f'{width}x{height}x{channels}'


def _decode_image(data, ext):
    """Bytes of an image file -> uint8 array HxW or HxWxC."""
    if ext == '.png':
        try:
            import pyspng
        except ImportError:
            pyspng = None
        if pyspng is not None:
            return pyspng.load(data)
    import io

    import PIL.Image
    with PIL.Image.open(io.BytesIO(data)) as image:
        if image.mode in ('P', 'PA', 'CMYK', 'YCbCr', 'LAB', 'HSV'):
            image = image.convert('RGBA' if image.mode == 'PA' or 'transparency' in image.info else 'RGB')
        elif image.mode == '1':
            image = image.convert('L')
        return np.array(image)
