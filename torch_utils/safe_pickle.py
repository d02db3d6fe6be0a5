"""Restricted and bounded unpickling of files that may be hostile.

``load(f, allowed_globals)`` reads one pickle without running code a file names and without letting
a small file cost a large amount of time or memory:

1. A pre-pass reads every opcode without building anything. It refuses any global not in the
   caller's ``allowed_globals`` table, out-of-band buffers, copyreg extensions and persistent ids
   (unless the caller handles them); declared lengths (``BINBYTES8``, ``FRAME``, strings, ``LONG4``)
   that exceed what is left of the file; memo indices beyond ``Limits.max_memo`` (the C unpickler
   sizes its memo array by the largest index); more than ``Limits.max_objects`` objects; and an
   estimated allocation beyond ``Limits.budget(file_size)``. It also records which container holds
   which, so that after the pass it can refuse object graphs nested deeper than ``Limits.max_depth``
   or holding themselves (cycles), in time linear in the file: shared nodes are visited once.
2. Only then does Python's unpickler build the objects, resolving globals through the same table.
   The constructors this module provides (tensors, storages, numpy arrays) check what they are
   given and ``charge()`` what they allocate against the same budget.
3. ``iter_unique`` walks a loaded object graph by identity, so a graph that shares references
   exponentially (a DAG of tuples 60 levels deep has 2^60 paths) costs its size, not its paths.

Errors are ``UnsafePickleError`` subclasses whose message is one line without the file name; the
caller adds the name and what the user can do. Reusable by every loader of untrusted checkpoints
(NVlabs network pickles, TF-era pickles, ``torch.save`` zip checkpoints via ``load_torch_zip``).
"""

import collections
import contextlib
import contextvars
import dataclasses
import io
import math
import pickle
import pickletools
import struct
import zipfile

import numpy as np
import torch

try:
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _np_multiarray

# ----------------------------------------------------------------------------
# Errors and limits.


def one_line(text, limit=1000):
    """``text`` as one printable line: line breaks become spaces, other control characters are escaped,
    and it is cut at ``limit`` characters. For messages that quote content from a file."""
    text = str(text).replace('\r\n', ' ').replace('\n', ' ').replace('\r', ' ').replace('\t', ' ')
    text = ''.join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return text if len(text) <= limit else text[:limit - 3] + '...'


class UnsafePickleError(pickle.UnpicklingError):
    """The file was refused; ``str(err)`` is one line saying why (without the file name)."""

    def __init__(self, message):
        super().__init__(one_line(message))


class RefusedGlobalError(UnsafePickleError):
    """The file names a global that the caller's table does not admit; ``global_name`` is 'module.name'."""

    def __init__(self, global_name):
        global_name = one_line(global_name, 200)
        super().__init__(f'it references {global_name}, which safe loading does not allow')
        self.global_name = global_name


class PickleLimitError(UnsafePickleError):
    """The file exceeds a bound (size, depth, count, allocation): a bomb or a damaged file."""


class DamagedPickleError(UnsafePickleError):
    """The file is not a well-formed pickle (or holds inconsistent tensor/array data)."""


class TruncatedPickleError(DamagedPickleError):
    """The file ends before its pickle does."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on one load. The defaults admit every network pickle and checkpoint we know of by a wide margin."""
    max_depth: int = 100                 # Nesting of containers/objects in the loaded graph.
    max_objects: int = 2_000_000         # Objects the pickle may create (each opcode creates at most one).
    max_memo: int = 1_000_000            # Largest memo index.
    max_instructions: int = 8_000_000    # Opcodes, including those that create nothing (GET, POP...).
    bytes_per_file_byte: float = 4.0     # Allocation budget relative to the file size ...
    min_budget_bytes: int = 64 << 20     # ... but never less than this.
    object_cost_bytes: int = 96          # What one container is charged (an atom: a third).

    def budget(self, file_size):
        return max(self.min_budget_bytes, int(self.bytes_per_file_byte * file_size))


DEFAULT_LIMITS = Limits()

# ----------------------------------------------------------------------------
# Allocation budget, shared by the pre-pass, the constructors below and nested loads.


class _Budget:
    def __init__(self, total, parent=None):
        self.total, self.used, self.parent = total, 0, parent

    def charge(self, nbytes, what):
        budget = self
        while budget is not None:
            budget.used += int(nbytes)
            if budget.used > budget.total:
                raise PickleLimitError(f'{what} would take the allocations past {budget.total:,} bytes, far more '
                                       'than the file size warrants')
            budget = budget.parent


_active_budget = contextvars.ContextVar('safe_pickle_budget', default=None)


def charge(nbytes, what):
    """Count ``nbytes`` that a constructor is about to allocate against the active load's budget.

    Constructors in an ``allowed_globals`` table call this before allocating from sizes the file
    declares; outside a load it does nothing.
    """
    if nbytes < 0:
        raise DamagedPickleError(f'{what} declares a negative size')
    budget = _active_budget.get()
    if budget is not None:
        budget.charge(nbytes, what)


@contextlib.contextmanager
def _budget_scope(total):
    token = _active_budget.set(_Budget(total, parent=_active_budget.get()))
    try:
        yield _active_budget.get()
    finally:
        _active_budget.reset(token)

# ----------------------------------------------------------------------------
# Pre-pass over the opcodes.


class _Node:
    """A container or constructed object seen in the pre-pass; ``kids`` are what it holds."""
    __slots__ = ('kids', 'height', 'state')

    def __init__(self, kids=None):
        self.kids = kids if kids is not None else []
        self.height = 0
        self.state = 0  # 0 unvisited, 1 on the current path, 2 done.


