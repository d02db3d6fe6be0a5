"""Samplers: where the latents of an evaluation come from, written as a short spec string.

A sampler turns a base seed into ``num`` latents ``z`` [num, z_dim], labels ``c`` [num, c_dim] (float32 numpy)
and a truncation psi, deterministically: the same (spec, network, seed, num) always gives the same latents,
whatever the device, batch size or number of processes. ``calc_metrics.py --sampler`` takes these specs.

Spec language
-------------
::

    SPEC    := BODY [';' OPTION (',' OPTION)*]      global options, e.g.  ;trunc=0.7,class=3
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
``truncnorm`` [labels=auto]
    BigGAN's truncation trick: ``psi * truncnorm(-2, 2)`` latents of ``RandomState(seed)``
    (:func:`training.networks_biggan.truncated_z`), psi being the global ``trunc`` (``generate.py --truncnorm``).
``hubness`` [k=5, t=50 | top=M | quantile=Q, space=w, batch=10000, count_self=1, max_batches=1000, labels=auto]
    Hubness priors (Liang et al. 2022), the authors' convention by default: batch b holds ``batch`` random
    latents of batch seed ``seed + b`` (labels as for ``random``), scored by their exact k-occurrence
    (:func:`sampling.hubness.k_occurrence`) in W (``G.mapping(z, c, truncation_psi=1)[:, 0]``, ``space=w``) or
    in Z (``space=z``); a latent is a hub if its score is >= t (or one of the ``top`` M highest scores of its
    batch, or >= the ``quantile`` Q of its batch's scores). ``count_self=1`` counts every latent as its own
    first neighbour, as the authors' code does (``count_self=0``: the textbook N_k). The first ``num`` hubs in
    (batch, index) order are returned: the search of ``generate_hubness.py`` (:mod:`sampling.hub_sampler`),
    which gives the same hubs with the same settings and ``--seed``.
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

Global option ``class=N|random`` (the scripts' ``--class``; an ImageNet name works too, quoted) for conditional
networks: ``N`` gives every fresh latent class N and keeps only a bank's latents of class N (or labels an
unlabelled bank with N); ``random`` gives fresh latents uniform random classes (``labels=uniform``) and leaves a
bank's labels as they are. Without it, ``labels=`` decides. Ignored for unconditional networks.

The scripts build their samplers here (:func:`term`, :func:`make_spec`): ``generate.py`` draws ``random``
(``truncnorm``) once per seed, ``generate_hubness.py`` runs the ``hubness`` search, ``generate_magnet.py``
draws ``polarity`` (``--mix M``: ``mix:M*polarity(...)+(1-M)*random``), so each gives the latents of its spec.

Parse errors raise :class:`SamplerSpecError` with a one-line message.
"""

import dataclasses
import math
import re

import numpy as np
import torch

from dnnlib.util import UserError
from sampling import latents as latent_utils
from sampling.synthesis import has_mapping

__all__ = ['SamplerSpecError', 'Term', 'Spec', 'parse', 'build', 'Sampler', 'derive_seed']


# ----------------------------------------------------------------------------
# Parsing.

class SamplerSpecError(ValueError, UserError):
    """A sampler spec that cannot be parsed or built; the message is one line."""


@dataclasses.dataclass
class Term:
    """One sampler of a spec: its name, its arguments (converted) and its mixture weight (or None)."""

    name: str
    args: dict
    weight: float = None


