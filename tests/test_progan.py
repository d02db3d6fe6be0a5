"""ProGAN: TF release pickles converted safely, checked against a float64 reference of the documented math.

The pickles are written here from the format facts (a tuple (G, D, Gs) of ``tfutil.Network`` states, version
2, variables by name in TF layouts) with random weights, in a shuffled order. The reference below is plain
numpy float64 from the TF arrays: convolutions as sums of shifted slices, the fused up-convolution as a
scatter of its 4x4 taps, the fractional lod as TF's per-level ``lerp_clip`` loop.
"""

import contextlib
import os
import pickle
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import REPO_ROOT

import legacy
from sampling.images import load_png
from training import convert_progan, networks_progan

# ----------------------------------------------------------------------------
# Writing ProGAN-layout pickles.


class Network:
    """Pickles like ProGAN's tfutil.Network: the class, then BUILD with the state dict from __getstate__."""

    def __init__(self, state):
        self._state = state

    def __getstate__(self):
        return self._state


Network.__module__ = 'tfutil'


@contextlib.contextmanager
def _module(name, **attrs):
    """Make ``name`` importable (for pickle.dumps) with ``attrs``, and undo it afterwards."""
    saved = sys.modules.get(name)
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved


def _nf(stage, fmap_base, fmap_max):
    return min(int(fmap_base / 2.0 ** stage), fmap_max)


def progan_variables(seed, resolution=32, channels=3, latent=16, labels=0, fmap_base=64, fmap_max=16, fused=True,
                     lod=0.0):
    """Random G_paper variables (TF names and layouts), shuffled: the converter must match them by name."""
    rng = np.random.default_rng(seed)
    log2 = int(np.log2(resolution))

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    nf1 = _nf(1, fmap_base, fmap_max)
    out = [('4x4/Dense/weight', normal(latent + labels, nf1 * 16)), ('4x4/Dense/bias', normal(nf1, scale=0.2)),
           ('4x4/Conv/weight', normal(3, 3, nf1, nf1)), ('4x4/Conv/bias', normal(nf1, scale=0.2))]
    for r in range(3, log2 + 1):
        cin, cout, scope = _nf(r - 2, fmap_base, fmap_max), _nf(r - 1, fmap_base, fmap_max), f'{2 ** r}x{2 ** r}'
        if fused:
            out.append((f'{scope}/Conv0_up/weight', normal(3, 3, cout, cin)))
            out.append((f'{scope}/Conv0_up/bias', normal(cout, scale=0.2)))
        else:
            out.append((f'{scope}/Conv0/weight', normal(3, 3, cin, cout)))
            out.append((f'{scope}/Conv0/bias', normal(cout, scale=0.2)))
        out += [(f'{scope}/Conv1/weight', normal(3, 3, cout, cout)), (f'{scope}/Conv1/bias', normal(cout, scale=0.2))]
    for r in range(2, log2 + 1):
        out += [(f'ToRGB_lod{log2 - r}/weight', normal(1, 1, _nf(r - 1, fmap_base, fmap_max), channels)),
                (f'ToRGB_lod{log2 - r}/bias', normal(channels, scale=0.2))]
    out.append(('lod', np.array(lod, dtype=np.float32)))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def g_kwargs(resolution=32, channels=3, labels=0, fmap_base=64, fmap_max=16, fused=True, **extra):
    return dict(num_channels=channels, resolution=resolution, label_size=labels, fmap_base=fmap_base,
                fmap_max=fmap_max, fused_scale=fused, **extra)


def tf_state(name, func_name, kwargs, variables, version=2, src='# the networks module, never run by us\n'):
    return dict(version=version, name=name, static_kwargs=dict(kwargs), build_module_src=src,
                build_func_name=func_name, variables=list(variables))


def progan_pickle(G_state, Gs_state=None, D_state=None, protocol=4):
    Gs_state = Gs_state or dict(G_state, name='Gs')
    D_state = D_state or tf_state('D', 'networks.D_paper', dict(resolution=32),
                                  [('FromRGB_lod0/weight', np.ones([1, 1, 3, 4], np.float32))])
    with _module('tfutil', Network=Network):
        return pickle.dumps((Network(G_state), Network(D_state), Network(Gs_state)), protocol=protocol)


