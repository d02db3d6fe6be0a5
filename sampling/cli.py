"""Helpers shared by the command-line scripts: option parsing and checking, output folders, devices, networks.

Every script reports bad input as ONE line (``Error: ...``) and a non-zero exit, never a traceback: option
types here refuse what makes no sense (NaN, infinities, seeds outside [0, 2**32), huge seed ranges) while
parsing, before anything is loaded or created; :func:`prepare_outdir` turns an unusable output folder into
one line; and :class:`Command` turns a :class:`UserError` or an operating-system error (a full disk, a
read-only file system) raised anywhere in a run into one line too.
"""

import errno
import math
import os
import re
import shlex
import sys
import tempfile

import click
import torch

from dnnlib import util

# The small network this repository trains and ships (see README); scripts use it without --network.
DEFAULT_NETWORK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'pretrained', 'mnist32-stylegan2.pkl')


SEED_LIMIT = 2 ** 32      # Seeds are numpy RandomState seeds: 32-bit unsigned.
MAX_SEEDS = 1_000_000     # More seeds in one run is surely a typo (0-99999999999 would exhaust memory).


class UserError(click.ClickException, util.UserError):
    """The toolkit's one user-error type (:class:`dnnlib.util.UserError`) as click prints it: one line
    (``Error: ...``), exit status 1. Scripts raise it; the library raises its own subclasses of the base type,
    which :class:`Command` prints the same way."""


def parse_range(text, max_values=None):
    """'0,1,4-6' -> [0, 1, 4, 5, 6]. Ranges are inclusive; more than `max_values` values are refused."""
    if isinstance(text, list):
        return text
    values = []
    for part in str(text).split(','):
        part = part.strip()
        match = re.fullmatch(r'(-?\d+)-(-?\d+)', part)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise click.BadParameter(f'range {part!r} ends before it starts')
            if max_values is not None and len(values) + hi - lo + 1 > max_values:
                raise click.BadParameter(f'range {part!r} has {hi - lo + 1:,} values; at most {max_values:,} '
                                         f'in one run (split the range over several runs)')
            values.extend(range(lo, hi + 1))
        elif re.fullmatch(r'-?\d+', part):
            values.append(int(part))
        else:
            raise click.BadParameter(f'{part!r} is not an integer or a range like 4-6 (example: 0,1,4-6)')
    return values


def parse_seeds(text):
    """Seeds for ``--seeds``: like :func:`parse_range`, each in [0, 2**32), at most :data:`MAX_SEEDS` of them."""
    if isinstance(text, list):
        return text
    seeds = parse_range(text, max_values=MAX_SEEDS)
    bad = [s for s in seeds if not 0 <= s < SEED_LIMIT]
    if bad:
        raise click.BadParameter(f'seed {bad[0]} is outside 0..{SEED_LIMIT - 1} (numpy seeds are 32-bit unsigned)')
    return seeds


def parse_vec2(text):
    """'0.1,-0.2' -> (0.1, -0.2); both finite."""
    if isinstance(text, tuple):
        return text
    parts = str(text).split(',')
    try:
        if len(parts) == 2:
            values = float(parts[0]), float(parts[1])
            if all(math.isfinite(v) for v in values):
                return values
    except ValueError:
        pass
    raise click.BadParameter(f'{text!r} is not two comma-separated finite numbers (example: 0.1,-0.2)')


class FiniteFloat(click.ParamType):
    """A float option that refuses NaN and infinities (click's float and FloatRange accept them), optionally
    within bounds: ``FiniteFloat(min=0, min_open=True)`` is a positive number."""

    name = 'float'

    def __init__(self, min=None, max=None, min_open=False, max_open=False):  # noqa: A002 (click's names)
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f'{value!r} is not a number', param, ctx)
        if not math.isfinite(number):
            self.fail(f'{value!r} is not a finite number', param, ctx)
        low_bad = self.min is not None and (number <= self.min if self.min_open else number < self.min)
        high_bad = self.max is not None and (number >= self.max if self.max_open else number > self.max)
        if low_bad or high_bad:
            self.fail(f'{number:g} is not in the range {self._describe()}', param, ctx)
        return number

    def _describe(self):
        low = '' if self.min is None else f'{self.min:g} {"<" if self.min_open else "<="} '
        high = '' if self.max is None else f' {"<" if self.max_open else "<="} {self.max:g}'
        return f'{low}x{high}'

    def get_metavar(self, param, ctx=None):
        return 'FLOAT'