@dataclasses.dataclass
class Spec:
    """A parsed spec: one or more terms (several = a mixture), the global truncation psi and class."""

    terms: list
    psi: float = 1.0
    class_idx: object = None
    text: str = ''

    @property
    def is_mixture(self):
        return len(self.terms) > 1 or self.terms[0].weight is not None

    def describe(self):
        """Canonical text of the spec (every argument explicit), e.g. for result files."""
        parts = []
        for item in self.terms:
            args = ','.join(f'{k}={_format_value(v)}' for k, v in item.args.items()
                            if not (v is None and k in _OMITTED_WHEN_UNSET))
            body = f'{item.name}({args})' if self.is_mixture and args else item.name + (f':{args}' if args else '')
            parts.append(body if item.weight is None else f'{_format_value(item.weight)}*{body}')
        options = [f'trunc={_format_value(self.psi)}'] if self.psi != 1 else []
        options += [f'class={_format_value(self.class_idx)}'] if self.class_idx is not None else []
        return ('mix:' if self.is_mixture else '') + '+'.join(parts) + (';' + ','.join(options) if options else '')


def _format_value(value):
    if value is None:
        return 'all'
    if isinstance(value, tuple):
        return ','.join(map(_format_value, value))
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
    if isinstance(value, (list, tuple)) and len(value) > 1:  # The authors' per-class files, from a script.
        return tuple(_to_path(name, item) for item in value)
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
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


def _optional_float(name, value):
    return None if value in ('none', None) else _to_float(name, value)


# name -> {argument: (converter, default)}; a default of ... means required.
_SAMPLERS = {
    'random': dict(labels=(_LABELS, 'auto')),
    'trunc': dict(psi=(_to_float, ...)),
    'truncnorm': dict(labels=(_LABELS, 'auto')),
    'hubness': dict(k=(_int_at_least(1), 5), t=(_optional_float, None), top=(_optional_int_at_least(1), None),
                    quantile=(_optional_float, None), space=(_to_choice(('w', 'z')), 'w'),
                    batch=(_int_at_least(2), 10000), count_self=(_to_bool, True),
                    max_batches=(_int_at_least(1), 1000), labels=(_LABELS, 'auto')),
    'polarity': dict(bank=(_to_path, ...), rho=(_to_float, 1.0), top_k=(_optional_int_at_least(1), None),
                     eps=(_to_float, 0.0), replace=(_to_bool, True), per_class=(_to_bool, True)),
    'bank': dict(path=(_to_path, ...)),
}

# Arguments left out of a spec's text when unset (the hub selection rules: exactly one is set).
_OMITTED_WHEN_UNSET = ('t', 'top', 'quantile')


def _finish_hubness(args):
    rules = [name for name in _OMITTED_WHEN_UNSET if args[name] is not None]
    if len(rules) > 1:
        names = ['threshold' if name == 't' else name for name in rules]
        raise SamplerSpecError(f'choose one selection rule, got {" and ".join(names)} (hubness: t, top or quantile)')
    if not rules:
        args['t'] = 50.0  # The authors' threshold.
    if args['quantile'] is not None and not 0 <= args['quantile'] <= 1:
        raise SamplerSpecError(f'hubness argument quantile must be in [0, 1], got {args["quantile"]}')
    return args


# Checks that involve several arguments of one sampler.
_FINISH = {'hubness': _finish_hubness}