_LEAF = object()     # An atom (number, None, bool, long string).


class _Global:
    __slots__ = ('name',)

    def __init__(self, name):
        self.name = name


_LENGTH_PREFIX = {  # Argument name -> (struct format of the length, signed).
    'string1': '<B', 'bytes1': '<B', 'unicodestring1': '<B', 'long1': '<B',
    'string4': '<i', 'bytes4': '<I', 'unicodestring4': '<I', 'long4': '<i',
    'bytes8': '<Q', 'bytearray8': '<Q', 'unicodestring8': '<Q',
}
_FIXED = {'uint1': '<B', 'uint2': '<H', 'int4': '<i', 'uint4': '<I', 'uint8': '<Q', 'float8': '>d'}
_NEWLINE_ARGS = frozenset(['decimalnl_short', 'decimalnl_long', 'floatnl', 'stringnl', 'stringnl_noescape',
                           'unicodestringnl'])
_MAX_STRING_VALUE = 1000  # Strings longer than this are only counted, never kept (no global name is longer).


class _Scanner:
    def __init__(self, buf, start, allowed_globals, limits, budget, persistent_ok):
        self.buf, self.pos, self.end = buf, start, len(buf)
        self.allowed, self.limits, self.budget = allowed_globals, limits, budget
        self.persistent_ok = persistent_ok
        self.stack, self.metastack, self.memo = [], [], {}
        self.objects = 0

    # -- reading -------------------------------------------------------------
    def read(self, n, what):
        if n > self.end - self.pos:
            raise TruncatedPickleError(f'{what} needs {n:,} bytes, {self.end - self.pos:,} remain')
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data

    def skip(self, n, what):
        if n < 0:
            raise DamagedPickleError(f'{what} declares a negative length')
        if n > self.end - self.pos:
            raise TruncatedPickleError(f'{what} declares {n:,} bytes but only {self.end - self.pos:,} remain')
        self.pos += n

    def readline(self, what):
        view = self.buf
        index = bytes(view[self.pos:self.pos + 4096]).find(b'\n')  # Globals, ints and floats fit in a line.
        if index < 0:
            # Long text lines (protocol 0 strings) are scanned in place without copying the file.
            index = self.pos
            while index < self.end and view[index] != 10:
                index += 1
            if index >= self.end:
                raise TruncatedPickleError(f'{what} has no end of line')
            line = bytes(view[self.pos:index]) if index - self.pos <= _MAX_STRING_VALUE else None
            self.pos = index + 1
            return line
        line = bytes(view[self.pos:self.pos + index])
        self.pos += index + 1
        return line

    # -- stack ---------------------------------------------------------------
    def push(self, item):
        self.objects += 1
        if self.objects > self.limits.max_objects:
            raise PickleLimitError(f'the file creates more than {self.limits.max_objects:,} objects')
        # Containers and constructed objects cost a few pointers more than atoms (numbers, None, strings).
        cost = self.limits.object_cost_bytes if isinstance(item, _Node) else self.limits.object_cost_bytes // 3
        self.budget.charge(cost, 'the objects of the pickle')
        self.stack.append(item)

    def pop(self, what):
        if not self.stack:
            raise DamagedPickleError(f'{what} finds an empty stack')
        return self.stack.pop()

    def top(self, what):
        if not self.stack:
            raise DamagedPickleError(f'{what} finds an empty stack')
        return self.stack[-1]

    def pop_mark(self, what):
        if not self.metastack:
            raise DamagedPickleError(f'{what} finds no MARK')
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def node_of(self, item, what):
        if not isinstance(item, _Node):
            raise DamagedPickleError(f'{what} is applied to something that is not a container')
        return item

    def check_global(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise DamagedPickleError('a global reference is not a pair of names')
        if (module, name) not in self.allowed:
            raise RefusedGlobalError(f'{module}.{name}')
        return _Global(f'{module}.{name}')

    def memo_index(self, index):
        if index < 0 or index >= self.limits.max_memo:
            raise PickleLimitError(f'memo index {index:,} is beyond the limit of {self.limits.max_memo:,}')
        return index

    # -- the pass ------------------------------------------------------------
    def run(self):
        table, buf, end = _OPTABLE, self.buf, self.end
        max_steps = self.limits.max_instructions
        steps = 0
        while True:
            pos = self.pos
            if pos >= end:
                raise TruncatedPickleError('the pickle ends without STOP')
            entry = table[buf[pos]]
            self.pos = pos + 1
            if entry is None:
                raise DamagedPickleError(f'unknown pickle opcode {bytes([buf[pos]])!r} at byte {pos}')
            steps += 1
            if steps > max_steps:
                raise PickleLimitError(f'the pickle has more than {max_steps:,} instructions')
            name, reader, handler = entry
            arg = reader(self, name) if reader is not None else None
            if name == 'STOP':
                if len(self.stack) != 1 or self.metastack:
                    raise DamagedPickleError('the pickle stops with an unbalanced stack')
                return self.stack[0]
            handler(self, name, arg)

    def _fixed(self, fmt, name):
        data = self.read(fmt.size, name)
        return fmt.unpack(data)[0]

    def _counted(self, fmt, unicode, name):
        n = fmt.unpack(self.read(fmt.size, name))[0]
        if name == 'FRAME':
            return n
        start = self.pos
        self.skip(n, name)
        self.budget.charge(n, f'{name} data')
        if unicode and n <= _MAX_STRING_VALUE:
            try:
                return bytes(self.buf[start:start + n]).decode('utf-8', 'surrogatepass')
            except UnicodeDecodeError:
                raise DamagedPickleError(f'{name} holds invalid UTF-8') from None
        return None

    # -- one handler per opcode family ----------------------------------------
    def _proto(self, name, arg):
        if name == 'PROTO' and arg > pickle.HIGHEST_PROTOCOL:
            raise DamagedPickleError(f'unsupported pickle protocol {arg}')
        if name == 'FRAME' and arg > self.end - self.pos:
            raise TruncatedPickleError(f'a FRAME declares {arg:,} bytes but only {self.end - self.pos:,} remain')

    def _mark(self, name, arg):
        self.metastack.append(self.stack)
        self.stack = []

    def _unicode(self, name, arg):
        if name == 'UNICODE':
            arg = arg.decode('raw-unicode-escape', 'replace') if arg is not None else None
        self.push(arg if arg is not None else _LEAF)

    def _atom(self, name, arg):
        self.push(_LEAF)

    def _empty(self, name, arg):
        self.push(_Node())

    def _tuple_n(self, name, arg):
        count = int(name[-1])
        kids = [self.pop(name) for _ in range(count)][::-1]
        self.push(_Node(kids))

    def _from_mark(self, name, arg):
        self.push(_Node(self.pop_mark(name)))

    def _append(self, name, arg):
        value = self.pop(name)
        self.node_of(self.top(name), name).kids.append(value)

    def _extend(self, name, arg):
        items = self.pop_mark(name)
        self.node_of(self.top(name), name).kids.extend(items)

    def _setitem(self, name, arg):
        value, key = self.pop(name), self.pop(name)
        self.node_of(self.top(name), name).kids.extend((key, value))

    def _pop(self, name, arg):
        if name == 'POP' and self.stack:
            self.stack.pop()
        else:
            self.pop_mark(name)

    def _dup(self, name, arg):
        self.stack.append(self.top(name))

    def _put(self, name, arg):
        index = len(self.memo) if name == 'MEMOIZE' else (self._int(arg, name) if name == 'PUT' else arg)
        self.memo[self.memo_index(index)] = self.top(name)

    def _get(self, name, arg):
        index = self._int(arg, name) if name == 'GET' else arg
        if index not in self.memo:
            raise DamagedPickleError(f'{name} of memo index {index} that was never stored')
        self.stack.append(self.memo[index])

    def _global(self, name, arg):
        module, qualname = (part.decode('utf-8', 'replace') if part is not None else None for part in arg)
        if name == 'GLOBAL':
            self.push(self.check_global(module, qualname))
        else:  # INST
            self.check_global(module, qualname)
            self.push(_Node(self.pop_mark(name)))

    def _stack_global(self, name, arg):
        qualname, module = self.pop(name), self.pop(name)
        self.push(self.check_global(module, qualname))

    def _obj(self, name, arg):
        items = self.pop_mark(name)
        if not items or not isinstance(items[0], _Global):
            raise DamagedPickleError('OBJ without a class')
        self.push(_Node(items[1:]))

    def _reduce(self, name, arg):
        args, func = self.pop(name), self.pop(name)
        if not isinstance(func, (_Global, _Node)):
            raise DamagedPickleError(f'{name} of something that is not callable')
        self.push(_Node([args]))

    def _newobj_ex(self, name, arg):
        kwargs, args = self.pop(name), self.pop(name)
        self.pop(name)  # The class: a global the table admitted.
        self.push(_Node([args, kwargs]))

    def _build(self, name, arg):
        state = self.pop(name)
        self.node_of(self.top(name), name).kids.append(state)

    def _persid(self, name, arg):
        if not self.persistent_ok:
            raise UnsafePickleError('it holds a persistent id, which this format does not use')
        pid = self.pop(name) if name == 'BINPERSID' else _LEAF
        self.push(_Node([pid]))

    def _refuse(self, name, arg):
        if name.startswith('EXT'):
            raise UnsafePickleError('it uses the copyreg extension registry, which safe loading does not allow')
        if name in ('NEXT_BUFFER', 'READONLY_BUFFER'):
            raise UnsafePickleError('it uses out-of-band buffers, which safe loading does not allow')
        raise DamagedPickleError(f'unsupported pickle opcode {name}')

    def _stop(self, name, arg):
        pass

    @staticmethod
    def _int(arg, name):
        try:
            return int(arg)
        except (TypeError, ValueError):
            raise DamagedPickleError(f'{name} has an invalid index') from None


_ATOMS = frozenset(['INT', 'BININT', 'BININT1', 'BININT2', 'LONG', 'LONG1', 'LONG4', 'NONE', 'NEWTRUE', 'NEWFALSE',
                    'FLOAT', 'BINFLOAT', 'STRING', 'BINSTRING', 'SHORT_BINSTRING', 'BINBYTES', 'SHORT_BINBYTES',
                    'BINBYTES8', 'BYTEARRAY8'])

_HANDLERS = {
    'PROTO': _Scanner._proto, 'FRAME': _Scanner._proto, 'MARK': _Scanner._mark, 'STOP': _Scanner._stop,
    'SHORT_BINUNICODE': _Scanner._unicode, 'BINUNICODE': _Scanner._unicode, 'BINUNICODE8': _Scanner._unicode,
    'UNICODE': _Scanner._unicode,
    'EMPTY_LIST': _Scanner._empty, 'EMPTY_DICT': _Scanner._empty, 'EMPTY_SET': _Scanner._empty,
    'EMPTY_TUPLE': _Scanner._empty,
    'TUPLE1': _Scanner._tuple_n, 'TUPLE2': _Scanner._tuple_n, 'TUPLE3': _Scanner._tuple_n,
    'TUPLE': _Scanner._from_mark, 'LIST': _Scanner._from_mark, 'DICT': _Scanner._from_mark,
    'FROZENSET': _Scanner._from_mark,
    'APPEND': _Scanner._append, 'APPENDS': _Scanner._extend, 'SETITEMS': _Scanner._extend,
    'ADDITEMS': _Scanner._extend, 'SETITEM': _Scanner._setitem,
    'POP': _Scanner._pop, 'POP_MARK': _Scanner._pop, 'DUP': _Scanner._dup,
    'PUT': _Scanner._put, 'BINPUT': _Scanner._put, 'LONG_BINPUT': _Scanner._put, 'MEMOIZE': _Scanner._put,
    'GET': _Scanner._get, 'BINGET': _Scanner._get, 'LONG_BINGET': _Scanner._get,
    'GLOBAL': _Scanner._global, 'INST': _Scanner._global, 'STACK_GLOBAL': _Scanner._stack_global,
    'OBJ': _Scanner._obj, 'REDUCE': _Scanner._reduce, 'NEWOBJ': _Scanner._reduce, 'NEWOBJ_EX': _Scanner._newobj_ex,
    'BUILD': _Scanner._build, 'PERSID': _Scanner._persid, 'BINPERSID': _Scanner._persid,
}


def _make_reader(op):
    desc = op.arg
    if desc is None:
        return None
    if desc.name in _FIXED:
        fmt = struct.Struct(_FIXED[desc.name])
        return lambda scanner, name: scanner._fixed(fmt, name)
    if desc.name in _LENGTH_PREFIX:
        fmt = struct.Struct(_LENGTH_PREFIX[desc.name])
        unicode = desc.name.startswith('unicodestring')
        return lambda scanner, name: scanner._counted(fmt, unicode, name)
    if desc.name in _NEWLINE_ARGS:
        return lambda scanner, name: scanner.readline(name)
    if desc.name == 'stringnl_noescape_pair':
        return lambda scanner, name: (scanner.readline(name), scanner.readline(name))
    raise AssertionError(f'no reader for {op.name}')  # pickletools lists no other argument kind.


_OPTABLE = [None] * 256
for _op in pickletools.opcodes:
    _handler = _Scanner._atom if _op.name in _ATOMS else _HANDLERS.get(_op.name, _Scanner._refuse)
    _OPTABLE[ord(_op.code)] = (_op.name, _make_reader(_op), _handler)

def _check_graph(root, max_depth):
    """Refuse a graph deeper than ``max_depth`` or holding a cycle, visiting every node once."""
    if not isinstance(root, _Node):
        return 0
    root.state = 1
    path = [(root, 0)]
    while path:
        node, index = path[-1]
        if index < len(node.kids):
            path[-1] = (node, index + 1)
            kid = node.kids[index]
            if isinstance(kid, _Node):
                if kid.state == 1:
                    raise PickleLimitError('the object graph holds itself (a self-referencing container)')
                if kid.state == 0:
                    kid.state = 1
                    path.append((kid, 0))
                    if len(path) > max_depth + 1:
                        raise PickleLimitError(f'the objects are nested more than {max_depth} levels deep')
            continue
        node.height = 1 + max((kid.height for kid in node.kids if isinstance(kid, _Node)), default=-1)
        if node.height > max_depth:
            raise PickleLimitError(f'the objects are nested more than {max_depth} levels deep')
        node.state = 2
        path.pop()
    return root.height

# ----------------------------------------------------------------------------
# Loading.


def _buffer_of(f):
    """(view, start offset, file object to unpickle from or None, mmap or None), without copying the file.

    None as the file means: unpickle a copy of just the scanned bytes (for in-memory data, whose pickle may
    be followed by raw data, as in torch's legacy storages). The caller must release the view (and close
    the mmap): a BytesIO cannot be closed while it is exported.
    """
    if isinstance(f, io.BytesIO):
        return f.getbuffer(), f.tell(), f, None
    if isinstance(f, (bytes, bytearray, memoryview)):
        return memoryview(f), 0, None, None
    try:
        import mmap
        start = f.tell()
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(mapped), start, f, mapped
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        data = f.read()
        return memoryview(data), 0, None, None


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed_globals, persistent_load):
        super().__init__(file)
        self._allowed = allowed_globals
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise RefusedGlobalError(f'{module}.{name}') from None


