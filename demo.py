"""The first run: random, truncated, hub and polarity samples of one network side by side, in under a minute.

Writes OUTDIR/samplers.png (one labelled row of --num-images samples per sampler, all from --seed) and
OUTDIR/summary.json, and prints what each row is with one number: the share of --num-scored samples that the
MNIST classifier calls a digit. Details and settings: demos/first_run.py. Without --network it uses the
embedded network and its precomputed volume bank (pretrained/mnist32-volumes.npz); another network needs a
bank of its own (compute_volume_scalars.py). The metrics of the README table take 10 minutes: demo_samplers.py.

\b
Examples:
    python demo.py
    python demo.py --seed 1 --num-images 16 --outdir out/demo1
    python demo.py --network net.pkl --bank vol/volumes.npz --classifier none --hub-threshold 30
"""

import os
import sys
import time

import click
import torch

from demos import first_run
from metrics.mnist_classifier import DEFAULT_CLASSIFIER
from sampling import cli


def run(network, bank, classifier, outdir, num_images, num_scored, seed, hub_threshold, rho, top_k, scale, device,
        threads):
    """Everything after option parsing; raises a user error (cli.UserError, demo.DemoError) for bad input."""
    start = time.perf_counter()
    from metrics import mnist_classifier
    from sampling.latents import network_sha256 as sha256_of

    if not hub_threshold > 0:
        raise cli.UserError(f'--hub-threshold must be positive, got {hub_threshold:g}')
    try:
        device = cli.resolve_device(device)
    except click.BadParameter as err:
        raise cli.UserError(f'--device: {err.message}') from None
    if device.type == 'cpu':
        torch.set_num_threads(threads)
    if bank is None:
        if network is not None:
            raise cli.UserError('--bank is needed with --network (the shipped bank is for the embedded network); make one '
                           'with: python compute_volume_scalars.py --network NET --num 2000 --space style --outdir vol')
        bank = first_run.EMBEDDED_BANK
    if not os.path.isfile(bank):
        raise cli.UserError(f'--bank {bank} does not exist')
    try:
        network = cli.network_or_default(network)
    except click.UsageError as err:
        raise cli.UserError(err.message) from None
    model = None
    if classifier.lower() != 'none':
        try:
            model = mnist_classifier.load_classifier(classifier, device=device)
        except (FileNotFoundError, ValueError) as err:
            raise cli.UserError(f'--classifier: {err} (or pass --classifier none)') from None
    try:
        G = cli.load_generator(network, device)
    except click.ClickException as err:
        raise cli.UserError(err.message) from None
    network_sha256 = sha256_of(network)

    summary = first_run.run(G, network_sha256, bank, model, outdir, num_images=num_images, num_scored=num_scored,
                            seed=seed, hub_threshold=hub_threshold, rho=rho, top_k=top_k, scale=scale, device=device,
                            progress=lambda message: click.echo(message + '...', err=True))
    label = os.path.relpath(network) if os.path.isfile(network) else network
    label = network if label.startswith('..') else label
    click.echo('\n' + first_run.format_summary(summary, label))
    click.echo(f'\nWrote {summary["figure"]} (the figure) and {os.path.join(outdir, first_run.SUMMARY_NAME)} '
               f'in {time.perf_counter() - start:.0f} s.')
    click.echo('Next: montage.py (naive vs MaGNET per psi), generate_video.py rho|trunc|lerp (videos), '
               'generate_hubness.py, compute_volume_scalars.py + generate_magnet.py, demo_samplers.py (FID, P/R); '
               'see README.md.')


@click.command(cls=cli.Command, help=__doc__)
@cli.network_option('network')
@click.option('--bank', type=click.Path(dir_okay=False), metavar='NPZ',
              help='Volume bank of the polarity rows (default with the embedded network: its shipped bank)')
@click.option('--classifier', default=DEFAULT_CLASSIFIER, show_default=os.path.join('pretrained', 'mnist_classifier.pt'),
              metavar='PATH|none', help='TorchScript classifier of the digit share (none: no numbers)')
@click.option('--outdir', type=click.Path(file_okay=False), default=os.path.join('out', 'demo'), show_default=True,
              help='Where the figure and summary go')
@click.option('--num-images', type=click.IntRange(1, 64), default=10, show_default=True, help='Images per figure row')
@click.option('--num-scored', type=click.IntRange(min=1), default=500, show_default=True,
              help='Samples per row behind each digit share')
@click.option('--seed', type=click.IntRange(0, 2 ** 32 - 1), default=0, show_default=True, help='Base seed of every row')
@click.option('--hub-threshold', type=float, default=first_run.HUB_THRESHOLD, show_default=True,
              help="Hub if k-occurrence >= this (the authors' 50 is rare in a 64-d W)")
@click.option('--rho', type=click.FloatRange(min=0, min_open=True), default=first_run.POLARITY_RHO, show_default=True,
              help='|rho| of the two polarity rows')
@click.option('--top-k', type=click.IntRange(min=1), default=first_run.POLARITY_TOP_K, show_default=True,
              help='Singular values per volume (at most the bank\'s and z_dim - 1)')
@click.option('--scale', type=click.IntRange(1, 16), default=2, show_default=True, help='Enlargement of the figure tiles')
@cli.device_option
@click.option('--threads', type=click.IntRange(min=1), default=1, show_default=True,
              help='PyTorch threads on a CPU (the tensors are small: more threads mostly wait on each other)')
@cli.debug_option
def main(**kwargs):
    run(**kwargs)


if __name__ == '__main__':
    sys.exit(main())  # pylint: disable=no-value-for-parameter
