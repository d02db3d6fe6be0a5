"""Helpers shared by the command-line scripts: option parsing, devices, loading networks."""

import os
import re
import shlex
import sys

import click
import torch

# The small network this repository trains and ships (see README); scripts use it without --network.
DEFAULT_NETWORK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'pretrained', 'mnist32-stylegan2.pkl')


def parse_range(text):
    """'0,1,4-6' -> [0, 1, 4, 5, 6]. Ranges are inclusive."""
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
            values.extend(range(lo, hi + 1))
        elif re.fullmatch(r'-?\d+', part):
            values.append(int(part))
        else:
            raise click.BadParameter(f'{part!r} is not an integer or a range like 4-6 (example: 0,1,4-6)')
    return values


def parse_vec2(text):
    """'0.1,-0.2' -> (0.1, -0.2)."""
    if isinstance(text, tuple):
        return text
    parts = str(text).split(',')
    try:
        if len(parts) == 2:
            return float(parts[0]), float(parts[1])
    except ValueError:
        pass
    raise click.BadParameter(f'{text!r} is not two comma-separated numbers (example: 0.1,-0.2)')


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


def network_or_default(network):
    """The --network value, or the shipped default network (announced on stderr)."""
    if network is not None:
        return network
    if not os.path.isfile(DEFAULT_NETWORK):
        raise click.UsageError(f'--network is required: the embedded default network {DEFAULT_NETWORK} is missing')
    click.echo(f'No --network given: using the embedded default network {os.path.relpath(DEFAULT_NETWORK)}', err=True)
    return DEFAULT_NETWORK


def load_generator(network, device, allow_code=False):
    """Load G_ema from a path or URL; a bad file becomes a one-line click error."""
    import legacy
    try:
        return legacy.load_network(network, allow_code=allow_code, device=device)
    except legacy.NetworkLoadError as err:
        raise click.ClickException(str(err)) from None


def class_label(G, class_idx, device, batch_size=1):
    """One-hot labels [batch, c_dim] for ``class_idx``; an empty [batch, 0] tensor for unconditional nets."""
    label = torch.zeros([batch_size, G.c_dim], device=device)
    if G.c_dim == 0:
        if class_idx is not None:
            click.echo('warning: --class is ignored for an unconditional network', err=True)
        return label
    if class_idx is None:
        raise click.UsageError(f'this network is conditional ({G.c_dim} classes): pass --class 0..{G.c_dim - 1}')
    if not 0 <= class_idx < G.c_dim:
        raise click.BadParameter(f'--class {class_idx} is out of range for {G.c_dim} classes (0..{G.c_dim - 1})')
    label[:, class_idx] = 1
    return label


class Command(click.Command):
    """A click command that remembers the arguments it parsed, for :func:`command_line`."""

    def parse_args(self, ctx, args):
        ctx.meta['gansampling.argv'] = list(args)
        return super().parse_args(ctx, args)


def command_line():
    """The running command as a shell line, ``python script.py ARGS`` (recorded in banks for provenance).

    Built from the arguments click parsed, so it is right also when the command is invoked in-process.
    """
    ctx = click.get_current_context()
    script = os.path.basename(getattr(sys.modules.get(ctx.command.callback.__module__), '__file__', None)
                              or ctx.command_path)
    args = ctx.meta.get('gansampling.argv', sys.argv[1:])
    return ' '.join(['python', shlex.quote(script)] + [shlex.quote(arg) for arg in args])
