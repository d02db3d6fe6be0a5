"""Samplers: where the latents of an evaluation come from, written as a short spec string.

A sampler turns a base seed into ``num`` latents ``z`` [num, z_dim], labels ``c`` [num, c_dim] (float32 numpy)
and a truncation psi, deterministically: the same (spec, network, seed, num) always gives the same latents,
whatever the device, batch size or number of processes. ``calc_metrics.py --sampler`` takes these specs.

Spec language
-------------
::

    SPEC    := BODY [';' OPTION (',' OPTION)*]      global options, e.g.  ;trunc=0.7
    BODY    := ['mix:'] TERM ('+' TERM)*              several terms = a mixture
    TERM    := [WEIGHT '*'] SAMPLER                  WEIGHT: a fraction; mixture weights sum to 1
    SAMPLER := NAME | NAME ':' ARGS | NAME '(' ARGS ')'
    ARGS    := ARG (',' ARG)*          ARG := KEY '=' VALUE | VALUE
    VALUE   := number | word | "quoted string"   (quote paths holding , ; ( ) + * or spaces)

Samplers (defaults in brackets):

``random`` [labels=auto]
    NVlabs-like: row j of ``np.random.RandomState(seed).standard_normal`` (the batch convention of
    :mod:`sampling.latents`, so row 0 is generate.py's latent of ``seed``). Labels of a conditional network
    come from a separate stream, ``np.random.RandomState([seed, 1])``: ``labels=dataset`` draws dataset items
    uniformly and takes their labels (NVlabs' metrics: the dataset's label distribution), ``labels=uniform``
    draws classes uniformly (:func:`sampling.latents.random_labels`); ``auto`` is ``dataset`` when a dataset
    is known, else ``uniform``.
``trunc:PSI``
    ``random`` with truncation psi PSI (same as ``random;trunc=PSI``). Not allowed inside a mixture.
``hubness`` [k=5, t=50, space=w, batch=10000, count_self=1, max_batches=1000, labels=auto]
    Hubness priors (Liang et al. 2022), the authors' convention by default: batch b holds ``batch`` random
    latents of batch seed ``seed + b`` (labels as for ``random``), scored by their exact k-occurrence
    (:func:`sampling.hubness.k_occurrence`) in W (``G.mapping(z, c, truncation_psi=1)[:, 0]``, ``space=w``) or
    in Z (``space=z``); a latent is a hub if its score is >= t. ``count_self=1`` counts every latent as its
    own first neighbour, as the authors' code does (``count_self=0``: the textbook N_k). The first ``num``
    hubs in (batch, index) order are returned: the same hubs ``generate_hubness.py`` finds with these settings
    (for a conditional network, with ``labels=uniform``, its ``--class random``).
``polarity`` [bank=PATH (required), rho=1, top_k=all, eps=0, replace=1, per_class=1]
    Polarity / MaGNET resampling (Humayun et al. 2022) of a latent bank with singular values (``svds``, e.g.
    from ``compute_volume_scalars.py`` or the MaGNET authors' files; a ``log_volume`` array is used if there is
    no ``svds``): probabilities ``softmax(rho * sum_{i<=top_k} log(sigma_i + eps))``. ``replace=1`` draws with
    replacement (the paper's Algorithm 1, exact), ``replace=0`` without (the authors' demo). For a conditional
    bank with ``per_class=1`` the probabilities are normalised within each class and the classes present in
    the bank get equal counts (the authors' convention). PATH may also be a folder of the MaGNET authors'
    per-class files (:func:`sampling.latents.load_bank`). Draws come from ``numpy.random.default_rng(seed)``.
``bank`` [path=PATH, or the path as the only value]
    The first ``num`` latents (and labels) of a latent bank, in order, e.g. a hub bank from
    ``generate_hubness.py``. The bank must hold at least ``num`` latents.

Mixtures, e.g. ``mix:0.2*polarity(bank=magnet.npz,rho=1)+0.8*random``: component i gets exactly the count
:func:`sampling.polarity.split_counts` gives it (round-half-up for all but the last) and its own seed,
``numpy.random.SeedSequence([seed, i]).generate_state(1)[0]``; the latents are concatenated in component
order. All components share the global truncation.

Global option ``trunc=PSI`` (default 1) applies truncation psi PSI to any sampler at synthesis time; latents
are always chosen at psi = 1 (hub scores and volumes are computed untruncated, as both papers do):
``hubness:k=5,t=50;trunc=0.7``, ``mix:0.2*polarity(bank=b.npz)+0.8*random;trunc=0.9``.

Parse errors raise :class:`SamplerSpecError` with a one-line message.
"""