def parse_class(value, keywords=('random',)):
    """A class of a conditional network: an index, one of ``keywords``, or an ImageNet class name or WordNet id
    ('golden retriever', 'n02099601') -> int or keyword. Raises ValueError with a one-line message."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        if isinstance(value, int) and value < 0:
            raise ValueError(f'class {value} is negative; classes are numbered from 0')
        return value
    text = str(value).strip()
    if text.lower() in keywords:
        return text.lower()
    if re.fullmatch(r'[+-]?\d+', text):
        return parse_class(int(text), keywords)
    from sampling import imagenet
    try:
        return imagenet.class_index(text)
    except imagenet.UnknownClassName as err:
        options = ' or '.join(['a class index'] + [repr(word) for word in keywords])
        hint = f'; did you mean {", ".join(repr(c) for c in err.close)}?' if err.close else ''
        raise ValueError(f'{text!r} is not {options}, nor an ImageNet class name{hint}') from None


def _to_class(name, value):
    try:
        return parse_class(value)
    except ValueError as err:
        raise SamplerSpecError(f'{name}: {err}') from None


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
    for key in named:
        if key not in schema:
            parser.fail(f'unknown argument {key!r} of {name} (known: {", ".join(schema)})')
    for key, (_, default) in schema.items():
        if default is ... and key not in named:
            parser.fail(f'{name} needs {key}=...')
    try:
        return term(name, weight=weight, **named)
    except SamplerSpecError as err:
        raise SamplerSpecError(f'bad sampler spec {parser.text!r}: {err}') from None


def term(name, weight=None, **named):
    """One sampler of a spec, its arguments checked and completed with their defaults as :func:`parse` does:
    ``term('polarity', bank='b.npz', rho=-1)``. Scripts build their samplers with it from their options."""
    if name not in _SAMPLERS:
        raise SamplerSpecError(f'unknown sampler {name!r} (known: {", ".join(_SAMPLERS)})')
    schema = _SAMPLERS[name]
    unknown = sorted(set(named) - set(schema))
    if unknown:
        raise SamplerSpecError(f'unknown argument {unknown[0]!r} of {name} (known: {", ".join(schema)})')
    args = {}
    for key, (convert, default) in schema.items():
        if key in named and named[key] is not None:
            args[key] = convert(f'{name} argument {key}', named[key])
        elif default is ...:
            raise SamplerSpecError(f'{name} needs {key}=...')
        else:
            args[key] = default
    return Term(name=name, args=_FINISH.get(name, dict)(args), weight=weight)


def make_spec(terms, psi=1.0, class_idx=None):
    """A :class:`Spec` from :func:`term` results (several, with weights: a mixture), checked as :func:`parse` does."""
    terms = list(terms)
    spec = Spec(terms=terms, psi=_to_float('trunc', psi), class_idx=_to_class('class', class_idx))
    if spec.is_mixture:
        weights = [item.weight for item in terms]
        if any(w is None or w < 0 for w in weights) or abs(sum(weights) - 1) > 1e-6:
            raise SamplerSpecError(f'mixture weights must be >= 0 and sum to 1, got {weights}')
    spec.text = spec.describe()
    return spec


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

    psi, class_idx = 1.0, None
    for key, value in options.items():
        if key == 'trunc':
            psi = _to_float('trunc', value)
        elif key == 'class':
            class_idx = _to_class('class', value)
        else:
            parser.fail(f'unknown global option {key!r} (known: trunc, class)')
    if len(terms) == 1 and terms[0].name == 'trunc':
        if 'trunc' in options:
            parser.fail('truncation given twice (trunc:PSI and ;trunc=PSI)')
        psi = terms[0].args['psi']
        terms = [Term(name='random', args=dict(labels='auto'), weight=terms[0].weight)]

    if mixture or len(terms) > 1:
        if any(item.name == 'trunc' for item in terms):
            parser.fail('trunc:PSI cannot be a mixture component: truncation applies to the whole sampler, '
                        'add ;trunc=PSI at the end')
        if any(item.weight is None for item in terms):
            parser.fail('give every mixture component a weight, e.g. 0.2*polarity(bank=b.npz)+0.8*random')
        weights = [item.weight for item in terms]
        if any(w < 0 for w in weights) or abs(sum(weights) - 1) > 1e-6:
            parser.fail(f'mixture weights must be >= 0 and sum to 1, got {" + ".join(map(str, weights))}')
    elif terms[0].weight is not None and terms[0].weight != 1:
        parser.fail(f'a single sampler cannot have weight {terms[0].weight}; use a mixture or drop the weight')
    return Spec(terms=terms, psi=psi, class_idx=class_idx, text=text)

# ----------------------------------------------------------------------------
# Sources: draw(num, seed) -> Draw.

@dataclasses.dataclass
class Draw:
    """Latents drawn by a source: ``z`` float32 [num, z_dim], ``c`` float32 [num, c_dim] and ``bank_index`` int64
    [num], the row of a latent bank each latent was taken from (-1 for latents not taken from a bank)."""

    z: np.ndarray
    c: np.ndarray
    bank_index: np.ndarray

    @classmethod
    def fresh(cls, z, c):
        return cls(z, c, np.full([len(z)], -1, dtype=np.int64))

    @classmethod
    def concatenate(cls, draws):
        return cls(*(np.concatenate([getattr(d, name) for d in draws]) for name in ('z', 'c', 'bank_index')))


def derive_seed(seed, index):
    """Seed of component `index` of a mixture with base seed `seed`, in [0, 2**32)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint32)[0])


