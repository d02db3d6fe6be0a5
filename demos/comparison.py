"""The sampler comparison of the README: a figure of samples and a table of metrics, one row per sampler.

Six samplers of one network, all seeded by one base seed (specs of :mod:`sampling.samplers`):

==================  ====================================================================================
random              ``random``: N(0, I) latents, psi 1
truncation          ``trunc:0.7``
hubness             ``hubness:k=5,t=T,space=w``: the authors' convention; T is an option (their 50 finds
                    almost no hubs in a small network's W)
MaGNET rho=1        ``polarity:bank=B,rho=1``: every non-null singular value of the bank (K = z_dim - 1),
                    the volume of the whole manifold ("uniform on the manifold")
polarity rho=-1     ``polarity:bank=B,rho=-1,top_k=K``: the top-K values only (K = 30 in the authors'
polarity rho=+1     StyleGAN2 demos), toward the modes (-1) or the anti-modes (+1)
==================  ====================================================================================

and, with ``mild_rho`` m, two more rows ``polarity rho=-m`` / ``rho=+m``: when the log-volumes of the bank
spread over many nats, rho = +-1 puts nearly all the weight on a handful of latents (the table's
``effective_sample_size`` column says how many), and a small rho shows the direction of the effect without
that collapse. The papers' own polarity runs use |rho| of 0.001 to 0.01.

The bank B holds the style-space (z -> w) Jacobian singular values of ``bank_num`` latents, computed by
:class:`sampling.volume_job.VolumeJob` (resumable: a second run reuses it). Polarity draws with replacement
(the paper's Algorithm 1), so a bank smaller than the number of samples is fine.

The metrics are the toolkit's own (:func:`metrics.metric_main.calc_metric`): ``fid{N}_full`` (all the real
images) and ``pr{N}_3`` (N real images, k = 3) with a TorchScript detector, plus the fraction of samples
the MNIST classifier calls a digit (:func:`metrics.mnist_classifier.digit_report`). With the shipped
classifier as detector they are classifier-feature numbers, comparable with each other, not with
published Inception FIDs.
"""

import dataclasses
import json
import os

import numpy as np

import dnnlib

TABLE_HEADER = ('Classifier-feature metrics: FID, precision and recall in the feature space of the MNIST '
                'classifier (--detector), not Inception FID; comparable with each other only.')
LABEL_WIDTH = 200   # Pixels of the label column of the figure.
HUB_K = 5           # The authors' k.
TRUNCATION_PSI = 0.7


class DemoError(ValueError, dnnlib.util.UserError):
    """Bad input or settings; the message is one line."""


@dataclasses.dataclass
class Row:
    """One sampler of the comparison: its label in the figure and table, and its spec."""

    label: str
    spec: str


def quote(path):
    """A path as a quoted spec value (any character allowed)."""
    return '"' + os.fspath(path).replace('"', '\\"') + '"'


def sampler_rows(bank_path, hub_threshold, polarity_top_k, mild_rho=None):
    """The samplers of the comparison (see the module docstring), in figure order."""
    t = f'{float(hub_threshold):g}'
    bank = quote(bank_path)
    rows = [
        Row('random (psi 1)', 'random'),
        Row(f'truncation psi {TRUNCATION_PSI:g}', f'trunc:{TRUNCATION_PSI:g}'),
        Row(f'hubness k={HUB_K} t={t}', f'hubness:k={HUB_K},t={t},space=w'),
        Row('MaGNET rho=1', f'polarity:bank={bank},rho=1'),
        Row(f'polarity rho=-1 K={polarity_top_k}', f'polarity:bank={bank},rho=-1,top_k={polarity_top_k}'),
        Row(f'polarity rho=+1 K={polarity_top_k}', f'polarity:bank={bank},rho=1,top_k={polarity_top_k}'),
    ]
    if mild_rho:
        m = f'{abs(float(mild_rho)):g}'
        rows += [Row(f'polarity rho={sign}{m} K={polarity_top_k}',
                     f'polarity:bank={bank},rho={sign.strip("+")}{m},top_k={polarity_top_k}') for sign in '-+']
    return rows


def build_samplers(rows, G, device, network_sha256=None, label_pool=None, progress=False):
    """``[(label, Sampler)]`` of ``rows``; a spec that cannot be built raises :class:`DemoError`."""
    from sampling import samplers
    out = []
    for row in rows:
        try:
            out.append((row.label, samplers.build(samplers.parse(row.spec), G, device=device, label_pool=label_pool,
                                                  network_sha256=network_sha256, progress=progress)))
        except samplers.SamplerSpecError as err:
            raise DemoError(f'{row.label}: {err}') from None
    return out

# ----------------------------------------------------------------------------
# The volume bank.


def volume_bank(G, network_sha256, outdir, num, seed=0, method='exact', batch_size=64, progress=True,
                command=None):
    """Style-space singular values of ``num`` latents of batch seed ``seed`` in ``outdir/volumes.npz``.

    Every non-null value is kept (K = z_dim - 1: StyleGAN's mapping normalises z, so the Jacobian has a
    null direction). Chunks already computed under ``outdir`` with the same settings are reused.

    Returns
    -------
    path : str
        The bank file.
    """
    from sampling import volume_job
    try:
        job = volume_job.VolumeJob(G, network_sha256, num, seed=seed, space='style', method=method,
                                   top_k=int(G.z_dim) - 1, chunk_size=1000, batch_size=batch_size)
        os.makedirs(outdir, exist_ok=True)
        job.run(outdir, progress=progress)
        bank = job.merge(outdir, command=command)
        from sampling import volume_report
        volume_report.write_beside(bank, os.path.join(outdir, volume_job.BANK_NAME))
    except ValueError as err:
        raise DemoError(f'volume bank in {outdir}: {str(err).splitlines()[0]}') from None
    return os.path.join(outdir, volume_job.BANK_NAME)

