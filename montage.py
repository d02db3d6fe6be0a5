"""A montage like the MaGNET authors': naive samples above MaGNET / polarity samples, per psi or per class.

Column groups: one per truncation psi in --psi (default 0.3,0.5,0.7,0.9,1; the same latents in every group), or
with --by class one per class of a conditional network (at --trunc). In each group --rows rows of --cols naive
samples (rows of batch seed --seed) sit above --rows rows of bank latents resampled with polarity --rho (the
draw of generate_magnet.py --rho R --seed S). Without --network the embedded network and its shipped bank are
used. Logic: sampling/montage.py.

\b
Examples:
    python montage.py                                   # MaGNET (rho = 1) on the embedded network -> out/montage.png
    python montage.py --rho -0.5 --out out/montage-modes.png
    python montage.py --by class --rows 1 --cols 3 --trunc 0.7
    python montage.py --network net.pkl --bank vol/volumes.npz --top-k 30 --scale 1
"""

import os
import sys

import click

from sampling import cli


def _parse_floats(ctx, param, value):
    try:
        values = [float(v) for v in str(value).split(',') if v.strip()]
    except ValueError:
        raise click.BadParameter(f'{value!r} is not a comma-separated list of numbers (example: 0.3,0.5,1)') from None
    if not values:
        raise click.BadParameter('give at least one value')
    return values


@click.command(cls=cli.Command, help=__doc__)
@cli.threads_option
@cli.network_option()
@click.option('--bank', 'bank_path', type=click.Path(exists=True, dir_okay=False),
              help='Volume bank (default with the embedded network: its shipped bank)')
@click.option('--rho', type=float, default=1, show_default=True, help='Polarity: 1 MaGNET, <0 modes, >0 anti-modes')
@click.option('--top-k', type=click.IntRange(min=1), help='Singular values per volume (default: all in the bank)')
@click.option('--by', type=click.Choice(['psi', 'class']), default='psi', show_default=True, help='Column groups')
@click.option('--psi', 'psis', callback=_parse_floats, default='0.3,0.5,0.7,0.9,1', show_default=True,
              help='Truncation psi of each group (--by psi)')
@click.option('--trunc', 'truncation_psi', type=float, default=1, show_default=True, help='Truncation psi (--by class)')
@click.option('--rows', type=click.IntRange(1, 16), default=2, show_default=True, help='Rows of each kind')
@click.option('--cols', type=click.IntRange(1, 32), default=4, show_default=True, help='Columns of each group')
@click.option('--seed', type=click.IntRange(0, 2 ** 32 - 1), default=0, show_default=True,
              help='Seed of the naive latents and of the resampling')
@click.option('--scale', type=click.IntRange(1, 16), default=2, show_default=True, help='Enlargement of each image')
@click.option('--out', type=click.Path(dir_okay=False), default=os.path.join('out', 'montage.png'), show_default=True)
@cli.device_option
@cli.pickle_code_option
def main(network_pkl, bank_path, rho, top_k, by, psis, truncation_psi, rows, cols, seed, scale, out, device,
         allow_pickle_code):
    from demos import first_run
    from sampling import montage, samplers
    from sampling.images import save_png
    from sampling.latents import network_sha256
    if bank_path is None:
        if network_pkl is not None:
            raise click.UsageError('--bank is needed with --network (the shipped bank is for the embedded network)')
        bank_path = first_run.EMBEDDED_BANK
    device = cli.resolve_device(device)
    network_pkl = cli.network_or_default(network_pkl)
    G = cli.load_generator(network_pkl, device, allow_code=allow_pickle_code)
    try:
        bank, notes = samplers.load_bank(bank_path, G, network_sha256(network_pkl), need='singular values (svds)')
        for note in notes:
            click.echo(note, err=True)
        num = rows * cols
        if by == 'psi':
            groups = montage.psi_groups(G, bank, num, rho=rho, top_k=top_k, seed=seed, psis=psis)
        else:
            groups = montage.class_groups(G, bank, num, rho=rho, top_k=top_k, seed=seed, psi=truncation_psi)
        picture = montage.make_montage(G, groups, rows, cols, kind_labels=('naive', montage.method_label(rho)),
                                       scale=scale)
    except ValueError as err:
        raise click.ClickException(str(err).splitlines()[0]) from None
    save_png(out, picture)
    click.echo(f'Wrote {out}: {len(groups)} groups ({", ".join(g.title for g in groups)}), {rows} naive rows above '
               f'{rows} {montage.method_label(rho)} rows of {cols}')


if __name__ == '__main__':
    sys.exit(main())  # pylint: disable=no-value-for-parameter
