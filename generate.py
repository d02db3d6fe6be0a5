"""Generate images with a pretrained network: NVlabs' generate.py, batched, on CPU or GPU.

Examples:

\b
    # Images for seeds 0..35 (one PNG per seed, seed0000.png ...):
    python generate.py --outdir=out --seeds=0-35 --network=network.pkl

\b
    # Truncated, a class of a conditional network, one grid image as well:
    python generate.py --outdir=out --seeds=0-63 --trunc=0.7 --class=3 --grid --network=network.pkl

\b
    # Render projected W vectors (npz with key 'w'):
    python generate.py --outdir=out --projected-w=projected_w.npz --network=network.pkl
"""

import os

import click
import numpy as np

from sampling import cli, images
from sampling.latents import z_from_seeds
from sampling.synthesis import set_input_transform, synthesize


@click.command(help=__doc__)
@cli.threads_option
@click.option('--network', 'network_pkl', metavar='PATH|URL', help='Network pickle (default: the embedded network)')
@click.option('--seeds', type=cli.parse_range, help="Random seeds, e.g. '0,1,4-6'")
@click.option('--trunc', 'truncation_psi', type=float, default=1, show_default=True, help='Truncation psi')
@click.option('--class', 'class_idx', type=int, help='Class label (required for conditional networks)')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True)
@click.option('--projected-w', type=click.Path(exists=True, dir_okay=False), help='Render W vectors from an npz (key w)')
@click.option('--translate', type=cli.parse_vec2, default='0,0', show_default=True, help='StyleGAN3 input translation')
@click.option('--rotate', type=float, default=0, show_default=True, help='StyleGAN3 input rotation in degrees')
@click.option('--outdir', type=click.Path(file_okay=False), required=True, help='Where to save the images')
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=32, show_default=True, help='Images per forward pass')
@click.option('--device', default='auto', show_default=True, help='auto, cpu, cuda or cuda:N')
@click.option('--grid', is_flag=True, help='Also write all images as one grid, grid.png')
@click.option('--allow-pickle-code', is_flag=True, help='Run the code embedded in the pickle (only for files you trust)')
@click.option('--exact-nvlabs', is_flag=True, help="Run NVlabs' forward pass as it is, for bit-level comparisons. By "
              'default a StyleGAN2 batch on the CPU runs faster: unfused modulated convolutions (fused_modconv=False) '
              'and large blocks a few images at a time, which rounds differently (uint8 within 1)')
def main(network_pkl, seeds, truncation_psi, class_idx, noise_mode, projected_w, translate, rotate, outdir,
         batch_size, device, grid, allow_pickle_code, exact_nvlabs):
    if projected_w is None and seeds is None:
        raise click.UsageError('pass --seeds (or --projected-w)')
    device = cli.resolve_device(device)
    G = cli.load_generator(cli.network_or_default(network_pkl), device, allow_code=allow_pickle_code)
    set_input_transform(G, translate, rotate)
    os.makedirs(outdir, exist_ok=True)

    if projected_w is not None:
        ws = np.load(projected_w)['w']
        if ws.ndim != 3 or ws.shape[1:] != (G.num_ws, G.w_dim):
            raise click.ClickException(f'{projected_w}: w has shape {ws.shape}, expected [N, {G.num_ws}, {G.w_dim}]')
        names = [f'proj{idx:02d}.png' for idx in range(len(ws))]
        batches = synthesize(G, ws=ws, noise_mode=noise_mode, batch_size=batch_size, exact_nvlabs=exact_nvlabs)
    else:
        label = cli.class_label(G, class_idx, device)
        z = z_from_seeds(seeds, G.z_dim)
        names = [f'seed{seed:04d}.png' for seed in seeds]
        batches = synthesize(G, z=z, c=label, truncation_psi=truncation_psi, noise_mode=noise_mode,
                             batch_size=batch_size, exact_nvlabs=exact_nvlabs)

    num_written = images.write_images(batches, names, outdir, grid=grid)
    click.echo(f'Wrote {num_written} images to {outdir}')


if __name__ == '__main__':
    main()