# ----------------------------------------------------------------------------
# The figure.


def sample_images(G, sampler, num, seed, batch_size=64):
    """uint8 NHWC images of the first ``num`` latents of ``sampler`` (noise_mode 'const')."""
    from sampling.images import to_uint8
    from sampling.synthesis import synthesize
    z, c, psi = sampler.sample(num, seed)
    batches = synthesize(G, z=z, c=c, truncation_psi=psi, noise_mode='const', batch_size=batch_size)
    return np.concatenate([to_uint8(img) for img in batches])


def tile_size(G, scale):
    """Side in pixels of one image of the figure."""
    return int(G.img_resolution) * int(scale)


def make_figure(G, samplers, num_images, seed, scale=2):
    """One row per sampler: its label, then ``num_images`` samples, each enlarged ``scale`` times.

    The result is uint8 ``[rows * tile, LABEL_WIDTH + num_images * tile]`` (plus 3 channels for colour
    networks) with ``tile = G.img_resolution * scale``; tiles touch, rows are in the order given.
    """
    import PIL.Image
    import PIL.ImageDraw

    from sampling.images import label_font
    tile = tile_size(G, scale)
    channels = int(G.img_channels)
    strips = []
    for _, sampler in samplers:
        images = sample_images(G, sampler, num_images, seed)
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)  # Nearest-neighbour: pixels stay visible.
        strips.append(np.concatenate(list(images), axis=1))
    grid = np.concatenate(strips, axis=0)
    canvas = np.full([grid.shape[0], LABEL_WIDTH + grid.shape[1], grid.shape[2]], 255, dtype=np.uint8)
    canvas[:, LABEL_WIDTH:] = grid
    image = PIL.Image.fromarray(canvas[:, :, 0] if channels == 1 else canvas)
    draw = PIL.ImageDraw.Draw(image)
    font = label_font(max(10, min(16, tile // 3)))
    for i, (label, _) in enumerate(samplers):
        y = i * tile + tile // 2
        draw.text((6, y), label, fill=0 if channels == 1 else (0, 0, 0), font=font, anchor='lm')
    return np.asarray(image)

# ----------------------------------------------------------------------------
# The table.


def metric_names(num):
    """FID (all real images) and precision/recall (``num`` real images, k = 3) with ``num`` samples."""
    return f'fid{num}_full', f'pr{num}_3'


def metrics_row(G, sampler, num, seed, dataset_kwargs, detectors, device, classifier=None, cache=True,
                num_workers=0, progress=False):
    """``fid``, ``precision``, ``recall`` (and ``digit_fraction`` with a classifier) of one sampler."""
    from metrics import metric_main
    from metrics.mnist_classifier import digit_report
    fid_name, pr_name = metric_names(num)
    memo = {}  # FID and P/R share the detector here: synthesise once.
    results = {}
    for name in (fid_name, pr_name):
        result = metric_main.calc_metric(
            name, G=G, dataset_kwargs=dnnlib.EasyDict(dataset_kwargs), num_gpus=1, rank=0, device=device,
            progress=progress, cache=cache, sampler=sampler, seed=seed, detectors=detectors,
            num_workers=num_workers, feature_memo=memo)
        results.update(result.results)
    row = dict(fid=results[fid_name], precision=results[f'{pr_name}_precision'],
               recall=results[f'{pr_name}_recall'], digit_fraction=None)
    if classifier is not None:
        images = sample_images(G, sampler, num, seed).transpose(0, 3, 1, 2)
        row['digit_fraction'] = digit_report(images, classifier=classifier)['confident_fraction']
    return row


def markdown_table(rows, num, bank_path=None):
    """The table as Markdown: one line per sampler, numbers rounded for reading (the JSON keeps them all).

    The volume bank's path, if given, is written ``B`` in the specs and named under the table.
    """
    def fmt(value, digits):
        return 'n/a' if value is None else f'{value:.{digits}f}'
    fid_name, pr_name = metric_names(num)
    lines = [f'| sampler | spec | FID ({fid_name}) | precision ({pr_name}) | recall ({pr_name}) | digit fraction '
             '| bank ESS |',
             '|---|---|---:|---:|---:|---:|---:|']
    for row in rows:
        spec = row['spec'].replace(quote(bank_path), 'B') if bank_path is not None else row['spec']
        spec = spec.replace('|', '\\|')
        lines.append(f'| {row["sampler"]} | `{spec}` | {fmt(row["fid"], 2)} | {fmt(row["precision"], 3)} | '
                     f'{fmt(row["recall"], 3)} | {fmt(row["digit_fraction"], 3)} | '
                     f'{fmt(row.get("effective_sample_size"), 1)} |')
    if bank_path is not None:
        lines.append(f'\nB = {bank_path} (style-space singular values of the volume bank); bank ESS = Kish\'s '
                     'effective number of bank latents behind the draws')
    return '\n'.join(lines)


def write_json(path, payload):
    """Write ``payload`` as indented JSON, atomically."""
    with dnnlib.util.atomic_write(path, 'w') as f:
        json.dump(payload, f, indent=2, allow_nan=True)
        f.write('\n')

# ----------------------------------------------------------------------------