_LOAD_ERRORS = (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                UnicodeDecodeError, RuntimeError, EOFError, OverflowError, struct.error)


def load(f, allowed_globals, limits=None, persistent_load=None):
    """Unpickle one object from ``f`` (a binary file, BytesIO or bytes-like), bounded and restricted.

    ``allowed_globals`` maps ``(module, name)`` to the object the file gets for that global: a class or
    a constructor, preferably a checked one (``TORCH_GLOBALS``, ``NUMPY_GLOBALS``, ``BASIC_GLOBALS``
    here, or the caller's own). ``persistent_load`` handles persistent ids (``torch.save`` storages);
    without it a file holding one is refused. Raises ``UnsafePickleError`` (one line, no file name);
    a file that passes leaves ``f`` positioned after its pickle.
    """
    return _load(f, allowed_globals, limits, persistent_load)[0]


def _load(f, allowed_globals, limits=None, persistent_load=None):
    """``load``, also returning where the pickle ended (an offset into ``f``'s data)."""
    limits = limits or DEFAULT_LIMITS
    view, start, source, mapped = _buffer_of(f)
    released = False

    def release():
        # Slices taken by the scanner share this view's buffer and are gone by now; releasing the view
        # frees the BytesIO (or unmaps the file) even while an exception still references the scanner.
        view.release()
        if mapped is not None:
            with contextlib.suppress(BufferError):  # Still exported: the mapping closes when collected.
                mapped.close()

    try:
        with _budget_scope(limits.budget(len(view) - start)) as budget:
            scanner = _Scanner(view, start, allowed_globals, limits, budget, persistent_load is not None)
            root = scanner.run()
            _check_graph(root, limits.max_depth)
            end = scanner.pos
            del scanner, root
            if source is None:
                source, start = io.BytesIO(view[start:end]), 0
            release()
            released = True
            source.seek(start)
            try:
                result = _RestrictedUnpickler(source, allowed_globals, persistent_load).load()
            except UnsafePickleError:
                raise
            except RecursionError:
                raise PickleLimitError('the objects are nested too deeply') from None
            except MemoryError:
                raise PickleLimitError('the file asks for more memory than there is') from None
            except _LOAD_ERRORS as err:
                message = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise DamagedPickleError(message) from None
            check_loaded(result)
            return result, end
    finally:
        if not released:
            release()


