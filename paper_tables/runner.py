"""Run a paper table: one bank job per model, one calc_metrics.py evaluation per row, resumable, then write it.

Every step is a command line of the toolkit's own scripts (``compute_volume_scalars.py``, ``calc_metrics.py``),
run in this process through their click commands, so the command a table records is exactly what produced
its number. A finished row is kept as ``rows/<id>.json`` (written atomically, with its command): a re-run
skips it, a killed bank job resumes from its chunks. ``table.json`` / ``table.md`` hold no timings or
timestamps, so the same inputs give byte-identical tables.
"""

import dataclasses
import hashlib
import json
import math
import os
import shlex
import time
import zipfile

import dnnlib
from paper_tables.tables import metric_names
from sampling.latents import file_sha256, network_sha256

EMBEDDED = 'embedded'


class TableError(dnnlib.util.UserError):
    """Bad input or a failed step; the message is one line for the user."""


@dataclasses.dataclass
class Step:
    kind: str      # 'bank' or 'row'
    key: str       # model key (bank) or row id (row)
    script: str
    args: list
    row: object = None

    @property
    def command(self):
        return ' '.join(['python', self.script] + [shlex.quote(arg) for arg in self.args])


def _by_key(values, table, option):
    """--network / --data values ('KEY=PATH', or a bare PATH for a one-model table) -> {key: path}."""
    out = {}
    for value in values:
        key, sep, path = value.partition('=')
        if not sep or key not in table.models:
            if len(table.models) == 1 and (not sep or key not in table.models):
                key, path = next(iter(table.models)), value
            else:
                raise TableError(f'{option} {value!r}: give KEY=PATH with KEY one of {", ".join(table.models)}')
        out[key] = path
    return out


def _default_network():
    from sampling.cli import DEFAULT_NETWORK
    return DEFAULT_NETWORK


def plan(table, networks=(), datasets=(), outdir='out', num_latents=None, num_samples=None, seed=0, device='auto',
         detector=None, method='lowrank', batch=8, workers=None, only=None):
    """The steps of ``table`` and the rows that cannot run (model not given, or not in ``only``, a list of row
    ids): (steps, skipped {row id: reason}, setup)."""
    unknown = sorted(set(only or ()) - {row.id for row in table.rows})
    if unknown:
        raise TableError(f'--rows: {", ".join(unknown)} not in the {table.name} table (its rows: '
                         f'{", ".join(row.id for row in table.rows)})')
    networks, datasets = _by_key(networks, table, '--network'), _by_key(datasets, table, '--data')
    for key, model in table.models.items():
        if key not in networks and model.default_network == EMBEDDED:
            networks[key] = os.path.relpath(_default_network())
    num_latents = table.num_latents if num_latents is None else num_latents
    num_samples = table.num_samples if num_samples is None else num_samples
    detector = detector if detector is not None else table.detector
    names, _keys = metric_names(num_samples)

    steps, skipped, banks = [], {}, {}
    for row in table.rows:
        if only and row.id not in only:
            skipped[row.id] = 'not run: not in --rows'
            continue
        if row.model not in networks:
            skipped[row.id] = f'not run: pass --network {row.model}=PATH'
            continue
        network = networks[row.model]
        sampler = row.sampler
        if '{bank}' in sampler:
            if row.model not in banks:
                banks[row.model] = _bank_step(table, row.model, network, outdir, num_latents, seed, device, method,
                                              batch)
                steps.append(banks[row.model])
            sampler = sampler.replace('{bank}', _bank_path(outdir, row.model))
        metrics = ','.join(dict.fromkeys(names[m] for m in row.metrics))
        args = [f'--network={network}']
        if row.model in datasets:
            args.append(f'--data={datasets[row.model]}')
        args += [f'--metrics={metrics}', f'--sampler={sampler}', f'--seed={seed}', f'--device={device}']
        if detector is not None:
            args.append(f'--detector={detector}')
        if workers is not None:
            args.append(f'--workers={workers}')
        args.append(f'--out={os.path.join(outdir, "rows", row.id + ".jsonl")}')
        steps.append(Step('row', row.id, 'calc_metrics.py', args, row))
    return steps, skipped, dict(networks=networks, datasets=datasets, num_latents=num_latents,
                                num_samples=num_samples, seed=seed)


