"""Convert an NVlabs NVAE checkpoint (checkpoint.pt) into this toolkit's network pickle, batch norm re-estimated.

NVAE re-estimates its batch-norm statistics before sampling ("readjust_bn": train mode, 500 sampling passes at
the sampling temperature, momentum 0.05, then eval). Doing it once here and saving the result makes every
later command deterministic and fast; the pickle loads safely like any other (legacy.load_network). The
checkpoint itself is read safely too (nothing in it runs); the decoder alone is kept.

\b
    # NVAE's own recipe (500 passes of 100 samples at t = 1; minutes on a GPU, hours on a CPU):
    python convert_nvae.py --source=checkpoint.pt --dest=nvae-mnist.pkl
\b
    # Quicker: momentum 0.05 forgets the old statistics within ~100 passes (0.95^100 = 0.6 %):
    python convert_nvae.py --source=checkpoint.pt --dest=nvae-mnist.pkl --passes=100 --batch=64 --temperature=0.8
\b
    # Keep the checkpoint's training statistics (no re-estimation), 28 px output ([2:30] crop):
    python convert_nvae.py --source=checkpoint.pt --dest=nvae-mnist-raw.pkl --passes=0 --crop=28
"""

import click
import tqdm

import dnnlib
import legacy
from sampling import cli
from training import networks_nvae, nvae_checkpoint


@click.command(cls=cli.Command, help=__doc__)
@cli.threads_option
@click.option('--source', required=True, metavar='PATH|URL', help='NVAE checkpoint (checkpoint.pt)')
@click.option('--dest', required=True, metavar='PATH', help='Network pickle to write')
@click.option('--passes', type=click.IntRange(min=0), default=500, show_default=True,
              help='Batch-norm re-estimation passes (0: keep the checkpoint\'s statistics)')
@click.option('--batch', 'batch_size', type=click.IntRange(min=2), default=100, show_default=True,
              help='Samples per pass')
@click.option('--temperature', type=click.FloatRange(min=0), default=1.0, show_default=True,
              help='Temperature of the re-estimation passes (sample at the same one)')
@click.option('--crop', type=click.Choice(['none', '28']), default='none', show_default=True,
              help='Output 32 px (NVAE\'s padded frame, as datasets/mnist32.zip) or the 28 px crop [2:30]')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True, help='Seed of the passes\' latents')
@cli.device_option
def main(source, dest, passes, batch_size, temperature, crop, seed, device):
    device = cli.resolve_device(device)
    try:
        with dnnlib.util.open_url(source, verbose=False) as f:
            if not nvae_checkpoint.is_torch_checkpoint(f):
                raise click.ClickException(f'{source} is not a PyTorch checkpoint (torch.save file); '
                                           'pass an NVAE checkpoint.pt')
            G, info = nvae_checkpoint.load_nvae_checkpoint(f, source, crop=None if crop == 'none' else int(crop))
    except OSError as err:
        raise click.ClickException(f'cannot read {source}: {err}') from None
    click.echo(f'NVAE decoder from {source} (epoch {info["epoch"]}, dataset {info["args"].get("dataset")}): '
               f'z_dim {G.z_dim}, {G.img_resolution} px')
    G = G.to(device)
    if passes:
        networks_nvae.readjust_bn(G, num_passes=passes, batch_size=batch_size, temperature=temperature, seed=seed,
                                  progress=lambda it: tqdm.tqdm(it, desc='Re-estimating batch norm', unit='pass'))
    try:
        legacy.save_network_pkl(dest, G_ema=G)
    except OSError as err:
        raise click.ClickException(f'cannot write {dest}: {err}') from None
    click.echo(f'Saved {dest}' + (f' (batch norm re-estimated at t = {temperature:g})' if passes else ''))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
