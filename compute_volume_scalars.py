"""Jacobian singular values ("volume scalars") of many latents -> a latent bank for MaGNET / polarity sampling.

For each latent z the top-K singular values of d(output)/dz are computed; generate_magnet.py then
resamples the latents with weights (prod of the top K)^rho. The latents are rows 0..N-1 of batch seed
--seed (see sampling/latents.py), the network runs with noise_mode='const' and psi 1.

\b
Spaces: pixel (z -> image, optionally --resize'd), style (z -> w, about 4.5x cheaper), feature
(z -> image -> the TorchScript --embedder, e.g. NVlabs' inception-2015-12-05.pt or vgg16.pt).
Methods: exact (full Jacobian, z_dim forward passes), projected (the MaGNET authors' estimator: a fixed
random projection to --num-projections rows), lowrank (block Lanczos, top K only; the default).

\b
StyleGAN normalises z before mapping it, so the output does not change along the radial direction:
d(output)/dz has an exact null direction and its smallest singular value is zero up to rounding. A
product over all z_dim singular values is meaningless; volumes are top-K products with K < z_dim
(the authors use K=30 for StyleGAN2, 10 for StyleGAN3). --top-k equal to z_dim is refused.

\b
The output is OUTDIR/volumes.npz with keys svds [N, K] (float32, descending), latents [N, z_dim] and
labels (one-hot, or empty), readable with plain numpy, plus our metadata (network sha256, settings).
Work is done in chunks of --chunk-size latents, each written to OUTDIR/chunks/ as it finishes: a
killed run re-run with the same arguments resumes. Once volumes.npz is written the chunk files are packed
into OUTDIR/chunks/chunks.npz, which a re-run reads instead of computing again. --shard i/n (default: from SLURM_ARRAY_TASK_ID and
SLURM_ARRAY_TASK_COUNT) computes every n-th chunk; when all shards are done, the same command with
--merge writes volumes.npz, identical to that of a single run (see docs/slurm.md).

Beside the bank go volumes_report.png and .json (sampling/volume_report.py): the log-volume histogram, the
effective sample size against rho (pick a rho that keeps enough latents in play), log-volume against ||z||
and per class.

Examples:

\b
    # 250k latents, style space, on one GPU:
    python compute_volume_scalars.py --network=net.pkl --num=250000 --space=style --top-k=30 --outdir=vol
\b
    # Shard 3 of 8 of the same job (e.g. one SLURM array task), then the merge step:
    python compute_volume_scalars.py --network=net.pkl --num=250000 --space=style --outdir=vol --shard=3/8
    python compute_volume_scalars.py --network=net.pkl --num=250000 --space=style --outdir=vol --merge
"""

import os

import click
import torch

from sampling import chunks, cli, latents, volume, volume_job


def _parse_shard(text):
    try:
        return chunks.resolve_shard(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint='--shard') from None