def prepare_outdir(path, option='--outdir'):
    """Create the output folder ``path`` if needed and make sure files can be written in it.

    Also removes the temporary files that killed writes left there (see
    :func:`dnnlib.util.remove_stale_temp_files`). Raises :class:`UserError` (one line) when the folder
    cannot be created or written: a path component that is a regular file, no permission, a read-only or
    full file system.
    """
    import dnnlib
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix='.write-test-'):
            pass
    except OSError as err:
        raise UserError(f'{option} {path}: {_os_reason(err, creating_folder=True)}') from None
    dnnlib.util.remove_stale_temp_files(path)
    return path


def _os_reason(err, creating_folder=False):
    """The reason of an OSError in words, with a hint for the common cases."""
    if creating_folder and err.errno in (errno.ENOTDIR, errno.EEXIST):
        return 'cannot create this folder: part of the path is a regular file; choose another path'
    if err.errno == errno.EROFS:
        return 'the file system is read-only; choose a writable folder'
    if err.errno in (errno.EACCES, errno.EPERM):
        return 'permission denied; choose a folder you can write to'
    if err.errno == errno.ENOSPC:
        return 'no space left on the device'
    return err.strerror or str(err)


def parse_class(text, keywords=('random',)):
    """A --class value: None, a class index, one of ``keywords`` ('random', 'all'), or an ImageNet class name or
    WordNet id ('golden retriever', 'n02099601', for 1000-class networks such as BigGAN) -> None, int or keyword."""
    from sampling.samplers import parse_class as parse
    try:
        return parse(text, keywords)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def class_option(keywords=('random',), help_more=''):
    """``--class``: the one class rule of every script that samples a conditional network (see :func:`resolve_class`)."""
    words = '|'.join(keywords)
    meanings = dict(random='random: a random class per latent (the default)',
                    all="all: every class, --num latents each")
    text = 'Class of a conditional network: an index, an ImageNet name, or ' + \
        '; '.join(meanings[word] for word in keywords) + help_more
    return click.option('--class', 'class_idx', type=lambda value: parse_class(value, keywords),
                        metavar=f'INT|NAME|{words}', help=text)


def resolve_class(G, class_idx):
    """The --class of a run on `G`: None for an unconditional network (a given --class is ignored, with a warning);
    for a conditional one a checked index or keyword, and 'random' when --class is absent, said on stderr."""
    if G.c_dim == 0:
        if class_idx is not None:
            click.echo('warning: --class is ignored for an unconditional network', err=True)
        return None
    if class_idx is None:
        click.echo(f'note: this network is conditional ({G.c_dim} classes) and no --class was given: a random class '
                   f'per latent (--class random); pass --class 0..{G.c_dim - 1} for one class', err=True)
        return 'random'
    if isinstance(class_idx, int) and not 0 <= class_idx < G.c_dim:
        raise click.BadParameter(f'{class_idx} is out of range for {G.c_dim} classes (0..{G.c_dim - 1})',
                                 param_hint='--class')
    return class_idx


def build_sampler(spec, G, device=None, network_sha256=None, progress=False):
    """:func:`sampling.samplers.build`, its notes said on stderr and its errors turned into one line."""
    from sampling import samplers
    try:
        sampler = samplers.build(spec, G, device=device, network_sha256=network_sha256, progress=progress)
    except samplers.SamplerSpecError as err:
        raise UserError(str(err)) from None
    for note in sampler.notes:
        click.echo(note, err=True)
    return sampler


