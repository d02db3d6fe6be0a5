"""Videos of samplers (MP4, H.264): a rho sweep, a truncation sweep, an interpolation between hub latents.

\b
  rho     the same polarity draw from a volume bank for each rho, from --rho-start to --rho-stop
  trunc   the same latents for each truncation psi, from --psi-start to --psi-stop
  lerp    straight lines in W between hub latents (a hub bank from generate_hubness.py, or found here);
          StyleGAN3: --translate / --rotate move the input over the video

Every frame is captioned with what changes. Without --network the embedded network is used (and, for rho,
its shipped volume bank pretrained/mnist32-volumes.npz). Logic: sampling/video.py.

\b
Examples:
    python generate_video.py rho                                     # -> out/videos/rho_sweep.mp4
    python generate_video.py rho --rho-start -1 --rho-stop 1 --frames 81 --strip docs/rho_sweep.png
    python generate_video.py trunc --seed 3                           # -> out/videos/truncation_sweep.mp4
    python generate_video.py lerp --hubs out/hubness/hubs.npz --paths 4
    python generate_video.py lerp --network sg3.pkl --hubs hubs.npz --translate 0.2,0 --rotate 30
"""

import os
import sys

import click

from sampling import cli
from sampling.latents import network_sha256

_DEFAULT_DIR = os.path.join('out', 'videos')


