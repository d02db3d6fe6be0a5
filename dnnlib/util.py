"""Miscellaneous helpers: EasyDict, the download cache used by NVlabs-style tools, and small utilities.

The names and behaviour follow NVlabs' ``dnnlib.util`` so that their pickles and scripts work
unchanged: ``EasyDict`` (pickled by this exact name), ``make_cache_dir_path``, ``open_url``,
``format_time`` and the ``*_by_name`` import helpers.
"""

import contextlib
import glob
import hashlib
import html
import importlib
import io
import os
import re
import sys
import tempfile
import time
import urllib.parse
import uuid

# ----------------------------------------------------------------------------


class UserError(Exception):
    """Bad input: an option, a file or a folder that cannot be used, with a one-line message saying what is wrong
    and what to do. Every script prints it as one line (``Error: ...``) and exits with status 1, without a
    traceback; the toolkit's error types for bad input (unreadable banks, bad specs, refused pickles, ...) derive
    from it."""


class EasyDict(dict):
    """A dict whose items are also reachable as attributes (``d.key`` == ``d['key']``).

    Pickled as ``dnnlib.util.EasyDict``, the name NVlabs snapshots reference.
    """

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]


# ----------------------------------------------------------------------------
# Cache directory.

_dnnlib_cache_dir = None


def set_cache_dir(path):
    """Set the cache root used by :func:`make_cache_dir_path` (highest precedence)."""
    global _dnnlib_cache_dir
    _dnnlib_cache_dir = path


def make_cache_dir_path(*paths):
    """Path inside the cache root: set_cache_dir(), $DNNLIB_CACHE_DIR, ~/.cache/dnnlib, then tempdir."""
    if _dnnlib_cache_dir is not None:
        return os.path.join(_dnnlib_cache_dir, *paths)
    if 'DNNLIB_CACHE_DIR' in os.environ:
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    if 'HOME' in os.environ:
        return os.path.join(os.environ['HOME'], '.cache', 'dnnlib', *paths)
    if 'USERPROFILE' in os.environ:
        return os.path.join(os.environ['USERPROFILE'], '.cache', 'dnnlib', *paths)
    return os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib', *paths)


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """Open a temporary file beside ``path``; on success it is flushed, synced and renamed onto ``path``.

    An interrupted write leaves at most a hidden ``.<name>.<host>-<pid>-*.tmp`` file, never a partial ``path``;
    :func:`remove_stale_temp_files` removes those of writers that are gone.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.{_writer_tag()}-', suffix='.tmp')
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600 files; give the usual permissions.
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def hostname():
    """This machine's short host name, as written into temporary-file names and claims."""
    import socket
    return socket.gethostname().split('.')[0]


def _writer_tag():
    return f'{re.sub(r"[^A-Za-z0-9_]", "_", hostname())}-{os.getpid()}'


_TEMP_RE = re.compile(r'^\..*\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$')