class _Labels:
    """Labels of the samplers that draw fresh latents (``random``, ``truncnorm``, ``hubness``): see the module
    docstring. ``labels(seed, num)`` -> float32 [num, c_dim].

    A class index gives every latent that class; ``class_idx='random'`` or ``mode='uniform'`` uniform random
    classes; otherwise (``mode`` 'auto' or 'dataset') the labels of random items of ``label_pool`` if given.
    """

    def __init__(self, c_dim, mode, label_pool, class_idx=None):
        if class_idx not in (None, 'random'):
            _check_class_range(class_idx, c_dim)
        uses_pool = class_idx is None and mode in ('auto', 'dataset')
        if mode == 'dataset' and uses_pool and c_dim and label_pool is None:
            raise SamplerSpecError('labels=dataset needs a dataset with labels (pass --data); or use labels=uniform')
        if uses_pool and label_pool is not None:
            label_pool = np.asarray(label_pool, dtype=np.float32).reshape(len(label_pool), -1)
            if c_dim and (label_pool.shape[1] != c_dim or len(label_pool) == 0):
                raise SamplerSpecError(f'the dataset labels have shape {list(label_pool.shape)} but the network '
                                       f'expects {c_dim} label values')
        self.c_dim, self.class_idx = c_dim, class_idx
        self.pool = label_pool if uses_pool else None

    def __call__(self, seed, num):
        if self.c_dim == 0:
            return np.zeros([num, 0], dtype=np.float32)
        if self.class_idx not in (None, 'random'):
            return latent_utils.one_hot(np.full([num], self.class_idx), self.c_dim)
        if self.pool is not None:
            rows = np.random.RandomState([seed, 1]).randint(len(self.pool), size=num)
            return self.pool[rows].copy()
        return latent_utils.random_labels(seed, num, self.c_dim)


def _check_class_range(class_idx, c_dim):
    if c_dim and not 0 <= class_idx < c_dim:
        raise SamplerSpecError(f'class {class_idx} is out of range for {c_dim} classes (0..{c_dim - 1})')


class RandomSource:
    """``random``: rows of ``RandomState(seed).standard_normal``, labels from a separate stream."""

    def __init__(self, z_dim, labels):
        self.z_dim, self.labels = z_dim, labels

    def draw(self, num, seed):
        z = latent_utils.z_batch(seed, num, self.z_dim).astype(np.float32)
        return Draw.fresh(z, self.labels(seed, num))


class TruncnormSource:
    """``truncnorm``: BigGAN's ``psi * truncnorm(-2, 2)`` latents of ``RandomState(seed)`` (labels as ``random``)."""

    def __init__(self, z_dim, labels, psi):
        self.z_dim, self.labels, self.psi = z_dim, labels, psi

    def draw(self, num, seed):
        from training.networks_biggan import truncated_z
        return Draw.fresh(truncated_z(num, self.z_dim, truncation=self.psi, seed=seed), self.labels(seed, num))