def _common(function):
    options = [
        cli.network_option(),
        click.option('--out', type=click.Path(dir_okay=False),
                     help='MP4 file to write (default: out/videos/rho_sweep.mp4, truncation_sweep.mp4 or hub_interpolation.mp4)'),
        click.option('--fps', type=click.IntRange(1, 120), default=12, show_default=True, help='Frames per second'),
        click.option('--scale', type=click.IntRange(1, 16), default=2, show_default=True, help='Enlargement of each image'),
        click.option('--seed', type=click.IntRange(0, 2 ** 32 - 1), default=0, show_default=True, help='Seed of the latents'),
        cli.device_option,
        cli.pickle_code_option,
        cli.threads_option,
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _setup(network_pkl, device, allow_pickle_code):
    device = cli.resolve_device(device)
    network_pkl = cli.network_or_default(network_pkl)
    return network_pkl, cli.load_generator(network_pkl, device, allow_code=allow_pickle_code)


def _write(out, frames, total, fps, strip=None):
    """Encode ``total`` frames into ``out``; with ``strip``, also 5 evenly spaced frames as one PNG."""
    from tqdm import tqdm

    from sampling import images, video
    keep = set(video.strip_indices(total)) if strip else set()
    kept, sizes = [], []

    def frame_iter():
        for i, frame in enumerate(tqdm(frames, total=total, unit='frame', desc='Rendering', disable=None)):
            if i in keep:
                kept.append(frame)
            sizes.append(frame.shape)
            yield frame
    try:
        count = video.write_mp4(out, frame_iter(), fps=fps)
    except (OSError, ValueError, RuntimeError) as err:
        raise click.ClickException(f'cannot write {out}: {str(err).strip().splitlines()[0]}') from None
    click.echo(f'Wrote {out}: {count} frames of {sizes[0][1]}x{sizes[0][0]} at {fps} fps')
    if strip:
        images.save_png(strip, video.frame_strip(kept, num=len(kept)))
        click.echo(f'Wrote {strip}: {len(kept)} of the frames')


@click.group(help=__doc__)
def main():
    pass


@main.command(cls=cli.Command)
@_common
@click.option('--bank', 'bank_path', type=click.Path(exists=True, dir_okay=False),
              help='Volume bank (default with the embedded network: its shipped bank)')
@click.option('--rho-start', type=float, default=-1, show_default=True)
@click.option('--rho-stop', type=float, default=1, show_default=True)
@click.option('--frames', type=click.IntRange(2, 10000), default=41, show_default=True, help='Frames (rho values)')
@click.option('--num', type=click.IntRange(1, 256), default=10, show_default=True, help='Images per frame')
@click.option('--cols', type=click.IntRange(min=1), help='Images per row of a frame (default: all in one row)')
@click.option('--top-k', type=click.IntRange(min=1), help='Singular values per volume (default: all in the bank)')
@click.option('--trunc', 'truncation_psi', type=float, default=1, show_default=True, help='Truncation psi at synthesis')
@click.option('--strip', type=click.Path(dir_okay=False), help='Also write 5 of the frames as one PNG')
def rho(network_pkl, out, fps, scale, seed, device, allow_pickle_code, bank_path, rho_start, rho_stop, frames, num,
        cols, top_k, truncation_psi, strip):
    """Polarity rho sweep: the same resampling seed for every rho (a frame = generate_magnet.py --rho R --seed S)."""
    from demos import first_run
    from sampling import samplers, video
    if bank_path is None:
        if network_pkl is not None:
            raise click.UsageError('--bank is needed with --network (the shipped bank is for the embedded network)')
        bank_path = first_run.EMBEDDED_BANK
    network_pkl, G = _setup(network_pkl, device, allow_pickle_code)
    try:
        bank, notes = samplers.load_bank(bank_path, G, network_sha256(network_pkl), need='singular values (svds)')
        for note in notes:
            click.echo(note, err=True)
        rhos = video.sweep_values(rho_start, rho_stop, frames)
        frame_iter = video.rho_sweep_frames(G, bank, rhos, num, seed=seed, top_k=top_k, truncation_psi=truncation_psi,
                                            cols=cols, scale=scale)
        _write(out or os.path.join(_DEFAULT_DIR, 'rho_sweep.mp4'), frame_iter, len(rhos), fps, strip)
    except ValueError as err:
        raise click.ClickException(str(err).splitlines()[0]) from None


@main.command(cls=cli.Command)
@_common
@click.option('--psi-start', type=float, default=0, show_default=True)
@click.option('--psi-stop', type=float, default=1, show_default=True)
@click.option('--frames', type=click.IntRange(2, 10000), default=41, show_default=True, help='Frames (psi values)')
@click.option('--num', type=click.IntRange(1, 256), default=10, show_default=True, help='Images per frame')
@click.option('--cols', type=click.IntRange(min=1), help='Images per row of a frame (default: all in one row)')
@cli.class_option()
@click.option('--strip', type=click.Path(dir_okay=False), help='Also write 5 of the frames as one PNG')
def trunc(network_pkl, out, fps, scale, seed, device, allow_pickle_code, psi_start, psi_stop, frames, num, cols,
          class_idx, strip):
    """Truncation sweep: the latents of the sampler 'random' with seed --seed (rows 0..NUM-1 of the seed) at each psi."""
    from sampling import samplers, video
    network_pkl, G = _setup(network_pkl, device, allow_pickle_code)
    spec = samplers.make_spec([samplers.term('random')], class_idx=cli.resolve_class(G, class_idx))
    drawn = cli.build_sampler(spec, G).draw(num, seed)
    z, c = drawn.z, drawn.c
    psis = video.sweep_values(psi_start, psi_stop, frames)
    frame_iter = video.truncation_sweep_frames(G, z, c, psis, cols=cols, scale=scale)
    _write(out or os.path.join(_DEFAULT_DIR, 'truncation_sweep.mp4'), frame_iter, len(psis), fps, strip)


@main.command(cls=cli.Command)
@_common
@click.option('--hubs', 'hubs_path', type=click.Path(exists=True, dir_okay=False),
              help='Hub bank (hubs.npz of generate_hubness.py); default: find hubs here')
@click.option('--hub-threshold', type=float, default=20, show_default=True,
              help="Without --hubs: hub if k-occurrence >= this in W, k = 5 (20 suits a 64-d W; the authors' 50 a 512-d one)")
@click.option('--paths', type=click.IntRange(1, 64), default=4, show_default=True, help='Parallel walks (images per frame)')
@click.option('--keys', type=click.IntRange(2, 1000), default=4, show_default=True, help='Hubs per walk')
@click.option('--steps', type=click.IntRange(1, 1000), default=12, show_default=True, help='Frames between two hubs')
@click.option('--trunc', 'truncation_psi', type=float, default=1, show_default=True, help='Truncation psi of the hubs\' w')
@click.option('--translate', type=cli.parse_vec2, default='0,0', show_default=True, metavar='VEC2',
              help='StyleGAN3: input translation reached at the end')
@click.option('--rotate', type=float, default=0, show_default=True, help='StyleGAN3: input rotation (degrees) reached at the end')
def lerp(network_pkl, out, fps, scale, seed, device, allow_pickle_code, hubs_path, hub_threshold, paths, keys, steps,
         truncation_psi, translate, rotate):
    """W-space interpolation between hub latents (walk i visits hubs i, i + PATHS, ...)."""
    from sampling import latents, samplers, video
    network_pkl, G = _setup(network_pkl, device, allow_pickle_code)
    if (translate != (0, 0) or rotate) and getattr(getattr(G.synthesis, 'input', None), 'transform', None) is None:
        click.echo('warning: --translate / --rotate only move StyleGAN3 inputs; ignored for this network', err=True)
        translate, rotate = (0, 0), 0
    need = paths * keys
    try:
        if hubs_path is not None:  # The sampler 'bank:HUBS': the first hubs, with their stored w.
            sampler = cli.build_sampler(samplers.make_spec([samplers.term('bank', path=hubs_path)]), G,
                                        network_sha256=network_sha256(network_pkl))
            if len(sampler.source.rows) < need:
                raise ValueError(f'{hubs_path} holds {len(sampler.source.rows)} hubs; --paths {paths} x --keys {keys} '
                                 f'need {need}')
            bank = sampler.source.bank.select(sampler.draw(need).bank_index)
        else:
            spec = f'hubness:k=5,t={hub_threshold:g},space=w,labels=uniform'
            click.echo(f'No --hubs: finding {need} hubs ({spec})', err=True)
            sampler = samplers.build(spec, G, progress=True)
            z, c, _ = sampler.sample(need, seed)
            bank = latents.LatentBank(z, c)
        ws = video.hub_ws(G, bank, truncation_psi=truncation_psi)
        frame_iter = video.interpolation_frames(G, ws, paths, steps, translate=translate, rotate=rotate, scale=scale)
        total = (need // paths - 1) * steps + 1
        _write(out or os.path.join(_DEFAULT_DIR, 'hub_interpolation.mp4'), frame_iter, total, fps)
    except ValueError as err:
        raise click.ClickException(str(err).splitlines()[0]) from None


if __name__ == '__main__':
    sys.exit(main())  # pylint: disable=no-value-for-parameter