def check_loaded(obj):
    """Refuse numpy arrays/scalars of object or structured dtypes anywhere in a loaded graph (visited by identity).

    numpy's own ``dtype.__setstate__`` can turn an admitted dtype into one that holds Python objects; nothing
    we load needs that.
    """
    for item in iter_unique(obj):
        if isinstance(item, (np.ndarray, np.generic, np.dtype)):
            dtype = item if isinstance(item, np.dtype) else item.dtype
            if dtype.hasobject or dtype.kind not in _NUMPY_KINDS or dtype.fields is not None:
                raise DamagedPickleError(f'it holds a numpy value of dtype {dtype}, which safe loading does not allow')


def _contents(item):
    """What a loaded object holds: container items, dict keys and values, its instance dict."""
    if isinstance(item, (str, bytes, bytearray, int, float, complex, bool, type(None), torch.Tensor, np.ndarray,
                         np.generic, np.dtype, type)):
        return []
    out = []
    if isinstance(item, dict):
        out += list(item.keys()) + list(item.values())
    elif isinstance(item, (list, tuple, set, frozenset)):
        out += list(item)
    if hasattr(item, '__dict__') and not callable(item):
        out.append(vars(item))
    return out


def iter_unique(obj, children=_contents):
    """Yield ``obj`` and everything reachable through ``children`` (default: containers and instance dicts), each
    object once, depth first in the order ``children`` lists them.

    Identity-based, iterative: shared references are visited once and nesting cannot overflow the stack.
    Tensors and arrays are yielded but not descended into.
    """
    seen = set()
    todo = [obj]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo.extend(reversed(children(item)))

