"""The first run: what each sampler does to a network, as one figure and one number per sampler, in seconds.

Five samplers of :mod:`sampling.samplers`, all from one base seed, one figure row each
(:func:`sampling.demo.make_figure`):

* ``random`` -- z ~ N(0, I), the network as trained;
* ``trunc:PSI`` -- the same latents, w pulled toward the average w;
* ``hubness:k=5,t=T,space=w`` -- hub latents (Liang et al. 2022) with threshold T;
* ``polarity:...,rho=-R`` and ``rho=+R`` -- a volume bank resampled by (product of the top-K singular values)^rho
  (Humayun et al. 2022): toward the modes, and toward the anti-modes (rho = 1 is MaGNET).

The number of each row is the share of ``num_scored`` samples that the MNIST classifier calls a digit (top class
probability >= 0.9, :func:`metrics.mnist_classifier.digit_report`); the polarity rows also give the bank's
effective sample size (how many bank latents their draws really come from).

The settings suit the embedded network (a class-conditional MNIST StyleGAN2 with a 64-d W): the hubness
authors' threshold of 50 is reached by about 2 latents in a million there (``generate_hubness.py`` with its
defaults scores 840 batches of 10,000 for 16 hubs), so the hub row uses 20, which about 1 in 100 reach (91 of the
10,000 latents of batch seed 0); and rho = +-1 puts nearly all the weight of a bank on a few dozen latents, so
the polarity rows use +-0.5 (an effective sample size of 130-170 of the 2,000 bank latents).
:data:`EMBEDDED_BANK` is a precomputed volume bank of that network (its provenance is in its metadata and in
the README), which is what makes the polarity rows instant.
"""

import dataclasses
import json
import os
import time

import dnnlib
from sampling import demo

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED_BANK = os.path.join(REPO_ROOT, 'pretrained', 'mnist32-volumes.npz')

HUB_K = demo.HUB_K
HUB_THRESHOLD = 20      # Not the authors' 50: see the module docstring.
POLARITY_RHO = 0.5      # |rho| of the two polarity rows.
POLARITY_TOP_K = 30     # The polarity authors' K for StyleGAN2.
TRUNCATION_PSI = demo.TRUNCATION_PSI
DIGIT_THRESHOLD = 0.9
SYNTH_BATCH = 16        # Images per forward pass: on a CPU, small batches of 32 px images run fastest.
FIGURE_NAME = 'samplers.png'
SUMMARY_NAME = 'summary.json'


@dataclasses.dataclass
class Row:
    """One sampler of the first run: its figure label, its spec and one line saying what it is."""

    label: str
    spec: str
    what: str


def comparison_rows(bank_path, hub_threshold=HUB_THRESHOLD, rho=POLARITY_RHO, top_k=POLARITY_TOP_K,
                    psi=TRUNCATION_PSI):
    """The samplers of the first run, in figure order (see the module docstring)."""
    t, r, bank = f'{float(hub_threshold):g}', f'{abs(float(rho)):g}', demo.quote(bank_path)
    return [
        Row('random (psi 1)', 'random', 'z ~ N(0, I): the network as trained'),
        Row(f'truncation psi {psi:g}', f'trunc:{psi:g}',
            f'the same z, with w pulled {100 * (1 - psi):.0f} % of the way to the average w'),
        Row(f'hubs k={HUB_K} t={t}', f'hubness:k={HUB_K},t={t},space=w',
            f'latents among the {HUB_K} nearest neighbours (in W) of >= {t} of 10,000 others'),
        Row(f'polarity rho=-{r}', f'polarity:bank={bank},rho=-{r},top_k={top_k}',
            'bank latents drawn by volume^rho, rho < 0: toward the modes (precision)'),
        Row(f'polarity rho=+{r}', f'polarity:bank={bank},rho={r},top_k={top_k}',
            'rho > 0: toward the anti-modes (recall); rho = 1 is MaGNET'),
    ]


def digit_share(G, sampler, num, seed, classifier, threshold=DIGIT_THRESHOLD):
    """Share of ``num`` samples of ``sampler`` that ``classifier`` gives a top class probability >= threshold."""
    from metrics.mnist_classifier import digit_report
    images = demo.sample_images(G, sampler, num, seed, batch_size=SYNTH_BATCH).transpose(0, 3, 1, 2)
    return digit_report(images, classifier=classifier, threshold=threshold)['confident_fraction']