class HubnessSource:
    """``hubness``: the first hubs of seeded batches (:mod:`sampling.hub_sampler`, the search of
    ``generate_hubness.py``; see the module docstring)."""

    def __init__(self, G, device, args, labels, progress=False):
        if args['space'] == 'w' and not has_mapping(G):
            raise SamplerSpecError(f'hubness: space=w needs a mapping network, and this {type(G).__name__} has '
                                   'none: use space=z')
        self.G, self.device, self.labels, self.progress = G, device, labels, progress
        self.max_batches = args['max_batches']
        self.settings = dict(space=args['space'], k=args['k'], count_self=args['count_self'],
                             batch_size=args['batch'], threshold=args['t'], top=args['top'],
                             quantile=args['quantile'])
        try:
            self.search(0)
        except ValueError as err:
            raise SamplerSpecError(f'hubness: {err}') from None
        # Dataset labels are not a class setting a search records: they come in through score().
        self._custom_labels = labels.pool is not None

    def search(self, seed):
        """The :class:`~sampling.hub_sampler.HubSearch` of base seed `seed`."""
        from sampling import hub_sampler

        class_idx = None
        if self.G.c_dim:
            class_idx = 'random' if self.labels.class_idx in (None, 'random') else int(self.labels.class_idx)
        return hub_sampler.HubSearch(seed=seed, class_idx=class_idx, **self.settings)

    def score(self, search, batch):
        """Score batch `batch` of `search` and keep its hubs: a chunk (:func:`sampling.hub_sampler.score_batch`)."""
        from sampling import hub_sampler

        labels = self.labels if self._custom_labels else None
        return hub_sampler.score_batch(self.G, search, batch, device=self.device, labels=labels)

    def draw(self, num, seed):
        from sampling import hub_sampler

        search = self.search(seed)
        result = hub_sampler.collect_hubs(None, num, self.max_batches, compute=lambda b: self.score(search, b),
                                          progress=self.progress)
        if not result.complete:
            raise ValueError(f'hubness sampler: found only {len(result.bank)} of {num} hubs in {self.max_batches} '
                             f'batches of {search.batch_size}; lower t, or raise max_batches')
        return Draw.fresh(result.bank.latents.astype(np.float32), result.bank.labels.astype(np.float32))


def load_bank(path, G, network_sha256=None, need=None):
    """Read and check a latent bank for network `G` (ours, the MaGNET authors', or their per-class files).

    Refuses a bank recorded for another network or with other dimensions; a bank without labels may serve a
    conditional network (with a class). `need`, e.g. 'singular values (svds) or log_volume', asks for a volume
    bank: ``svds`` or ``log_volume``. Returns ``(bank, notes)``: what the user should hear (a bank recording no network, rows
    dropped). Raises :class:`SamplerSpecError` with a one-line message.
    """
    where = ', '.join(map(str, path)) if isinstance(path, (list, tuple)) else path
    try:
        bank = latent_utils.load_bank(path, c_dim=G.c_dim)
    except FileNotFoundError:
        raise SamplerSpecError(f'latent bank not found: {where}') from None
    except latent_utils.FileFormatError as err:
        raise SamplerSpecError(f'latent bank {err}') from None
    except (OSError, ValueError) as err:
        raise SamplerSpecError(f'cannot read latent bank {where}: {str(err).splitlines()[0]}') from None
    try:
        latent_utils.check_compatible(bank.meta, network_sha256=network_sha256, z_dim=G.z_dim,
                                      c_dim=G.c_dim if bank.c_dim else None)
        latent_utils.check_compatible(bank, z_dim=G.z_dim, c_dim=G.c_dim if bank.c_dim else None)
    except ValueError as err:
        raise SamplerSpecError(f'{where}: {err}') from None
    if need and 'svds' not in bank and 'log_volume' not in bank:
        raise SamplerSpecError(f'{where}: the bank has no {need}; compute them with compute_volume_scalars.py')
    if len(bank) == 0:
        raise SamplerSpecError(f'{where}: the bank holds no latents')
    notes = []
    if bank.meta.get('network_sha256') is None:
        notes.append(f'warning: the bank records no network (e.g. a MaGNET authors\' file, {where}): cannot check that it '
                     'was computed for this network')
    dropped = int(bank.meta.get('dropped_zero_rows', 0))
    if dropped:
        notes.append(f'Dropped {dropped} all-zero rows from {where}; {len(bank)} latents remain')
    return bank, notes