def process_alive(pid):
    """Whether process `pid` exists on this machine."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


def remove_stale_temp_files(directory, max_age=24 * 3600):
    """Remove the temporary files that killed :func:`atomic_write` calls left in `directory`.

    A temporary file is stale when its writer (host and process id are in its name) was a process of this
    machine that no longer runs, or, for other machines and unnamed writers, when it is older than `max_age`
    seconds; files of live writers are left alone, so concurrent runs sharing a folder are safe. Returns the
    names removed.
    """
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    me = re.sub(r'[^A-Za-z0-9_]', '_', hostname())
    now = time.time()
    for name in names:
        if not (name.startswith('.') and name.endswith('.tmp')):
            continue
        path = os.path.join(directory, name)
        match = _TEMP_RE.match(name)
        try:
            if match and match.group('host') == me:
                stale = not process_alive(match.group('pid'))
            else:
                stale = now - os.stat(path).st_mtime > max_age
            if stale and os.path.isfile(path):
                os.remove(path)
                removed.append(name)
        except OSError:
            continue
    return removed

# ----------------------------------------------------------------------------
# Small utilities used by NVlabs-style scripts.


def format_time(seconds):
    """Human-readable duration: ``'5s'``, ``'1m 05s'``, ``'1h 02m 03s'`` or ``'2d 03h 04m'``.

    Parameters
    ----------
    seconds : float
        Duration in seconds; rounded to the nearest whole second.

    Returns
    -------
    str
    """
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 24 * 60 * 60:
        return f'{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m'


def get_obj_by_name(name):
    """Import and return the object named by a dotted path, e.g. ``'training.dataset.ImageFolderDataset'``.

    The longest importable module prefix is imported and the rest of the path is resolved
    with ``getattr``. An import error raised *inside* a module that does exist (a missing
    dependency) is propagated as-is rather than hidden behind "not found".

    Parameters
    ----------
    name : str
        Dotted name of a module, or of an attribute (possibly nested) of a module.

    Returns
    -------
    object
    """
    if not isinstance(name, str) or not name or any(not part for part in name.split('.')):
        raise ValueError(f'Invalid object name {name!r}: expected a dotted name like "package.module.Class"')
    parts = name.split('.')
    for num_module_parts in range(len(parts), 0, -1):
        module_name = '.'.join(parts[:num_module_parts])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            # Only "this prefix does not exist" means: try a shorter prefix.
            if err.name is not None and (module_name == err.name or module_name.startswith(err.name + '.')):
                continue
            raise
        for depth, attr in enumerate(parts[num_module_parts:], start=num_module_parts):
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                raise AttributeError(f'Cannot find "{attr}" in "{".".join(parts[:depth])}" '
                                     f'while resolving "{name}"') from None
        return obj
    raise ImportError(f'Cannot import "{name}": no module named "{parts[0]}"')


def call_func_by_name(*args, func_name=None, **kwargs):
    """Look up a callable with :func:`get_obj_by_name` and call it with the remaining arguments."""
    if func_name is None:
        raise ValueError('call_func_by_name() needs func_name')
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise TypeError(f'"{func_name}" is not callable')
    return func(*args, **kwargs)


def construct_class_by_name(*args, class_name=None, **kwargs):
    """Instantiate a class given by dotted name, e.g. ``construct_class_by_name(**dataset_kwargs)``."""
    if class_name is None:
        raise ValueError('construct_class_by_name() needs class_name')
    return call_func_by_name(*args, func_name=class_name, **kwargs)


# ----------------------------------------------------------------------------
# URLs and downloads.

# Download tuning. Module-level so that tests (and impatient callers) can shrink the delays.
_retry_delay = 1.0               # seconds before the second attempt; doubles for every further one
_retry_max_delay = 10.0          # cap on a single wait
_request_timeout = (30, 120)     # requests (connect, read) timeouts in seconds
_chunk_size = 1 << 20

_RETRYABLE_STATUS = frozenset([408, 425, 429, 500, 502, 503, 504])
_GOOGLE_DRIVE_HOSTS = ('drive.google.com', 'drive.usercontent.google.com', 'docs.google.com')


def is_url(obj, allow_file_urls=False):
    """Whether ``obj`` is a string that looks like a downloadable URL.

    A URL needs ``scheme://host`` with a '.' in the host (as in NVlabs, so ``localhost`` is
    not one). ``file://`` URLs count only when ``allow_file_urls`` is set.

    Parameters
    ----------
    obj : object
    allow_file_urls : bool, default=False

    Returns
    -------
    bool
    """
    if not isinstance(obj, str) or '://' not in obj:
        return False
    if allow_file_urls and obj.startswith('file://'):
        return True
    try:
        parts = urllib.parse.urlparse(obj)
    except ValueError:
        return False
    return bool(parts.scheme) and bool(parts.netloc) and '.' in parts.netloc


def _file_url_to_path(url):
    """Local path named by a ``file://`` URL, including Windows drive forms.

    ``file:///home/a.pkl`` -> ``/home/a.pkl``; ``file:///C:/a.pkl`` and ``file://C:/a.pkl`` -> ``C:/a.pkl``.
    """
    parts = urllib.parse.urlparse(url)
    path = urllib.parse.unquote(parts.path)
    netloc = parts.netloc
    if re.fullmatch(r'[a-zA-Z]:', netloc):
        return netloc + path
    if re.match(r'^/[a-zA-Z]:', path):
        return path[1:]
    if netloc not in ('', 'localhost'):
        return f'//{netloc}{path}'  # UNC share: file://server/share/x
    return path


def _open_local(path, return_filename):
    if return_filename:
        if not os.path.isfile(path):
            raise FileNotFoundError(f'File not found: {path}')
        return path
    try:
        return open(path, 'rb')
    except FileNotFoundError:
        raise FileNotFoundError(f'File not found: {path}') from None


def _sanitize_filename(name):
    return re.sub(r'[^0-9a-zA-Z\-._]', '_', name)


def _filename_from_content_disposition(header):
    """File name in a Content-Disposition header, preferring the RFC 5987 ``filename*`` form."""
    if not header:
        return None
    match = re.search(r"filename\*\s*=\s*([^']*)'[^']*'([^;]+)", header, flags=re.IGNORECASE)
    if match:
        charset = match.group(1) or 'utf-8'
        try:
            return urllib.parse.unquote(match.group(2).strip().strip('"'), encoding=charset)
        except LookupError:
            return urllib.parse.unquote(match.group(2).strip().strip('"'))
    match = re.search(r'filename\s*=\s*(?:"([^"]*)"|([^;]+))', header, flags=re.IGNORECASE)
    if match:
        name = match.group(1) if match.group(1) is not None else match.group(2).strip()
        return name or None
    return None


def _filename_from_url(url):
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit('/', 1)[-1])
    return name or 'download'


def _google_drive_confirm_url(page, url):
    """URL that confirms a Google Drive "can't scan this file for viruses" page, or None.

    Drive answers large downloads with an HTML page holding either a link with ``confirm=``
    or a form whose hidden inputs carry the confirmation; following it yields the file.
    """
    for match in re.finditer(r'<form\b[^>]*>.*?</form>', page, flags=re.IGNORECASE | re.DOTALL):
        form = match.group(0)
        action = re.search(r'\baction="([^"]*)"', form)
        fields = dict((html.unescape(k), html.unescape(v)) for k, v in re.findall(
            r'<input\b[^>]*?\bname="([^"]*)"[^>]*?\bvalue="([^"]*)"', form, flags=re.IGNORECASE))
        if action and 'confirm' in fields:
            base = urllib.parse.urljoin(url, html.unescape(action.group(1)))
            return base + ('&' if '?' in base else '?') + urllib.parse.urlencode(fields)
    for href in re.findall(r'href="([^"]*)"', page):
        href = html.unescape(href)
        if 'export=download' in href and 'confirm=' in href:
            return urllib.parse.urljoin(url, href)
    return None


class _RetryableError(IOError):
    """A transfer failure worth another attempt (server hiccup, truncated body, Drive nag page)."""


def _fetch(session, url, dst, verbose, progress_desc):
    """One GET of ``url``, streamed into the binary file ``dst``.

    Returns ``(file_name_or_None, redirect_url_or_None)``. A non-None redirect means the body
    was a Google Drive confirmation page and ``url`` must be re-requested at the new address.
    """
    import requests
    from tqdm.auto import tqdm

    try:
        res = session.get(url, stream=True, timeout=_request_timeout)
    except requests.RequestException as err:
        raise _RetryableError(f'request failed: {err}') from err
    with res:
        if res.status_code in _RETRYABLE_STATUS:
            raise _RetryableError(f'HTTP {res.status_code} {res.reason}')
        if res.status_code >= 400:
            raise IOError(f'HTTP {res.status_code} {res.reason} for {url}')

        host = urllib.parse.urlparse(res.url).netloc.lower()
        if host in _GOOGLE_DRIVE_HOSTS and res.headers.get('Content-Type', '').startswith('text/html'):
            page = res.text
            if 'quota exceeded' in page.lower():
                raise IOError(f'Google Drive download quota exceeded for {url}; try again later')
            confirm_url = _google_drive_confirm_url(page, res.url)
            if confirm_url is None:
                raise IOError(f'Google Drive returned an HTML page instead of the file for {url}')
            return None, confirm_url

        expected = res.headers.get('Content-Length')
        expected = int(expected) if expected is not None and expected.isdigit() else None
        # With a Content-Encoding the header counts encoded bytes, not what iter_content yields.
        check_length = res.headers.get('Content-Encoding', 'identity').lower() == 'identity'
        num_bytes = 0
        with tqdm(total=expected, desc=progress_desc, unit='B', unit_scale=True, unit_divisor=1024,
                  disable=not verbose, delay=1.0, leave=False, file=sys.stderr) as bar:
            try:
                for chunk in res.iter_content(chunk_size=_chunk_size):
                    dst.write(chunk)
                    num_bytes += len(chunk)
                    bar.update(len(chunk))
            except requests.RequestException as err:
                raise _RetryableError(f'transfer interrupted after {num_bytes} bytes: {err}') from err
        if check_length and expected is not None and num_bytes != expected:
            raise _RetryableError(f'truncated transfer: got {num_bytes} of {expected} bytes')
        if num_bytes == 0:
            raise _RetryableError('no data received')
        return _filename_from_content_disposition(res.headers.get('Content-Disposition')), None


def _download(url, dst, num_attempts, verbose):
    """Download ``url`` into ``dst`` with retries; returns the server-suggested file name or None."""
    import requests

    last_err = None
    delay = _retry_delay
    fetch_url = url
    num_redirects = 0
    with requests.Session() as session:
        attempt = 0
        while attempt < num_attempts:
            dst.seek(0)
            dst.truncate()
            try:
                name, redirect = _fetch(session, fetch_url, dst, verbose, _filename_from_url(url))
            except _RetryableError as err:
                attempt += 1
                last_err = err
                if attempt < num_attempts:
                    if verbose:
                        print(f'Download of {url} failed ({err}); retry {attempt}/{num_attempts - 1} '
                              f'in {delay:g} s', file=sys.stderr, flush=True)
                    time.sleep(delay)
                    delay = min(delay * 2, _retry_max_delay)
                continue
            if redirect is None:
                return name
            # A Drive confirmation page is not a failed attempt, but do not follow them forever.
            num_redirects += 1
            if num_redirects > 3:
                raise IOError(f'Google Drive keeps asking to confirm the download of {url}')
            fetch_url = redirect
    raise IOError(f'Failed to download {url} after {num_attempts} attempt(s): {last_err}') from last_err


def open_url(url, cache_dir=None, num_attempts=10, verbose=True, return_filename=False, cache=True):
    """Open a local file, a ``file://`` URL or an http(s) URL, downloading through a local cache.

    Anything not starting with ``scheme://`` is a local path. Downloads are cached in
    ``cache_dir`` (default ``make_cache_dir_path('downloads')``) as ``<md5(url)>_<name>``; a
    cached copy is used only if exactly one file matches ``<md5(url)>_*``. Downloads are
    written to a temporary file in the cache directory and renamed into place only once
    complete, so an interrupted or truncated transfer never leaves a cache entry.

    Parameters
    ----------
    url : str or os.PathLike
        Local path, ``file://`` URL, or http(s) URL.
    cache_dir : str, optional
        Directory for cached downloads.
    num_attempts : int, default=10
        Download attempts before giving up; waits between them grow from ``_retry_delay``.
    verbose : bool, default=True
        Report retries and show a progress bar (on stderr) for slow downloads.
    return_filename : bool, default=False
        Return the path of the local (or cached) file instead of an open file.
    cache : bool, default=True
        If False, download into memory without touching the cache.

    Returns
    -------
    file object, io.BytesIO or str
        An open binary file; a ``BytesIO`` when ``cache=False``; a path when ``return_filename``.
    """
    if not isinstance(num_attempts, int) or num_attempts < 1:
        raise ValueError(f'num_attempts must be a positive integer, got {num_attempts!r}')
    if return_filename and not cache:
        raise ValueError('return_filename=True needs cache=True (an uncached download has no file name)')
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str):
        raise TypeError(f'open_url() expects a path or URL string, got {type(url).__name__}')

    if not re.match('^[a-z]+://', url):
        return _open_local(url, return_filename)
    if url.startswith('file://'):
        return _open_local(_file_url_to_path(url), return_filename)
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ('http', 'https'):
        raise ValueError(f'Unsupported URL scheme "{scheme}" in {url}: use http(s)://, file:// or a local path')
    if not is_url(url):
        raise ValueError(f'Not a valid URL: {url} (expected http(s)://host.domain/path)')

    if not cache:
        buf = io.BytesIO()
        _download(url, buf, num_attempts, verbose)
        buf.seek(0)
        return buf

    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    url_md5 = hashlib.md5(url.encode('utf-8'), usedforsecurity=False).hexdigest()
    cached = glob.glob(os.path.join(glob.escape(cache_dir), url_md5 + '_*'))
    if len(cached) == 1:
        return cached[0] if return_filename else open(cached[0], 'rb')

    # The temp name must not start with the md5, or it would count as a cache entry.
    os.makedirs(cache_dir, exist_ok=True)
    tmp_path = os.path.join(cache_dir, f'tmp_{url_md5}_{uuid.uuid4().hex}')
    try:
        with open(tmp_path, 'xb') as f:
            name = _download(url, f, num_attempts, verbose)
        if name is None:
            name = _filename_from_url(url)
        cache_path = os.path.join(cache_dir, f'{url_md5}_{_sanitize_filename(name)}')
        os.replace(tmp_path, cache_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    return cache_path if return_filename else open(cache_path, 'rb')

# ----------------------------------------------------------------------------