def run(G, network_sha256, bank_path, classifier, outdir, num_images=10, num_scored=500, seed=0,
        hub_threshold=HUB_THRESHOLD, rho=POLARITY_RHO, top_k=POLARITY_TOP_K, scale=2, device=None, progress=None):
    """Draw the figure and score every row; write ``outdir/samplers.png`` and ``outdir/summary.json``.

    ``classifier`` (anything with ``probabilities``) may be None: the rows then have no digit share.
    ``progress(message)`` is called before each step. Returns the summary (also the JSON file's content).
    Raises :class:`sampling.demo.DemoError` for a bank or setting that cannot be used.
    """
    from sampling.images import save_png
    say = progress or (lambda message: None)
    start = time.perf_counter()
    top_k = min(int(top_k), int(G.z_dim) - 1)
    rows = comparison_rows(bank_path, hub_threshold, rho, top_k)
    try:
        samplers = demo.build_samplers([demo.Row(row.label, row.spec) for row in rows], G, device,
                                       network_sha256=network_sha256)
    except ValueError as err:  # E.g. a top_k above the bank's number of singular values.
        raise demo.DemoError(f'{bank_path}: {str(err).splitlines()[0]}') from None
    say(f'Figure: {len(rows)} samplers x {num_images} images')
    try:
        figure = demo.make_figure(G, samplers, num_images, seed, scale=scale)
    except ValueError as err:
        raise demo.DemoError(str(err).splitlines()[0]) from None
    os.makedirs(outdir, exist_ok=True)
    figure_path = os.path.join(outdir, FIGURE_NAME)
    save_png(figure_path, figure)

    results = []
    for row, (_, sampler) in zip(rows, samplers):
        share = None
        if classifier is not None:
            say(f'Scoring {num_scored} samples of {row.label}')
            share = digit_share(G, sampler, num_scored, seed, classifier)
        results.append(dict(dataclasses.asdict(row), digit_share=share,
                            effective_sample_size=sampler.effective_sample_size()))
    summary = dict(
        figure=figure_path, seed=seed, num_images=num_images, num_scored=num_scored,
        digit_threshold=DIGIT_THRESHOLD, hub_threshold=float(hub_threshold), rho=abs(float(rho)), top_k=top_k,
        bank=bank_path, bank_size=_bank_size(samplers), rows=results,
        seconds=round(time.perf_counter() - start, 2))
    with dnnlib.util.atomic_write(os.path.join(outdir, SUMMARY_NAME), 'w') as f:
        json.dump(summary, f, indent=1)
        f.write('\n')
    return summary


def _bank_size(samplers):
    for _, sampler in samplers:
        bank = getattr(sampler.source, 'bank', None)
        if bank is not None:
            return len(bank)
    return None


def format_summary(summary, network_label):
    """The lines the first run prints: what each row is, its number, where the files are."""
    lines = [f'Samplers of {network_label}, seed {summary["seed"]}; one figure row each:', '']
    for i, row in enumerate(summary['rows'], 1):
        share = '    n/a' if row['digit_share'] is None else f'{100 * row["digit_share"]:5.1f} %'
        ess = row['effective_sample_size']
        extra = '' if ess is None else f' (bank ESS {ess:.0f} of {summary["bank_size"]})'
        lines.append(f'  {i}. {row["label"]:<20} digits {share}  {row["what"]}{extra}')
    scored = any(row['digit_share'] is not None for row in summary['rows'])
    lines += ['',
              f'digits: share of {summary["num_scored"]} samples per row that the MNIST classifier gives '
              f'>= {summary["digit_threshold"]:g} for one digit.' if scored else 'digits: n/a without a classifier.',
              f'Hub threshold {summary["hub_threshold"]:g}, not the authors\' 50 (generate_hubness.py\'s default): '
              'in this 64-d W about 2 latents in a million reach 50, and 1 in 100 reach 20.',
              f'Polarity |rho| = {summary["rho"]:g} with K = {summary["top_k"]}: rho = 1 (MaGNET) would draw from a '
              'few dozen bank latents on this network.']
    return '\n'.join(lines)

#----------------------------------------------------------------------------