def _bank_rows(bank, c_dim, class_idx, path):
    """The rows of `bank` a draw of class `class_idx` may use, and their float32 labels [rows, c_dim]."""
    rows = np.arange(len(bank))
    if c_dim == 0:
        return rows, np.zeros([len(rows), 0], dtype=np.float32)
    concrete = class_idx not in (None, 'random')
    if concrete:
        _check_class_range(class_idx, c_dim)
    if bank.c_dim == 0:
        if not concrete:
            raise SamplerSpecError(f'{path}: the bank has no labels but the network is conditional ({c_dim} classes): '
                                   'choose the class its latents were computed for (--class N, or ;class=N)')
        return rows, latent_utils.one_hot(np.full([len(rows)], class_idx), c_dim)
    labels = bank.labels.astype(np.float32)
    if concrete:
        rows = np.flatnonzero(labels[:, class_idx] == 1)
        if len(rows) == 0:
            raise SamplerSpecError(f'{path}: the bank has no latents of class {class_idx}')
    return rows, labels[rows]


class PolaritySource:
    """``polarity``: resampling of a bank's latents by their volume (see the module docstring).

    Parameters
    ----------
    bank : LatentBank
        With ``svds`` [N, M] or ``log_volume`` [N] (:func:`load_bank`).
    z_dim, c_dim : int
        The network's.
    rho, top_k, eps, replace, per_class :
        As the spec's arguments.
    class_idx : int, 'random' or None
        A class index keeps only the bank's latents of that class (or labels an unlabelled bank with it).
    normalizes_z : bool, default=True
        The generator normalises z, so ``top_k`` must stay below ``z_dim``.
    """

    def __init__(self, bank, z_dim, c_dim, rho=1.0, top_k=None, eps=0.0, replace=True, per_class=True,
                 class_idx=None, normalizes_z=True, path='the bank'):
        from sampling import polarity, volume

        self.rows, self.row_labels = _bank_rows(bank, c_dim, class_idx, path)
        if 'svds' in bank:
            svds = np.asarray(bank['svds']).reshape(len(bank), -1)
            try:
                top_k = volume.check_top_k(svds.shape[1] if top_k is None else top_k, z_dim,
                                           normalizes_z=normalizes_z)
            except ValueError as err:
                raise SamplerSpecError(f'{path}: {err}') from None
            if top_k > svds.shape[1]:
                raise SamplerSpecError(f'{path}: top_k={top_k} exceeds the {svds.shape[1]} singular values stored in '
                                       'the bank')
            log_w = polarity.log_weights(svds[self.rows], rho, top_k=top_k, eps=eps)
        elif 'log_volume' in bank:
            log_w = float(rho) * np.asarray(bank['log_volume'], dtype=np.float64).reshape(-1)[self.rows]
        else:
            raise SamplerSpecError(f'{path}: the bank has no singular values (svds) or log_volume; compute them '
                                   'with compute_volume_scalars.py')
        if not np.isfinite(log_w).any():
            raise SamplerSpecError(f'{path}: no latent of the bank has a finite weight (zero singular values?); '
                                   'set eps > 0')
        self.bank, self.log_w, self.replace, self.top_k = bank, log_w, replace, top_k
        self.per_class = bool(per_class) and c_dim > 0

    def _class_ids(self):
        return self.row_labels.argmax(axis=1)

    def effective_sample_size(self):
        """Kish's effective number of bank latents behind the draws (see :func:`polarity.effective_sample_size`).

        With per-class normalisation, the sum of the classes' own effective sizes. Far below the number of
        samples drawn, the resampled set mostly repeats a few latents.
        """
        return float(sum(self.effective_sample_sizes().values()))

    def effective_sample_sizes(self):
        """{class: ESS} with per-class normalisation, else {'all': ESS}."""
        from sampling import polarity

        if not self.per_class:
            return {'all': polarity.effective_sample_size(self.log_w)}
        ids = self._class_ids()
        return {int(c): polarity.effective_sample_size(self.log_w[ids == c]) for c in np.unique(ids)
                if np.isfinite(self.log_w[ids == c]).any()}

    def summary(self):
        """The weights at a glance (JSON-ready): candidates, effective sample size, largest probability, range."""
        finite = self.log_w[np.isfinite(self.log_w)]
        p = np.exp(self.log_w - finite.max())
        summary = dict(num_candidates=len(self.rows), ess=self.effective_sample_size(),
                       max_probability=float(p.max() / p.sum()), log_weight_min=float(finite.min()),
                       log_weight_max=float(finite.max()), top_k=self.top_k,
                       dropped_zero_rows=int(self.bank.meta.get('dropped_zero_rows', 0)))
        if self.per_class:
            summary['ess_per_class'] = {str(k): v for k, v in self.effective_sample_sizes().items()}
        return summary

    def draw(self, num, seed):
        from sampling import polarity

        rng = np.random.default_rng(seed)
        if self.per_class:  # Equal counts for the classes the bank has (per-class files may cover a few).
            present = np.unique(self._class_ids()).tolist()
            counts = dict(zip(present, polarity.split_counts(num, [1 / len(present)] * len(present))))
            picked = polarity.resample_per_class(self.log_w, self.row_labels, counts, rng, replace=self.replace)
        elif self.replace:
            picked = polarity.resample_with_replacement(self.log_w, num, rng)
        else:
            picked = polarity.resample_without_replacement(self.log_w, num, rng)
        rows = self.rows[picked]
        return Draw(self.bank.latents[rows].astype(np.float32), self.row_labels[picked], rows.astype(np.int64))


