"""Train a small StyleGAN2 on a dataset zip made by dataset_tool.py (CPU or one GPU).

The defaults are the settings of the network this repository ships (32x32 grayscale digits), which
adds --cond=1: z = w = 64, two mapping layers, channel_base 1024 / channel_max 64 (32, 64, 64, 64
channels at 32, 16, 8, 4 px), batch 64, minibatch-std group 32, learning rate 0.001 for G and D, R1
gamma 1; 542 kimg. Unconditional runs collapsed onto one or two digits within 20 kimg and had all ten
classes back by about 120 kimg; the conditional one by 140. 11-18 seconds per kimg on two CPU
cores (conditional or not), 1.1-1.2 on one H100. --aug (discriminator augmentation, off by default)
did not improve the previous, unconditional embedded network.
Each run gets a new numbered folder, <outdir>/00000-<dataset>-<desc>, with snapshots, image grids,
stats.jsonl and log.txt. Re-running a killed run with the same options continues it in its folder from
its latest snapshot, exactly (optimiser state, image count, random generators and data order are in the
snapshot; on CPU the result equals an uninterrupted run bit for bit); --new-run starts a new folder instead.
A longer --kimg extends a finished run the same way.

Examples:

\b
    # MNIST digits at 32x32 on the CPU:
    python dataset_tool.py --source mnist --dest datasets/mnist32.zip
    python train.py --outdir training-runs --data datasets/mnist32.zip --kimg 200 --threads 1

\b
    # Class-conditional, on a GPU, with mirrored copies of the images:
    python train.py --outdir training-runs --data datasets/mnist32.zip --cond=1 --mirror=1 --device cuda

\b
    # Start a new run from a snapshot (our snapshots continue exactly; NVlabs' ones count kimg from the name):
    python train.py --outdir training-runs --data datasets/mnist32.zip \\
        --resume training-runs/00000-mnist32-batch64-gamma1/network-snapshot-000100.pkl
"""

import json
import os
import re

import click

import dnnlib
from sampling import cli
from training import augment as augmentation
from training.dataset import DatasetError, ImageFolderDataset


def next_run_dir(outdir, desc):
    """``<outdir>/<id>-<desc>`` with id one more than the largest numbered entry already there."""
    ids = []
    if os.path.isdir(outdir):
        for name in os.listdir(outdir):
            match = re.match(r'^(\d+)', name)
            if match and os.path.isdir(os.path.join(outdir, name)):
                ids.append(int(match.group(1)))
    return os.path.join(outdir, f'{max(ids, default=-1) + 1:05d}-{desc}')