def resolve_device(name):
    """'auto' -> CUDA when available, else CPU; otherwise the named device, checked."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise click.BadParameter(f'unknown device {name!r}; use auto, cpu, cuda or cuda:N') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.BadParameter('CUDA is not available on this machine; use --device cpu')
    return device


def _apply_threads(ctx, param, value):
    from torch_utils.threads import set_threads
    set_threads(value)
    return value


def threads_option(command):
    """``--threads N``: torch's and numpy's BLAS threads, applied as the option is parsed (default: from the load)."""
    return click.option('--threads', type=click.IntRange(min=1), expose_value=False, callback=_apply_threads,
                        help='CPU threads for torch and BLAS  [default: one per idle core, from the load average]'
                        )(command)


def network_option(dest='network_pkl'):
    """``--network PATH|URL``, the embedded network when absent (:func:`network_or_default`)."""
    return click.option('--network', dest, metavar='PATH|URL', help='Network pickle (default: the embedded network)')


def device_option(command):
    """``--device``: auto (CUDA when available), cpu, cuda or cuda:N (:func:`resolve_device`)."""
    return click.option('--device', default='auto', show_default=True, help='auto, cpu, cuda or cuda:N')(command)


def pickle_code_option(command):
    """``--allow-pickle-code``: run the code a pickle carries (only for trusted files; see SECURITY.md)."""
    return click.option('--allow-pickle-code', is_flag=True,
                        help='Run the code embedded in the pickle (only for files you trust)')(command)


def noise_mode_option(command):
    """``--noise-mode``: NVlabs' noise inputs at synthesis."""
    return click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const',
                        show_default=True, help="Noise inputs at synthesis (NVlabs' noise_mode)")(command)


def _remember_debug(ctx, param, value):
    ctx.meta['gansampling.debug'] = value
    return value


def debug_option(command):
    """``--debug``: show the traceback of an error instead of its one line (see :class:`Command`)."""
    return click.option('--debug', is_flag=True, expose_value=False, callback=_remember_debug,
                        help='Show tracebacks')(command)


def network_or_default(network):
    """The --network value, or the shipped default network (announced on stderr)."""
    if network is not None:
        return network
    if not os.path.isfile(DEFAULT_NETWORK):
        raise click.UsageError(f'--network is required: the embedded default network {DEFAULT_NETWORK} is missing')
    click.echo(f'No --network given: using the embedded default network {os.path.relpath(DEFAULT_NETWORK)}', err=True)
    return DEFAULT_NETWORK


def load_generator(network, device, allow_code=False):
    """Load G_ema from a path or URL; a bad file raises legacy.NetworkLoadError, a user error that
    :class:`Command` prints as one line."""
    import legacy
    return legacy.load_network(network, allow_code=allow_code, device=device)


class Command(click.Command):
    """A click command that remembers the arguments it parsed (for :func:`command_line`) and reports bad input
    (:class:`dnnlib.util.UserError` and its subclasses) and an operating-system error of a run (a read-only or full
    disk, a folder that vanished) as one line and exit status 1 (``--debug``, where a script has it: tracebacks)."""

    def parse_args(self, ctx, args):
        ctx.meta['gansampling.argv'] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except util.UserError as err:
            if ctx.meta.get('gansampling.debug'):  # Scripts with --debug show tracebacks.
                raise
            raise UserError(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from None
        except OSError as err:
            if ctx.meta.get('gansampling.debug'):
                raise
            reason = _os_reason(err)
            raise UserError(f'{err.filename}: {reason}' if err.filename is not None else reason) from None


def command_line():
    """The running command as a shell line, ``python script.py ARGS`` (recorded in banks for provenance).

    Built from the arguments click parsed, so it is right also when the command is invoked in-process.
    """
    ctx = click.get_current_context()
    script = os.path.basename(getattr(sys.modules.get(ctx.command.callback.__module__), '__file__', None)
                              or ctx.command_path)
    args = ctx.meta.get('gansampling.argv', sys.argv[1:])
    return ' '.join(['python', shlex.quote(script)] + [shlex.quote(arg) for arg in args])
