"""torch_utils.safe_pickle: restricted globals, and tiny bombs refused fast under a memory cap.

The bombs are written opcode by opcode here (independently of the module under test), each a few
hundred bytes at most. The memory-capped cases run in one child process with RLIMIT_AS set, so a
loader that tried to allocate what a file declares would die there instead of passing the test.
"""

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from torch_utils import safe_pickle

TABLE = {**safe_pickle.BASIC_GLOBALS, **safe_pickle.TORCH_GLOBALS, **safe_pickle.NUMPY_GLOBALS}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------
# Opcode-level builders.

PROTO4 = b'\x80\x04'
STOP = b'.'


def _unicode(text):
    data = text.encode()
    return b'\x8c' + bytes([len(data)]) + data


def _global(module, name):
    return _unicode(module) + _unicode(name) + b'\x93'


def exponential_dag(levels):
    """t0 = (); t(k+1) = (tk, tk): 2**levels paths through levels+1 distinct tuples."""
    assert levels < 256
    out = PROTO4 + b')\x940'  # EMPTY_TUPLE, MEMOIZE as 0, POP
    for level in range(levels):
        get = b'h' + bytes([level])
        out += get + get + b'\x86\x940'  # BINGET, BINGET, TUPLE2, MEMOIZE, POP
    return out + b'h' + bytes([levels]) + STOP


def nested_lists(depth):
    return PROTO4 + b']' * depth + b'a' * (depth - 1) + STOP  # EMPTY_LIST x depth, APPEND x depth-1


def self_referencing_list():
    return PROTO4 + b']\x94h\x00a' + STOP  # EMPTY_LIST, MEMOIZE, BINGET 0, APPEND


def binbytes8(declared):
    return PROTO4 + b'\x8e' + struct.pack('<Q', declared) + b'xyz' + STOP


def frame(declared):
    return PROTO4 + b'\x95' + struct.pack('<Q', declared) + b'N' + STOP


def long_binput(index):
    return PROTO4 + b'N' + b'r' + struct.pack('<I', index) + STOP  # NONE, LONG_BINPUT


def numpy_reconstruct(shape):
    """numpy.core.multiarray._reconstruct(numpy.ndarray, shape, b'b'), as numpy pickles arrays (with shape (0,))."""
    shape_ops = b'(' + b''.join(b'J' + struct.pack('<i', n) for n in shape) + b't'
    return (PROTO4 + _global('numpy._core.multiarray', '_reconstruct') + b'(' + _global('numpy', 'ndarray')
            + shape_ops + b'C\x01b' + b't' + b'R' + STOP)


def many_objects(count):
    return PROTO4 + b'(' + b'}' * count + b'l' + STOP  # MARK, EMPTY_DICT x count, LIST


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def legacy_storage_bytes(values, location='cpu', declared=None, count=None):
    """torch's legacy single-storage layout (what torch.storage._load_from_bytes reads), written by hand."""
    data = np.asarray(values, dtype='<f4').tobytes()
    declared = len(values) if declared is None else declared
    count = len(values) if count is None else count

    class StoragePickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj == 'STORAGE':
                return ('storage', torch.FloatStorage, 'k0', location, declared, None)
            return None

    out = io.BytesIO()
    for value in (0x1950a86a20f9469cfc6c, 1001, dict(protocol_version=1001, little_endian=True,
                                                      type_sizes=dict(short=2, int=4, long=4))):
        pickle.dump(value, out, protocol=2)
    StoragePickler(out, protocol=2).dump('STORAGE')
    pickle.dump(['k0'], out, protocol=2)
    out.write(struct.pack('<q', count) + data)
    return out.getvalue()


def tensor_pickle(storage_values, offset, size, stride, location='cpu', declared=None):
    storage = _Reduce(torch.storage._load_from_bytes, (legacy_storage_bytes(storage_values, location, declared),))
    tensor = _Reduce(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False,
                                                       collections.OrderedDict()))
    return pickle.dumps(tensor, protocol=4)

# ----------------------------------------------------------------------------
# In-process behaviour.


def test_loads_plain_data_tensors_and_arrays():
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    value = collections.OrderedDict(a=[1, 2.5, 'x', None, True], t=tensor, p=torch.nn.Parameter(tensor.clone()),
                                    n=np.arange(5, dtype=np.float64), s=np.float32(1.5), d=np.dtype('i4'))
    for protocol in (2, 3, 4, 5):
        loaded = safe_pickle.load(io.BytesIO(pickle.dumps(value, protocol=protocol)), TABLE)
        assert list(loaded) == list(value)
        assert loaded['a'] == value['a']
        assert torch.equal(loaded['t'], tensor) and isinstance(loaded['p'], torch.nn.Parameter)
        assert np.array_equal(loaded['n'], value['n']) and loaded['s'] == value['s'] and loaded['d'] == value['d']