class BankSource:
    """``bank``: the first latents of a bank (of the class, with a class), in order."""

    def __init__(self, bank, c_dim, class_idx=None, path=''):
        self.bank, self.path = bank, path
        self.rows, self.row_labels = _bank_rows(bank, c_dim, class_idx, path)

    def draw(self, num, seed):
        del seed  # A bank is already a fixed list of latents.
        if num > len(self.rows):
            raise ValueError(f'{self.path} holds {len(self.rows)} latents, fewer than the {num} needed; '
                             'make a larger bank')
        rows = self.rows[:num]
        return Draw(self.bank.latents[rows].astype(np.float32), self.row_labels[:num], rows.astype(np.int64))


class MixtureSource:
    """Exact-count mixture: component i draws its share with seed ``derive_seed(seed, i)``."""

    def __init__(self, sources, fractions):
        self.sources, self.fractions = sources, fractions

    def counts(self, num):
        from sampling.polarity import split_counts
        return split_counts(num, self.fractions)

    def draw(self, num, seed):
        return Draw.concatenate([source.draw(count, derive_seed(seed, i))
                                 for i, (source, count) in enumerate(zip(self.sources, self.counts(num))) if count])

# ----------------------------------------------------------------------------

class Sampler:
    """A built sampler: ``sample(num, seed) -> (z, c, psi)``.

    Attributes
    ----------
    spec : Spec
    source : object with ``draw(num, seed) -> Draw``
    psi : float
        Truncation psi applied at synthesis.
    notes : list of str
        What the user should be told about the sampler's inputs (e.g. a bank that records no network).
    """

    def __init__(self, spec, source, z_dim, c_dim, notes=()):
        self.spec, self.source, self.psi = spec, source, float(spec.psi)
        self.z_dim, self.c_dim, self.notes = z_dim, c_dim, list(notes)
        self._memo = {}

    def __repr__(self):
        return f'Sampler({self.spec.describe()!r})'

    def describe(self):
        return self.spec.describe()

    @property
    def components(self):
        """The sources of a mixture's components, in order (one source for a single sampler)."""
        return list(getattr(self.source, 'sources', [self.source]))

    def effective_sample_size(self):
        """Effective number of bank latents behind the draws of a resampling sampler (``polarity``); else ``None``."""
        ess = getattr(self.source, 'effective_sample_size', None)
        return None if ess is None else ess()

    def draw(self, num, seed=0):
        """The latents of ``sample(num, seed)`` as a :class:`Draw` (with the bank row of each latent)."""
        num, seed = int(num), latent_utils.check_seed(seed)
        if num < 1:
            raise ValueError(f'num must be >= 1, got {num}')
        key = (num, seed)
        if key not in self._memo:  # Several metrics of one run ask for the same latents; hub searches are slow.
            self._memo = {key: self._checked(self.source.draw(num, seed), num)}
        drawn = self._memo[key]
        return Draw(drawn.z.copy(), drawn.c.copy(), drawn.bank_index.copy())

    def draw_seeds(self, seeds):
        """One latent per seed, the first of ``draw(1, seed)``: generate.py's latent of each seed."""
        draws = [self.source.draw(1, latent_utils.check_seed(seed)) for seed in seeds]
        if not draws:
            draws = [Draw(np.zeros([0, self.z_dim]), np.zeros([0, self.c_dim]), np.zeros([0]))]
        return self._checked(Draw.concatenate(draws), len(seeds))

    def _checked(self, drawn, num):
        """`drawn` as contiguous float32 z [num, z_dim] and c [num, c_dim] and int64 bank rows [num]."""
        drawn = Draw(np.ascontiguousarray(drawn.z, dtype=np.float32),
                     np.ascontiguousarray(drawn.c, dtype=np.float32).reshape(num, self.c_dim),
                     np.asarray(drawn.bank_index, dtype=np.int64))
        assert drawn.z.shape == (num, self.z_dim), (drawn.z.shape, num, self.z_dim)
        return drawn

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
        drawn = self.draw(num, seed)
        return drawn.z, drawn.c, self.psi