def _load_embedder(path, device, dtype):
    try:
        return volume_job.load_embedder(path, device, volume_job.DTYPES[dtype]), latents.file_sha256(path)
    except (RuntimeError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise click.ClickException(f'cannot load the embedder {path} as a TorchScript module ({first}); '
                                   f'save it with torch.jit.save') from None


@click.command(cls=cli.Command, help=__doc__)
@cli.threads_option
@cli.network_option()
@click.option('--num', type=click.IntRange(min=1), required=True, help='Latents (per class with --class all)')
@click.option('--seed', type=click.IntRange(0, 2 ** 32 - 1), default=0, show_default=True, help='Batch seed of the latents')
@click.option('--space', type=click.Choice(volume.SPACES), default='pixel', show_default=True, help='Whose Jacobian')
@click.option('--method', type=click.Choice(volume.METHODS), default='lowrank', show_default=True, help='Estimator')
@click.option('--top-k', type=click.IntRange(min=1), default=30, show_default=True, help='Singular values kept (< z_dim)')
@click.option('--num-projections', type=click.IntRange(min=1), default=128, show_default=True, help='Projection rows (projected)')
@click.option('--projection-seed', type=click.IntRange(min=0), default=0, show_default=True, help='Seed of the projection / Lanczos start')
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=8, show_default=True, help='Latents per Jacobian computation')
@click.option('--vmap-chunk', type=click.IntRange(min=1), help='Directions per forward pass (lower it to save memory)')
@click.option('--chunk-size', type=click.IntRange(min=1), default=1000, show_default=True, help='Latents per chunk file (unit of resumption)')
@click.option('--outdir', type=click.Path(file_okay=False), required=True, help='Where volumes.npz and chunks/ go')
@click.option('--resize', type=click.IntRange(min=1), help='Pixel space: resize images to this size first')
@click.option('--embedder', type=click.Path(exists=True, dir_okay=False), help='Feature space: TorchScript embedding network')
@cli.class_option(keywords=('random', 'all'))
@cli.device_option
@click.option('--dtype', type=click.Choice(sorted(volume_job.DTYPES)), default='float32', show_default=True, help='Precision of the network (StyleGAN2/3 compute in float32 whatever this says)')
@click.option('--shard', metavar='i/n', help='Compute shard i of n (default: from the SLURM array variables, else 0/1)')
@click.option('--merge', is_flag=True, help='Join the finished chunks of all shards into volumes.npz')
@cli.pickle_code_option
def main(network_pkl, num, seed, space, method, top_k, num_projections, projection_seed, batch_size, vmap_chunk,
         chunk_size, outdir, resize, embedder, class_idx, device, dtype, shard, merge, allow_pickle_code):
    shard = (0, 1) if merge else _parse_shard(shard)
    device = cli.resolve_device(device)
    # Volumes are products of many singular values: keep full float32 precision in matmuls and convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    network_pkl = cli.network_or_default(network_pkl)
    G = cli.load_generator(network_pkl, device, allow_code=allow_pickle_code)
    class_idx = cli.resolve_class(G, class_idx)
    embed_fn, embedder_sha256 = _load_embedder(embedder, device, dtype) if embedder else (None, None)
    try:
        job = volume_job.VolumeJob(
            G, latents.network_sha256(network_pkl), num, seed=seed, space=space, method=method, top_k=top_k,
            class_idx=None if class_idx == 'random' else class_idx, dtype=dtype, resize=resize, embedder=embed_fn, embedder_sha256=embedder_sha256,
            num_projections=num_projections, projection_seed=projection_seed, chunk_size=chunk_size,
            batch_size=batch_size, vmap_chunk=vmap_chunk)
        if job.output_dtype != dtype:
            click.echo(f'warning: --dtype {dtype} requested, but the network computes in {job.output_dtype} '
                       f'(StyleGAN casts z and w to float32 inside); the values have {job.output_dtype} precision', err=True)
        cli.prepare_outdir(outdir)
        if not merge:
            done = job.run(outdir, shard=shard, progress=True)
            click.echo(f'Shard {shard[0]}/{shard[1]}: computed {len(done)} chunk(s) of {job.num_chunks}', err=True)
            if shard[1] > 1:
                click.echo('When every shard has finished, run the same command with --merge', err=True)
                return
        bank = job.merge(outdir, command=cli.command_line())
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    bank_path = os.path.join(outdir, volume_job.BANK_NAME)
    click.echo(f'Wrote {len(bank)} latents with their top-{job.top_k} singular values to {bank_path}')
    _write_report(bank, bank_path)


def _write_report(bank, bank_path):
    """The bank's plots and their data (log-volume histogram, ESS vs rho, log-volume vs ||z||, per class)."""
    from sampling import volume_report
    try:
        json_path, png_path = volume_report.write_beside(bank, bank_path)
    except ValueError as err:
        click.echo(f'warning: no report: {err}', err=True)
        return
    click.echo(f'Wrote its report (pick rho by the effective sample size) to {png_path} and {json_path}')


if __name__ == '__main__':
    main()
