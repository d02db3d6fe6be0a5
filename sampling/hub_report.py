"""The report of a hub search: a JSON summary and a figure drawn with Pillow (matplotlib is no dependency).

``report.json`` holds, per scoring batch, its batch seed, the number of hubs the rule accepted, the acceptance
rate and the batch's hubness diagnostics; over all batches, the score histogram and the correlation of the
score with the latent norm ||z||. ``report.png`` shows the acceptance rate per batch, the score histogram and
score against ||z|| (a sample of all latents in grey, the hubs in red).
"""

import io
import json
import math

import numpy as np

from sampling.latents import atomic_write

# Scatter points drawn at most (a sample of every batch's first latents).
_MAX_SCATTER = 5000

# ----------------------------------------------------------------------------
# Correlation of the score with ||z||, pooled over batches without keeping every latent.

def score_norm_moments(s, r):
    """Sufficient statistics of (s, r) pairs for a pooled Pearson correlation (centred, numerically stable)."""
    s, r = np.asarray(s, dtype=np.float64), np.asarray(r, dtype=np.float64)
    ms, mr = s.mean(), r.mean()
    return dict(n=int(s.size), mean_s=float(ms), mean_r=float(mr), m2_s=float(((s - ms) ** 2).sum()),
                m2_r=float(((r - mr) ** 2).sum()), c_sr=float(((s - ms) * (r - mr)).sum()))


def pool_moments(parts):
    """Join :func:`score_norm_moments` records of disjoint sets (Chan et al.'s pairwise update), in order."""
    total = None
    for part in parts:
        if total is None:
            total = dict(part)
            continue
        n_a, n_b = total['n'], part['n']
        n = n_a + n_b
        ds, dr = part['mean_s'] - total['mean_s'], part['mean_r'] - total['mean_r']
        w = n_a * n_b / n
        total = dict(n=n, mean_s=total['mean_s'] + ds * n_b / n, mean_r=total['mean_r'] + dr * n_b / n,
                     m2_s=total['m2_s'] + part['m2_s'] + ds * ds * w, m2_r=total['m2_r'] + part['m2_r'] + dr * dr * w,
                     c_sr=total['c_sr'] + part['c_sr'] + ds * dr * w)
    return total


def correlation(moments):
    """Pearson r of a :func:`score_norm_moments` record (nan when either variable is constant)."""
    denom = math.sqrt(moments['m2_s'] * moments['m2_r'])
    return moments['c_sr'] / denom if denom > 0 else math.nan

# ----------------------------------------------------------------------------

def build_report(result, search):
    """JSON-ready summary of a :class:`~sampling.hub_sampler.HubResult` of `search` (a HubSearch)."""
    batches = result.batches
    hist = np.zeros([max(len(b['histogram']) for b in batches)], dtype=np.int64)
    for b in batches:
        hist[: len(b['histogram'])] += b['histogram']
    pooled = pool_moments(b['moments'] for b in batches)
    num_scored = sum(b['num_scored'] for b in batches)
    num_accepted = sum(b['num_accepted'] for b in batches)
    bank = result.bank
    hub_norms = np.sqrt((bank.latents.astype(np.float64) ** 2).sum(axis=1))
    return dict(
        settings=search.settings(),
        num_requested=result.num, num_found=len(bank), complete=result.complete,
        num_batches=len(batches), num_scored=num_scored, num_accepted=num_accepted,
        acceptance_rate=num_accepted / num_scored,
        batches=[dict(batch=b['batch'], batch_seed=b['batch_seed'], num_accepted=b['num_accepted'],
                      acceptance_rate=b['acceptance_rate'], cutoff=_finite_or_none(b['cutoff']),
                      score_norm_correlation=_finite_or_none(correlation(b['moments'])),
                      hubness=b['hubness']) for b in batches],
        score_histogram=dict(score=list(range(hist.size)), count=hist.tolist()),
        score_norm_correlation=_finite_or_none(correlation(pooled)),
        mean_norm=dict(all=pooled['mean_r'], hubs=float(hub_norms.mean()) if len(bank) else None),
    )


def _finite_or_none(value):
    return float(value) if value is not None and math.isfinite(value) else None


def save_report(report, image, json_path, png_path):
    """Write report.json and report.png atomically."""
    with atomic_write(json_path, 'w') as f:
        json.dump(report, f, indent=1)
        f.write('\n')
    buffer = io.BytesIO()
    image.save(buffer, format='png')
    with atomic_write(png_path) as f:
        f.write(buffer.getvalue())

# ----------------------------------------------------------------------------
# Plots.

class Axes:
    """A plot panel: maps data coordinates into a pixel box and draws axes, ticks and labels."""

    def __init__(self, draw, font, box, xlim, ylim, title, xlabel, ylabel, margin=0.0, integer_x=False):
        self.draw, self.font = draw, font
        left, top, right, bottom = box
        self.x0, self.y0, self.x1, self.y1 = left + 56, top + 40, right - 14, bottom - 40  # Plot area.
        self.xlim, self.ylim = _padded(*xlim, margin), _padded(*ylim, margin)
        draw.rectangle([self.x0, self.y0, self.x1, self.y1], outline='black')
        draw.text(((left + right) / 2, top + 4), title, fill='black', font=font, anchor='ma')
        draw.text(((self.x0 + self.x1) / 2, bottom - 4), xlabel, fill='black', font=font, anchor='md')
        draw.text((left + 4, self.y0 - 18), ylabel, fill='black', font=font, anchor='la')
        for value in _ticks(*self.xlim, integer=integer_x):
            x = self.px(value, self.ylim[0])[0]
            draw.line([x, self.y1, x, self.y1 + 4], fill='black')
            draw.text((x, self.y1 + 6), _fmt(value), fill='black', font=font, anchor='ma')
        for value in _ticks(*self.ylim):
            y = self.px(self.xlim[0], value)[1]
            draw.line([self.x0 - 4, y, self.x0, y], fill='black')
            draw.text((self.x0 - 6, y), _fmt(value), fill='black', font=font, anchor='rm')

    def px(self, x, y):
        (a, b), (c, d) = self.xlim, self.ylim
        return (self.x0 + (x - a) / (b - a) * (self.x1 - self.x0), self.y1 - (y - c) / (d - c) * (self.y1 - self.y0))


