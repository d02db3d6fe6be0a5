"""Metrics of a sampling method: NVlabs' FID / KID / precision-recall / IS / PPL of a (network, sampler) pair.

Each result is printed as one JSON line (NVlabs' record, plus the sampler, seed and detectors) and appended to
metric-<name>.jsonl beside the pickle when its folder holds NVlabs' training_options.json, and to --out.

Examples:

\b
    # NVlabs' fid50k_full of plain sampling, against a dataset:
    python calc_metrics.py --network=net.pkl --metrics=fid50k_full,pr50k3_full --data=ffhq.zip --mirror=1

\b
    # Hubness-prior sampling (the authors' k=5, t=50 in W), then 20 % MaGNET + 80 % random at psi 0.9:
    python calc_metrics.py --network=net.pkl --data=ffhq.zip --sampler='hubness:k=5,t=50'
    python calc_metrics.py --network=net.pkl --data=ffhq.zip --sampler='mix:0.2*polarity(bank=magnet.npz)+0.8*random;trunc=0.9'

\b
    # Several GPUs: one process per GPU with torchrun (identical numbers to one process):
    torchrun --standalone --nproc_per_node=4 calc_metrics.py --network=net.pkl --data=ffhq.zip

\b
Metrics: fid50k_full kid50k_full pr50k3_full is50k ppl2_wend fid50k kid50k pr50k3 ppl_zfull ppl_wfull ppl_zend
ppl_wend, and sizes: fid{N}k[_full] kid{N}k[_full] pr{N}k{K}[_full] is{N}k ppl2_wend_{N}k (N thousand; a plain
count also works: fid500_full, pr500_3_full), epr{N}k{K}[_full] (hubness-aware efficient P/R, an estimate),
attr{N}k (attribute histogram, entropy, KL to uniform and to the real images, majority share, under the
classifier --detector attribute=PATH; real images from --data when given).

\b
Sampler specs (--sampler; all seeded by --seed, latents chosen at psi 1):
  random                      NVlabs-like N(0, I) latents, labels from the dataset's label distribution
  trunc:0.7                   random, truncation psi 0.7
  hubness:k=5,t=50,space=w,batch=10000,count_self=1    hub latents (the authors' convention)
  polarity:bank=B.npz,rho=1,top_k=30,replace=1         MaGNET / polarity resampling of a latent bank
  bank:HUBS.npz               the first latents of a bank (e.g. from generate_hubness.py)
  mix:0.2*polarity(bank=B.npz,rho=1)+0.8*random         exact-count mixture
  SPEC;trunc=0.9              truncation psi 0.9 on any sampler
Full grammar: sampling/samplers.py.

FID, KID and IS use NVlabs' Inception-v3 and P/R and PPL their VGG16 (downloaded once, cached). --detector
replaces them (a name: inception, vgg16, inception-sg3, vgg16-sg3; or a TorchScript file or URL: a module taking
uint8 NCHW images and returning features [N, D]); numbers from other detectors are not comparable with
published ones. Unlike NVlabs' run, the whole evaluation is reproducible from --seed.
"""

import os
import sys

import click
import torch

from metrics import evaluation, metric_main, metric_utils
from metrics.evaluation import EvaluationError
from sampling import cli, samplers

# ----------------------------------------------------------------------------