def _build_source(term, spec, G, device, label_pool, network_sha256, progress, notes):
    args, class_idx = term.args, spec.class_idx
    if term.name in ('random', 'truncnorm', 'hubness'):
        labels = _Labels(G.c_dim, args['labels'], label_pool, class_idx=class_idx)
        if term.name == 'random':
            return RandomSource(G.z_dim, labels)
        if term.name == 'truncnorm':
            return TruncnormSource(G.z_dim, labels, spec.psi)
        return HubnessSource(G, device, args, labels, progress=progress)
    if term.name == 'polarity':
        bank, bank_notes = load_bank(args['bank'], G, network_sha256, need='singular values (svds) or log_volume')
        notes.extend(bank_notes)
        return PolaritySource(bank, G.z_dim, G.c_dim, rho=args['rho'], top_k=args['top_k'], eps=args['eps'],
                              replace=args['replace'], per_class=args['per_class'], class_idx=class_idx,
                              normalizes_z=bool(getattr(G, 'normalizes_z', True)), path=args['bank'])
    if term.name == 'bank':
        bank, bank_notes = load_bank(args['path'], G, network_sha256)
        notes.extend(bank_notes)
        return BankSource(bank, G.c_dim, class_idx=class_idx, path=args['path'])
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
    if G.c_dim == 0:
        spec = dataclasses.replace(spec, class_idx=None)  # A class means nothing to an unconditional network.
    notes = []
    sources = [_build_source(item, spec, G, device, label_pool, network_sha256, progress, notes)
               for item in spec.terms]
    if spec.is_mixture:
        source = MixtureSource(sources, [item.weight for item in spec.terms])
    else:
        source = sources[0]
    return Sampler(spec, source, G.z_dim, G.c_dim, notes=notes)

# ----------------------------------------------------------------------------
