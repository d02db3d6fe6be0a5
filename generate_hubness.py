"""Hubness-prior sampling (Liang et al., ICML 2022): find hub latents, save them as a latent bank and render them.

Batch b draws --batch-size latents from batch seed --seed + b, scores each by its k-occurrence among the batch
and keeps those the selection rule accepts, batch after batch, until --num hubs are found. The result is the
first --num hubs in (batch, index) order: it does not depend on --synth-batch, on interruptions or on sharding.

The defaults are the authors' notebook: scores in W (G.mapping(z, c, truncation_psi=1)[:, 0]), 10,000 latents
per batch, k = 5, hub if score >= 50, the latent counted as its own first neighbour (--count-self: k = 5 means
4 other neighbours, and a score counts the latent itself once; --no-count-self gives the textbook N_k), images
at psi = 1 with noise_mode=const. --trunc only changes synthesis: scoring is always at psi = 1. A conditional
network takes --class (one class for all latents, also used to map them to W for scoring) or --class random
(each latent's class drawn from a stream seeded by its batch seed, see sampling/latents.py), the default when
--class is omitted.

Examples:

\b
    # 100 hub images with the authors' settings:
    python generate_hubness.py --network=network.pkl --num=100 --outdir=out

\b
    # The 20 highest-scoring latents of each batch, scored in Z, bank only:
    python generate_hubness.py --network=network.pkl --num=5000 --top=20 --space=z --no-images --outdir=out

\b
    # SLURM array of 8 tasks scoring batches 0..399 (task i takes i, i+8, ...), then one merge:
    sbatch --array=0-7 --wrap "python generate_hubness.py --network=net.pkl --num=50000 --max-batches=400 --outdir=out"
    python generate_hubness.py --network=net.pkl --num=50000 --max-batches=400 --outdir=out --merge

Outputs in --outdir: hubs.npz (latent bank: z 'latents', 'labels', 'w', 'hub_score', 'seeds' = batch seed,
'indices' = row in the batch, 'meta'), hub000000.png ... in hub order, grid.png (the first 64 hubs),
report.json and report.png, and chunks/ (a file per finished batch, packed into chunks/chunks.npz once the
outputs are written; a re-run reads the pack). A killed run re-run with the same
arguments resumes from the finished batches and skips images already written; a run with other arguments into
the same --outdir is refused (--max-batches, --device, --synth-batch, --shard and --no-images may change).

Shards (--shard i/n, default from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT): shards cannot know when --num
hubs are found, so together they score the fixed batches 0 .. B-1, B = --max-batches (required with
--threshold or --quantile; with --top it defaults to ceil(num / top)). Each shard only stores its batches; the
same command with --merge (and no --shard) then writes exactly what a single run writes.
"""

import os

import click

from sampling import cli, hub_sampler, samplers
from sampling.chunks import ChunkStore, resolve_shard
from sampling.latents import make_meta, network_sha256
from sampling.synthesis import has_mapping

_DEFAULT_MAX_BATCHES = 1000


@click.command(cls=cli.Command, help=__doc__)
@cli.threads_option
@cli.network_option()
@click.option('--outdir', type=click.Path(file_okay=False), default='out/hubness', show_default=True,
              help='Where to save bank, images, report')
@click.option('--num', type=click.IntRange(min=1), default=16, show_default=True, help='Number of hub latents wanted')
@click.option('--space', type=click.Choice(['w', 'z']),
              help="Where to score: W (the authors') or Z  [default: w; z for networks without a mapping, e.g. BigGAN]")
@click.option('--k', type=click.IntRange(min=1), default=5, show_default=True, help='Neighbourhood size')
@click.option('--threshold', type=cli.FiniteFloat(), help='Hub if score >= threshold  [default: 50, if no other rule]')
@click.option('--top', type=click.IntRange(min=1), help='Instead: the M highest scores of each batch')
@click.option('--quantile', type=cli.FiniteFloat(0, 1), help="Instead: score >= this quantile of the batch's scores")
@click.option('--count-self/--no-count-self', default=True, show_default=True,
              help="Count each latent as its own first neighbour (the authors' convention) or not (textbook)")
@click.option('--batch-size', type=click.IntRange(min=2), default=10000, show_default=True,
              help='Latents scored together (k-occurrence is relative to the batch)')
@click.option('--seed', type=click.IntRange(0, 2 ** 32 - 1), default=0, show_default=True,
              help='Batch b uses batch seed --seed + b')
@click.option('--max-batches', type=click.IntRange(1, hub_sampler.MAX_BATCHES),
              help=f'Stop after this many batches  [default: {_DEFAULT_MAX_BATCHES}; see Shards]')
@click.option('--trunc', 'truncation_psi', type=cli.FiniteFloat(), default=1, show_default=True,
              help='Truncation psi (synthesis only)')
@cli.class_option(help_more=' (the class also maps the latents to W for scoring)')
@cli.noise_mode_option
@click.option('--synth-batch', type=click.IntRange(min=1), default=32, show_default=True,
              help='Images per forward pass')
