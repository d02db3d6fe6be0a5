"""Tests for dnnlib.util: EasyDict, cache directory rules, open_url (against a local HTTP server), helpers."""

import collections
import copy
import hashlib
import io
import operator
import os
import pickle

import pytest
from helpers import LocalHTTPServer, Reply

import dnnlib
from dnnlib import util


@pytest.fixture(scope='module')
def server():
    srv = LocalHTTPServer()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No proxies, no real cache root, no waiting between retries; set_cache_dir() restored afterwards."""
    for var in ['http_proxy', 'https_proxy', 'all_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY']:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    monkeypatch.setattr(util, '_dnnlib_cache_dir', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'env-cache'))
    monkeypatch.setattr(util, '_retry_delay', 0.0)


def _md5(text):
    return hashlib.md5(text.encode('utf-8')).hexdigest()


# ----------------------------------------------------------------------------
# EasyDict


def test_easydict_attribute_access():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d['b'] == 2 and d.a == 1
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        _ = d.missing
    assert dnnlib.EasyDict is util.EasyDict


def test_easydict_pickles_as_dnnlib_util_easydict():
    d = util.EasyDict(class_name='training.dataset.ImageFolderDataset', nested=util.EasyDict(x=[1, 2]))
    data = pickle.dumps(d, protocol=4)
    assert b'dnnlib.util' in data and b'EasyDict' in data
    back = pickle.loads(data)
    assert type(back) is util.EasyDict and type(back.nested) is util.EasyDict
    assert back == {'class_name': 'training.dataset.ImageFolderDataset', 'nested': {'x': [1, 2]}}
    deep = copy.deepcopy(d)
    deep.nested.x.append(3)
    assert d.nested.x == [1, 2]


# ----------------------------------------------------------------------------
# Cache directory precedence


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('USERPROFILE', str(tmp_path / 'profile'))
    assert util.make_cache_dir_path('downloads') == os.path.join(str(tmp_path / 'env-cache'), 'downloads')
    util.set_cache_dir(str(tmp_path / 'explicit'))
    assert util.make_cache_dir_path('a', 'b') == os.path.join(str(tmp_path / 'explicit'), 'a', 'b')
    util.set_cache_dir(None)
    monkeypatch.delenv('DNNLIB_CACHE_DIR')
    assert util.make_cache_dir_path('x') == os.path.join(str(tmp_path / 'home'), '.cache', 'dnnlib', 'x')
    monkeypatch.delenv('HOME')
    assert util.make_cache_dir_path('x') == os.path.join(str(tmp_path / 'profile'), '.cache', 'dnnlib', 'x')
    monkeypatch.delenv('USERPROFILE')
    monkeypatch.setattr(util.tempfile, 'gettempdir', lambda: str(tmp_path / 'tmp'))
    assert util.make_cache_dir_path('x') == os.path.join(str(tmp_path / 'tmp'), '.cache', 'dnnlib', 'x')


def test_download_lands_in_env_cache_then_set_cache_dir_wins(server, tmp_path):
    url = server.url('/prec/model.pkl')
    server.routes['/prec/model.pkl'] = [Reply(b'weights')]
    with util.open_url(url, verbose=False) as f:
        assert f.read() == b'weights'
    assert os.listdir(tmp_path / 'env-cache' / 'downloads') == [f'{_md5(url)}_model.pkl']

    util.set_cache_dir(str(tmp_path / 'explicit'))
    path = util.open_url(url, verbose=False, return_filename=True)
    assert path == os.path.join(str(tmp_path / 'explicit'), 'downloads', f'{_md5(url)}_model.pkl')
    assert server.hits['/prec/model.pkl'] == 2  # a different cache root is a different cache


# ----------------------------------------------------------------------------
# open_url over HTTP


def test_second_open_is_served_from_cache(server, tmp_path):
    url = server.url('/cache/net.pkl')
    server.routes['/cache/net.pkl'] = [Reply(b'first'), Reply(b'second')]
    for _ in range(3):
        with util.open_url(url, cache_dir=str(tmp_path / 'c'), verbose=False) as f:
            assert f.read() == b'first'
    assert server.hits['/cache/net.pkl'] == 1


def test_cache_file_name_is_md5_and_sanitised_url_name(server, tmp_path):
    path = '/some%20dir/we%21rd%20name%2Bv1.pkl?download=1'
    url = server.url(path)
    server.routes[path] = [Reply(b'x' * 10)]
    got = util.open_url(url, cache_dir=str(tmp_path), verbose=False, return_filename=True)
    assert os.path.basename(got) == f'{_md5(url)}_we_rd_name_v1.pkl'
    assert os.listdir(tmp_path) == [os.path.basename(got)]


def test_cache_hit_only_if_exactly_one_match(server, tmp_path):
    url = server.url('/hit/a.bin')
    server.routes['/hit/a.bin'] = [Reply(b'from server')]
    md5 = _md5(url)
    (tmp_path / f'{md5}_preseeded.bin').write_bytes(b'from cache')
    assert util.open_url(url, cache_dir=str(tmp_path), verbose=False).read() == b'from cache'
    assert server.hits['/hit/a.bin'] == 0

    (tmp_path / f'{md5}_other.bin').write_bytes(b'ambiguous')
    assert util.open_url(url, cache_dir=str(tmp_path), verbose=False, cache=False).read() == b'from server'
    with util.open_url(url, cache_dir=str(tmp_path), verbose=False) as f:
        assert f.read() == b'from server'  # two candidates: not a hit, so downloaded again
    assert server.hits['/hit/a.bin'] == 2


def test_retries_after_server_errors(server, tmp_path):
    server.routes['/flaky.pkl'] = [Reply(b'oops', status=500), Reply(b'oops', status=500), Reply(b'payload')]
    with util.open_url(server.url('/flaky.pkl'), cache_dir=str(tmp_path), num_attempts=5, verbose=False) as f:
        assert f.read() == b'payload'
    assert server.hits['/flaky.pkl'] == 3


def test_gives_up_after_num_attempts(server, tmp_path):
    server.routes['/down.pkl'] = [Reply(b'oops', status=503)]
    with pytest.raises(IOError, match='after 3 attempt'):
        util.open_url(server.url('/down.pkl'), cache_dir=str(tmp_path), num_attempts=3, verbose=False)
    assert server.hits['/down.pkl'] == 3
    assert os.listdir(tmp_path) == []


def test_not_found_fails_without_retrying(server, tmp_path):
    with pytest.raises(IOError, match='404'):
        util.open_url(server.url('/missing.pkl'), cache_dir=str(tmp_path), num_attempts=5, verbose=False)
    assert server.hits['/missing.pkl'] == 1


def test_truncated_transfer_leaves_no_cache_entry(server, tmp_path):
    body = b'0123456789' * 1000
    server.routes['/short.pkl'] = [Reply(body, declared_length=len(body) + 5000)]
    cache_dir = tmp_path / 'c'
    with pytest.raises(IOError):
        util.open_url(server.url('/short.pkl'), cache_dir=str(cache_dir), num_attempts=2, verbose=False)
    assert server.hits['/short.pkl'] == 2
    assert os.listdir(cache_dir) == []  # neither a cache entry nor a stray temp file
    with pytest.raises(IOError):
        util.open_url(server.url('/short.pkl'), num_attempts=1, verbose=False, cache=False)


def test_truncated_then_complete_transfer_caches_full_body(server, tmp_path):
    body = bytes(range(256)) * 64
    server.routes['/recover.pkl'] = [Reply(body[:100], declared_length=len(body)), Reply(body)]
    path = util.open_url(server.url('/recover.pkl'), cache_dir=str(tmp_path), verbose=False, return_filename=True)
    with open(path, 'rb') as f:
        assert f.read() == body
    assert len(os.listdir(tmp_path)) == 1


def test_partial_download_never_looks_like_a_cache_entry(server, tmp_path, monkeypatch):
    url = server.url('/inflight.pkl')
    server.routes['/inflight.pkl'] = [Reply(b'z' * 4096)]
    real_fetch = util._fetch
    seen = []

    def fetch_then_look(*args, **kwargs):
        result = real_fetch(*args, **kwargs)
        # The body is on disk now but not yet renamed: another process must not take it as cached.
        seen.append((len(os.listdir(tmp_path)), len(list(tmp_path.glob(_md5(url) + '_*')))))
        return result

    monkeypatch.setattr(util, '_fetch', fetch_then_look)
    util.open_url(url, cache_dir=str(tmp_path), verbose=False, return_filename=True)
    assert seen == [(1, 0)]
    assert [p.name for p in tmp_path.iterdir()] == [f'{_md5(url)}_inflight.pkl']


def test_interrupted_download_leaves_nothing(server, tmp_path, monkeypatch):
    server.routes['/interrupt.pkl'] = [Reply(b'y' * 4096)]
    real_fetch = util._fetch

    def fetch_then_interrupt(*args, **kwargs):
        real_fetch(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(util, '_fetch', fetch_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        util.open_url(server.url('/interrupt.pkl'), cache_dir=str(tmp_path), verbose=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('header, expected', [
    ('attachment; filename="my model (1).pkl"', 'my_model__1_.pkl'),
    ("attachment; filename=\"fallback.pkl\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pkl", 'r_sum_.pkl'),
    ('attachment; filename=plain.npz', 'plain.npz'),
])
def test_content_disposition_names_the_cache_file(server, tmp_path, header, expected):
    path = f'/dl?id={len(header)}'
    url = server.url(path)
    server.routes[path] = [Reply(b'data', headers={'Content-Disposition': header})]
    got = util.open_url(url, cache_dir=str(tmp_path), verbose=False, return_filename=True)
    assert os.path.basename(got) == f'{_md5(url)}_{expected}'


def test_uncached_download_returns_bytes_without_writing(server, tmp_path):
    server.routes['/nocache.bin'] = [Reply(b'\x00\x01binary')]
    f = util.open_url(server.url('/nocache.bin'), verbose=False, cache=False)
    assert isinstance(f, io.BytesIO) and f.read() == b'\x00\x01binary'
    assert not os.path.exists(tmp_path / 'env-cache')
    with pytest.raises(ValueError):
        util.open_url(server.url('/nocache.bin'), cache=False, return_filename=True)


def test_verbose_download_reports_retries(server, tmp_path, capsys):
    server.routes['/verbose.pkl'] = [Reply(b'', status=502), Reply(b'ok')]
    with util.open_url(server.url('/verbose.pkl'), cache_dir=str(tmp_path), verbose=True) as f:
        assert f.read() == b'ok'
    captured = capsys.readouterr()
    assert '502' in captured.err and captured.out == ''


# ----------------------------------------------------------------------------
# open_url on local files


def test_local_path_and_file_url(tmp_path):
    p = tmp_path / 'dir with space' / 'net.pkl'
    p.parent.mkdir()
    p.write_bytes(b'local')
    with util.open_url(str(p)) as f:
        assert f.read() == b'local'
    with util.open_url(p) as f:  # os.PathLike
        assert f.read() == b'local'
    with util.open_url('file://' + str(p)) as f:
        assert f.read() == b'local'
    with util.open_url(p.as_uri()) as f:  # percent-encoded form
        assert f.read() == b'local'
    assert util.open_url(str(p), return_filename=True) == str(p)
    assert not os.path.exists(tmp_path / 'env-cache')


def test_missing_local_file_names_the_path(tmp_path):
    missing = str(tmp_path / 'nope.pkl')
    with pytest.raises(FileNotFoundError, match='nope.pkl'):
        util.open_url(missing)
    with pytest.raises(FileNotFoundError, match='nope.pkl'):
        util.open_url('file://' + missing, return_filename=True)


@pytest.mark.parametrize('url, expected', [
    ('file:///home/u/a.pkl', '/home/u/a.pkl'),
    ('file:///C:/models/a.pkl', 'C:/models/a.pkl'),
    ('file://C:/models/a.pkl', 'C:/models/a.pkl'),
    ('file://localhost/tmp/a%20b.pkl', '/tmp/a b.pkl'),
])
def test_file_url_to_path(url, expected):
    assert util._file_url_to_path(url) == expected


def test_is_url():
    assert util.is_url('https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/ffhq.pkl')
    assert util.is_url('http://127.0.0.1:8000/x')
    assert not util.is_url('http://localhost:8000/x')  # NVlabs rule: the host needs a '.'
    assert not util.is_url('/local/path.pkl')
    assert not util.is_url(None)
    assert not util.is_url('file:///tmp/a.pkl')
    assert util.is_url('file:///tmp/a.pkl', allow_file_urls=True)


def test_rejects_unsupported_urls():
    with pytest.raises(ValueError, match='scheme'):
        util.open_url('ftp://example.com/a.pkl')
    with pytest.raises(ValueError, match='valid URL'):
        util.open_url('http://localhost/a.pkl')


def test_google_drive_confirmation_page_parsing():
    form_page = ('<html><body><form id="download-form" action="https://drive.usercontent.google.com/download" '
                 'method="get"><input type="submit" value="Download anyway"/>'
                 '<input type="hidden" name="id" value="ABC"><input type="hidden" name="export" value="download">'
                 '<input type="hidden" name="confirm" value="t"></form></body></html>')
    got = util._google_drive_confirm_url(form_page, 'https://drive.google.com/uc?id=ABC')
    assert got == 'https://drive.usercontent.google.com/download?id=ABC&export=download&confirm=t'

    link_page = '<a id="uc-download-link" href="/uc?export=download&amp;confirm=Xy_1&amp;id=ABC">Download</a>'
    got = util._google_drive_confirm_url(link_page, 'https://drive.google.com/uc?id=ABC')
    assert got == 'https://drive.google.com/uc?export=download&confirm=Xy_1&id=ABC'
    assert util._google_drive_confirm_url('<html>nothing here</html>', 'https://drive.google.com/') is None


# ----------------------------------------------------------------------------
# Small utilities


@pytest.mark.parametrize('seconds, expected', [
    (0, '0s'), (5.4, '5s'), (59.6, '1m 00s'), (65, '1m 05s'), (3723, '1h 02m 03s'),
    (86399, '23h 59m 59s'), (2 * 86400 + 3 * 3600 + 4 * 60 + 5, '2d 03h 04m'),
])
def test_format_time(seconds, expected):
    assert util.format_time(seconds) == expected


def test_get_obj_by_name():
    assert util.get_obj_by_name('os.path.join') is os.path.join
    assert util.get_obj_by_name('dnnlib.util.EasyDict') is util.EasyDict
    assert util.get_obj_by_name('collections') is collections
    assert util.get_obj_by_name('collections.OrderedDict.fromkeys') == collections.OrderedDict.fromkeys
    with pytest.raises(AttributeError, match='no_such_attr'):
        util.get_obj_by_name('os.path.no_such_attr')
    with pytest.raises(ImportError, match='no_such_module_xyz'):
        util.get_obj_by_name('no_such_module_xyz.thing')
    with pytest.raises(ValueError):
        util.get_obj_by_name('os..path')


def test_get_obj_by_name_keeps_missing_dependency_errors(tmp_path, monkeypatch):
    (tmp_path / 'dnnlib_test_badmod.py').write_text('import dnnlib_test_missing_dep\nthing = 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        util.get_obj_by_name('dnnlib_test_badmod.thing')
    assert info.value.name == 'dnnlib_test_missing_dep'


def test_call_and_construct_by_name():
    assert util.call_func_by_name(2, 3, func_name='operator.add') == operator.add(2, 3)
    od = util.construct_class_by_name([('a', 1)], class_name='collections.OrderedDict', b=2)
    assert type(od) is collections.OrderedDict and list(od.items()) == [('a', 1), ('b', 2)]
    kwargs = util.EasyDict(class_name='dnnlib.util.EasyDict', path='/data', xflip=False)
    assert util.construct_class_by_name(**kwargs) == {'path': '/data', 'xflip': False}
    with pytest.raises(TypeError):
        util.call_func_by_name(func_name='os.sep')


def test_atomic_write_replaces_whole_files_with_usual_permissions(tmp_path):
    path = tmp_path / 'out.bin'
    path.write_bytes(b'old')
    with pytest.raises(RuntimeError):
        with util.atomic_write(path) as f:
            f.write(b'partial')
            raise RuntimeError('killed')
    assert path.read_bytes() == b'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.bin']  # no temporary file left
    old_mask = os.umask(0o022)
    try:
        with util.atomic_write(path) as f:
            f.write(b'new')
    finally:
        os.umask(old_mask)
    assert path.read_bytes() == b'new'
    assert (path.stat().st_mode & 0o777) == 0o644
