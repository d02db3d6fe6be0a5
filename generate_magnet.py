"""Generate images with MaGNET / polarity sampling from a bank of Jacobian singular values.

Latents are resampled from --bank (made by compute_volume_scalars.py, or a MaGNET authors' .npz with
svds, latents and optional labels, 2-D or 3-D; their per-class files {class}_{name}.npz, as a folder or
repeated --bank, form one conditional bank) with probabilities softmax(rho * sum of the log top-K singular
values), then synthesised with truncation --trunc (the weights are those of psi 1, as in the papers) and
the latents multiplied by --z-scale (the authors' BigGAN-deep images: 0.9 with --trunc 1).

\b
rho = 1: MaGNET, uniform on the learned manifold (diversity, fairness).
rho < 0: toward the modes (precision, quality); rho > 0: toward the anti-modes (recall).

\b
--replace (default) samples with replacement: the papers' Algorithm 1, exactly proportional.
--no-replace samples without replacement (distinct latents), as the authors' demo does with
numpy.random.choice(replace=False): only the first draw is proportional to the weights, so the result
is pulled toward plain sampling, the more so the larger --num is relative to the bank.

--mix is the fraction of the images drawn from the bank; the rest come from plain random latents
("20 % MaGNET" is --mix=0.2). Bank images come first. A bank made for another network is refused.
The latents are those of the sampler spec 'mix:MIX*polarity(bank=B,rho=R,...)+(1-MIX)*random' of
calc_metrics.py --sampler with the same --seed (sampling/samplers.py).
Outputs: magnet000000.png ..., grid.png (--grid), selection.npz (latents, labels, bank_index; -1 for
random latents; readable with numpy) and selection.json (indices, ESS, weight summary).

Examples:

\b
    python generate_magnet.py --network=net.pkl --bank=vol/volumes.npz --num=64 --grid --outdir=out
\b
    # 20 % MaGNET at psi 0.9, precision-leaning polarity:
    python generate_magnet.py --network=net.pkl --bank=vol/volumes.npz --rho=-0.01 --mix=0.2 --trunc=0.9 --num=50000 --outdir=out
"""

import dataclasses
import json
import os

import click
import numpy as np

from sampling import cli, images, latents, samplers
from sampling.synthesis import synthesize


def _write_selection(outdir, z, c, bank_index, summary):
    bank = latents.LatentBank(z, c, meta=summary, bank_index=bank_index)
    bank.save(os.path.join(outdir, 'selection.npz'))
    record = dict(summary, bank_index=bank_index.tolist())
    with latents.atomic_write(os.path.join(outdir, 'selection.json'), mode='w') as f:
        json.dump(record, f, indent=1)


@click.command(cls=cli.Command, help=__doc__)
@cli.threads_option
@cli.network_option()
@click.option('--bank', 'bank_path', type=click.Path(exists=True), required=True, multiple=True,
              help='Volume bank (.npz), or the MaGNET authors\' per-class {class}_{name}.npz (a folder, or --bank repeated)')
@click.option('--rho', type=cli.FiniteFloat(), default=1, show_default=True, help='Polarity: 1 MaGNET, <0 modes, >0 anti-modes')
@click.option('--top-k', type=click.IntRange(min=1), help='Singular values per volume (default: all in the bank)')
@click.option('--num', type=click.IntRange(min=1), required=True, help='Images to generate')
@click.option('--mix', type=cli.FiniteFloat(0, 1), default=1, show_default=True, help='Fraction from the bank; the rest random')
@click.option('--replace/--no-replace', default=True, show_default=True, help='Resample with replacement (Algorithm 1) or not (authors\' demo)')
@click.option('--per-class/--no-per-class', default=True, show_default=True,
              help='Labelled bank: normalise probabilities within each class and draw every class equally often '
                   "(the authors' convention); --no-per-class pools the classes")