def _bank_path(outdir, model):
    return os.path.join(outdir, 'banks', model, 'volumes.npz')


def _bank_step(table, model, network, outdir, num_latents, seed, device, method, batch):
    if num_latents < 1:
        raise TableError(f'--num-latents must be at least 1 for the bank of {model}')
    bank = table.models[model].bank
    args = [f'--network={network}', f'--num={num_latents}', f'--seed={seed}', f'--space={bank.space}',
            f'--method={method}', f'--top-k={bank.top_k}', f'--batch={batch}',
            f'--outdir={os.path.dirname(_bank_path(outdir, model))}', f'--device={device}']
    if bank.resize is not None:
        args.append(f'--resize={bank.resize}')
    if bank.embedder is not None:
        args.append(f'--embedder={{{bank.embedder}}}')  # Resolved to the cached detector file when run.
    return Step('bank', model, 'compute_volume_scalars.py', args)


def _resolve_embedder(step):
    """Replace an '{inception}' / '{vgg16}' placeholder by NVlabs' detector, downloaded once into the cache."""
    from metrics.metric_utils import DETECTOR_URLS
    out = []
    for arg in step.args:
        if arg.startswith('--embedder={') and arg.endswith('}'):
            url = DETECTOR_URLS[arg[len('--embedder={'):-1]]
            arg = '--embedder=' + dnnlib.util.open_url(url, return_filename=True, verbose=False)
        out.append(arg)
    return dataclasses.replace(step, args=out)


def init_distributed(device):
    """(rank, world size) under torchrun, with one process group for the whole run; (0, 1) otherwise."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world == 1:
        return 0, 1
    import datetime

    import torch

    from sampling.cli import resolve_device
    device = resolve_device(device)
    if device.type == 'cuda':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', '0')))
    if not torch.distributed.is_initialized():
        # A bank step can keep the other ranks waiting for hours at a barrier.
        torch.distributed.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo',
                                             timeout=datetime.timedelta(days=7))
    return torch.distributed.get_rank(), world


def _barrier(world):
    if world > 1:
        import torch
        torch.distributed.barrier()


def run(steps, outdir, scripts, shard=None, echo=print, rank=0, world=1):
    """Run every step not yet done. ``scripts``: {script name: click command}. Returns the finished rows.

    Under torchrun (``world`` > 1) every rank computes its shard of each bank, rank 0 merges it, and the
    evaluations split their images across the ranks as calc_metrics.py does; rank 0 writes the files.
    """
    rows = {}
    for step in steps:
        if step.kind == 'bank':
            step = _resolve_embedder(step)
            bank_shard = (rank, world) if world > 1 else shard
            args = step.args + ([f'--shard={bank_shard[0]}/{bank_shard[1]}'] if bank_shard is not None else [])
            echo(f'[bank {step.key}] {step.command}')
            _invoke(scripts[step.script], args, f'bank {step.key}')
            if world > 1:
                _barrier(world)
                if rank == 0:
                    _invoke(scripts[step.script], step.args + ['--merge'], f'bank {step.key}')
                _barrier(world)
            continue
        if shard is not None and shard[1] > 1:
            continue  # Sharded runs compute bank chunks only; the rows run once every shard has finished.
        path = os.path.join(outdir, 'rows', f'{step.key}.json')
        _barrier(world)  # Every rank sees the same finished rows.
        done = _read_row(path)
        if done is not None and done.get('command') == step.command:
            echo(f'[row {step.key}] done before: {path}')
            rows[step.key] = done
            continue
        echo(f'[row {step.key}] {step.command}')
        jsonl = os.path.join(outdir, 'rows', f'{step.key}.jsonl')
        if rank == 0 and os.path.exists(jsonl):
            os.remove(jsonl)  # A line from an interrupted evaluation of this row.
        _barrier(world)
        _invoke(scripts[step.script], step.args, f'row {step.key}')
        if rank != 0:
            continue
        with open(jsonl, encoding='utf-8') as f:
            records = [json.loads(line) for line in f if line.strip()]
        results, details = {}, {}
        for record in records:
            results.update(record['results'])
            if record.get('details'):
                details[record['metric']] = record['details']
        rows[step.key] = dict(command=step.command, results=results, details=details)
        with dnnlib.util.atomic_write(path, 'w') as f:
            json.dump(rows[step.key], f, indent=2, sort_keys=True)
    _barrier(world)
    return rows


def _read_row(path):
    try:
        with open(path, encoding='utf-8') as f:
            row = json.load(f)
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) and isinstance(row.get('results'), dict) else None


def _invoke(command, args, what):
    import click
    try:
        command.main(args=list(args), standalone_mode=False)
    except click.ClickException as err:
        raise TableError(f'{what}: {err.format_message()}') from None
    except click.exceptions.Abort:
        raise TableError(f'{what}: aborted') from None

# ----------------------------------------------------------------------------
# The table files.


def data_sha256(path):
    """sha256 of a dataset's content: its files' relative names and contents in name order, for a folder or a zip
    (so a zip rebuilt with other timestamps hashes the same); any other file's own sha256."""
    digest = hashlib.sha256()
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                if not info.is_dir():
                    digest.update(info.filename.encode('utf-8') + b'\0')
                    digest.update(hashlib.sha256(archive.read(info)).hexdigest().encode('ascii'))
        return digest.hexdigest()
    if os.path.isfile(path):
        return file_sha256(path)
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode('utf-8') + b'\0')
            digest.update(file_sha256(full).encode('ascii'))
    return digest.hexdigest()