@cli.device_option
@click.option('--no-images', is_flag=True, help='Only build the bank (and the report)')
@click.option('--shard', metavar='i/n', help='Score shard i of n (default: from the SLURM array); see Shards')
@click.option('--merge', is_flag=True, help='Join the finished shards into the outputs (run once, after all shards)')
@cli.pickle_code_option
def main(network_pkl, outdir, num, space, k, threshold, top, quantile, count_self, batch_size, seed, max_batches,
         truncation_psi, class_idx, noise_mode, synth_batch, device, no_images, shard, merge, allow_pickle_code):
    max_batches_given = max_batches is not None
    if merge and shard is not None:
        raise click.UsageError('pass either --shard (score one shard) or --merge (join all shards), not both')
    try:
        shard_index, shard_count = (0, 1) if merge else resolve_shard(shard)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint='--shard') from None
    max_batches = max_batches or _DEFAULT_MAX_BATCHES
    if seed + max_batches > 2 ** 32:
        raise click.BadParameter('batch seeds --seed + b would pass 2**32 - 1; use a smaller --seed',
                                 param_hint='--seed')

    device = cli.resolve_device(device)
    network_pkl = cli.network_or_default(network_pkl)
    G = cli.load_generator(network_pkl, device, allow_code=allow_pickle_code)
    if space is None:
        space = 'w' if has_mapping(G) else 'z'  # No W to score in for BigGAN and other generators without mapping.
    # The sampler of the spec 'hubness:...;class=...': its search, batch by batch, is what this script stores.
    try:
        hubness = samplers.term('hubness', k=k, t=threshold, top=top, quantile=quantile, space=space,
                                batch=batch_size, count_self=count_self, max_batches=max_batches)
        spec = samplers.make_spec([hubness], class_idx=cli.resolve_class(G, class_idx))
    except samplers.SamplerSpecError as err:
        raise click.UsageError(str(err)) from None
    source = cli.build_sampler(spec, G, device).source
    search = source.search(seed)
    try:
        batches = None  # None: a single run (or a merge), which stops as soon as --num hubs are found.
        if shard_count > 1:
            batches = hub_sampler.shard_batches(search, num, shard_index, shard_count, max_batches if
                                                max_batches_given else None)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    sha256 = network_sha256(network_pkl)

    # Everything that defines the outputs; a re-run into the same --outdir must agree on all of it.
    config = dict(search.settings(), network_sha256=sha256, z_dim=G.z_dim, c_dim=G.c_dim, num=num,
                  truncation_psi=truncation_psi, noise_mode=noise_mode)
    cli.prepare_outdir(outdir)
    chunk_dir = os.path.join(outdir, 'chunks')
    try:
        store = ChunkStore(chunk_dir, hub_sampler.MAX_BATCHES, config=config)
    except ValueError as err:
        # Name the whole --outdir: its bank and images belong to the same settings as its chunks.
        raise click.ClickException(str(err).replace(chunk_dir, f'--outdir {outdir}').replace(
            'delete it', f'delete {outdir}')) from None
    compute = lambda b: source.score(search, b)  # noqa: E731

    if batches is not None:
        todo = store.run(compute, batches, desc=f'Shard {shard_index}/{shard_count}')
        click.echo(f'Shard {shard_index}/{shard_count}: scored {len(todo)} batches, {len(batches) - len(todo)} were '
                   f'already done. When every shard is done, run the same command with --merge (without --shard).')
        return

    try:
        result = hub_sampler.collect_hubs(store, num, max_batches, compute=None if merge else compute)
    except ValueError as err:
        raise click.ClickException(f'{err} (batches 0..{max_batches - 1} with --max-batches {max_batches})') from None

    meta = make_meta(command=cli.command_line(), network_sha256=sha256, space=space, k=k, count_self=count_self, z_dim=G.z_dim, c_dim=G.c_dim,
                     threshold=search.threshold, top=top, quantile=quantile, batch_size=batch_size, seed=seed,
                     class_idx=search.class_idx, num_requested=num, num_batches=len(result.batches))
    report = hub_sampler.write_outputs(G, result, search, outdir, meta, images=not no_images,
                                       truncation_psi=truncation_psi, noise_mode=noise_mode, synth_batch=synth_batch)
    store.consolidate()  # The outputs are written: one pack file replaces the batch files.

    summary = (f'{len(result.bank)} hubs from {len(result.batches)} batches of {batch_size} '
               f'(acceptance {100 * report["acceptance_rate"]:.2f} %)')
    if not result.complete:
        rule, value = search.rule
        raise click.ClickException(
            f'only {summary} after --max-batches {max_batches}, not the {num} wanted: '
            f'relax --{rule} {value:g}, or re-run with a larger --max-batches to continue (finished batches are kept); '
            f'what was found is saved in {outdir}')
    click.echo(f'Wrote {summary} to {outdir}')


if __name__ == '__main__':
    main()
