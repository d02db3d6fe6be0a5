"""ImageNet-1k class names, from the table shipped beside this module (no NLTK, no network).

``imagenet_classes.txt`` lists the 1000 classes in BigGAN's (and torchvision's) order: class i is the i-th
WordNet id in sorted order, with its WordNet lemmas ("tench, Tinca tinca").
"""

import difflib
import functools
import os
import re

from dnnlib.util import UserError

NUM_CLASSES = 1000
_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet_classes.txt')


@functools.lru_cache(maxsize=None)
def _table():
    rows = []
    with open(_TABLE, encoding='utf-8') as f:
        for line in f:
            if line.startswith('#') or not line.strip():
                continue
            wnid, lemmas = line.rstrip('\n').split('\t')
            rows.append((wnid, tuple(lemma.strip() for lemma in lemmas.split(','))))
    assert len(rows) == NUM_CLASSES, f'{_TABLE} has {len(rows)} classes, expected {NUM_CLASSES}'
    return tuple(rows)


def class_names():
    """The first lemma of each class ('tench', 'goldfish', ...), by class index."""
    return [lemmas[0] for _, lemmas in _table()]


def wnids():
    """The WordNet id of each class ('n01440764', ...), by class index."""
    return [wnid for wnid, _ in _table()]


def _key(text):
    return re.sub(r'[\s_\-]+', ' ', text.strip().lower())


@functools.lru_cache(maxsize=None)
def _index_of_name():
    index = {}
    for i, (wnid, lemmas) in enumerate(_table()):
        index.setdefault(wnid, set()).add(i)
        for lemma in lemmas:
            index.setdefault(_key(lemma), set()).add(i)
    return index


class UnknownClassName(ValueError, UserError):
    """A name that is no ImageNet class; ``close`` holds up to three similar names."""

    def __init__(self, message, close):
        super().__init__(message)
        self.close = close


def class_index(text):
    """The class index of ``text``: an index ('207'), a WordNet id ('n02099601') or any lemma ('golden retriever',
    'Golden_Retriever'). Raises ValueError (one line) for an unknown or ambiguous name."""
    text = str(text).strip()
    if re.fullmatch(r'\d+', text):
        value = int(text)
        if value >= NUM_CLASSES:
            raise ValueError(f'class {value} is out of range for ImageNet (0..{NUM_CLASSES - 1})')
        return value
    matches = _index_of_name().get(_key(text), set())
    if len(matches) == 1:
        return next(iter(matches))
    if matches:
        options = '; '.join(f'{i} ({", ".join(_table()[i][1])})' for i in sorted(matches))
        raise ValueError(f'{text!r} names {len(matches)} ImageNet classes: {options}; pass the index')
    close = difflib.get_close_matches(_key(text), [k for k in _index_of_name() if not k.startswith('n0')], n=3)
    hint = f'; did you mean {", ".join(repr(c) for c in close)}?' if close else ''
    raise UnknownClassName(f'{text!r} is not an ImageNet class name, WordNet id or index{hint}', close)
