"""Tests for torch_utils.persistence: the NVlabs pickle format (version 6) written and read back.

The expectations come from the shared docs (nvlabs-compat.md section 1): which globals a network
pickle references, what the meta dict holds, that each source text is stored once, and that
unpickling executes the embedded source in a fresh ``_imported_module_*`` module.
"""

import importlib
import inspect
import io
import os
import pickle
import pickletools
import subprocess
import sys
import uuid

import pytest
import torch

import dnnlib
from torch_utils import persistence
from training import networks_stylegan2 as networks

# ----------------------------------------------------------------------------
# Helpers.




def _tiny_generator(compat='ada', c_dim=0):
    common = dict(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=2))
    syn = dict(channel_base=64, channel_max=8, num_fp16_res=0, conv_clamp=None)
    G = networks.Generator(synthesis_kwargs=syn, **common) if compat == 'ada' else networks.Generator(**syn, **common)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)  # non-zero biases and noise strengths
    return G.eval()


def _tiny_discriminator(c_dim=2):
    return networks.Discriminator(c_dim=c_dim, img_resolution=8, img_channels=3, channel_base=64, channel_max=8,
                                  mapping_kwargs=dict(num_layers=2), compat='ada').eval()


def _generate(G, seed=0, n=2):
    z = torch.randn([n, G.z_dim], generator=torch.Generator().manual_seed(seed))
    c = torch.eye(max(G.c_dim, 1))[:n, :G.c_dim] if G.c_dim else None
    with torch.no_grad():
        return G(z, c, truncation_psi=0.8, noise_mode='const')


_STRING_OPS = {'SHORT_BINUNICODE', 'BINUNICODE', 'BINUNICODE8', 'UNICODE', 'SHORT_BINSTRING', 'BINSTRING', 'STRING'}


def _pickle_globals(data):
    """Every (module, name) a pickle imports, found by walking its opcodes (nothing is executed)."""
    memo = {}
    pushed = []  # What each push-type opcode left on the stack; strings only, else None.
    found = set()
    for op, arg, _ in pickletools.genops(data):
        if op.name == 'FRAME':
            continue
        if op.name == 'MEMOIZE':
            memo[len(memo)] = pushed[-1] if pushed else None
            continue
        if op.name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
            memo[arg] = pushed[-1] if pushed else None
            continue
        if op.name in _STRING_OPS:
            pushed.append(arg)
        elif op.name in ('GET', 'BINGET', 'LONG_BINGET'):
            pushed.append(memo.get(arg))
        elif op.name == 'GLOBAL':
            found.add(tuple(arg.split(' ', 1)))
            pushed.append(None)
        elif op.name == 'STACK_GLOBAL':
            module, name = pushed[-2], pushed[-1]
            assert isinstance(module, str) and isinstance(name, str), 'opcode walk lost track of STACK_GLOBAL'
            found.add((module, name))
            pushed.append(None)
        else:
            pushed.append(None)
    return found


class _MetaRecorder(pickle.Unpickler):
    """Reads a pickle, recording each persistent object's meta dict instead of executing its source."""

    def find_class(self, module, name):
        if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
            return lambda meta: ('persistent', meta)
        return super().find_class(module, name)


def _networks_source():
    with open(networks.__file__, encoding='utf-8') as f:
        return f.read()


def _base_module_name(obj):
    """The module that defines the class the persistent wrapper of ``obj`` derives from."""
    return type(obj).__mro__[1].__module__


_STANDALONE_SRC = '''
import torch
from torch_utils import persistence

MARK = 'standalone'


@persistence.persistent_class
class Scale(torch.nn.Module):
    def __init__(self, channels, factor=2.0, extra=None):
        super().__init__()
        self.factor = factor
        self.weight = torch.nn.Parameter(torch.arange(channels, dtype=torch.float32))

    def forward(self, x):
        return x * self.weight * self.factor
'''


@pytest.fixture
def standalone_module(tmp_path, monkeypatch):
    """A persistent class in a module file of its own, importable for the duration of one test."""
    name = f'_standalone_{uuid.uuid4().hex}'
    path = tmp_path / f'{name}.py'
    path.write_text(_STANDALONE_SRC, encoding='utf-8')
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module, path
    sys.modules.pop(name, None)

@pytest.fixture
def fresh_caches(monkeypatch):
    """Forget which sources belong to imported modules, as in a new process that never imported them."""
    monkeypatch.setattr(persistence, '_module_to_src_dict', {})
    monkeypatch.setattr(persistence, '_src_to_module_dict', {})

# ----------------------------------------------------------------------------
# What a pickle contains.