def _compare(direction, value, baseline):
    if value is None or baseline is None or not (math.isfinite(value) and math.isfinite(baseline)):
        return None
    return value < baseline if direction == '<' else value > baseline


def build(table, steps, skipped, setup, rows):
    """table.json's content (no timings): per row the paper's numbers, ours, the differences and the claims."""
    _names, keys = metric_names(setup['num_samples'])
    commands = {step.key: step.command for step in steps if step.kind == 'row'}
    bank_commands = {step.key: step.command for step in steps if step.kind == 'bank'}
    used = {row.model for row in table.rows if row.id in rows}
    models = {}
    for key in sorted(used):
        network, data = setup['networks'][key], setup['datasets'].get(key)
        models[key] = dict(description=table.models[key].description, network=network,
                           network_sha256=network_sha256(network), data=data,
                           data_sha256=data_sha256(data) if data is not None else None,
                           bank_command=bank_commands.get(key))

    def ours(row_id, metric):
        value = rows.get(row_id, {}).get('results', {}).get(keys[metric])
        return None if value is None else float(value)

    out_rows = []
    for row in table.rows:
        entry = dict(id=row.id, label=row.label, model=row.model, sampler=row.sampler, baseline=row.baseline,
                     note=row.note, command=commands.get(row.id), status=skipped.get(row.id, 'done'), metrics={},
                     claims=[])
        if row.id not in rows and row.id not in skipped:
            entry['status'] = 'not run yet'
        for metric in row.metrics:
            paper, value = row.paper.get(metric), ours(row.id, metric)
            diff = value - paper if value is not None and paper is not None else None
            entry['metrics'][metric] = dict(paper=paper, ours=value, difference=diff)
        for metric, direction in table.claims(row):
            holds = _compare(direction, ours(row.id, metric), ours(row.baseline, metric))
            entry['claims'].append(dict(metric=metric, direction=direction, baseline=row.baseline, holds=holds))
        out_rows.append(entry)
    return dict(table=table.name, title=table.title, source=table.source, notes=list(table.notes),
                seed=setup['seed'], num_latents=setup['num_latents'], num_samples=setup['num_samples'],
                models=models, rows=out_rows)


def _fmt(value):
    if value is None:
        return ''
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f'{value:.4g}' if abs(value) < 1 else f'{value:.2f}'


