"""The report of a volume bank: a JSON summary and a figure drawn with Pillow, beside the bank.

A volume bank (``compute_volume_scalars.py``, or the MaGNET authors' files) holds the top singular values of the
generator's Jacobian at each of its latents. Polarity sampling resamples the bank by ``exp(rho * log-volume)``,
so what a user needs to see before picking rho is how the log-volumes spread and how many latents a given rho
leaves in play. ``BANK_report.json`` / ``BANK_report.png`` (for ``volumes.npz``: ``volumes_report.*``) hold:

* ``log_volume_histogram``: bin edges and counts of ``sum_{i <= K} log sigma_i`` over the bank;
* ``ess``: Kish's effective sample size ``(sum w)^2 / sum w^2`` of the weights ``w = vol^rho`` for a grid of
  rho; for a bank with labels the weights are normalised within each class, as the ``polarity`` sampler does
  by default, and ``ess`` is the sum of the classes' own values (``ess_pooled``: one normalisation for all);
* ``log_volume_vs_norm``: the Pearson correlation of the log-volume with ``||z||`` over the bank and a
  sample of (||z||, log-volume) points (every ``stride``-th latent);
* ``per_class``: count, mean, standard deviation, minimum and maximum of the log-volume of each class.
"""

import math
import os

import numpy as np

from sampling import polarity, volume
from sampling.hub_report import Axes, save_report

# The rho grid of the ESS curve: the papers use |rho| up to 1 (MaGNET) and down to 0.001.
DEFAULT_RHOS = tuple(np.round(np.linspace(-1, 1, 41), 4).tolist())
MAX_SCATTER = 2000
NUM_BINS = 40