def write_progan(path, variables, kwargs, **state_kwargs):
    path.write_bytes(progan_pickle(tf_state('G', 'networks.G_paper', kwargs, variables, **state_kwargs)))
    return str(path)


def load(path, **kwargs):
    with open(path, 'rb') as f, warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*D_paper')
        return legacy.load_network_pkl(f, **kwargs)

# ----------------------------------------------------------------------------
# Independent float64 reference of the documented forward math, from the TF arrays.


def _pn(x):
    return x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-8)


def _lrelu(x):
    return np.where(x >= 0, x, 0.2 * x)


def _conv_same(x, w, b, gain):
    """SAME correlation of x [N, C, H, W] with an HWIO kernel, weights scaled by gain / sqrt(kh * kw * C)."""
    kh, kw, cin, _cout = w.shape
    w = w.astype(np.float64) * gain / np.sqrt(kh * kw * cin)
    p = kh // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    h, wd = x.shape[2:]
    out = sum(np.einsum('nchw,co->nohw', xp[:, :, a:a + h, c:c + wd], w[a, c]) for a in range(kh) for c in range(kw))
    return out + b.astype(np.float64)[None, :, None, None]


def _conv_up_fused(x, w, b):
    """TF fused_scale: the [3, 3, out, in] kernel padded, summed over 4 shifts, then a stride-2 SAME transposed
    conv, written as its definition: input pixel (i, j) adds x[i, j] . w4[a, c] to output pixel (2i+a-1, 2j+c-1)."""
    w = w.astype(np.float64) * np.sqrt(2) / np.sqrt(9 * w.shape[3])
    w = np.pad(w, ((1, 1), (1, 1), (0, 0), (0, 0)))
    w4 = w[1:, 1:] + w[:-1, 1:] + w[1:, :-1] + w[:-1, :-1]
    n, _c, h, wd = x.shape
    out = np.zeros([n, w4.shape[2], 2 * h + 2, 2 * wd + 2])
    for a in range(4):
        for c in range(4):
            out[:, :, a:a + 2 * h:2, c:c + 2 * wd:2] += np.einsum('nchw,oc->nohw', x, w4[a, c])
    return out[:, :, 1:2 * h + 1, 1:2 * wd + 1] + b.astype(np.float64)[None, :, None, None]


def _upscale(x):
    return x.repeat(2, axis=2).repeat(2, axis=3)


def reference_images(variables, z, c=None, psi=1.0):
    """float64 images of G_paper (linear structure) from TF variables, latent z [N, latent], labels c [N, labels]."""
    v = dict(variables)
    log2 = max(int(name[len('ToRGB_lod'):].split('/')[0]) for name in v if name.startswith('ToRGB_lod')) + 2
    lod = float(v['lod'])
    x = np.asarray(z, np.float64)
    if c is not None and c.shape[1]:
        x = np.concatenate([x, np.asarray(c, np.float64)], axis=1)
    x = _pn(x)
    d = z.shape[1]
    x[:, :d] *= psi
    if c is not None and c.shape[1]:  # The class centre: z = 0 with the label as PN scales it for |z|^2 = d.
        centre = c * np.sqrt((d + c.shape[1]) / (d + np.sum(c * c, axis=1, keepdims=True)))
        x[:, d:] = centre + psi * (x[:, d:] - centre)
    dense = v['4x4/Dense/weight'].astype(np.float64) * (np.sqrt(2) / 4) / np.sqrt(x.shape[1])
    ch = v['4x4/Dense/bias'].shape[0]
    h = (x @ dense).reshape(-1, ch, 4, 4) + v['4x4/Dense/bias'].astype(np.float64)[None, :, None, None]
    h = _pn(_lrelu(h))
    h = _pn(_lrelu(_conv_same(h, v['4x4/Conv/weight'], v['4x4/Conv/bias'], np.sqrt(2))))
    img = _conv_same(h, v[f'ToRGB_lod{log2 - 2}/weight'], v[f'ToRGB_lod{log2 - 2}/bias'], 1.0)
    for r in range(3, log2 + 1):
        scope = f'{2 ** r}x{2 ** r}'
        if f'{scope}/Conv0_up/weight' in v:
            h = _conv_up_fused(h, v[f'{scope}/Conv0_up/weight'], v[f'{scope}/Conv0_up/bias'])
        else:
            h = _conv_same(_upscale(h), v[f'{scope}/Conv0/weight'], v[f'{scope}/Conv0/bias'], np.sqrt(2))
        h = _pn(_lrelu(h))
        h = _pn(_lrelu(_conv_same(h, v[f'{scope}/Conv1/weight'], v[f'{scope}/Conv1/bias'], np.sqrt(2))))
        level = log2 - r
        rgb = _conv_same(h, v[f'ToRGB_lod{level}/weight'], v[f'ToRGB_lod{level}/bias'], 1.0)
        t = np.clip(lod - level, 0.0, 1.0)
        img = rgb + (_upscale(img) - rgb) * t  # lerp_clip(torgb(res), upscale(previous), lod - level)
    return img