def test_loads_the_repository_snapshot_and_leaves_the_file_after_the_pickle(tmp_path):
    import legacy
    path = tmp_path / 'two.pkl'
    with open(os.path.join(REPO, 'pretrained', 'mnist32-stylegan2.pkl'), 'rb') as f:
        snapshot = f.read()
    path.write_bytes(snapshot + pickle.dumps('next', protocol=4))
    with open(path, 'rb') as f:
        data = safe_pickle.load(f, legacy._SAFE_GLOBALS)
        assert f.tell() == len(snapshot)
        assert safe_pickle.load(f, {}) == 'next'
    assert {'G', 'D', 'G_ema', 'training_set_kwargs'} <= set(data)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f'touch {self.path}',)


def test_refuses_globals_outside_the_table(tmp_path):
    marker = tmp_path / 'MARKER'
    data = pickle.dumps({'x': [_Marker(marker)]}, protocol=4)
    with pytest.raises(safe_pickle.RefusedGlobalError) as info:
        safe_pickle.load(io.BytesIO(data), TABLE)
    assert info.value.global_name == f'{os.system.__module__}.system'
    assert not marker.exists()
    # A table admits exactly what it lists: OrderedDict is refused by an empty one.
    with pytest.raises(safe_pickle.RefusedGlobalError):
        safe_pickle.load(io.BytesIO(pickle.dumps(collections.OrderedDict(a=1), protocol=4)), {})


def test_refusal_quotes_file_content_as_one_printable_line():
    data = PROTO4 + _global('os\x1b[2J\n', 'sys\ntem') + STOP  # a name that would clear the terminal
    with pytest.raises(safe_pickle.RefusedGlobalError) as info:
        safe_pickle.load(io.BytesIO(data), TABLE)
    assert str(info.value).isprintable() and '\\x1b' in str(info.value)


def test_refuses_protocol_0_globals(tmp_path):
    marker = tmp_path / 'MARKER'
    with pytest.raises(safe_pickle.RefusedGlobalError):
        safe_pickle.load(io.BytesIO(pickle.dumps(_Marker(marker), protocol=0)), TABLE)
    assert not marker.exists()


def test_exponential_dag_loads_and_walks_in_its_size():
    start = time.monotonic()
    loaded = safe_pickle.load(io.BytesIO(exponential_dag(60)), TABLE)
    visited = sum(1 for _ in safe_pickle.iter_unique(loaded))
    assert visited == 61  # 61 distinct tuples, 2**60 paths.
    assert time.monotonic() - start < 2


@pytest.mark.parametrize('data, error, words', [
    (nested_lists(5000), safe_pickle.PickleLimitError, 'nested'),
    (exponential_dag(150), safe_pickle.PickleLimitError, 'nested'),
    (self_referencing_list(), safe_pickle.PickleLimitError, 'holds itself'),
    (binbytes8(1 << 40), safe_pickle.TruncatedPickleError, 'declares'),
    (frame(1 << 40), safe_pickle.TruncatedPickleError, 'FRAME'),
    (long_binput(0xFFFFFFFF), safe_pickle.PickleLimitError, 'memo index'),
    (numpy_reconstruct((1 << 30, 1 << 10)), safe_pickle.PickleLimitError, 'numpy array'),
    (PROTO4 + b'\x97' + STOP, safe_pickle.UnsafePickleError, 'out-of-band'),
    (PROTO4 + b'\x82\x01' + STOP, safe_pickle.UnsafePickleError, 'extension'),
    (PROTO4 + b'N' + b'Q' + STOP, safe_pickle.UnsafePickleError, 'persistent'),
    (PROTO4 + b'N', safe_pickle.TruncatedPickleError, 'without STOP'),
    (b'', safe_pickle.TruncatedPickleError, 'without STOP'),
], ids=['deep-lists', 'deep-dag', 'cycle', 'binbytes8', 'frame', 'memo', 'reconstruct', 'buffer', 'ext', 'persid',
        'no-stop', 'empty'])
def test_refuses_bombs_with_one_line(data, error, words):
    start = time.monotonic()
    with pytest.raises(error) as info:
        with io.BytesIO(data) as f:  # closing it must work: the loader released its view of the buffer
            safe_pickle.load(f, TABLE)
    assert time.monotonic() - start < 2
    assert words in str(info.value) and '\n' not in str(info.value)


def test_object_count_limit():
    limits = safe_pickle.Limits(max_objects=1000)
    assert len(safe_pickle.load(io.BytesIO(many_objects(900)), TABLE, limits)) == 900
    with pytest.raises(safe_pickle.PickleLimitError, match='objects'):
        safe_pickle.load(io.BytesIO(many_objects(2000)), TABLE, limits)