# Colours of up to ten classes (tab10), then grey.
_CLASS_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                  (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def report_paths(bank_path):
    """``(json, png)`` paths of the report of the bank at ``bank_path``."""
    stem = os.path.splitext(os.fspath(bank_path))[0]
    return stem + '_report.json', stem + '_report.png'


def class_ids(bank):
    """Class index of every latent of a labelled bank, else None."""
    return bank.labels.argmax(axis=1) if bank.c_dim > 0 else None


def ess_curve(log_volume, rhos, ids=None):
    """Effective sample size of ``vol^rho`` for each rho: summed over classes when ``ids`` are given."""
    out = []
    for rho in rhos:
        log_w = float(rho) * log_volume if rho != 0 else np.zeros_like(log_volume)
        if ids is None:
            out.append(polarity.effective_sample_size(log_w))
        else:
            out.append(float(sum(polarity.effective_sample_size(log_w[ids == k]) for k in np.unique(ids))))
    return out


def build_report(bank, top_k=None, rhos=DEFAULT_RHOS, bins=NUM_BINS, max_scatter=MAX_SCATTER, bank_path=None):
    """JSON-ready summary of a volume bank (see the module docstring).

    ``top_k`` defaults to every singular value in the bank. Latents whose log-volume is not finite (zero singular
    values) are counted in ``num_not_finite`` and left out of everything else.
    """
    if 'svds' not in bank:
        raise ValueError('the bank has no singular values (svds): make it with compute_volume_scalars.py')
    svds = np.asarray(bank['svds'], dtype=np.float64).reshape(len(bank), -1)
    top_k = svds.shape[1] if top_k is None else int(top_k)
    log_vol = volume.log_volume(svds, top_k=top_k)
    finite = np.isfinite(log_vol)
    if not finite.any():
        raise ValueError('no latent of the bank has a finite log-volume (zero singular values)')
    log_vol = log_vol[finite]
    z = np.asarray(bank.latents, dtype=np.float64)[finite]
    norms = np.sqrt((z * z).sum(axis=1))
    ids = class_ids(bank)
    ids = None if ids is None else ids[finite]

    counts, edges = np.histogram(log_vol, bins=bins)
    stride = max(1, -(-len(log_vol) // max_scatter))
    correlation = float(np.corrcoef(norms, log_vol)[0, 1]) if len(log_vol) > 1 and log_vol.std() > 0 else None
    rhos = [float(r) for r in rhos]
    meta = bank.meta or {}
    extras = meta.get('extras', {}) or {}
    report = dict(
        bank=None if bank_path is None else os.path.basename(os.fspath(bank_path)),
        network_sha256=meta.get('network_sha256'), space=meta.get('space'), method=extras.get('method'),
        num_latents=len(bank), num_not_finite=int((~finite).sum()), top_k=top_k, z_dim=bank.z_dim, c_dim=bank.c_dim,
        log_volume=dict(mean=float(log_vol.mean()), std=float(log_vol.std()), min=float(log_vol.min()),
                        max=float(log_vol.max())),
        log_volume_histogram=dict(edges=edges.tolist(), count=counts.tolist()),
        ess=dict(rho=rhos, ess=ess_curve(log_vol, rhos, ids), ess_pooled=ess_curve(log_vol, rhos),
                 per_class=ids is not None),
        log_volume_vs_norm=dict(correlation=correlation, stride=stride, norm=norms[::stride].tolist(),
                                log_volume=log_vol[::stride].tolist(),
                                label=None if ids is None else ids[::stride].tolist()),
        per_class=None,
    )
    if ids is not None:
        report['per_class'] = [dict(cls=int(k), count=int((ids == k).sum()),
                                    mean=_stat(np.mean, log_vol[ids == k]), std=_stat(np.std, log_vol[ids == k]),
                                    min=_stat(np.min, log_vol[ids == k]), max=_stat(np.max, log_vol[ids == k]))
                               for k in range(bank.c_dim)]
    return report


def _stat(fn, values):
    return float(fn(values)) if len(values) else None

# ----------------------------------------------------------------------------
# The figure.


def draw_report(report, size=(400, 320)):
    """The report figure as a PIL image: histogram, ESS vs rho, log-volume vs ||z||, and per class if labelled."""
    import PIL.Image
    import PIL.ImageDraw
    import PIL.ImageFont

    width, height = size
    panels = 4 if report['per_class'] else 3
    image = PIL.Image.new('RGB', (panels * width, height), 'white')
    draw = PIL.ImageDraw.Draw(image)
    try:
        font = PIL.ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1 has only its small bitmap font.
        font = PIL.ImageFont.load_default()
    k = report['top_k']

    # Histogram of the log-volumes.
    hist = report['log_volume_histogram']
    edges, counts = np.asarray(hist['edges']), np.asarray(hist['count'])
    ax = Axes(draw, font, (0, 0, width, height), (edges[0], edges[-1]), (0, max(counts.max(), 1) * 1.05),
               f'Log-volume of {report["num_latents"]} latents', f'sum of log top-{k} singular values', 'latents')
    for lo, hi, count in zip(edges[:-1], edges[1:], counts):
        if count:
            (xa, ya), (xb, yb) = ax.px(lo, count), ax.px(hi, 0)
            draw.rectangle([xa, ya, max(xb - 1, xa + 1), yb], fill='gray')

    # ESS against rho, log scale.
    ess = report['ess']
    rhos, values = np.asarray(ess['rho']), np.log10(np.maximum(np.asarray(ess['ess']), 1))
    top = math.log10(max(report['num_latents'] - report['num_not_finite'], 10))
    ax = Axes(draw, font, (width, 0, 2 * width, height), (rhos.min(), rhos.max()), (0, top * 1.05),
               'Effective sample size' + (' (per class, summed)' if ess['per_class'] else ''),
               'rho  (1: MaGNET, <0: modes, >0: anti-modes)', 'log10 ESS')
    points = [ax.px(r, v) for r, v in zip(rhos, values)]
    if len(points) > 1:
        draw.line(points, fill='steelblue', width=2)
    for x, y in points:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill='steelblue')

    # Log-volume against ||z||.
    scatter = report['log_volume_vs_norm']
    norms, logv = np.asarray(scatter['norm']), np.asarray(scatter['log_volume'])
    r = scatter['correlation']
    ax = Axes(draw, font, (2 * width, 0, 3 * width, height), (norms.min(), norms.max()), (logv.min(), logv.max()),
               'Log-volume vs ||z||' + (f' (r = {r:.2f})' if r is not None else ''),
               '||z||' + ('  (colour: class)' if scatter['label'] is not None else ''), 'log-volume', margin=0.04)
    labels = scatter['label'] or [None] * len(norms)
    for x, y, label in zip(norms, logv, labels):
        px, py = ax.px(x, y)
        colour = (120, 120, 120) if label is None else _class_colour(label)
        draw.rectangle([px - 1, py - 1, px + 1, py + 1], fill=colour)

    # Per class: mean +- std, and the range.
    if report['per_class']:
        rows = [row for row in report['per_class'] if row['count']]
        lo = min(row['min'] for row in rows)
        hi = max(row['max'] for row in rows)
        ax = Axes(draw, font, (3 * width, 0, 4 * width, height), (-0.5, len(report['per_class']) - 0.5), (lo, hi),
                   'Log-volume per class (mean +- std, range)', 'class', 'log-volume', margin=0.04, integer_x=True)
        for row in rows:
            x = ax.px(row['cls'], 0)[0]
            colour = _class_colour(row['cls'])
            draw.line([x, ax.px(0, row['min'])[1], x, ax.px(0, row['max'])[1]], fill=colour, width=1)
            (xa, ya), (xb, yb) = ax.px(row['cls'] - 0.3, row['mean'] + row['std']), ax.px(row['cls'] + 0.3, row['mean'] - row['std'])
            draw.rectangle([xa, ya, xb, yb], outline=colour, width=2)
            y = ax.px(0, row['mean'])[1]
            draw.line([xa, y, xb, y], fill=colour, width=2)
    return image


def _class_colour(label):
    return _CLASS_COLOURS[int(label)] if 0 <= int(label) < len(_CLASS_COLOURS) else (120, 120, 120)

# ----------------------------------------------------------------------------


def write_beside(bank, bank_path, top_k=None):
    """Build, draw and write the report of ``bank`` beside ``bank_path``; returns ``(json, png)`` paths."""
    report = build_report(bank, top_k=top_k, bank_path=bank_path)
    json_path, png_path = report_paths(bank_path)
    save_report(report, draw_report(report), json_path, png_path)
    return json_path, png_path


def main(argv=None):
    """``python -m sampling.volume_report BANK [TOP_K]``: the report of an existing bank (e.g. the authors')."""
    import sys

    from sampling.latents import LatentBank
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print('usage: python -m sampling.volume_report BANK.npz [TOP_K]', file=sys.stderr)
        return 2
    try:
        top_k = int(args[1]) if len(args) == 2 else None
        paths = write_beside(LatentBank.load(args[0]), args[0], top_k=top_k)
    except (OSError, ValueError) as err:
        print(f'error: {str(err).splitlines()[0]}', file=sys.stderr)
        return 1
    print(f'Wrote {paths[0]} and {paths[1]}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