def _padded(lo, hi, margin=0.0):
    """[lo, hi] widened by `margin` of its length on each side (so that points on the edge stay visible)."""
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi <= lo:
        return lo - 0.5, hi + 0.5
    pad = (hi - lo) * margin
    return lo - pad, hi + pad


def _ticks(lo, hi, count=5, integer=False):
    """About `count` round tick values within [lo, hi] (whole numbers only if `integer`)."""
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if step * m >= raw)
    step = max(step, 1) if integer else step
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(value):
    return f'{value:.0f}' if abs(value - round(value)) < 1e-9 and abs(value) < 1e6 else f'{value:.3g}'


def draw_report(report, result, size=(400, 320)):
    """The report figure as a PIL image: acceptance per batch, score histogram, score vs ||z||."""
    import PIL.Image
    import PIL.ImageDraw
    import PIL.ImageFont

    width, height = size
    image = PIL.Image.new('RGB', (3 * width, height), 'white')
    draw = PIL.ImageDraw.Draw(image)
    try:
        font = PIL.ImageFont.load_default(size=13)  # Pillow's embedded font: the same figure on every machine.
    except TypeError:  # Pillow < 10.1 has only its small bitmap font.
        font = PIL.ImageFont.load_default()

    # Acceptance rate per batch.
    rates = [b['acceptance_rate'] * 100 for b in report['batches']]
    ax = Axes(draw, font, (0, 0, width, height), (-0.5, len(rates) - 0.5), (0, max(max(rates), 1e-3) * 1.05),
               'Hubs accepted per batch', 'batch', 'accepted (%)', integer_x=True)
    points = [ax.px(i, r) for i, r in enumerate(rates)]
    if len(points) > 1:
        draw.line(points, fill='steelblue', width=2)
    for x, y in points:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill='steelblue')

    # Score histogram, log scale: the hubs are the thin right tail.
    counts = np.asarray(report['score_histogram']['count'], dtype=np.float64)
    logc = np.log10(1 + counts)
    ax = Axes(draw, font, (width, 0, 2 * width, height), (-0.5, counts.size - 0.5), (0, max(logc.max(), 1) * 1.05),
               'Score histogram (all scored latents)', 'hub score', 'log10(1 + count)', integer_x=True)
    for score, value in enumerate(logc):
        if value > 0:
            (xa, ya), (xb, yb) = ax.px(score - 0.4, value), ax.px(score + 0.4, 0)
            draw.rectangle([xa, ya, max(xb, xa + 1), yb], fill='gray')
    cutoff = report['batches'][0]['cutoff'] if report['settings'].get('threshold') is not None else None
    if cutoff is not None and ax.xlim[0] <= math.ceil(cutoff) - 0.5 <= ax.xlim[1]:
        x = ax.px(math.ceil(cutoff) - 0.5, 0)[0]  # Scores are integers: the bars right of the line are hubs.
        draw.line([x, ax.y0, x, ax.y1], fill='red', width=1)
        right_half = x > (ax.x0 + ax.x1) / 2
        draw.text((x - 3 if right_half else x + 3, ax.y0 + 3), f'threshold {_fmt(cutoff)}', fill='red', font=font,
                  anchor='ra' if right_half else 'la')

    # Score against ||z||: a sample of all latents, and every hub.
    sample_s = np.concatenate([b['sample']['score'] for b in result.batches]).astype(np.float64)
    sample_r = np.concatenate([b['sample']['norm'] for b in result.batches]).astype(np.float64)
    stride = max(1, -(-sample_s.size // _MAX_SCATTER))
    sample_s, sample_r = sample_s[::stride], sample_r[::stride]
    hub_s = result.bank['hub_score'].astype(np.float64)
    hub_r = np.sqrt((result.bank.latents.astype(np.float64) ** 2).sum(axis=1))
    all_r, all_s = np.concatenate([sample_r, hub_r]), np.concatenate([sample_s, hub_s])
    r = report['score_norm_correlation']
    ax = Axes(draw, font, (2 * width, 0, 3 * width, height), (all_r.min(), all_r.max()), (all_s.min(), all_s.max()),
               'Score vs ||z||' + (f' (r = {r:.2f})' if r is not None else ''), '||z||  (grey: sample, red: hubs)',
               'hub score', margin=0.04)
    for xs, ys, colour in ((sample_r, sample_s, (150, 150, 150)), (hub_r, hub_s, (220, 30, 30))):
        for x, y in zip(xs, ys):
            px, py = ax.px(x, y)
            draw.rectangle([px - 1, py - 1, px + 1, py + 1], fill=colour)
    return image

# ----------------------------------------------------------------------------