def _ours(G, z, c=None, psi=1.0):
    c = torch.zeros([len(z), G.c_dim]) if c is None else torch.from_numpy(c).float()
    with torch.no_grad():
        return G(torch.from_numpy(z).float(), c, truncation_psi=psi).double().numpy()

# ----------------------------------------------------------------------------
# Images.


CASES = {
    'fused':            dict(fused=True),
    'unfused':          dict(fused=False),
    'conditional':      dict(fused=False, labels=3, resolution=16),
    'partly_grown':     dict(fused=True, lod=1.3),
    'half_faded':       dict(fused=False, lod=0.5),
    'at_a_level':       dict(fused=True, lod=2.0),
}


@pytest.mark.parametrize('case', list(CASES))
def test_images_match_the_float64_reference(case, tmp_path):
    spec = dict(CASES[case])
    lod, fused, labels, res = spec.pop('lod', 0.0), spec['fused'], spec.get('labels', 0), spec.get('resolution', 32)
    variables = progan_variables(seed=len(case), lod=lod, **spec)
    data = load(write_progan(tmp_path / 'tf.pkl', variables, g_kwargs(**spec)))
    G = data['G_ema']
    assert isinstance(G, networks_progan.Generator) and data['D'] is None
    assert (G.z_dim, G.c_dim, G.img_resolution, G.img_channels) == (16, labels, res, 3)
    assert float(G.lod) == pytest.approx(lod)
    assert [getattr(G, f'b{2 ** r}').conv0.up for r in range(3, G.resolution_log2 + 1)] == \
        ['fused' if fused else 'nearest'] * (G.resolution_log2 - 2)

    rng = np.random.default_rng(1)
    z = rng.standard_normal([4, 16])
    c = np.eye(labels)[rng.integers(0, labels, 4)] if labels else np.zeros([4, 0])
    expected = reference_images(variables, z, c)
    assert expected.shape == (4, 3, res, res) and expected.std() > 0.3
    np.testing.assert_allclose(_ours(G, z, c), expected, atol=2e-4, rtol=0)
    # G (the training copy) is converted too, from its own variables.
    np.testing.assert_allclose(_ours(data['G'], z, c), expected, atol=2e-4, rtol=0)


def test_partly_grown_image_is_blocky_below_the_grown_level(tmp_path):
    variables = progan_variables(seed=5, lod=1.0)  # 32 px network grown to 16 px: every 2x2 block is constant.
    G = load(write_progan(tmp_path / 'tf.pkl', variables, g_kwargs()))['G_ema']
    img = _ours(G, np.random.default_rng(0).standard_normal([2, 16]))
    np.testing.assert_array_equal(img, _upscale(img[:, :, ::2, ::2]))


