"""Rerun every CPU benchmark the README quotes and rewrite the README's figures table from their output.

    python benchmarks/run_all.py                          # everything (about 15-30 minutes on 2 cores)
    python benchmarks/run_all.py --only generate,volume8  # a subset; the other rows keep their old text
    python benchmarks/run_all.py --no-readme              # print the table only

Each benchmark runs in its own subprocess with ``--json``; its full output goes to ``--log``. The table
between the README's ``<!-- benchmarks:begin -->`` and ``<!-- benchmarks:end -->`` markers is replaced,
with the date, the machine and the load average before and after each benchmark. Timings on a shared
machine are noisy: the benchmarks interleave baseline and ours and report ranges over repeats, and the
process CPU time beside the wall time.
"""

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = '<!-- benchmarks:begin -->', '<!-- benchmarks:end -->'
ROW = re.compile(r'^\| (?P<what>.*?) \| `(?P<command>[^`]*)` \| (?P<result>.*) \|$')

# name: (what, command shown in the README, extra arguments for the run)
BENCHMARKS = {
    'generate': ('batched vs NVlabs\' per-seed loop and NVlabs-mode batches (StyleGAN2, 64 and 256 px, batch 16)',
                 'python benchmarks/bench_generate.py', ['--repeats', '3']),
    'hubness64': ('exact k-occurrence, N = 10,000, d = 64, k = 5', 'python benchmarks/bench_hubness.py --quick --dim 64',
                  ['--repeats', '3']),
    'hubness512': ('exact k-occurrence, N = 10,000, d = 512, k = 5', 'python benchmarks/bench_hubness.py --quick',
                   ['--repeats', '3']),
    'hubness50k': ('the same, N = 50,000', 'python benchmarks/bench_hubness.py --sizes 50000 --memory-n 0 --repeats 1',
                   []),
    'memory': ('k-occurrence peak memory, N = 200,000',
               'python benchmarks/bench_hubness.py --sizes 1000 --memory-n 200000 --repeats 1', []),
    'metrics': ('precision/recall, 20,000 x 20,000, d = 512 (and the hubness-aware efficient P/R)',
                'python benchmarks/bench_metrics.py', []),
    'volume8': ('Jacobian singular values, StyleGAN2 16 px, z = 512, top-30, per latent, batches of 8 '
                "(`compute_volume_scalars.py`'s default)",
                'python benchmarks/bench_volume.py --res 16 --z-dim 512 --num 8 --batch 8 --channels 64 --top-k 30',
                ['--repeats', '2']),
    'volume2': ('the same in batches of 2',
                'python benchmarks/bench_volume.py --res 16 --z-dim 512 --num 4 --batch 2 --channels 64 --top-k 30',
                ['--repeats', '2']),
    'startup': ('a script start: import, then load the embedded network (fresh interpreter)',
                'python benchmarks/run_all.py --only startup', []),
}


def _range(values, fmt='{:.2f}'):
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f'{fmt.format(lo)}-{fmt.format(hi)}'


def _load():
    return os.getloadavg()[0]


def machine():
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            model = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    import torch
    return f'{model}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}'

# ----------------------------------------------------------------------------
# One formatter per benchmark: JSON -> the README's result cell.


def fmt_generate(data):
    parts = []
    for r in data:
        names = r['methods']
        ours = names[2]
        parts.append(
            f"{r['res']} px ({r['params_m']} M params): ours {_range(r['wall'][ours])} img/s "
            f"({_range(r['cpu'][ours])} per CPU s), {_range(r['vs_loop']['wall'])}x the per-seed loop "
            f"({_range(r['vs_loop']['cpu'])}x in CPU time), {_range(r['vs_nvlabs_batch']['wall'])}x NVlabs-mode "
            f"batches ({_range(r['vs_nvlabs_batch']['cpu'])}x); {r['bound_img_per_cpu_s']:.1f} img per CPU s would "
            f"run the convolutions at the rate of one large convolution; max uint8 difference {r['max_uint8_diff']}")
    return '; '.join(parts)