# ----------------------------------------------------------------------------
# Checked constructors for the common globals.

_NUMPY_KINDS = frozenset('biufc')
_NUMPY_DTYPES = frozenset(['b1', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8', 'f2', 'f4', 'f8', 'c8', 'c16',
                           'bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
                           'float16', 'float32', 'float64', 'complex64', 'complex128'])


def _numpy_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str) or spec.lstrip('<>=|') not in _NUMPY_DTYPES:
        raise DamagedPickleError(f'it holds a numpy dtype {spec!r}, which safe loading does not allow')
    return np.dtype(spec, align=bool(align), copy=bool(copy))


def _numpy_reconstruct(subtype, shape, dtype_code):
    if subtype is not np.ndarray or not isinstance(dtype_code, bytes) or len(dtype_code) > 4:
        raise DamagedPickleError('it reconstructs a numpy array of a type other than ndarray')
    shape = _shape(shape, 'a numpy array')
    charge(math.prod(shape) * 16, 'a numpy array')  # numpy pickles shape (0,); the data arrives with BUILD.
    return _np_multiarray._reconstruct(np.ndarray, shape, dtype_code)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMPY_KINDS or dtype.hasobject:
        raise DamagedPickleError('it holds a numpy scalar of a type safe loading does not allow')
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise DamagedPickleError('it holds a numpy scalar whose data does not match its dtype')
    return np.frombuffer(data, dtype=dtype)[0].copy()


def _numpy_frombuffer(data, dtype, shape, order):  # numpy>=2 pickles contiguous arrays this way with protocol 5
    if not isinstance(data, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or dtype.kind not in _NUMPY_KINDS:
        raise DamagedPickleError('it holds a numpy array safe loading does not allow')
    shape = _shape(shape, 'a numpy array')
    if math.prod(shape) * dtype.itemsize != len(data):
        raise DamagedPickleError('a numpy array is larger or smaller than its data')
    return np.frombuffer(bytearray(data), dtype=dtype).reshape(shape, order=order if order in ('C', 'F') else 'C')


def _shape(shape, what):
    if not isinstance(shape, tuple) or len(shape) > 32 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise DamagedPickleError(f'{what} has an invalid shape {shape!r}'[:200])
    return shape


TENSOR_DTYPES = frozenset([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
                           torch.int16, torch.int8, torch.uint8, torch.bool])
_STORAGE_TYPES = {f'{name}Storage': dtype for name, dtype in [
    ('Float', torch.float32), ('Half', torch.float16), ('BFloat16', torch.bfloat16), ('Double', torch.float64),
    ('Long', torch.int64), ('Int', torch.int32), ('Short', torch.int16), ('Char', torch.int8),
    ('Byte', torch.uint8), ('Bool', torch.bool)]}


class _StorageType:
    """What the file gets for ``torch.FloatStorage`` etc.: a marker carrying the dtype, never a constructor."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __call__(self, *args, **kwargs):
        raise DamagedPickleError('it calls a torch storage type, which safe loading does not allow')


def _is_dense(size, stride):
    """True when the elements of (size, stride) tile a block without gaps or overlaps, in some dim order."""
    dims = sorted((st, n) for n, st in zip(size, stride) if n != 1)
    expected = 1
    for st, n in dims:
        if st != expected:
            return False
        expected *= n
    return True


def module_bytes(module):
    """Bytes of a module's parameters and buffers; build it on the meta device first to know this for free."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def check_tensor_layout(storage_numel, offset, size, stride, what='a tensor'):
    """Refuse a tensor view that reaches outside its storage or is not dense (stride 0, gaps, overlaps)."""
    size = _shape(tuple(size) if isinstance(size, (tuple, torch.Size)) else size, what)
    if not isinstance(stride, tuple) or len(stride) != len(size) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in stride):
        raise DamagedPickleError(f'{what} has invalid strides')
    if not isinstance(offset, int) or offset < 0:
        raise DamagedPickleError(f'{what} has an invalid storage offset')
    numel = math.prod(size)
    if numel == 0:
        return
    if not _is_dense(size, stride):
        raise DamagedPickleError(f'{what} has strides {stride} for shape {size}, not those of a dense tensor')
    if offset + numel > storage_numel:
        raise DamagedPickleError(f'{what} of shape {size} needs {offset + numel:,} elements but its storage holds '
                                 f'{storage_numel:,}')