def test_instruction_limit():
    # GET/POP pairs create nothing, yet each costs a step: their number is bounded too.
    data = PROTO4 + b'N\x94' + b'h\x000' * 2000 + STOP  # NONE, MEMOIZE, (BINGET 0, POP) x 2000
    assert safe_pickle.load(io.BytesIO(data), {}) is None
    with pytest.raises(safe_pickle.PickleLimitError, match='instructions'):
        safe_pickle.load(io.BytesIO(data), {}, safe_pickle.Limits(max_instructions=1000))


def test_budget_is_relative_to_the_file_size():
    limits = safe_pickle.Limits(min_budget_bytes=0, bytes_per_file_byte=4.0)
    payload = pickle.dumps(b'x' * 10_000, protocol=4)  # 10 kB of bytes fit 4x a 10 kB file.
    assert safe_pickle.load(io.BytesIO(payload), {}, limits) == b'x' * 10_000
    dicts = many_objects(10_000)  # 10 kB of opcodes that would become ~1 MB of dicts.
    with pytest.raises(safe_pickle.PickleLimitError, match='bytes'):
        safe_pickle.load(io.BytesIO(dicts), {}, limits)


@pytest.mark.parametrize('offset, size, stride, words', [
    (0, (4, 4), (4, 1), None),                  # exactly its storage: loads
    (0, (2, 4), (1, 2), None),                  # dense, column-major: loads
    (0, (5, 4), (4, 1), 'needs 20'),            # larger than its storage
    (8, (3, 4), (4, 1), 'needs 20'),            # offset pushes it past the end
    (0, (4096, 4096), (0, 0), 'dense'),         # stride 0: 16 elements claiming 64 MiB
    (0, (4, 4), (2, 1), 'dense'),               # overlapping rows
    (-1, (4,), (1,), 'offset'),
])
def test_tensor_must_fit_its_storage(offset, size, stride, words):
    data = tensor_pickle(list(range(16)), offset, size, stride)
    if words is None:
        tensor = safe_pickle.load(io.BytesIO(data), TABLE)
        expected = np.lib.stride_tricks.as_strided(np.arange(16, dtype=np.float32), size, [4 * s for s in stride])
        assert np.array_equal(tensor.numpy(), expected)
        return
    with pytest.raises(safe_pickle.DamagedPickleError, match=words):
        safe_pickle.load(io.BytesIO(data), TABLE)


@pytest.mark.parametrize('location, declared, words', [
    ('meta', None, 'device'),
    ('cpu', 1 << 40, 'declares'),
    ('cpu', 3, 'declares'),
])
def test_storage_must_hold_what_it_declares(location, declared, words):
    data = tensor_pickle([1, 2, 3, 4], 0, (4,), (1,), location=location, declared=declared)
    with pytest.raises(safe_pickle.UnsafePickleError, match=words):
        safe_pickle.load(io.BytesIO(data), TABLE)


def test_payload_inside_a_storage_is_refused(tmp_path):
    marker = tmp_path / 'MARKER'
    storage = _Reduce(torch.storage._load_from_bytes, (pickle.dumps(_Marker(marker), protocol=2),))
    with pytest.raises(safe_pickle.UnsafePickleError):
        safe_pickle.load(io.BytesIO(pickle.dumps(storage, protocol=4)), TABLE)
    assert not marker.exists()


def test_object_dtype_is_refused():
    with pytest.raises(safe_pickle.UnsafePickleError, match='dtype'):
        safe_pickle.load(io.BytesIO(pickle.dumps(np.array([1, 'a'], dtype=object), protocol=4)), TABLE)