def test_pickle_references_only_documented_globals():
    nets = dict(G=_tiny_generator('ada', c_dim=2), D=_tiny_discriminator(), G_ema=_tiny_generator('sg3'),
                training_set_kwargs=dnnlib.EasyDict(class_name='x', resolution=8))
    data = pickle.dumps(nets, protocol=4)
    found = _pickle_globals(data)

    required = {('torch_utils.persistence', '_reconstruct_persistent_obj'), ('torch._utils', '_rebuild_tensor_v2'),
                ('torch._utils', '_rebuild_parameter'), ('torch.storage', '_load_from_bytes')}
    # numpy 2 writes numpy._core where numpy 1 wrote numpy.core.
    allowed = required | {('collections', 'OrderedDict'), ('dnnlib.util', 'EasyDict'), ('numpy', 'dtype'),
                          ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar')}
    assert required <= found
    assert found <= allowed, sorted(found - allowed)
    assert not any(module.startswith('training') for module, _ in found)
    assert ('dnnlib.util', 'EasyDict') in found


def test_plain_pickle_of_an_ordinary_module_names_its_class():
    # Contrast with the test above: without persistence the class is imported by name.
    found = _pickle_globals(pickle.dumps(torch.nn.Linear(2, 2)))
    assert ('torch.nn.modules.linear', 'Linear') in found


def test_meta_dict():
    G = _tiny_generator('ada')
    reduced = G.__reduce__()
    assert reduced[0] is persistence._reconstruct_persistent_obj
    assert len(reduced[1]) == 1 and (len(reduced) < 3 or reduced[2] is None)
    meta = reduced[1][0]
    assert set(meta) == {'type', 'version', 'module_src', 'class_name', 'state'}
    assert meta['type'] == 'class' and meta['version'] == 6 and persistence._version == 6
    assert meta['class_name'] == 'Generator'
    assert meta['module_src'] == _networks_source()
    state = meta['state']
    for key in ('_parameters', '_buffers', '_modules', 'training', '_init_args', '_init_kwargs', 'z_dim', 'num_ws'):
        assert key in state, key
    assert state['z_dim'] == 8 and state['num_ws'] == G.num_ws


def test_meta_as_stored_in_the_bytes():
    G = _tiny_generator('sg3', c_dim=2)
    tag, meta = _MetaRecorder(io.BytesIO(pickle.dumps(G))).load()
    assert tag == 'persistent'
    assert meta['class_name'] == 'Generator' and meta['version'] == 6 and meta['type'] == 'class'
    assert meta['module_src'] == _networks_source()
    assert meta['state']['_init_kwargs'] == G.init_kwargs

    # Every submodule is a persistent object of its own, named by its NVlabs class name.
    def walk(meta, path):
        yield path, meta['class_name']
        for key, child in meta['state']['_modules'].items():
            assert isinstance(child, tuple) and child[0] == 'persistent', f'{path}.{key} is not persistent'
            yield from walk(child[1], f'{path}.{key}')

    names = dict(walk(meta, 'G'))
    expected = {('G' + ('.' + name if name else '')): type(m).__name__ for name, m in G.named_modules()}
    assert names == expected
    assert names['G.synthesis.b8.conv0'] == 'SynthesisLayer' and names['G.mapping.embed'] == 'FullyConnectedLayer'
    tensor = meta['state']['_modules']['mapping'][1]['state']['_buffers']['w_avg']
    assert torch.equal(tensor, G.mapping.w_avg)


def test_each_source_is_stored_once():
    src = _networks_source().encode('utf-8')
    G = _tiny_generator('ada')
    for obj in (G, dict(G=G, D=_tiny_discriminator(), G_ema=_tiny_generator('ada'))):
        data = pickle.dumps(obj, protocol=4)
        assert data.count(src) == 1
        assert len(data) < 2 * len(src) + 200_000  # the dozens of submodules do not repeat it


def test_init_args_and_kwargs_are_deep_copies():
    mapping_kwargs = dict(num_layers=2)
    synthesis_kwargs = dict(channel_base=64, channel_max=8, resample_filter=[1, 3, 3, 1])
    G = networks.Generator(8, 0, 8, 8, 3, mapping_kwargs=mapping_kwargs, synthesis_kwargs=synthesis_kwargs)
    assert G.init_args == (8, 0, 8, 8, 3)
    assert G.init_kwargs == dict(mapping_kwargs=dict(num_layers=2),
                                 synthesis_kwargs=dict(channel_base=64, channel_max=8, resample_filter=[1, 3, 3, 1]))
    assert isinstance(G.init_kwargs, dnnlib.EasyDict) and G.init_kwargs.mapping_kwargs['num_layers'] == 2

    mapping_kwargs['num_layers'] = 7
    synthesis_kwargs['resample_filter'].append(9)
    assert G.init_kwargs.mapping_kwargs == dict(num_layers=2)
    assert G.init_kwargs.synthesis_kwargs['resample_filter'] == [1, 3, 3, 1]

    copy_ = G.init_kwargs
    copy_.synthesis_kwargs['channel_base'] = 1
    copy_['new'] = 1
    assert G.init_kwargs.synthesis_kwargs['channel_base'] == 64 and 'new' not in G.init_kwargs
    # The rebuilt network has the same architecture.
    rebuilt = networks.Generator(*G.init_args, **G.init_kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in G.state_dict().items()}


def test_unpicklable_constructor_argument_fails_at_construction(standalone_module):
    module, _ = standalone_module
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        module.Scale(3, extra=lambda: 0)

# ----------------------------------------------------------------------------
# Unpickling.


@pytest.mark.parametrize('compat', ['ada', 'sg3'])
def test_unpickle_runs_the_source_in_a_fresh_module(compat, fresh_caches):
    G = _tiny_generator(compat, c_dim=2)
    G2 = pickle.loads(pickle.dumps(G))
    assert type(G2) is not networks.Generator and type(G2).__name__ == 'Generator'
    module_name = _base_module_name(G2)
    assert module_name.startswith('_imported_module_') and module_name in sys.modules
    assert sys.modules[module_name] is not networks
    assert inspect.getmodule(type(G2).__mro__[1]) is sys.modules[module_name]
    assert sys.modules[module_name].Generator is type(G2)
    assert {_base_module_name(m) for m in G2.modules()} == {module_name}
    assert persistence.is_persistent(G2) and not G2.training
    assert G2.init_args == G.init_args and G2.init_kwargs == G.init_kwargs
    assert G2.state_dict().keys() == G.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(G2.state_dict().values(), G.state_dict().values()))
    assert torch.equal(_generate(G2), _generate(G))

    # The same source maps to the same module; re-pickling a loaded object keeps the source.
    G3 = pickle.loads(pickle.dumps(G))
    assert type(G3) is type(G2)
    meta = G2.__reduce__()[1][0]
    assert meta['module_src'] == _networks_source() and meta['class_name'] == 'Generator'
    G4 = pickle.loads(pickle.dumps(G2))
    assert torch.equal(_generate(G4), _generate(G))