def markdown(doc):
    lines = [f'# {doc["title"]}', '', f'Source: {doc["source"]}.', '',
             f'Seed {doc["seed"]}; {doc["num_latents"]:,} bank latents per model; {doc["num_samples"]:,} generated '
             'images per evaluation.', '']
    lines += [f'{note}' for note in doc['notes']] + ([''] if doc['notes'] else [])
    lines += ['| row | metric | paper | ours | ours - paper | paper\'s claim | holds here |',
              '|---|---|---:|---:|---:|---|---|']
    for row in doc['rows']:
        claims = {c['metric']: c for c in row['claims']}
        label = row['label'] + (f' ({row["note"]})' if row['note'] else '')
        if row['status'] != 'done':
            lines.append(f'| {label} | | | {row["status"]} | | | |')
            continue
        for metric, m in row['metrics'].items():
            claim = claims.get(metric)
            text = f'{metric} {claim["direction"]} {claim["baseline"]}' if claim else ''
            holds = '' if claim is None else {True: 'yes', False: 'no', None: 'n/a'}[claim['holds']]
            lines.append(f'| {label} | {metric} | {_fmt(m["paper"])} | {_fmt(m["ours"])} | {_fmt(m["difference"])} '
                         f'| {text} | {holds} |')
            label = ''
    lines += ['', '## Commands', '', '```bash']
    for model in doc['models'].values():
        if model['bank_command']:
            lines.append(model['bank_command'])
    lines += [row['command'] for row in doc['rows'] if row['command'] and row['status'] == 'done']
    lines += ['```', '', '## Networks and data', '']
    for key, model in doc['models'].items():
        lines.append(f'* `{key}`: {model["description"]}; network `{model["network"]}` (sha256 '
                     f'`{model["network_sha256"]}`)' + (f', data `{model["data"]}` (sha256 `{model["data_sha256"]}`)'
                                                       if model['data'] else ''))
    return '\n'.join(lines) + '\n'


def write(doc, outdir):
    with dnnlib.util.atomic_write(os.path.join(outdir, 'table.json'), 'w') as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write('\n')
    with dnnlib.util.atomic_write(os.path.join(outdir, 'table.md'), 'w') as f:
        f.write(markdown(doc))

# ----------------------------------------------------------------------------
# Cost estimate for --dry-run.


def estimate(steps, setup, device, probe=2, echo=print):
    """Seconds per bank latent (measured on ``probe`` latents) and per generated image, and the totals."""
    import tempfile

    import torch

    import legacy
    from sampling import volume_job
    from sampling.cli import resolve_device
    device = resolve_device(device)
    total = 0.0
    per_image, generators = {}, {}
    for step in steps:
        model = step.key if step.kind == 'bank' else step.row.model
        if model not in generators:
            generators[model] = legacy.load_network(setup['networks'][model], device=device)
        G = generators[model]
        if step.kind == 'bank':
            opts = dict(arg[2:].split('=', 1) for arg in step.args)
            if 'embedder' in opts:
                echo(f'[bank {step.key}] feature-space cost not measured in a dry run (it needs the detector); '
                     'pixel space is a lower bound')
            job = volume_job.VolumeJob(G, 'dry-run', probe, seed=int(opts['seed']),
                                       space=opts['space'] if opts['space'] != 'feature' else 'pixel',
                                       method=opts['method'], top_k=min(int(opts['top-k']), G.z_dim - 1),
                                       chunk_size=probe, batch_size=probe,
                                       resize=int(opts['resize']) if 'resize' in opts else None)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                job.run(tmp, progress=False)
                seconds = (time.perf_counter() - start) / probe
            cost = seconds * int(opts['num'])
            echo(f'[bank {step.key}] {seconds:.3g} s per latent x {int(opts["num"]):,} latents = {_duration(cost)}')
        else:
            if model not in per_image:
                with torch.no_grad():
                    z = torch.randn([8, G.z_dim], device=device)
                    c = torch.zeros([8, G.c_dim], device=device)
                    if G.c_dim:
                        c[:, 0] = 1
                    G(z, c)  # Warm-up.
                    start = time.perf_counter()
                    G(z, c)
                    per_image[model] = (time.perf_counter() - start) / 8
            metrics = [m for m in step.args if m.startswith('--metrics=')][0].split('=', 1)[1].split(',')
            cost = per_image[model] * setup['num_samples'] * len(metrics)
            echo(f'[row {step.key}] synthesis {per_image[model]:.3g} s per image x {setup["num_samples"]:,} images x '
                 f'{len(metrics)} metric(s) = {_duration(cost)} (detectors and hub searches not included)')
        total += cost
    echo(f'Estimated total on {device}: {_duration(total)}')
    return total


def _duration(seconds):
    if seconds < 120:
        return f'{seconds:.0f} s'
    if seconds < 7200:
        return f'{seconds / 60:.1f} min'
    return f'{seconds / 3600:.1f} h'
