"""Generate images with a pretrained network: NVlabs' generate.py, batched, on CPU or GPU.

Examples:

\b
    # Images for seeds 0..35 (one PNG per seed, seed0000.png ...):
    python generate.py --outdir=out --seeds=0-35 --network=network.pkl

\b
    # Truncated, a class of a conditional network, one grid image as well:
    python generate.py --outdir=out --seeds=0-63 --trunc=0.7 --class=3 --grid --network=network.pkl

\b
    # BigGAN-deep (a checkpoint folder), an ImageNet class by name, truncation 0.4 as the port samples it:
    python generate.py --outdir=out --seeds=0-15 --trunc=0.4 --truncnorm --class='golden retriever' --network=biggan-deep-256

\b
    # Render projected W vectors (npz with key 'w'):
    python generate.py --outdir=out --projected-w=projected_w.npz --network=network.pkl
"""

import click

from sampling import cli, images, samplers
from sampling.latents import FileFormatError
from sampling.synthesis import has_mapping, load_projected_w, set_input_transform, synthesize


@click.command(cls=cli.Command, help=__doc__)
@cli.threads_option
@cli.network_option()
@click.option('--seeds', type=cli.parse_seeds, help="Random seeds, e.g. '0,1,4-6'")
@click.option('--trunc', 'truncation_psi', type=cli.FiniteFloat(), default=1, show_default=True, help='Truncation psi')
@cli.class_option()
@click.option('--truncnorm', is_flag=True,
              help="BigGAN's truncation trick: z = --trunc x truncnorm(-2, 2) from each seed, instead of N(0, I)")
@cli.noise_mode_option
@click.option('--projected-w', type=click.Path(exists=True, dir_okay=False), help='Render W vectors from an npz (key w)')
@click.option('--translate', type=cli.parse_vec2, default='0,0', show_default=True, help='StyleGAN3 input translation')
@click.option('--rotate', type=cli.FiniteFloat(), default=0, show_default=True, help='StyleGAN3 input rotation in degrees')
@click.option('--outdir', type=click.Path(file_okay=False), required=True, help='Where to save the images')
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=32, show_default=True, help='Images per forward pass')
@cli.device_option
@click.option('--grid', is_flag=True, help='Also write all images as one grid, grid.png')
@cli.pickle_code_option
@click.option('--exact-nvlabs', is_flag=True, help="Run NVlabs' forward pass as it is, for bit-level comparisons. By "
              'default a StyleGAN2 batch on the CPU runs faster on a path of its own (channels_last, large blocks '
              'one image at a time), which rounds differently (uint8 within 1)')
def main(network_pkl, seeds, truncation_psi, class_idx, truncnorm, noise_mode, projected_w, translate, rotate, outdir,
         batch_size, device, grid, allow_pickle_code, exact_nvlabs):
    if projected_w is None and seeds is None:
        raise click.UsageError('pass --seeds (or --projected-w)')
    device = cli.resolve_device(device)
    G = cli.load_generator(cli.network_or_default(network_pkl), device, allow_code=allow_pickle_code)
    if not set_input_transform(G, translate, rotate) and (translate != (0, 0) or rotate != 0):
        click.echo('warning: --translate and --rotate apply to StyleGAN3 networks only; ignored', err=True)

    if projected_w is not None:
        if not has_mapping(G):
            raise cli.UserError(f'--projected-w needs a generator with a mapping network (W); '
                                f'this {type(G).__name__} has none: use --seeds')
        try:
            ws = load_projected_w(projected_w, G.num_ws, G.w_dim)
        except FileFormatError as err:
            raise cli.UserError(f'--projected-w: {err}') from None
        names = [f'proj{idx:02d}.png' for idx in range(len(ws))]
        batches = synthesize(G, ws=ws, noise_mode=noise_mode, batch_size=batch_size, exact_nvlabs=exact_nvlabs)
    else:
        # The sampler of the spec 'random' ('truncnorm' with --truncnorm); each seed's latent is its draw(1, seed).
        source = samplers.term('truncnorm' if truncnorm else 'random')
        spec = samplers.make_spec([source], psi=truncation_psi, class_idx=cli.resolve_class(G, class_idx))
        drawn = cli.build_sampler(spec, G, device).draw_seeds(seeds)
        names = [f'seed{seed:04d}.png' for seed in seeds]
        batches = synthesize(G, z=drawn.z, c=drawn.c, truncation_psi=truncation_psi, noise_mode=noise_mode,
                             batch_size=batch_size, exact_nvlabs=exact_nvlabs)

    cli.prepare_outdir(outdir)
    num_written = images.write_images(batches, names, outdir, grid=grid)
    click.echo(f'Wrote {num_written} images to {outdir}')


if __name__ == '__main__':
    main()