def _typed_storage_info(storage):
    if isinstance(storage, torch.storage.TypedStorage):
        untyped = storage._untyped_storage
        return storage.dtype, untyped.nbytes() // torch._utils._element_size(storage.dtype), untyped.device
    raise DamagedPickleError('a tensor is built on something that is not a storage')


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    dtype, numel, device = _typed_storage_info(storage)
    if device.type != 'cpu':
        raise DamagedPickleError(f'a tensor storage is on device {device.type}, not loaded from the file')
    if dtype not in TENSOR_DTYPES:
        raise DamagedPickleError(f'a tensor has dtype {dtype}, which safe loading does not allow')
    check_tensor_layout(numel, storage_offset, size, stride)
    if backward_hooks or metadata:
        raise DamagedPickleError('a tensor carries hooks or metadata, which safe loading does not allow')
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), bool(requires_grad),
                                           collections.OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, torch.Tensor) or type(data) is not torch.Tensor:
        raise DamagedPickleError('a parameter wraps something that is not a plain tensor')
    if backward_hooks:
        raise DamagedPickleError('a parameter carries hooks, which safe loading does not allow')
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    if state:
        raise DamagedPickleError('a parameter carries extra attributes, which safe loading does not allow')
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _storage_from_bytes(data, dtype, numel, location, what):
    """A CPU TypedStorage of ``numel`` elements copied from ``data``, which must hold exactly that."""
    if not isinstance(location, str) or not (location == 'cpu' or location.startswith('cuda')):
        raise DamagedPickleError(f'{what} is on device {location!r}; only cpu and cuda storages can be loaded')
    if not isinstance(numel, int) or numel < 0:
        raise DamagedPickleError(f'{what} declares an invalid size')
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if len(data) != nbytes:
        raise DamagedPickleError(f'{what} declares {nbytes:,} bytes but holds {len(data):,}')
    charge(nbytes, what)
    # from_buffer copies once, straight from the file's bytes (a memoryview slice needs no intermediate copy).
    untyped = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if nbytes else torch.UntypedStorage(0)
    return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_GLOBALS = {('torch', name): _StorageType(dtype) for name, dtype in _STORAGE_TYPES.items()}


class _LegacyPickles:
    """The pickles of torch's legacy serialisation, read one after another from ``data`` within ``limits``: the
    header (magic number, protocol version, little-endian system info) is checked on construction."""

    def __init__(self, data, limits, what):
        self.data, self.limits, self.pos = data, limits, 0
        if self.next() != _LEGACY_MAGIC or self.next() != 1001:
            raise DamagedPickleError(f'{what} is not in torch\'s legacy format')
        sys_info = self.next()
        if not isinstance(sys_info, dict) or sys_info.get('little_endian') is not True:
            raise DamagedPickleError(f'{what} is not little-endian')

    def next(self, table=None, persistent_load=None):
        value, end = _load(self.data[self.pos:], table or {}, self.limits, persistent_load)
        self.pos += end
        return value

    def element_count(self):
        """The 8-byte element count at the current position (None if the data ends first); moves past it."""
        count = bytes(self.data[self.pos:self.pos + 8])
        self.pos += 8
        return struct.unpack('<q', count)[0] if len(count) == 8 else None