def build_options(data, cond, mirror, batch, kimg, tick, snap, seed, gamma, cbase, cmax, map_layers, z_dim, w_dim,
                  mbstd_group, glr, dlr, ema, style_mix, pl_weight, device, workers, resume, resume_kimg, aug='none'):
    """The training_loop arguments for these command-line options (an EasyDict); checks the dataset.

    Raises click errors (one line, no traceback) for a bad dataset or inconsistent options.
    """
    try:
        aug = ','.join(augmentation.parse_policy(aug)) or 'none'
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint='--aug') from None
    mbstd_group = min(mbstd_group, batch)
    if batch % mbstd_group != 0:
        raise click.BadParameter(f'--batch {batch} is not a multiple of --mbstd-group {mbstd_group}; '
                                 'pick a group size that divides the batch', param_hint='--mbstd-group')
    c = dnnlib.EasyDict()
    c.training_set_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=data,
                                            use_labels=True, max_size=None, xflip=False)
    try:
        dataset = ImageFolderDataset(path=data, use_labels=bool(cond))
    except DatasetError as err:
        raise click.ClickException(str(err)) from None
    if cond and not dataset.has_labels:
        raise click.ClickException(f'--cond=1 needs labels, but {data} has no dataset.json labels; '
                                   'train with --cond=0 or add labels (dataset_tool.py writes them)')
    # NVlabs' key order (it feeds the metric cache key): path, use_labels, max_size, xflip, resolution, random_seed.
    c.training_set_kwargs.resolution = dataset.resolution
    c.training_set_kwargs.use_labels = bool(cond)
    c.training_set_kwargs.max_size = len(dataset)
    c.training_set_kwargs.xflip = bool(mirror)
    c.training_set_kwargs.random_seed = seed
    dataset_name = dataset.name
    dataset.close()

    c.data_loader_kwargs = dnnlib.EasyDict(num_workers=workers)
    if device.type == 'cuda':
        c.data_loader_kwargs.pin_memory = True
    c.G_kwargs = dnnlib.EasyDict(class_name='training.networks_stylegan2.Generator', z_dim=z_dim, w_dim=w_dim,
                                 mapping_kwargs=dnnlib.EasyDict(num_layers=map_layers),
                                 channel_base=cbase, channel_max=cmax, num_fp16_res=0, conv_clamp=256,
                                 fused_modconv_default='inference_only')
    c.D_kwargs = dnnlib.EasyDict(class_name='training.networks_stylegan2.Discriminator', channel_base=cbase,
                                 channel_max=cmax, num_fp16_res=0, conv_clamp=256,
                                 epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=mbstd_group))
    c.G_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=glr, betas=[0, 0.99], eps=1e-8)
    c.D_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=dlr, betas=[0, 0.99], eps=1e-8)
    c.loss_kwargs = dnnlib.EasyDict(class_name='training.loss.StyleGAN2Loss', r1_gamma=gamma,
                                    style_mixing_prob=style_mix, pl_weight=pl_weight, augment=aug)
    c.G_reg_interval = 4 if pl_weight > 0 else None
    c.D_reg_interval = 16
    c.random_seed = seed
    c.batch_size = batch
    c.ema_kimg = ema if ema is not None else batch * 10 / 32
    c.ema_rampup = 0.05
    c.total_kimg = kimg
    c.kimg_per_tick = tick
    c.image_snapshot_ticks = c.network_snapshot_ticks = snap
    c.resume_pkl = resume
    c.resume_kimg = resume_kimg
    c.device = str(device)

    desc = f'{dataset_name}-{"cond-" if cond else ""}{"mirror-" if mirror else ""}batch{batch}-gamma{gamma:g}'
    if aug != 'none':
        desc += '-aug' + aug.replace(',', '+')
    return c, desc


@click.command(cls=cli.Command, help=__doc__)
@click.option('--outdir', required=True, metavar='DIR', help='Where to make the run folder')
@click.option('--data', required=True, metavar='ZIP|DIR', help='Training data (from dataset_tool.py)')
@click.option('--gpus', type=click.IntRange(min=1), default=1, show_default=True, help='Number of GPUs (only 1)')
@click.option('--batch', type=click.IntRange(min=1), default=64, show_default=True, help='Total batch size')
@click.option('--kimg', type=cli.FiniteFloat(min=0, min_open=True), default=200, show_default=True,
              help='Training length in thousands of real images')
@click.option('--tick', type=cli.FiniteFloat(min=0, min_open=True), default=4, show_default=True,
              help='Progress line every N kimg')