@click.option('--trunc', 'truncation_psi', type=cli.FiniteFloat(), default=1, show_default=True, help='Truncation psi at synthesis')
@click.option('--z-scale', type=click.FloatRange(min=0, min_open=True), default=1, show_default=True,
              help="Multiply the chosen latents by this at synthesis (the MaGNET authors' BigGAN-deep setting: 0.9, with --trunc 1)")
@cli.class_option(help_more='; N: only the bank latents of class N')
@click.option('--seed', type=click.IntRange(0, 2 ** 32 - 1), default=0, show_default=True, help='Seed of the draws (as a sampler spec seed)')
@click.option('--outdir', type=click.Path(file_okay=False), required=True, help='Where to save the images')
@click.option('--grid', is_flag=True, help='Also write all images as one grid, grid.png')
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=32, show_default=True, help='Images per forward pass')
@cli.device_option
@cli.noise_mode_option
@cli.pickle_code_option
def main(network_pkl, bank_path, rho, top_k, num, mix, replace, per_class, truncation_psi, z_scale, class_idx, seed, outdir,
         grid, batch_size, device, noise_mode, allow_pickle_code):
    device = cli.resolve_device(device)
    network_pkl = cli.network_or_default(network_pkl)
    G = cli.load_generator(network_pkl, device, allow_code=allow_pickle_code)
    network_sha256 = latents.network_sha256(network_pkl)
    # The sampler of the spec 'mix:MIX*polarity(bank=...)+(1-MIX)*random;class=...' ('polarity:...' for --mix 1).
    polarity = samplers.term('polarity', bank=bank_path, rho=rho, top_k=top_k, replace=replace, per_class=per_class)
    terms = [polarity] if mix == 1 else [dataclasses.replace(polarity, weight=mix), samplers.term('random', weight=1 - mix)]
    spec = samplers.make_spec(terms, class_idx=cli.resolve_class(G, class_idx))
    sampler = cli.build_sampler(spec, G, device, network_sha256=network_sha256)
    try:
        drawn = sampler.draw(num, seed)
    except ValueError as err:
        raise cli.UserError(str(err)) from None
    from_bank = drawn.bank_index >= 0
    summary = dict(sampler=spec.describe(), num=num, num_from_bank=int(from_bank.sum()),
                   num_random=int((~from_bank).sum()), rho=float(rho), mix=float(mix), replace=bool(replace),
                   per_class=bool(per_class), class_idx=spec.class_idx, seed=seed,
                   distinct_from_bank=int(len(np.unique(drawn.bank_index[from_bank]))),
                   **sampler.components[0].summary())
    click.echo(f'Effective sample size {summary["ess"]:.1f} of {summary["num_candidates"]} candidates; '
               f'{summary["num_from_bank"]} images from the bank ({summary["distinct_from_bank"]} distinct latents), '
               f'{summary["num_random"]} random', err=True)

    cli.prepare_outdir(outdir)
    bank_files = latents.bank_files(bank_path)
    paths, hashes = [os.path.abspath(f) for f in bank_files], [latents.file_sha256(f) for f in bank_files]
    summary.update(bank=paths[0] if len(paths) == 1 else paths, bank_sha256=hashes[0] if len(hashes) == 1 else hashes,
                   network_sha256=network_sha256, truncation_psi=truncation_psi, z_scale=z_scale, noise_mode=noise_mode,
                   command=cli.command_line())
    _write_selection(outdir, drawn.z, drawn.c, drawn.bank_index, summary)

    # selection.npz keeps the latents as chosen (the bank's); only synthesis sees them scaled.
    z = drawn.z * z_scale if z_scale != 1 else drawn.z
    batches = synthesize(G, z=z, c=drawn.c, truncation_psi=truncation_psi, noise_mode=noise_mode, batch_size=batch_size)
    names = [f'magnet{idx:06d}.png' for idx in range(num)]
    num_written = images.write_images(batches, names, outdir, grid=grid)
    click.echo(f'Wrote {num_written} images to {outdir}')


if __name__ == '__main__':
    main()
