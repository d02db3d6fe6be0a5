"""Small builders shared by the tests (imported as ``helpers``; pytest puts tests/ on sys.path)."""

import collections
import http.server
import os
import threading

import numpy as np
import torch

from training.networks_stylegan2 import Generator

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bank_arrays(path):
    """Every array of a bank file but its metadata (which records commands and paths)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if k != 'meta'}


def assert_same_arrays(a, b):
    """The same keys, dtypes and bytes."""
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key


def tiny_generator(c_dim=0, seed=0, z_dim=16, img_channels=3):
    """A 16 px StyleGAN2 with non-zero biases and noise strengths, so that every path of the network matters."""
    torch.manual_seed(seed)
    G = Generator(z_dim=z_dim, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=img_channels,
                  mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=32)
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith('bias') or name.endswith('noise_strength'):
                param.add_(torch.randn_like(param) * 0.1)
    return G.eval().requires_grad_(False)


class Reply:
    """One scripted answer: a body, a status, extra headers, and the Content-Length to claim."""

    def __init__(self, body=b'', status=200, headers=None, declared_length=None):
        self.body = body
        self.status = status
        self.headers = dict(headers or {})
        self.declared_length = len(body) if declared_length is None else declared_length


class LocalHTTPServer:
    """A real HTTP server on 127.0.0.1 (a free port) with scripted answers: ``routes[path]`` is a list of
    :class:`Reply`, served in turn, the last one repeating; other paths get 404. ``hits`` counts requests per path."""

    def __init__(self):
        self.routes = {}
        self.hits = collections.Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.0'  # one request per connection: the close ends a truncated body

            def do_GET(self):
                path = self.path
                with server.lock:
                    server.hits[path] += 1
                    replies = server.routes.get(path)
                    reply = None if not replies else (replies.pop(0) if len(replies) > 1 else replies[0])
                if reply is None:
                    reply = Reply(b'not found', status=404)
                self.send_response(reply.status)
                self.send_header('Content-Length', str(reply.declared_length))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(reply.body)
                self.wfile.flush()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
        self.thread.start()

    def url(self, path):
        return f'http://127.0.0.1:{self.httpd.server_address[1]}{path}'

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