import dataclasses
import math
import re

import numpy as np
import torch

from sampling import latents as latent_utils
from sampling.synthesis import has_mapping

__all__ = ['SamplerSpecError', 'Term', 'Spec', 'parse', 'build', 'Sampler', 'derive_seed']

_MAX_SEED = 2 ** 32

#----------------------------------------------------------------------------
# Parsing.

class SamplerSpecError(ValueError):
    """A sampler spec that cannot be parsed or built; the message is one line."""


@dataclasses.dataclass
class Term:
    """One sampler of a spec: its name, its arguments (converted) and its mixture weight (or None)."""

    name: str
    args: dict
    weight: float = None


@dataclasses.dataclass
class Spec:
    """A parsed spec: one or more terms (several = a mixture) and the global truncation psi."""

    terms: list
    psi: float = 1.0
    text: str = ''

    @property
    def is_mixture(self):
        return len(self.terms) > 1 or self.terms[0].weight is not None

    def describe(self):
        """Canonical text of the spec (every argument explicit), e.g. for result files."""
        parts = []
        for term in self.terms:
            args = ','.join(f'{k}={_format_value(v)}' for k, v in term.args.items())
            body = f'{term.name}({args})' if self.is_mixture and args else term.name + (f':{args}' if args else '')
            parts.append(body if term.weight is None else f'{_format_value(term.weight)}*{body}')
        text = ('mix:' if self.is_mixture else '') + '+'.join(parts)
        return text + (f';trunc={_format_value(self.psi)}' if self.psi != 1 else '')


def _format_value(value):
    if value is None:
        return 'all'
    if isinstance(value, float):
        return repr(value) if value != int(value) else str(int(value))
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, str) and (value == '' or re.search(r'[\s,;()+*="]', value)):
        return '"' + value.replace('"', '\\"') + '"'
    return str(value)


_NUMBER = re.compile(r'[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?')
_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')
_WORD_END = set(',;()+*') | set(' \t\n')
_EXAMPLES = 'examples: random, trunc:0.7, hubness:k=5,t=50, polarity:bank=b.npz,rho=1, mix:0.2*polarity(bank=b.npz)+0.8*random;trunc=0.9'