def test_unpickle_does_not_call_init(fresh_caches):
    G = _tiny_generator('ada')
    data = pickle.dumps(G)
    # Construction draws random numbers (weights, noise_const); loading must not.
    torch.manual_seed(0)
    expected = torch.rand([])
    torch.manual_seed(0)
    pickle.loads(data)
    assert torch.rand([]) == expected


def test_same_process_reuses_the_imported_module():
    # A source equal to that of an imported module maps to that module: no exec, same classes.
    G = _tiny_generator('ada')
    assert type(pickle.loads(pickle.dumps(G))) is networks.Generator


def test_standalone_module_loads_in_a_new_process_after_its_file_is_gone(standalone_module, tmp_path):
    module, path = standalone_module
    net = module.Scale(4, factor=3.0)
    assert net.__reduce__()[1][0]['module_src'] == path.read_text(encoding='utf-8')
    pkl = tmp_path / 'net.pkl'
    pkl.write_bytes(pickle.dumps(net))
    path.unlink()

    script = (
        'import pickle, sys, torch\n'
        f'net = pickle.load(open({str(pkl)!r}, "rb"))\n'
        'base = type(net).__mro__[1]\n'
        'assert base.__module__.startswith("_imported_module_"), base.__module__\n'
        'assert sys.modules[base.__module__].MARK == "standalone"\n'
        'assert net.factor == 3.0 and net.init_args == (4,) and net.init_kwargs == dict(factor=3.0)\n'
        'out = net(torch.ones([2, 4]))\n'
        'assert torch.equal(out, torch.tensor([0.0, 3.0, 6.0, 9.0]).expand(2, 4)), out\n'
        'print("ok")\n'
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo, OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, '-c', script], cwd=str(tmp_path), env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-2000:]


def test_import_hook_sees_and_rewrites_meta(monkeypatch):
    monkeypatch.setattr(persistence, '_import_hooks', [])
    G = _tiny_generator('ada')
    data = pickle.dumps(G)
    seen = []

    def hook(meta):
        seen.append((meta.class_name, meta.version, meta.type, set(meta)))
        meta.module_src = meta.module_src + '\nHOOK_MARK = 42\n'
        return meta

    persistence.import_hook(hook)
    G2 = pickle.loads(data)
    assert sorted(name for name, *_ in seen) == sorted(type(m).__name__ for m in G.modules())
    assert all(version == 6 and kind == 'class' and keys == {'type', 'version', 'module_src', 'class_name', 'state'}
               for _, version, kind, keys in seen)
    assert sys.modules[_base_module_name(G2)].HOOK_MARK == 42
    assert torch.equal(_generate(G2), _generate(G))


def test_other_format_versions_are_refused():
    meta = dict(_tiny_generator('ada').__reduce__()[1][0], version=5)

    class Wrong:
        def __reduce__(self):
            return (persistence._reconstruct_persistent_obj, (meta,))

    with pytest.raises(ValueError, match='reads version 6, the file has version 5'):
        pickle.loads(pickle.dumps(Wrong()))


def test_is_persistent():
    G = _tiny_generator('ada')
    assert persistence.is_persistent(networks.Generator)
    assert persistence.is_persistent(G) and persistence.is_persistent(G.mapping.fc0)
    assert persistence.is_persistent(pickle.loads(pickle.dumps(G)))
    assert not persistence.is_persistent(torch.nn.Linear)
    assert not persistence.is_persistent(torch.nn.Linear(2, 2))
    assert not persistence.is_persistent(3)
    assert not persistence.is_persistent([G])  # unhashable
    assert not persistence.is_persistent({'G': G})
    # Decorating twice is a no-op.
    assert persistence.persistent_class(networks.Generator) is networks.Generator