def fmt_hubness(data):
    parts = []
    for r in data['sizes']:
        ours, cpu = r['seconds']['ours'], r['cpu_seconds']['ours']
        text = f"ours {ours:.3f} s ({cpu:.3f} CPU s, {r['gflops']:.0f} GFLOP/s = {r['gflops'] / r['rate']:.0%} of " \
               f"the measured GEMM rate {r['rate']:.0f})"
        for name in ('scikit-learn', 'faiss'):
            if name in r['seconds']:
                text += f"; {name} {r['seconds'][name] / ours:.2f}x slower ({r['cpu_seconds'][name] / cpu:.2f}x " \
                        f"in CPU time), counts equal at {r['same'][name]:,} / {r['num']:,}"
        parts.append(text)
    return '; '.join(parts)


def fmt_memory(data):
    m = data['memory']
    return f"+{m['added_gib']:.2f} GiB in {m['seconds']:.0f} s; an N x N float32 matrix would be {m['naive_gib']:.0f} GiB"


def fmt_metrics(data):
    base, ours, eff = data['nvlabs'], data['ours'], data['efficient']
    return (f"ours {ours['seconds']:.0f} s vs {base['seconds']:.0f} s for NVlabs' algorithm "
            f"({base['seconds'] / ours['seconds']:.2f}x), peak extra memory {ours['extra_rss_mib'] / 1024:.2f} vs "
            f"{base['extra_rss_mib'] / 1024:.2f} GiB, identical values: {data['identical']}; efficient P/R "
            f"{eff['seconds']:.0f} s, {eff['extra_rss_mib'] / 1024:.2f} GiB, off by "
            f"{eff['precision'] - ours['precision']:+.2f} precision / {eff['recall'] - ours['recall']:+.2f} recall "
            'on these synthetic features')


def fmt_volume(data):
    t, c, e = data['times'], data['cpu_times'], data['errors']
    base = "authors' loop (128 VJPs)"
    parts = [f"the authors' procedure {_range(t[base], '{:.2f}')} s ({_range(c[base], '{:.2f}')} CPU s), "
             f"error {e[base]['error']:.2f} nats after removing its offset"]
    for name, label in (('ours projected', '`projected`'), ('ours exact', '`exact`'), ('ours lowrank', '`lowrank`')):
        wall = [b / o for b, o in zip(t[base], t[name])]
        cpu = [b / o for b, o in zip(c[base], c[name])]
        parts.append(f"{label} {_range(t[name], '{:.2f}')} s, {_range(wall)}x the authors' speed "
                     f"({_range(cpu)}x in CPU time), error {e[name]['error']:.1e} nats")
    return '; '.join(parts)


def fmt_startup(data):
    return (f"import {_range(data['import'], '{:.2f}')} s, then loading the embedded network "
            f"{_range(data['load'], '{:.3f}')} s; torch._dynamo imported: {data['dynamo']}")


FORMATTERS = dict(generate=fmt_generate, hubness64=fmt_hubness, hubness512=fmt_hubness, hubness50k=fmt_hubness,
                  memory=fmt_memory, metrics=fmt_metrics, volume8=fmt_volume, volume2=fmt_volume,
                  startup=fmt_startup)

# ----------------------------------------------------------------------------


def measure_startup(repeats=3):
    code = ('import time, sys; t0 = time.perf_counter(); import legacy; from sampling import cli; '
            't1 = time.perf_counter(); legacy.load_network(cli.DEFAULT_NETWORK); t2 = time.perf_counter(); '
            'print(t1 - t0, t2 - t1, "torch._dynamo" in sys.modules)')
    out = dict(**{'import': []}, load=[], dynamo=False)
    for _ in range(repeats):
        line = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.split()
        out['import'].append(float(line[0]))
        out['load'].append(float(line[1]))
        out['dynamo'] = out['dynamo'] or line[2] == 'True'
    return out