class _Parser:
    def __init__(self, text):
        self.text = text
        self.pos = 0

    def fail(self, what):
        where = f' at position {self.pos}' if self.pos < len(self.text) else ' at the end'
        raise SamplerSpecError(f'bad sampler spec {self.text!r}: {what}{where} ({_EXAMPLES})')

    def skip_ws(self):
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self):
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ''

    def take(self, char):
        if self.peek() != char:
            self.fail(f'expected {char!r}')
        self.pos += 1

    def name(self):
        self.skip_ws()
        match = _NAME.match(self.text, self.pos)
        if not match:
            self.fail('expected a sampler name')
        self.pos = match.end()
        return match.group(0)

    def number_ahead(self):
        """A number at the current position that is followed by a delimiter (else None)."""
        self.skip_ws()
        match = _NUMBER.match(self.text, self.pos)
        if not match:
            return None
        end = match.end()
        if end < len(self.text) and self.text[end] not in _WORD_END:
            return None
        return match

    def value(self):
        self.skip_ws()
        if self.peek() == '"':
            self.pos += 1
            out = []
            while self.pos < len(self.text) and self.text[self.pos] != '"':
                if self.text[self.pos] == '\\' and self.pos + 1 < len(self.text):
                    self.pos += 1
                out.append(self.text[self.pos])
                self.pos += 1
            if self.pos >= len(self.text):
                self.fail('unterminated quoted string')
            self.pos += 1
            return ''.join(out)
        match = self.number_ahead()
        if match:
            self.pos = match.end()
            text = match.group(0)
            return int(text) if re.fullmatch(r'[-+]?\d+', text) else float(text)
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _WORD_END:
            self.pos += 1
        if self.pos == start:
            self.fail('expected a value')
        return self.text[start:self.pos]

    def args(self):
        named, positional = {}, []
        while True:
            self.skip_ws()
            match = _NAME.match(self.text, self.pos)
            if match and self.text[match.end():match.end() + 1] == '=':
                key = match.group(0)
                self.pos = match.end() + 1
                if key in named:
                    self.fail(f'argument {key!r} given twice')
                named[key] = self.value()
            else:
                positional.append(self.value())
            if self.peek() != ',':
                return named, positional
            self.pos += 1

    def term(self):
        weight = None
        match = self.number_ahead()
        if match and self.text[match.end():].lstrip().startswith('*'):
            weight = float(match.group(0))
            self.pos = match.end()
            self.take('*')
        start = self.pos
        name = self.name()
        named, positional = {}, []
        if self.peek() == '(':
            self.pos += 1
            if self.peek() != ')':
                named, positional = self.args()
            self.take(')')
        elif self.peek() == ':':
            self.pos += 1
            named, positional = self.args()
        return name, named, positional, weight, start

    def spec(self):
        self.skip_ws()
        mixture = self.text.startswith('mix:', self.pos)
        if mixture:
            self.pos += len('mix:')
        terms = [self.term()]
        while self.peek() == '+':
            self.pos += 1
            terms.append(self.term())
        options = {}
        if self.peek() == ';':
            self.pos += 1
            options, positional = self.args()
            if positional:
                self.fail('global options are KEY=VALUE, e.g. ;trunc=0.7')
        if self.peek() != '':
            self.fail(f'unexpected {self.peek()!r}')
        return mixture, terms, options