def _distributed(gpus, device):
    """(num_gpus, rank, device): torchrun's world, or a single process."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world == 1:
        if gpus > 1:
            raise EvaluationError(f'--gpus {gpus} needs one process per GPU: run torchrun --standalone '
                           f'--nproc_per_node={gpus} calc_metrics.py ... (same options, without --gpus)')
        return 1, 0, device
    if gpus not in (1, world):
        raise EvaluationError(f'--gpus {gpus} differs from the torchrun world size {world}; drop --gpus')
    rank = int(os.environ['RANK'])
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    return world, rank, device


def _note(rank, message):
    if rank == 0:
        click.echo(message, err=True)


def calc_metrics(network, metrics, data, mirror, gpus, verbose, sampler_spec, seed, detector, device, out,
                 fid_stats, allow_pickle_code, cache, workers):
    """Everything after option parsing; raises EvaluationError for bad input."""
    metrics = evaluation.parse_metrics(metrics)
    if out is not None:   # Refused now rather than after the metrics are computed.
        cli.prepare_outdir(os.path.dirname(os.path.abspath(out)), option='--out')
    try:
        spec = samplers.parse(sampler_spec)
    except samplers.SamplerSpecError as err:
        raise EvaluationError(f'--sampler: {err}') from None
    detectors = evaluation.parse_detectors(detector)
    reference = evaluation.load_fid_stats(fid_stats) if fid_stats is not None else None
    try:
        device = cli.resolve_device(device)
    except click.BadParameter as err:
        raise EvaluationError(f'--device: {err.message}') from None
    num_gpus, rank, device = _distributed(gpus, device)
    if device.type == 'cuda':  # NVlabs' metrics run without TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    try:
        network = cli.network_or_default(network)
    except click.UsageError as err:
        raise EvaluationError(err.message) from None
    if verbose:
        _note(rank, f'Loading network from "{network}"...')
    G, training_set_kwargs = evaluation.load_snapshot(network, device, allow_pickle_code)

    dataset_kwargs = evaluation.dataset_kwargs(data, training_set_kwargs, G, mirror, network=network)
    if any(metric_main.metric_kind(m) == 'attr' for m in metrics) and 'attribute' not in detectors:
        raise EvaluationError('attribute metrics need a classifier with class outputs: pass --detector '
                              'attribute=PATH (a TorchScript file), e.g. pretrained/mnist_classifier.pt')
    needs_data = [m for m in metrics if metric_main.metric_kind(m) in ('kid', 'pr')
                  or (metric_main.metric_kind(m) == 'fid' and reference is None)]
    if needs_data and dataset_kwargs is None:
        raise EvaluationError(f'{needs_data[0]} needs real images: pass --data DIR|ZIP (the network pickle records no '
                       'training set)')
    dataset = None
    if dataset_kwargs is not None and (needs_data or G.c_dim):
        dataset = evaluation.open_dataset(dataset_kwargs, G, from_pickle=(data is None))
        if verbose:
            _note(rank, f'Dataset: {dataset.name}, {len(dataset)} images of {dataset.resolution}x{dataset.resolution}')

    for role in sorted({role for m in metrics for role in metric_main.detector_roles(m)} - {'attribute'}):
        url = detectors.get(role, metric_utils.DETECTOR_URLS[role])
        if not metric_utils.is_nvlabs_detector(url):
            _note(rank, f'note: the {role} detector is {url}, not NVlabs\' {role}: the numbers are not comparable '
                        'with published ones')

    network_sha256 = None
    if any(t.name in ('polarity', 'bank') for t in spec.terms):
        from sampling.latents import network_sha256 as sha256_of
        network_sha256 = sha256_of(network)
    try:
        sampler = samplers.build(spec, G, device=device, label_pool=evaluation.label_pool(dataset, G, rank),
                                 network_sha256=network_sha256, progress=(verbose and rank == 0))
    except samplers.SamplerSpecError as err:
        raise EvaluationError(f'--sampler: {err}') from None
    for note in sampler.notes:  # A bank recording no network, all-zero rows dropped from an authors' bank.
        _note(rank, note)
    if verbose:
        _note(rank, f'Sampler: {sampler.describe()}, seed {seed}')
        ess = sampler.effective_sample_size()
        if ess is not None:
            _note(rank, f'Effective sample size of its weights: {ess:.1f} bank latents (far fewer than the samples '
                        'a metric draws means the samples mostly repeat a few latents)')

    run_dir = None
    if os.path.isfile(network) and os.path.isfile(os.path.join(os.path.dirname(network) or '.', 'training_options.json')):
        run_dir = os.path.dirname(network) or '.'

    from training.dataset import DatasetError
    feature_memo = {} if len(metrics) > 1 else None  # fid + kid (same Inception features) synthesise once.
    for metric in metrics:
        if verbose:
            _note(rank, f'Calculating {metric}...')
        try:
            result = metric_main.calc_metric(
                metric, G=G, dataset_kwargs=dataset_kwargs, num_gpus=num_gpus, rank=rank, device=device,
                progress=verbose, cache=cache, sampler=sampler, seed=seed, detectors=detectors,
                fid_stats=reference, allow_pickle_code=allow_pickle_code, num_workers=workers,
                feature_memo=feature_memo)
        except (metric_utils.DetectorError, DatasetError, samplers.SamplerSpecError) as err:
            raise EvaluationError(f'{metric}: {err}') from None
        except ValueError as err:
            raise EvaluationError(f'{metric}: {str(err).splitlines()[0]}') from None
        if rank == 0:
            metric_main.report_metric(result, run_dir=run_dir, snapshot_pkl=network, jsonl_file=out)


@click.command(cls=cli.Command, help=__doc__)
@cli.threads_option
@cli.network_option('network')
@click.option('--metrics', default='fid50k_full', show_default=True, help='Comma-separated metrics, or none')
@click.option('--data', metavar='[ZIP|DIR]', help='Real images (default: the training set named in the pickle)')
@click.option('--mirror', type=bool, metavar='BOOL', help='Mirror the real images (default: as in the pickle)')
@click.option('--gpus', type=click.IntRange(min=1), default=1, show_default=True,
              help='Processes; with more than one, launch with torchrun --nproc_per_node=N')
@click.option('--verbose', type=bool, default=True, metavar='BOOL', show_default=True, help='Progress output')
@click.option('--sampler', 'sampler_spec', default='random', show_default=True, metavar='SPEC',
              help='Where the latents come from (see above)')
@click.option('--seed', type=click.IntRange(min=0, max=2 ** 32 - 1), default=0, show_default=True,
              help='Base seed of the whole evaluation')
@click.option('--detector', metavar='NAME|PATH|URL', help='Feature detector replacing NVlabs\' (or inception=X,vgg16=Y)')
@cli.device_option
@click.option('--out', type=click.Path(dir_okay=False), help='Also append the JSON lines to this file')
@click.option('--fid-stats', type=click.Path(), help='Reference FID statistics (.npz with mu, sigma) instead of --data')
@cli.pickle_code_option
@click.option('--cache', type=bool, default=True, metavar='BOOL', show_default=True,
              help='Cache dataset statistics in the dnnlib cache')
@click.option('--workers', type=click.IntRange(min=0), default=3, show_default=True, help='Data loading processes')
@cli.debug_option
def main(**kwargs):
    # A caller that set up torch.distributed itself (reproduce.py under torchrun) keeps its process group.
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    try:
        calc_metrics(**kwargs)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank finishes before any tears down its connections: a gloo rank whose peer had already
            # closed was seen to abort ("terminate called without an active exception"), once in about 20 runs.
            torch.distributed.barrier()
    finally:
        if owns_group and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())  # pylint: disable=no-value-for-parameter

# ----------------------------------------------------------------------------