def test_torch_zip_checkpoint(tmp_path):
    path = tmp_path / 'ckpt.pt'
    state = collections.OrderedDict(w=torch.randn(3, 5), b=torch.arange(4), view=torch.arange(10.0)[2:6])
    torch.save(dict(state_dict=state, epoch=3), path)
    loaded = safe_pickle.load_torch_zip(str(path), safe_pickle.BASIC_GLOBALS)
    assert loaded['epoch'] == 3
    for key, tensor in state.items():
        assert torch.equal(loaded['state_dict'][key], tensor)
    # A record shorter than the storage it backs is refused.
    import zipfile
    damaged = tmp_path / 'damaged.pt'
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(damaged, 'w') as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[:8] if info.filename.endswith('/data/0') else data)
    with pytest.raises(safe_pickle.DamagedPickleError, match='declares'):
        safe_pickle.load_torch_zip(str(damaged), safe_pickle.BASIC_GLOBALS)
    # A compressed record could expand far beyond the archive: refused before reading it.
    deflated = tmp_path / 'deflated.pt'
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(deflated, 'w', compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(safe_pickle.PickleLimitError, match='compressed'):
        safe_pickle.load_torch_zip(str(deflated), safe_pickle.BASIC_GLOBALS)

@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
def test_torch_checkpoint_either_format(tmp_path, zip_format):
    import argparse
    state = dict(sd=collections.OrderedDict(w=torch.randn(3, 5), b=torch.arange(4), h=torch.randn(2).half(),
                                            view=torch.arange(10.0)[2:6]),
                 args=argparse.Namespace(lr=0.1, name='x'))  # plain data, admitted by the caller's table
    path = tmp_path / 'ckpt.pt'
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    table = {**safe_pickle.BASIC_GLOBALS, ('argparse', 'Namespace'): argparse.Namespace}
    loaded = safe_pickle.load_torch_checkpoint(path, table)
    assert vars(loaded['args']) == vars(state['args'])
    for key, tensor in state['sd'].items():
        assert torch.equal(loaded['sd'][key], tensor) and loaded['sd'][key].dtype == tensor.dtype
    with pytest.raises(safe_pickle.RefusedGlobalError, match='argparse.Namespace'):
        safe_pickle.load_torch_checkpoint(path, safe_pickle.BASIC_GLOBALS)


@pytest.mark.parametrize('declared, location, words', [
    (1 << 36, 'cpu', 'more than the file holds'),
    (3, 'cpu', 'does not hold'),
    (None, 'meta', 'device'),
])
def test_legacy_checkpoint_storages_are_checked(declared, location, words):
    data = legacy_storage_bytes([1, 2, 3, 4], location=location, declared=declared)
    with pytest.raises(safe_pickle.DamagedPickleError, match=words):
        safe_pickle.load_torch_legacy(io.BytesIO(data), {})
    storage = safe_pickle.load_torch_legacy(io.BytesIO(legacy_storage_bytes([1, 2, 3, 4])), {})
    values = torch.empty(0, dtype=torch.float32).set_(storage._untyped_storage, 0, (4,), (1,))
    assert torch.equal(values, torch.tensor([1.0, 2, 3, 4]))

# ----------------------------------------------------------------------------
# Under a memory cap, in a child process.

_CHILD = textwrap.dedent('''
    import io, json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
    from torch_utils import safe_pickle
    import legacy
    results = {}
    for path in sys.argv[2:]:
        start = time.monotonic()
        try:
            with open(path, 'rb') as f:
                if path.endswith('.pt'):
                    safe_pickle.load_torch_checkpoint(f, {})
                else:
                    safe_pickle.load(f, legacy._SAFE_GLOBALS)
            outcome = 'loaded'
        except safe_pickle.UnsafePickleError as err:
            outcome = 'refused: ' + str(err)
        except MemoryError:
            outcome = 'MemoryError'
        results[path] = [outcome, time.monotonic() - start]
    print(json.dumps(results))
''')


def _address_space_cap():
    """What the child may map: a Python with torch imported plus 1 GiB, far below any bomb's claim."""
    return 4 << 30 if sys.platform != 'linux' else (_vm_peak_after_torch() + (1 << 30))


def _vm_peak_after_torch():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmPeak:'):
                return int(line.split()[1]) * 1024 + (256 << 20)  # our own peak covers the child's imports
    return 4 << 30


def test_bombs_refused_fast_under_a_memory_cap(tmp_path):
    bombs = {
        'binbytes8': binbytes8(1 << 40), 'frame': frame(1 << 40), 'memo': long_binput(0xFFFFFFFF),
        'reconstruct': numpy_reconstruct((1 << 20, 1 << 14)), 'deep': nested_lists(2000),
        'dag': exponential_dag(200), 'cycle': self_referencing_list(),
        'storage': tensor_pickle([1, 2, 3, 4], 0, (4,), (1,), declared=1 << 36),
        'stride0': tensor_pickle(list(range(16)), 0, (1 << 17, 1 << 17), (0, 0)),
        'checkpoint.pt': legacy_storage_bytes([1, 2, 3, 4], declared=1 << 36),
    }
    paths = []
    for name, data in bombs.items():
        assert len(data) < 5000, name  # tiny files
        path = tmp_path / (name if name.endswith('.pt') else f'{name}.pkl')
        path.write_bytes(data)
        paths.append(str(path))
    child = subprocess.run([sys.executable, '-c', _CHILD, str(_address_space_cap()), *paths], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    for path in paths:
        outcome, seconds = results[path]
        assert outcome.startswith('refused: '), (path, outcome)
        assert seconds < 5, (path, seconds)