def _to_int(name, value, lo=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise SamplerSpecError(f'{name} must be an integer, got {value!r}')
    value = int(value)
    if lo is not None and value < lo:
        raise SamplerSpecError(f'{name} must be >= {lo}, got {value}')
    return value


def _to_float(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SamplerSpecError(f'{name} must be a number, got {value!r}')
    return float(value)


def _to_bool(name, value):
    if value in (0, 1) and not isinstance(value, float) or value in ('true', 'false', 'yes', 'no'):
        return value in (1, 'true', 'yes')
    raise SamplerSpecError(f'{name} must be 0 or 1, got {value!r}')


def _to_choice(choices):
    def convert(name, value):
        if value not in choices:
            raise SamplerSpecError(f'{name} must be one of {", ".join(choices)}, got {value!r}')
        return value
    return convert


def _to_path(name, value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # A file named like a number.
    if not isinstance(value, str) or not value:
        raise SamplerSpecError(f'{name} must be a file path, got {value!r}')
    return value


def _int_at_least(lo):
    return lambda name, value: _to_int(name, value, lo)


def _optional_int_at_least(lo):
    return lambda name, value: None if value in ('all', 'none') else _to_int(name, value, lo)


_LABELS = _to_choice(('auto', 'dataset', 'uniform'))

# name -> {argument: (converter, default)}; a default of ... means required.
_SAMPLERS = {
    'random': dict(labels=(_LABELS, 'auto')),
    'trunc': dict(psi=(_to_float, ...)),
    'hubness': dict(k=(_int_at_least(1), 5), t=(_to_float, 50.0), space=(_to_choice(('w', 'z')), 'w'),
                    batch=(_int_at_least(2), 10000), count_self=(_to_bool, True),
                    max_batches=(_int_at_least(1), 1000), labels=(_LABELS, 'auto')),
    'polarity': dict(bank=(_to_path, ...), rho=(_to_float, 1.0), top_k=(_optional_int_at_least(1), None),
                     eps=(_to_float, 0.0), replace=(_to_bool, True), per_class=(_to_bool, True)),
    'bank': dict(path=(_to_path, ...)),
}

# The one argument a bare value stands for (trunc:0.7, bank:hubs.npz).
_POSITIONAL = {'trunc': 'psi', 'bank': 'path', 'polarity': 'bank'}


def _make_term(parser, name, named, positional, weight):
    if name not in _SAMPLERS:
        parser.fail(f'unknown sampler {name!r} (known: {", ".join(_SAMPLERS)})')
    schema = _SAMPLERS[name]
    if positional:
        if len(positional) > 1 or name not in _POSITIONAL or _POSITIONAL[name] in named:
            parser.fail(f'{name} takes KEY=VALUE arguments ({", ".join(schema)})')
        named = dict(named, **{_POSITIONAL[name]: positional[0]})
    args = {}
    for key in named:
        if key not in schema:
            parser.fail(f'unknown argument {key!r} of {name} (known: {", ".join(schema)})')
    for key, (convert, default) in schema.items():
        if key in named:
            try:
                args[key] = convert(f'{name} argument {key}', named[key])
            except SamplerSpecError as err:
                raise SamplerSpecError(f'bad sampler spec {parser.text!r}: {err}') from None
        elif default is ...:
            parser.fail(f'{name} needs {key}=...')
        else:
            args[key] = default
    return Term(name=name, args=args, weight=weight)


def parse(text):
    """Parse a sampler spec (see the module docstring) into a :class:`Spec`.

    Raises
    ------
    SamplerSpecError
        With a one-line message naming the problem and its position.
    """
    if isinstance(text, Spec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise SamplerSpecError(f'empty sampler spec ({_EXAMPLES})')
    parser = _Parser(text)
    mixture, raw_terms, options = parser.spec()
    terms = [_make_term(parser, name, named, positional, weight) for name, named, positional, weight, _ in raw_terms]

    psi = 1.0
    for key, value in options.items():
        if key != 'trunc':
            parser.fail(f'unknown global option {key!r} (known: trunc)')
        psi = _to_float('trunc', value)
    if len(terms) == 1 and terms[0].name == 'trunc':
        if 'trunc' in options:
            parser.fail('truncation given twice (trunc:PSI and ;trunc=PSI)')
        psi = terms[0].args['psi']
        terms = [Term(name='random', args=dict(labels='auto'), weight=terms[0].weight)]

    if mixture or len(terms) > 1:
        if any(term.name == 'trunc' for term in terms):
            parser.fail('trunc:PSI cannot be a mixture component: truncation applies to the whole sampler, '
                        'add ;trunc=PSI at the end')
        if any(term.weight is None for term in terms):
            parser.fail('give every mixture component a weight, e.g. 0.2*polarity(bank=b.npz)+0.8*random')
        weights = [term.weight for term in terms]
        if any(w < 0 for w in weights) or abs(sum(weights) - 1) > 1e-6:
            parser.fail(f'mixture weights must be >= 0 and sum to 1, got {" + ".join(map(str, weights))}')
    elif terms[0].weight is not None and terms[0].weight != 1:
        parser.fail(f'a single sampler cannot have weight {terms[0].weight}; use a mixture or drop the weight')
    return Spec(terms=terms, psi=psi, text=text)

#----------------------------------------------------------------------------
# Sources: draw(num, seed) -> (z float32 [num, z_dim], c float32 [num, c_dim]).

def derive_seed(seed, index):
    """Seed of component `index` of a mixture with base seed `seed`, in [0, 2**32)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint32)[0])


def _check_seed(seed):
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= int(seed) < _MAX_SEED:
        raise ValueError(f'seed must be an integer in [0, 2**32), got {seed!r}')
    return int(seed)


class _Labels:
    """Labels of the ``random`` and ``hubness`` samplers (see the module docstring)."""

    def __init__(self, c_dim, mode, label_pool):
        if label_pool is not None:
            label_pool = np.asarray(label_pool, dtype=np.float32).reshape(len(label_pool), -1)
            if c_dim and (label_pool.shape[1] != c_dim or len(label_pool) == 0):
                raise SamplerSpecError(f'the dataset labels have shape {list(label_pool.shape)} but the network '
                                       f'expects {c_dim} label values')
        if mode == 'dataset' and c_dim and label_pool is None:
            raise SamplerSpecError('labels=dataset needs a dataset with labels (pass --data); or use labels=uniform')
        self.c_dim = c_dim
        self.pool = label_pool if mode != 'uniform' else None

    def __call__(self, seed, num):
        if self.c_dim == 0:
            return np.zeros([num, 0], dtype=np.float32)
        if self.pool is not None:
            rows = np.random.RandomState([seed, 1]).randint(len(self.pool), size=num)
            return self.pool[rows].copy()
        return latent_utils.random_labels(seed, num, self.c_dim)


class RandomSource:
    """``random``: rows of ``RandomState(seed).standard_normal``, labels from a separate stream."""

    def __init__(self, z_dim, c_dim, labels='auto', label_pool=None):
        self.z_dim = z_dim
        self.labels = _Labels(c_dim, labels, label_pool)

    def draw(self, num, seed):
        z = latent_utils.z_batch(seed, num, self.z_dim).astype(np.float32)
        return z, self.labels(seed, num)


class HubnessSource:
    """``hubness``: the first hubs of seeded batches (see the module docstring)."""

    def __init__(self, G, device, k, t, space, batch, count_self, max_batches, labels='auto', label_pool=None,
                 progress=False):
        if k > (batch if count_self else batch - 1):
            raise SamplerSpecError(f'hubness: k={k} is too large for batch={batch}')
        if space == 'w' and not has_mapping(G):
            raise SamplerSpecError(f'hubness: space=w needs a mapping network, and this {type(G).__name__} has '
                                   'none: use space=z')
        self.G, self.device = G, device
        self.k, self.t, self.space, self.batch = k, t, space, batch
        self.count_self, self.max_batches = count_self, max_batches
        self.labels = _Labels(G.c_dim, labels, label_pool)
        self.progress = progress

    @torch.no_grad()
    def _points(self, z, c):
        if self.space == 'z':
            return torch.from_numpy(z)  # float64, as generate_hubness.py scores it.
        out = []
        for i0 in range(0, len(z), 4096):  # Fixed block: W does not depend on any user batch size.
            zb = torch.from_numpy(z[i0:i0 + 4096]).to(self.device, torch.float32)
            cb = torch.from_numpy(c[i0:i0 + 4096]).to(self.device)
            out.append(self.G.mapping(zb, cb, truncation_psi=1)[:, 0].float())
        return torch.cat(out)

    def draw(self, num, seed):
        from tqdm import tqdm

        from sampling.hubness import k_occurrence

        zs, cs, found = [], [], 0
        with tqdm(total=num, unit='hub', desc='Hub latents', disable=not self.progress, leave=False) as bar:
            for b in range(self.max_batches):
                if found >= num:
                    break
                batch_seed = (seed + b) % _MAX_SEED
                z = latent_utils.z_batch(batch_seed, self.batch, self.G.z_dim)
                c = self.labels(batch_seed, self.batch)
                scores = k_occurrence(self._points(z, c), self.k, count_self=self.count_self, device=self.device)
                keep = np.flatnonzero(scores.numpy() >= self.t)
                zs.append(z[keep])
                cs.append(c[keep])
                bar.update(min(len(keep), num - found))
                found += len(keep)
        if found < num:
            raise ValueError(f'hubness sampler: found only {found} of {num} hubs in {self.max_batches} batches of '
                             f'{self.batch}; lower t, or raise max_batches')
        return np.concatenate(zs)[:num], np.concatenate(cs)[:num]


def _load_bank(path, G, network_sha256):
    try:
        bank = latent_utils.load_bank(path, c_dim=G.c_dim)
    except FileNotFoundError:
        raise SamplerSpecError(f'latent bank not found: {path}') from None
    except latent_utils.FileFormatError as err:
        raise SamplerSpecError(f'latent bank {err}') from None
    except (OSError, ValueError) as err:
        raise SamplerSpecError(f'cannot read latent bank {path}: {str(err).splitlines()[0]}') from None
    try:
        latent_utils.check_compatible(bank, network_sha256=network_sha256, z_dim=G.z_dim, c_dim=G.c_dim)
    except ValueError as err:
        raise SamplerSpecError(f'{path}: {err}') from None
    return bank


class PolaritySource:
    """``polarity``: resampling of a bank's latents by their volume (see the module docstring)."""

    def __init__(self, bank, rho, top_k, eps, replace, per_class, path=''):
        from sampling import polarity

        if 'svds' in bank:
            log_w = polarity.log_weights(bank['svds'].reshape(len(bank), -1), rho, top_k=top_k, eps=eps)
        elif 'log_volume' in bank:
            log_w = float(rho) * np.asarray(bank['log_volume'], dtype=np.float64).reshape(-1)
        else:
            raise SamplerSpecError(f'{path}: the bank has no singular values (svds) or log_volume; compute them '
                                   'with compute_volume_scalars.py')
        if not np.isfinite(log_w).any():
            raise SamplerSpecError(f'{path}: no latent of the bank has a finite weight (zero singular values?); '
                                   'set eps > 0')
        self.bank, self.log_w, self.replace = bank, log_w, replace
        self.per_class = per_class and bank.c_dim > 0

    def effective_sample_size(self):
        """Kish's effective number of bank latents behind the draws (see :func:`polarity.effective_sample_size`).

        With per-class normalisation, the sum of the classes' own effective sizes. Far below the number of
        samples drawn, the resampled set mostly repeats a few latents.
        """
        from sampling import polarity

        if not self.per_class:
            return polarity.effective_sample_size(self.log_w)
        ids = self.bank.labels.argmax(axis=1)
        per_class = [self.log_w[ids == c] for c in np.unique(ids)]
        return float(sum(polarity.effective_sample_size(log_w) for log_w in per_class if np.isfinite(log_w).any()))

    def draw(self, num, seed):
        from sampling import polarity

        rng = np.random.default_rng(seed)
        if self.per_class:  # Equal counts for the classes the bank has (per-class files may cover a few).
            present = np.unique(self.bank.labels.argmax(axis=1)).tolist()
            counts = dict(zip(present, polarity.split_counts(num, [1 / len(present)] * len(present))))
            idx = polarity.resample_per_class(self.log_w, self.bank.labels, counts, rng, replace=self.replace)
        elif self.replace:
            idx = polarity.resample_with_replacement(self.log_w, num, rng)
        else:
            idx = polarity.resample_without_replacement(self.log_w, num, rng)
        return (self.bank.latents[idx].astype(np.float32), self.bank.labels[idx].astype(np.float32))


class BankSource:
    """``bank``: the first latents of a bank, in order."""

    def __init__(self, bank, path=''):
        self.bank, self.path = bank, path

    def draw(self, num, seed):
        del seed  # A bank is already a fixed list of latents.
        if num > len(self.bank):
            raise ValueError(f'{self.path} holds {len(self.bank)} latents, fewer than the {num} needed; '
                             'make a larger bank')
        return self.bank.latents[:num].astype(np.float32), self.bank.labels[:num].astype(np.float32)


class MixtureSource:
    """Exact-count mixture: component i draws its share with seed ``derive_seed(seed, i)``."""

    def __init__(self, sources, fractions):
        self.sources, self.fractions = sources, fractions

    def counts(self, num):
        from sampling.polarity import split_counts
        return split_counts(num, self.fractions)

    def draw(self, num, seed):
        zs, cs = [], []
        for i, (source, count) in enumerate(zip(self.sources, self.counts(num))):
            if count:
                z, c = source.draw(count, derive_seed(seed, i))
                zs.append(z)
                cs.append(c)
        return np.concatenate(zs), np.concatenate(cs)

#----------------------------------------------------------------------------

class Sampler:
    """A built sampler: ``sample(num, seed) -> (z, c, psi)``.

    Attributes
    ----------
    spec : Spec
    source : object with ``draw(num, seed) -> (z, c)``
    psi : float
        Truncation psi applied at synthesis.
    """

    def __init__(self, spec, source, z_dim, c_dim):
        self.spec, self.source, self.psi = spec, source, float(spec.psi)
        self.z_dim, self.c_dim = z_dim, c_dim
        self._memo = {}

    def __repr__(self):
        return f'Sampler({self.spec.describe()!r})'

    def describe(self):
        return self.spec.describe()

    def effective_sample_size(self):
        """Effective number of bank latents behind the draws of a resampling sampler (``polarity``); else ``None``."""
        ess = getattr(self.source, 'effective_sample_size', None)
        return None if ess is None else ess()

    def sample(self, num, seed=0):
        """Draw the latents of an evaluation.

        Parameters
        ----------
        num : int
            Number of latents (>= 1).
        seed : int, default=0
            Base seed in [0, 2**32).

        Returns
        -------
        z : float32 ndarray of shape (num, z_dim)
        c : float32 ndarray of shape (num, c_dim)
        psi : float
            Truncation psi to synthesise them with.
        """
        num, seed = int(num), _check_seed(seed)
        if num < 1:
            raise ValueError(f'num must be >= 1, got {num}')
        key = (num, seed)
        if key not in self._memo:  # Several metrics of one run ask for the same latents; hub searches are slow.
            z, c = self.source.draw(num, seed)
            z = np.ascontiguousarray(z, dtype=np.float32)
            c = np.ascontiguousarray(c, dtype=np.float32).reshape(num, self.c_dim)
            assert z.shape == (num, self.z_dim), (z.shape, num, self.z_dim)
            self._memo = {key: (z, c)}
        z, c = self._memo[key]
        return z.copy(), c.copy(), self.psi


def _build_source(term, G, device, label_pool, network_sha256, progress):
    args = term.args
    if term.name == 'random':
        return RandomSource(G.z_dim, G.c_dim, labels=args['labels'], label_pool=label_pool)
    if term.name == 'hubness':
        return HubnessSource(G, device, args['k'], args['t'], args['space'], args['batch'], args['count_self'],
                             args['max_batches'], labels=args['labels'], label_pool=label_pool, progress=progress)
    if term.name == 'polarity':
        bank = _load_bank(args['bank'], G, network_sha256)
        return PolaritySource(bank, args['rho'], args['top_k'], args['eps'], args['replace'], args['per_class'],
                              path=args['bank'])
    if term.name == 'bank':
        return BankSource(_load_bank(args['path'], G, network_sha256), path=args['path'])
    raise AssertionError(f'unhandled sampler {term.name}')


def build(spec, G, device=None, label_pool=None, network_sha256=None, progress=False):
    """Build a :class:`Sampler` for network `G` from a spec (text or :class:`Spec`).

    Parameters
    ----------
    spec : str or Spec
    G : generator
        Provides ``z_dim``, ``c_dim`` and, for ``hubness`` in W, ``mapping``.
    device : torch.device, optional
        Where hub scores are computed (default: G's device).
    label_pool : array-like of shape (N, c_dim), optional
        The dataset's labels, for ``labels=dataset`` / ``auto``.
    network_sha256 : str, optional
        Hash of the network file; latent banks recorded for another network are refused.
    progress : bool, default=False
        Show a progress bar during hub searches.

    Raises
    ------
    SamplerSpecError
        Bad spec, unreadable or incompatible bank.
    """
    spec = parse(spec)
    if device is None:
        params = list(G.parameters()) if hasattr(G, 'parameters') else []
        device = params[0].device if params else torch.device('cpu')
    device = torch.device(device)
    sources = [_build_source(term, G, device, label_pool, network_sha256, progress) for term in spec.terms]
    if spec.is_mixture:
        source = MixtureSource(sources, [term.weight for term in spec.terms])
    else:
        source = sources[0]
    return Sampler(spec, source, G.z_dim, G.c_dim)

#----------------------------------------------------------------------------