def _load_legacy_storage(data):
    """torch.storage._load_from_bytes in the NVlabs pickle layout: one storage in torch's legacy format, bounded.

    The layout: pickled magic number, protocol version, system info, then the storage as a persistent id
    ('storage', type, key, location, numel, view), the list of keys, and per key an 8-byte element count
    followed by the raw elements.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise DamagedPickleError('a tensor storage is not stored as bytes')
    small = Limits(max_depth=8, max_objects=1000, max_memo=1000, min_budget_bytes=1 << 20)
    pickles = _LegacyPickles(memoryview(data), small, 'a tensor storage')
    pids = []

    def persistent_load(pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == 'storage' and isinstance(pid[1], _StorageType)
                and pid[5] is None and not pids):
            raise DamagedPickleError('a tensor storage has an unsupported layout')
        pids.append(pid)
        return pid

    if pickles.next(_LEGACY_GLOBALS, persistent_load) is not (pids[0] if pids else object()):
        raise DamagedPickleError('a tensor storage has an unsupported layout')
    _, storage_type, key, location, numel, _view = pids[0]
    if pickles.next() != [key]:
        raise DamagedPickleError('a tensor storage has an unsupported layout')
    if pickles.element_count() != numel:
        raise DamagedPickleError('a tensor storage declares a size it does not hold')
    return _storage_from_bytes(pickles.data[pickles.pos:], storage_type.dtype, numel, location, 'a tensor storage')


def _codecs_encode(text, encoding='utf-8'):
    # Protocol 2 pickles bytes as _codecs.encode(str, 'latin1'); the result is no larger than the string.
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
        raise DamagedPickleError('it calls _codecs.encode other than to restore bytes')
    return text.encode('latin1')


BASIC_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('_codecs', 'encode'): _codecs_encode,
    # Protocols 2 and 3 (Python 3.7's default, StyleGAN2-ADA's Python) have no set opcode: a module's
    # _non_persistent_buffers_set is pickled as set(list).
    ('builtins', 'set'): set,
    ('__builtin__', 'set'): set,
}

TORCH_GLOBALS = {
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter_with_state,
    ('torch.storage', '_load_from_bytes'): _load_legacy_storage,
    **_LEGACY_GLOBALS,
}

NUMPY_GLOBALS = {}
for _module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
    NUMPY_GLOBALS[(_module, 'scalar')] = _numpy_scalar
    NUMPY_GLOBALS[(_module, '_reconstruct')] = _numpy_reconstruct
for _module in ('numpy', 'numpy.core.multiarray', 'numpy._core.multiarray'):
    NUMPY_GLOBALS[(_module, 'ndarray')] = np.ndarray
    NUMPY_GLOBALS[(_module, 'dtype')] = _numpy_dtype
for _module in ('numpy.core.numeric', 'numpy._core.numeric'):
    NUMPY_GLOBALS[(_module, '_frombuffer')] = _numpy_frombuffer
for _name in ('Float64DType', 'Float32DType', 'Float16DType', 'Int64DType', 'Int32DType', 'Int16DType', 'Int8DType',
              'UInt8DType', 'BoolDType'):
    if hasattr(np.dtypes, _name):
        NUMPY_GLOBALS[('numpy.dtypes', _name)] = getattr(np.dtypes, _name)

# ----------------------------------------------------------------------------
# torch.save zip checkpoints.


def load_torch_zip(f, allowed_globals, limits=None):
    """Load a ``torch.save`` checkpoint (zip format) with ``load``'s bounds and restrictions.

    Storages are read from their zip records, which must be stored uncompressed and hold exactly the
    declared number of elements; only cpu/cuda storages are admitted, and all land on the CPU.
    ``allowed_globals`` is the caller's table; ``TORCH_GLOBALS`` (tensors, storage types) is added.
    """
    limits = limits or DEFAULT_LIMITS
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise DamagedPickleError(f'not a torch.save zip archive ({err})') from None
    with archive:
        infos = archive.infolist()
        archive_size = sum(info.compress_size for info in infos)
        pkl = [info for info in infos if info.filename.endswith('/data.pkl') and info.filename.count('/') == 1]
        if len(pkl) != 1:
            raise DamagedPickleError('the archive has no single <name>/data.pkl record')
        prefix = pkl[0].filename[:-len('data.pkl')]
        records = {info.filename: info for info in infos}
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > archive_size:
                raise PickleLimitError(f'record {info.filename} is compressed or larger than the archive')
        loaded = {}

        def persistent_load(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
                    and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
                raise DamagedPickleError('a storage reference has an unsupported layout')
            _, storage_type, key, location, numel = pid
            if key not in loaded:
                info = records.get(f'{prefix}data/{key}')
                if info is None:
                    raise DamagedPickleError(f'storage record {key} is missing')
                loaded[key] = _storage_from_bytes(archive.read(info), storage_type.dtype, numel, location,
                                                  f'storage {key}')
            elif loaded[key].dtype != storage_type.dtype:
                raise DamagedPickleError(f'storage {key} is used with two dtypes')
            return loaded[key]

        with _budget_scope(limits.budget(archive_size)):
            data = archive.read(pkl[0])
            return load(io.BytesIO(data), {**allowed_globals, **TORCH_GLOBALS}, limits, persistent_load)

# ----------------------------------------------------------------------------
# Constructor arguments read from a file, checked against sane ranges before anything is built.


class ArgumentRangeError(UnsafePickleError):
    """A constructor argument from the file is of the wrong type or outside its sane range."""


@dataclasses.dataclass(frozen=True)
class Int:
    lo: int
    hi: int
    none: bool = False

    def check(self, value):
        if value is None:
            return self.none
        return (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
                and self.lo <= value <= self.hi)


@dataclasses.dataclass(frozen=True)
class Float:
    lo: float
    hi: float
    none: bool = False

    def check(self, value):
        if value is None:
            return self.none
        return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
                and math.isfinite(value) and self.lo <= value <= self.hi)


@dataclasses.dataclass(frozen=True)
class OneOf:
    choices: tuple

    def check(self, value):
        return any(type(value) is type(choice) and value == choice for choice in self.choices)


@dataclasses.dataclass(frozen=True)
class Numbers:
    """A list or tuple of 1..max_len finite numbers (e.g. a resampling filter)."""
    max_len: int

    def check(self, value):
        return (isinstance(value, (list, tuple)) and 1 <= len(value) <= self.max_len
                and all(Float(-1e6, 1e6).check(v) for v in value))


class Nested:
    """A dict of further arguments, checked with the same rules."""

    def check(self, value):
        return value is None or isinstance(value, dict)


BOOL = OneOf((True, False))
NESTED = Nested()


def check_arguments(arguments, rules, where, path=''):
    """Refuse unknown names, wrong types and out-of-range values in constructor ``arguments`` (nested dicts too).

    ``rules`` maps an argument name to ``Int``, ``Float``, ``OneOf``, ``Numbers`` or ``NESTED``; the same name
    means the same thing at every level. Raises ArgumentRangeError with a one-line message.
    """
    if not isinstance(arguments, dict):
        raise ArgumentRangeError(f'{where}: network arguments {path} are a {type(arguments).__name__}, not a dict')
    for name, value in arguments.items():
        full = f'{path}{name}'
        rule = rules.get(name) if isinstance(name, str) else None
        if rule is None:
            raise ArgumentRangeError(f'{where}: unknown network argument {str(full)[:100]!r}')
        if not rule.check(value):
            shown = repr(value) if not isinstance(value, (dict, list, tuple)) else type(value).__name__
            bounds = f' (sane range {rule.lo}..{rule.hi})' if isinstance(rule, (Int, Float)) else ''
            raise ArgumentRangeError(f'{where}: network argument {full} = {shown[:100]} is not valid{bounds}; the '
                                     'file is damaged or hostile')
        if rule is NESTED and value is not None:
            check_arguments(value, rules, where, f'{full}.')

# ----------------------------------------------------------------------------
# torch.save checkpoints in the legacy (pre-1.6, non-zip) format, and either format by its first bytes.


def load_torch_legacy(f, allowed_globals, limits=None):
    """Load a ``torch.save`` file in the legacy format (torch < 1.6, or ``_use_new_zipfile_serialization=False``).

    The layout: pickled magic number, protocol version and system info, the pickled object (storages as
    persistent ids ('storage', type, key, location, numel, view)), the pickled list of storage keys, then
    per key an 8-byte element count and the raw elements. Each storage must fit in what remains of the
    file before it is allocated, hold exactly its declared size, be listed once, and lie on cpu/cuda; all
    land on the CPU. ``TORCH_GLOBALS`` is added to ``allowed_globals``.
    """
    limits = limits or DEFAULT_LIMITS
    view, start, _source, mapped = _buffer_of(f)
    pickles = None
    try:
        data = view[start:]
        with _budget_scope(limits.budget(len(data))):
            pickles = _LegacyPickles(data, limits, 'the checkpoint')
            storages = {}

            def persistent_load(pid):
                if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == 'storage'
                        and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
                    raise DamagedPickleError('a storage reference has an unsupported layout')
                _, storage_type, key, location, numel, view_metadata = pid
                if view_metadata is not None:
                    raise DamagedPickleError('the checkpoint uses storage views, which this loader does not read')
                if key in storages:
                    if storages[key].dtype != storage_type.dtype or storages[key]._size() != numel:
                        raise DamagedPickleError(f'storage {key} is declared twice, differently')
                    return storages[key]
                if not isinstance(location, str) or not (location == 'cpu' or location.startswith('cuda')):
                    raise DamagedPickleError(f'storage {key} is on device {location!r}; only cpu and cuda storages '
                                             'can be loaded')
                if not isinstance(numel, int) or numel < 0:
                    raise DamagedPickleError(f'storage {key} declares an invalid size')
                nbytes = numel * torch._utils._element_size(storage_type.dtype)
                if nbytes > len(data) - pickles.pos:  # Its data follows the pickle: it must fit in the rest of the file.
                    raise DamagedPickleError(f'storage {key} declares {nbytes:,} bytes, more than the file holds')
                charge(nbytes, f'storage {key}')
                storages[key] = torch.storage.TypedStorage(wrap_storage=torch.UntypedStorage(nbytes),
                                                           dtype=storage_type.dtype, _internal=True)
                return storages[key]

            result = pickles.next({**allowed_globals, **TORCH_GLOBALS}, persistent_load)
            keys = pickles.next()
            if not isinstance(keys, list) or len(set(keys)) != len(keys) or set(keys) != set(storages):
                raise DamagedPickleError('the storage list does not match the storages the checkpoint uses')
            for key in keys:
                storage = storages[key]
                numel, nbytes = storage._size(), storage._untyped_storage.nbytes()
                if pickles.element_count() != numel or pickles.pos + nbytes > len(data):
                    raise DamagedPickleError(f'storage {key} declares a size it does not hold')
                if nbytes:
                    target = torch.empty(0, dtype=torch.uint8).set_(storage._untyped_storage).numpy()
                    target[:] = np.frombuffer(data[pickles.pos:pickles.pos + nbytes], dtype=np.uint8)
                pickles.pos += nbytes
            return result
    except UnsafePickleError as err:
        # Drop the traceback now: its frames hold slices of the file's buffer, which would keep a BytesIO
        # from being closed and the file mapped. Raised again below, without them.
        err.__traceback__, err.__context__ = None, None
        failure = err
    finally:
        data = pickles = None
        view.release()
        if mapped is not None:
            with contextlib.suppress(BufferError):  # Still exported: the mapping closes when collected.
                mapped.close()
    raise failure


def load_torch_checkpoint(f, allowed_globals, limits=None):
    """``load_torch_zip`` or ``load_torch_legacy``, by the file's first bytes (a zip starts with 'PK')."""
    if isinstance(f, str) or hasattr(f, '__fspath__'):
        with open(f, 'rb') as file:
            return load_torch_checkpoint(file, allowed_globals, limits)
    start = f.tell()
    head = f.read(4)
    f.seek(start)
    if head == b'PK\x03\x04':
        return load_torch_zip(f, allowed_globals, limits)
    return load_torch_legacy(f, allowed_globals, limits)