@click.option('--snap', type=click.IntRange(min=1), default=10, show_default=True, help='Snapshot every N ticks')
@click.option('--resume', type=click.Path(exists=True, dir_okay=False), metavar='PKL', help='Resume from a snapshot')
@click.option('--resume-kimg', type=cli.FiniteFloat(min=0), help='kimg already done at --resume [default: from its training state, else from its name]')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True, help='Random seed')
@click.option('--cond', type=bool, metavar='BOOL', default=False, show_default=True, help='Train a class-conditional model')
@click.option('--mirror', type=bool, metavar='BOOL', default=False, show_default=True, help='Add x-flipped copies of the images')
@click.option('--gamma', type=cli.FiniteFloat(min=0), default=1, show_default=True, help='R1 regularisation weight')
@click.option('--cbase', type=click.IntRange(min=1), default=1024, show_default=True, help='Capacity multiplier')
@click.option('--cmax', type=click.IntRange(min=1), default=64, show_default=True, help='Max. feature maps')
@click.option('--map', 'map_layers', type=click.IntRange(min=1), default=2, show_default=True, help='Mapping layers')
@click.option('--z-dim', type=click.IntRange(min=1), default=64, show_default=True, help='Latent (Z) dimensionality')
@click.option('--w-dim', type=click.IntRange(min=1), default=64, show_default=True, help='Intermediate latent (W) dimensionality')
@click.option('--glr', type=cli.FiniteFloat(min=0, min_open=True), default=0.001, show_default=True, help='G learning rate')
@click.option('--dlr', type=cli.FiniteFloat(min=0, min_open=True), default=0.001, show_default=True, help='D learning rate')
@click.option('--mbstd-group', type=click.IntRange(min=1), default=32, show_default=True,
              help='Minibatch standard deviation group size (capped at --batch)')
@click.option('--ema', type=cli.FiniteFloat(min=0), help='G_ema half-life in kimg [default: batch * 10/32]')
@click.option('--style-mix', type=cli.FiniteFloat(min=0, max=1), default=0, show_default=True, help='Style mixing probability')
@click.option('--pl-weight', type=cli.FiniteFloat(min=0), default=0, show_default=True, help='Path-length regularisation weight')
@click.option('--aug', default='none', show_default=True, metavar='LIST',
              help="Differentiable augmentation of D's inputs: none, or a comma-separated subset of translation,cutout")
@cli.device_option
@click.option('--threads', type=click.IntRange(min=1), help='CPU threads for torch and BLAS [default: one per idle '
              'core, from the load average]; 1 is often fastest on a busy machine')
@click.option('--workers', type=click.IntRange(min=0), help='DataLoader worker processes [default: 0 on CPU, 3 on GPU]')
@click.option('--desc', metavar='STR', help='Extra text for the run folder name')
@click.option('--new-run', is_flag=True, help='Start a new run folder even where a run with the same options could '
              'be continued')
@click.option('--dry-run', is_flag=True, help='Print the training options and exit')
def main(outdir, data, gpus, batch, kimg, tick, snap, resume, resume_kimg, seed, cond, mirror, gamma, cbase, cmax,
         map_layers, z_dim, w_dim, mbstd_group, glr, dlr, ema, style_mix, pl_weight, aug, device, threads, workers, desc,
         new_run, dry_run):
    if gpus != 1:
        raise click.BadParameter('this trainer runs on one device; use --gpus 1', param_hint='--gpus')
    device = cli.resolve_device(device)
    from torch_utils.threads import set_threads
    set_threads(threads)
    if workers is None:
        workers = 3 if device.type == 'cuda' else 0
    c, run_desc = build_options(data, cond, mirror, batch, kimg, tick, snap, seed, gamma, cbase, cmax, map_layers,
                                z_dim, w_dim, mbstd_group, glr, dlr, ema, style_mix, pl_weight, device, workers,
                                resume, resume_kimg, aug)
    if desc:
        run_desc += f'-{desc}'
    c.run_dir = next_run_dir(outdir, run_desc)
    from training import training_loop
    if resume is None and not new_run:
        found = training_loop.find_resumable_run(outdir, run_desc, dict(c, run_dir=None))
        if found is not None:
            c.run_dir, c.resume_pkl = found
            click.echo(f'Continuing {c.run_dir} from {os.path.basename(c.resume_pkl)} (same options; --new-run '
                       f'starts a new folder instead)', err=True)

    click.echo(json.dumps(c, indent=2))
    if dry_run:
        click.echo('Dry run; exiting.')
        return
    cli.prepare_outdir(outdir)

    try:
        training_loop.training_loop(**c)
    except (training_loop.ResumeError, DatasetError) as err:
        raise click.ClickException(str(err)) from None


if __name__ == '__main__':
    main()