def run_benchmark(name, threads, log):
    what, command, extra = BENCHMARKS[name]
    if name == 'startup':
        return measure_startup()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'out.json')
        args = command.split()[1:] + extra + ['--json', path]
        if threads is not None:
            args += ['--threads', str(threads)]
        proc = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True)
        log.write(f'$ {command} {" ".join(extra)}\n{proc.stdout}{proc.stderr}\n')
        log.flush()
        if proc.returncode != 0:
            raise click.ClickException(f'{name} failed (see the log): {proc.stderr.strip().splitlines()[-1:]}')
        with open(path) as f:
            return json.load(f)


def render(rows, header):
    lines = [header, '', '| what | command | result |', '| --- | --- | --- |']
    lines += [f"| {BENCHMARKS[name][0]} | `{BENCHMARKS[name][1]}` | {rows[name]} |" for name in BENCHMARKS
              if name in rows]
    return '\n'.join(lines)


def old_first_line(readme):
    """The header line of the current table (None without one)."""
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip() if BEGIN in readme else ''
    first = block.splitlines()[0] if block else ''
    return first if first.startswith('Measured ') else None


def old_rows(readme):
    """Result cells of the current table, by command (kept for benchmarks not rerun)."""
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0] if BEGIN in readme else ''
    by_command = {m['command']: m['result'] for m in map(ROW.match, block.splitlines()) if m}
    return {name: by_command[spec[1]] for name, spec in BENCHMARKS.items() if spec[1] in by_command}


@click.command()
@click.option('--only', default=','.join(BENCHMARKS), show_default=True, help='Comma-separated benchmarks to run')
@click.option('--threads', type=click.IntRange(min=1), help='Passed to every benchmark [default: theirs]')
@click.option('--readme', default=os.path.join(ROOT, 'README.md'), show_default=True, type=click.Path(dir_okay=False))
@click.option('--no-readme', is_flag=True, help='Print the table, leave the README alone')
@click.option('--log', 'log_path', default=os.path.join(tempfile.gettempdir(), 'run_all.log'), show_default=True,
              help='Full output of every benchmark')
def main(only, threads, readme, no_readme, log_path):
    names = [name.strip() for name in only.split(',') if name.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise click.BadParameter(f'unknown benchmarks {unknown}; choose from {", ".join(BENCHMARKS)}',
                                 param_hint='--only')
    with open(readme) as f:
        text = f.read()
    if not no_readme and (BEGIN not in text or END not in text):
        raise click.ClickException(f'{readme} has no {BEGIN} ... {END} markers around the benchmark table')
    rows = old_rows(text)
    loads = []
    start = time.time()
    with open(log_path, 'w') as log:
        for name in names:
            before = _load()
            click.echo(f'{name}: {BENCHMARKS[name][1]} (load {before:.1f}) ...', err=True)
            result = run_benchmark(name, threads, log)
            loads += [before, _load()]
            rows[name] = FORMATTERS[name](result) + f' (load {before:.1f}-{_load():.1f})'
            click.echo(f'  {rows[name]}', err=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')
    header = (f'Measured {date} by `python benchmarks/run_all.py` ({(time.time() - start) / 60:.0f} minutes) on '
              f'{machine()}; 1-minute load average {min(loads):.1f}-{max(loads):.1f} while it ran (other jobs shared '
              'the cores): wall times are rough, CPU times steadier. Ranges are over interleaved repeats.')
    old_header = old_first_line(text)
    if set(names) != set(BENCHMARKS):
        rerun = f'Rows {", ".join(names)} rerun {date} (load {min(loads):.1f}-{max(loads):.1f}).'
        header = f'{old_header} {rerun}' if old_header else f'{header} {rerun} The other rows are from an earlier run.'
    table = render(rows, header)
    if no_readme:
        click.echo(table)
        return
    new = text.split(BEGIN, 1)[0] + BEGIN + '\n' + table + '\n' + END + text.split(END, 1)[1]
    tmp = readme + '.tmp'
    with open(tmp, 'w') as f:
        f.write(new)
    os.replace(tmp, readme)
    click.echo(f'Rewrote the benchmark table of {readme}; full output in {log_path}', err=True)


if __name__ == '__main__':
    main()