def test_fused_scale_is_nearest_upsampling_with_the_flipped_kernel(tmp_path):
    """The 4-shift sum makes the fused transposed conv equal to repeat-then-3x3-conv (kernel flipped, as
    a transposed conv applies its kernel mirrored): a check of the pixel alignment of both paths."""
    unfused = dict(progan_variables(seed=7, fused=False))
    fused = {}
    for name, value in unfused.items():
        if '/Conv0/' in name:
            name = name.replace('/Conv0/', '/Conv0_up/')
            value = value[::-1, ::-1].transpose(0, 1, 3, 2) if value.ndim == 4 else value
        fused[name] = np.array(value, order="C")
    G_unfused = load(write_progan(tmp_path / 'a.pkl', unfused.items(), g_kwargs(fused=False)))['G_ema']
    G_fused = load(write_progan(tmp_path / 'b.pkl', fused.items(), g_kwargs(fused=True)))['G_ema']
    z = np.random.default_rng(2).standard_normal([3, 16])
    np.testing.assert_allclose(_ours(G_fused, z), _ours(G_unfused, z), atol=2e-5, rtol=0)
    np.testing.assert_allclose(reference_images(list(fused.items()), z), reference_images(list(unfused.items()), z),
                               atol=1e-10, rtol=0)


def test_celebahq_release_layout_from_the_facts():
    """The variables the converter expects for the CelebA-HQ release's arguments are those documented."""
    with torch.device('meta'):
        G = networks_progan.Generator(z_dim=512, img_resolution=1024, img_channels=3, fused_scale=False)
    expected = {'4x4/Dense/weight': (512, 8192), '4x4/Dense/bias': (512,), '4x4/Conv/weight': (3, 3, 512, 512),
                '4x4/Conv/bias': (512,), 'lod': ()}
    channels = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    for r in [8, 16, 32, 64, 128, 256, 512, 1024]:
        cin, cout = channels[r // 2], channels[r]
        expected.update({f'{r}x{r}/Conv0/weight': (3, 3, cin, cout), f'{r}x{r}/Conv0/bias': (cout,),
                         f'{r}x{r}/Conv1/weight': (3, 3, cout, cout), f'{r}x{r}/Conv1/bias': (cout,)})
    for level, r in enumerate([1024, 512, 256, 128, 64, 32, 16, 8, 4]):
        expected.update({f'ToRGB_lod{level}/weight': (1, 1, channels[r], 3), f'ToRGB_lod{level}/bias': (3,)})
    layout = convert_progan.tf_variable_layout(G)
    assert {tf_name: shape for tf_name, _layout, shape in layout.values()} == expected
    # 23.1 M trainable parameters, the generator size the ProGAN paper gives for 1024 x 1024.
    assert sum(int(np.prod(shape)) for name, shape in expected.items() if name != 'lod') == 23_079_115


def test_static_kwargs_defaults_and_inferred_sizes(tmp_path):
    """G_paper's defaults apply (latent nf(0), label 0, fused_scale True); resolution and channels follow the
    variables when the arguments leave them out."""
    variables = progan_variables(seed=3, resolution=16, channels=1, fused=True)
    G = load(write_progan(tmp_path / 'tf.pkl', variables, dict(fmap_base=64, fmap_max=16)))['G_ema']
    assert (G.z_dim, G.c_dim, G.img_resolution, G.img_channels) == (16, 0, 16, 1)
    z = np.random.default_rng(3).standard_normal([2, 16])
    np.testing.assert_allclose(_ours(G, z), reference_images(variables, z), atol=2e-4, rtol=0)

@pytest.mark.parametrize('protocol', [2, 3])
def test_older_pickle_protocols(tmp_path, protocol):
    variables = progan_variables(seed=4, resolution=16)
    path = tmp_path / 'tf.pkl'
    path.write_bytes(progan_pickle(tf_state('G', 'G_paper', g_kwargs(resolution=16), variables), protocol=protocol))
    z = np.random.default_rng(4).standard_normal([2, 16])
    np.testing.assert_allclose(_ours(load(path)['G_ema'], z), reference_images(variables, z), atol=2e-4, rtol=0)

# ----------------------------------------------------------------------------
# Truncation in the normalised latent.


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp('progan')
    out = {}
    for name, labels in (('uncond', 0), ('cond', 3)):
        variables = progan_variables(seed=11 + labels, resolution=16, labels=labels)
        tf_path = write_progan(folder / f'{name}-tf.pkl', variables, g_kwargs(resolution=16, labels=labels))
        out[name] = dict(variables=variables, tf=tf_path, G=load(tf_path)['G_ema'])
    return out


def test_truncation_scales_the_normalised_latent_toward_its_mean(converted):
    G, variables = converted['uncond']['G'], converted['uncond']['variables']
    z = np.random.default_rng(4).standard_normal([5, 16])
    np.testing.assert_allclose(_ours(G, z, psi=0.6), reference_images(variables, z, psi=0.6), atol=2e-4, rtol=0)
    # Scaling z does nothing (the latent is normalised): truncating z itself would be no truncation.
    assert G.normalizes_z
    np.testing.assert_allclose(_ours(G, 3 * z, psi=0.6), _ours(G, z, psi=0.6), atol=1e-5, rtol=0)
    # psi = 0 is the image of the mean latent: the same for every z; smaller psi, closer to it.
    mean_image = _ours(G, z, psi=0)
    np.testing.assert_allclose(mean_image, np.broadcast_to(mean_image[:1], mean_image.shape), atol=1e-6, rtol=0)
    distances = [np.abs(_ours(G, z, psi=psi) - mean_image).mean() for psi in (1.0, 0.7, 0.4, 0.1)]
    assert all(a > b for a, b in zip(distances, distances[1:]))
    with pytest.raises(ValueError, match='truncation_cutoff'):
        G(torch.zeros([1, 16]), None, truncation_cutoff=4)


def test_truncation_keeps_the_class_of_a_conditional_network(converted):
    G, variables = converted['cond']['G'], converted['cond']['variables']
    assert not G.normalizes_z  # Scaling z changes its share of the norm it shares with the label.
    rng = np.random.default_rng(5)
    z, c = rng.standard_normal([6, 16]), np.eye(3)[[0, 0, 1, 1, 2, 2]]
    np.testing.assert_allclose(_ours(G, z, c, psi=0.5), reference_images(variables, z, c, psi=0.5), atol=2e-4, rtol=0)
    at_mean = _ours(G, z, c, psi=0)
    np.testing.assert_allclose(at_mean[0::2], at_mean[1::2], atol=1e-6, rtol=0)  # One image per class.
    assert np.abs(at_mean[0] - at_mean[2]).mean() > 1e-2 and np.abs(at_mean[2] - at_mean[4]).mean() > 1e-2

# ----------------------------------------------------------------------------
# Our own pickles and the command line.


def test_our_pickles_save_and_reload_in_safe_mode(converted, tmp_path):
    G = converted['cond']['G']
    path = tmp_path / 'ours.pkl'
    legacy.save_network_pkl(path, G_ema=G)
    z, c = np.random.default_rng(6).standard_normal([3, 16]), np.eye(3)
    for allow_code in (False, True):
        G2 = load(path, allow_code=allow_code)['G_ema']
        assert G2.init_kwargs == G.init_kwargs
        np.testing.assert_array_equal(_ours(G2, z, c), _ours(G, z, c))


def test_safe_loading_knows_every_class_of_the_module():
    import inspect
    import re
    classes = re.findall(r'^class\s+(\w+)', inspect.getsource(networks_progan), flags=re.MULTILINE)
    assert frozenset(classes) == convert_progan.NETWORK_CLASSES


def test_tampered_own_pickle_is_refused(converted, tmp_path):
    G = converted['uncond']['G']
    bad = type(G)(**G.init_kwargs)
    bad.b8.conv0.up = 'nearest' if bad.b8.conv0.up == 'fused' else 'fused'  # Not what its arguments build.
    path = tmp_path / 'bad.pkl'
    legacy.save_network_pkl(path, G_ema=bad)
    with pytest.raises(legacy.NetworkLoadError, match=r'differs from ours at G_ema\.b8\.conv0.*up'):
        load(path)


def test_legacy_command_line_converts_a_release(converted, tmp_path):
    dest = tmp_path / 'converted.pkl'
    result = subprocess.run([sys.executable, 'legacy.py', '--source', converted['uncond']['tf'], '--dest', str(dest)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    z = np.random.default_rng(7).standard_normal([2, 16])
    np.testing.assert_array_equal(_ours(load(dest)['G_ema'], z), _ours(converted['uncond']['G'], z))

    theano = tmp_path / 'theano.pkl'
    with _module('network', Network=type('Network', (), {'__module__': 'network'})):
        theano.write_bytes(pickle.dumps(sys.modules['network'].Network(), protocol=2))
    result = CliRunner().invoke(legacy.convert_network_pickle, ['--source', str(theano), '--dest',
                                                                str(tmp_path / 'x.pkl')])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert len(result.output.strip().splitlines()) == 1 and 'Theano-era ProGAN pickle' in result.output
    assert not (tmp_path / 'x.pkl').exists()


def test_force_fp16_refuses_progan(converted):
    with pytest.raises(legacy.NetworkLoadError, match='StyleGAN networks only'):
        load(converted['uncond']['tf'], force_fp16=True)

# ----------------------------------------------------------------------------
# Refusals and malicious files.


def _drop(name):
    return lambda v, k: ([item for item in v if item[0] != name], k)


def _reshape(name):
    return lambda v, k: ([(n, x[..., :-1] if n == name else x) for n, x in v], k)


REFUSALS = {
    'missing variable':     (_drop('16x16/Conv1/bias'), r'16x16/Conv1/bias is missing'),
    'wrong shape':          (_reshape('8x8/Conv0_up/weight'), r'8x8/Conv0_up/weight has shape'),
    'extra variable':       (lambda v, k: (v + [('32x32/Conv2/weight', np.zeros([3], np.float32))], k),
                             r'32x32/Conv2/weight have no counterpart'),
    'fused_scale mismatch': (lambda v, k: (v, dict(k, fused_scale=False)), r'8x8/Conv0/weight is missing'),
    'unknown argument':     (lambda v, k: (v, dict(k, use_magic=True)), r'unknown G_paper argument\(s\) use_magic'),
    'float16 graph':        (lambda v, k: (v, dict(k, dtype='float16')), r"dtype='float16' is not supported"),
    'bad argument type':    (lambda v, k: (v, dict(k, resolution='32')), r"resolution='32' has type str, expected int"),
    'huge fmap_decay':      (lambda v, k: (v, dict(k, fmap_decay=1e308)), r'fmap_decay = 1e\+308 is out of range'),
    'lod not a number':     (lambda v, k: ([(n, np.array(np.nan, np.float32) if n == 'lod' else x) for n, x in v], k),
                             r'TF variable lod is nan, not a level of detail'),
    'integer variable':     (lambda v, k: ([(n, x.astype(np.int32) if n == 'lod' else x) for n, x in v], k),
                             r'lod is not a float array but a ndarray of int32'),
}


@pytest.mark.parametrize('case', list(REFUSALS))
def test_refusals_are_one_line(case, tmp_path):
    mutate, message = REFUSALS[case]
    variables, kwargs = mutate(progan_variables(seed=1), g_kwargs())
    path = write_progan(tmp_path / 'tf.pkl', variables, kwargs)
    with pytest.raises(legacy.NetworkLoadError, match=message) as info:
        load(path)
    assert '\n' not in str(info.value) and 'tf.pkl: G' in str(info.value)


@pytest.mark.parametrize('change, message', [
    (dict(version=3), r'state version 3; this converter reads version 2'),
    (dict(build_func_name='networks.G_synthesis'), r'built by G_synthesis; only ProGAN generators \(G_paper\)'),
    (dict(components={}), r"unknown entries \['components'\]"),
])
def test_refuses_other_network_states(change, message, tmp_path):
    state = dict(tf_state('G', 'networks.G_paper', g_kwargs(), progan_variables(seed=1)), **change)
    path = tmp_path / 'tf.pkl'
    path.write_bytes(progan_pickle(state))
    with pytest.raises(legacy.NetworkLoadError, match=message):
        load(path)


class _ExecPayload:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def test_malicious_progan_pickles_run_nothing(tmp_path):
    marker = tmp_path / 'pwned'
    code = f'open({str(marker)!r}, "w").write("pwned")'

    # Payload in build_module_src: TF's loader would exec it; we never do, with or without allow_code.
    path = write_progan(tmp_path / 'src.pkl', progan_variables(seed=2, resolution=16), g_kwargs(resolution=16),
                        src=code + '\n')
    for allow_code in (False, True):
        assert isinstance(load(path, allow_code=allow_code)['G_ema'], networks_progan.Generator)
    assert not marker.exists()

    # A __reduce__ payload, as a variable and as an argument: the unpickler refuses builtins.exec.
    variables = progan_variables(seed=2, resolution=16) + [('evil', _ExecPayload(code))]
    kwargs = dict(g_kwargs(resolution=16), fmap_decay=_ExecPayload(code))
    for name, (v, k) in (('var.pkl', (variables, g_kwargs(resolution=16))),
                         ('arg.pkl', (progan_variables(seed=2, resolution=16), kwargs))):
        path = write_progan(tmp_path / name, v, k)
        with pytest.raises(legacy.NetworkLoadError, match=r'references builtins\.exec'):
            load(path)
    assert not marker.exists()

    # The tfutil.Network global called with arguments (REDUCE instead of NEWOBJ + BUILD) builds nothing.
    class Called:
        def __reduce__(self):
            return Network, (code,)
    with _module('tfutil', Network=Network):
        (tmp_path / 'call.pkl').write_bytes(pickle.dumps((Called(), Called(), Called()), protocol=4))
    with pytest.raises(legacy.NetworkLoadError, match='not a readable network pickle'):
        load(tmp_path / 'call.pkl')
    assert not marker.exists()

# ----------------------------------------------------------------------------
# Every script on a tiny converted ProGAN.


def _uint8(img):
    return (torch.as_tensor(img).permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture(scope='module')
def script_net(converted, tmp_path_factory):
    """The unconditional tiny release converted with legacy.py's command (in this process) to our format."""
    path = tmp_path_factory.mktemp('scripts') / 'progan.pkl'
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*D_paper')
        result = CliRunner().invoke(legacy.convert_network_pickle,
                                    ['--source', converted['uncond']['tf'], '--dest', str(path), '--g-ema-only'])
    assert result.exit_code == 0, result.output
    return str(path), converted['uncond']['G']


def test_generate_py(script_net, tmp_path):
    import generate
    path, G = script_net
    result = CliRunner().invoke(generate.main, ['--network', path, '--seeds', '0-3', '--trunc', '0.7',
                                                '--outdir', str(tmp_path), '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    z = np.stack([np.random.RandomState(seed).randn(G.z_dim) for seed in range(4)])
    expected = _uint8(_ours(G, z, psi=0.7))
    for seed in range(4):
        got = load_png(tmp_path / f'seed{seed:04d}.png').astype(int)
        assert np.abs(got - expected[seed].astype(int)).max() <= 1


def test_generate_hubness_py_in_z(script_net, tmp_path):
    import generate_hubness
    from sampling.latents import LatentBank
    path, G = script_net
    result = CliRunner().invoke(generate_hubness.main, [
        '--network', path, '--space', 'z', '--num', '3', '--top', '3', '--batch-size', '100', '--k', '5',
        '--outdir', str(tmp_path), '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    bank = LatentBank.load(os.path.join(tmp_path, 'hubs.npz'))
    assert len(bank.latents) == 3 and bank.meta['space'] == 'z'
    expected = _uint8(_ours(G, np.asarray(bank.latents, np.float64)))
    for i in range(3):
        got = load_png(tmp_path / f'hub{i:06d}.png').astype(int)
        assert np.abs(got - expected[i].astype(int)).max() <= 1


def test_volume_and_magnet_scripts(script_net, tmp_path):
    import compute_volume_scalars
    import generate_magnet
    path, G = script_net
    result = CliRunner().invoke(compute_volume_scalars.main, [
        '--network', path, '--num', '2', '--space', 'pixel', '--resize', '8', '--method', 'exact', '--top-k', '4',
        '--outdir', str(tmp_path / 'vol'), '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / 'vol' / 'volumes.npz', allow_pickle=False) as data:
        svds, z = data['svds'], data['latents']
    assert svds.shape == (2, 4)
    for row in range(2):  # Independent: autograd Jacobian of the area-resized image, float64 SVD.
        def f(v):
            img = G(v[None], None)
            return torch.nn.functional.avg_pool2d(img, 2).reshape(-1)
        jac = torch.autograd.functional.jacobian(f, torch.from_numpy(z[row])).double()
        np.testing.assert_allclose(svds[row], torch.linalg.svdvals(jac)[:4].numpy(), rtol=1e-4)

    result = CliRunner().invoke(generate_magnet.main, [
        '--network', path, '--bank', str(tmp_path / 'vol' / 'volumes.npz'), '--num', '4', '--rho', '-1',
        '--outdir', str(tmp_path / 'magnet'), '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    from sampling.latents import LatentBank
    chosen = LatentBank.load(os.path.join(tmp_path, 'magnet', 'selection.npz')).latents
    expected = _uint8(_ours(G, np.asarray(chosen, np.float64)))
    images = sorted(name for name in os.listdir(tmp_path / 'magnet') if name.endswith('.png'))
    assert len(images) == 4
    for i, name in enumerate(images):
        assert np.abs(load_png(tmp_path / 'magnet' / name).astype(int) - expected[i].astype(int)).max() <= 1


@pytest.mark.usefixtures('isolated_metrics')
def test_calc_metrics_py(script_net, tmp_path):
    from test_calc_metrics import TinyDetector, _write_images

    import calc_metrics
    path, G = script_net
    real = tmp_path / 'real'
    _write_images(real, _uint8(_ours(G, np.random.default_rng(8).standard_normal([60, G.z_dim]), psi=0.5)))
    detector = str(tmp_path / 'tiny.pt')
    torch.jit.save(torch.jit.script(TinyDetector()), detector)
    precision = {}
    for spec in ('random', 'trunc:0.5'):
        result = CliRunner().invoke(calc_metrics.main, [
            '--network', path, '--metrics', 'pr200_3_full', '--sampler', spec, '--data', str(real),
            '--detector', detector, '--device', 'cpu', '--workers', '0', '--verbose', 'false'])
        assert result.exit_code == 0, result.output
        line = next(line for line in result.stdout.splitlines() if line.startswith('{'))
        precision[spec] = __import__('json').loads(line)['results']['pr200_3_full_precision']
    assert precision['trunc:0.5'] > precision['random']  # Real images are the network's own at psi 0.5.


@pytest.mark.usefixtures('isolated_metrics')
def test_ppl_in_z_and_not_in_w(converted):
    from test_perceptual_path_length import ProjectionLPIPS, _filtered_mean_reference, _slerp_reference

    from metrics import metric_utils, perceptual_path_length
    G, variables = converted['uncond']['G'], converted['uncond']['variables']
    proj = np.random.default_rng(9).standard_normal([10, 3 * 16 * 16]) / 100
    path = os.path.join(os.path.dirname(converted['uncond']['tf']), 'lpips.pt')
    torch.jit.save(torch.jit.script(ProjectionLPIPS(torch.from_numpy(proj).float())), path)
    opts = metric_utils.MetricOptions(G=G, seed=7, detectors=dict(vgg16=path))
    got = perceptual_path_length.compute_ppl(opts, num_samples=24, epsilon=1e-2, space='z', sampling='end',
                                             crop=False, batch_size=2)
    z = np.random.RandomState(7).randn(48, 16)  # The random sampler's latents: NVlabs' seeding.
    emb = [((reference_images(variables, _slerp_reference(z[0::2], z[1::2], np.full(24, t))) + 1) * 127.5)
           .reshape(24, -1) @ proj.T for t in (0.0, 1e-2)]
    expected = _filtered_mean_reference(((emb[0] - emb[1]) ** 2).sum(axis=1) / 1e-4)
    assert got == pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match='PPL in W needs a generator with a mapping network'):
        perceptual_path_length.compute_ppl(opts, num_samples=4, epsilon=1e-2, space='w', sampling='end', crop=False,
                                           batch_size=2)
