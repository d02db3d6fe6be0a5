"""The papers' tables as data: which networks, which latent banks, which sampler and metrics per row.

A :class:`Table` names its models (a network and its real images, given on the command line by key) and
its rows. A :class:`Bank` is the ``compute_volume_scalars.py`` job of a model (MaGNET / polarity rows
resample it); a :class:`Row` is one ``calc_metrics.py`` evaluation with the paper's numbers beside it.
Sampler specs may hold ``{bank}``, replaced by the path of the model's bank. Numbers are those of the
papers as summarised in ``docs/methods.md``-style notes of this project; where a paper's setting is not
stated, the row says which one we assumed.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Bank:
    """A volume bank: ``compute_volume_scalars.py`` settings (``embedder``: a detector role for 'feature')."""
    space: str = 'pixel'
    top_k: int = 30
    embedder: str = None
    resize: int = None


@dataclasses.dataclass(frozen=True)
class Model:
    description: str
    bank: Bank = None
    default_network: str = None


@dataclasses.dataclass(frozen=True)
class Row:
    """One evaluation. ``paper``: metric -> the paper's number (None when unpublished). ``baseline``: the row
    this one is compared with; ``claims``: (metric, '<' or '>') the paper states against the baseline (derived
    from ``paper`` when both rows have numbers)."""
    id: str
    label: str
    model: str
    sampler: str
    metrics: tuple
    paper: dict = dataclasses.field(default_factory=dict)
    baseline: str = None
    claims: tuple = ()
    note: str = None


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    title: str
    source: str
    models: dict
    rows: tuple
    num_latents: int
    num_samples: int
    detector: str = None  # Default --detector of every row (None: NVlabs' Inception-v3 / VGG16).
    notes: tuple = ()

    def claims(self, row):
        """(metric, direction) pairs the paper states for ``row`` against its baseline."""
        if row.baseline is None:
            return ()
        if row.claims:
            return tuple(row.claims)
        base = next(r for r in self.rows if r.id == row.baseline)
        out = []
        for metric, value in row.paper.items():
            ref = base.paper.get(metric)
            if value is not None and ref is not None and value != ref:
                out.append((metric, '<' if value < ref else '>'))
        return tuple(out)


def _magnet_rows():
    rows = []
    for psi, share, fid_0, fid_m in ((1, 0.041, 2.74, 2.66), (0.9, 0.2, 5.05, 4.29), (0.7, 1.0, 21.34, 19.41),
                                     (0.5, 1.0, 58.33, 54.47)):
        trunc = f';trunc={psi}' if psi != 1 else ''
        base_id = f'psi{psi}-naive'
        rows.append(Row(base_id, f'psi {psi}, 0 % MaGNET', 'ffhq-sg2f', f'random{trunc}', ('fid',),
                        paper=dict(fid=fid_0)))
        magnet = 'polarity:bank={bank},rho=1,top_k=30'
        if share < 1:
            rest = round(1 - share, 6)
            sampler = f'mix:{share}*polarity(bank={{bank}},rho=1,top_k=30)+{rest}*random{trunc}'
        else:
            sampler = magnet + trunc
        rows.append(Row(f'psi{psi}-magnet', f'psi {psi}, {share * 100:g} % MaGNET', 'ffhq-sg2f', sampler, ('fid',),
                        paper=dict(fid=fid_m), baseline=base_id))
    return tuple(rows)


def _polarity_rows():
    # (model, rho, paper numbers before -> after). Spaces and K as the paper gives them (see models below).
    entries = [
        ('ffhq-sg2f', 0.01, dict(fid=2.74, precision=0.68, recall=0.49), dict(fid=2.57, precision=0.67, recall=0.50)),
        ('ffhq-sg3t', -0.01, dict(fid=2.88), dict(fid=2.71)),
        ('afhqv2-sg3t', -0.01, dict(fid=4.05), dict(fid=3.95)),
        ('church-sg2', -0.001, dict(fid=3.97), dict(fid=3.92)),
        ('car-sg2', 0.01, dict(fid=2.34), dict(fid=2.27)),
        ('imagenet-biggan', 0.0065, dict(fid=6.86), dict(fid=6.82)),
        ('celebahq-progan', -0.01, dict(fid=7.37), dict(fid=7.28)),
    ]
    rows = []
    for model, rho, before, after in entries:
        metrics = tuple(before)
        top_k = POLARITY_MODELS[model].bank.top_k
        rows.append(Row(f'{model}-naive', f'{model}, rho 0', model, 'random', metrics, paper=before))
        rows.append(Row(f'{model}-polarity', f'{model}, rho {rho}', model,
                        f'polarity:bank={{bank}},rho={rho},top_k={top_k}', metrics, paper=after,
                        baseline=f'{model}-naive',
                        note='space and rho assumed as for StyleGAN3-T FFHQ' if model == 'afhqv2-sg3t' else None))
    return tuple(rows)


MAGNET_MODELS = {
    'ffhq-sg2f': Model('StyleGAN2 config-f FFHQ 1024 (NVlabs stylegan2-ffhq-config-f.pkl), FID against the full '
                       'FFHQ', Bank(space='pixel', top_k=30)),
}

POLARITY_MODELS = {
    'ffhq-sg2f': Model('StyleGAN2 config-f FFHQ 1024, volumes in Inception-v3 feature space',
                       Bank(space='feature', top_k=30, embedder='inception')),
    'ffhq-sg3t': Model('StyleGAN3-T FFHQ 1024, volumes in VGG16 feature space', Bank(space='feature', top_k=10,
                                                                                    embedder='vgg16')),
    'afhqv2-sg3t': Model('StyleGAN3-T AFHQv2 512, volumes in VGG16 feature space (assumed)',
                         Bank(space='feature', top_k=10, embedder='vgg16')),
    'church-sg2': Model('StyleGAN2 LSUN Church 256, pixel-space volumes', Bank(space='pixel', top_k=30)),
    'car-sg2': Model('StyleGAN2 LSUN Car 512x384, style-space volumes', Bank(space='style', top_k=30)),
    'imagenet-biggan': Model('BigGAN-deep ImageNet 256, pixel-space volumes, random classes',
                             Bank(space='pixel', top_k=10)),
    'celebahq-progan': Model('ProGAN CelebA-HQ 1024, pixel-space volumes at 256 px (the authors\' --resize)',
                             Bank(space='pixel', top_k=30, resize=256)),
}

DEMO_MODELS = {
    'embedded': Model('the embedded class-conditional MNIST StyleGAN2 (pretrained/mnist32-stylegan2.pkl), the '
                      'shipped MNIST classifier as feature detector and attribute (digit) classifier; top-30 '
                      'style-space volumes', Bank(space='style', top_k=30), default_network='embedded'),
}

TABLES = {
    'magnet': Table(
        name='magnet', title='MaGNET (ICLR 2022), Appendix F: FID of StyleGAN2 FFHQ with x % MaGNET samples',
        source='Humayun et al., ICLR 2022, Appendix F', models=MAGNET_MODELS, rows=_magnet_rows(),
        num_latents=250000, num_samples=50000,
        notes=('Bank: top-30 pixel-space singular values of N latents (the authors used 250,000); MaGNET rows '
               'resample it with rho = 1, the rest of each set is plain random latents, all at the row\'s psi.',)),
    'polarity': Table(
        name='polarity', title='Polarity sampling (CVPR 2022): FID / precision / recall before and after',
        source='Humayun et al., CVPR 2022', models=POLARITY_MODELS, rows=_polarity_rows(),
        num_latents=250000, num_samples=50000,
        notes=('Each model needs its own --network KEY=PATH and --data KEY=PATH; rows of models not given are '
               'listed as not run.',)),
    'hubness': Table(
        name='hubness', title='Hubness priors (ICML 2022): hub sampling against random and truncation',
        source='Liang et al., ICML 2022 (their table\'s numbers are not available to us: the paper column is '
               'empty)',
        models={'net': Model('any network given with --network net=PATH and its dataset --data net=PATH')},
        rows=(
            Row('random', 'random, psi 1', 'net', 'random', ('fid', 'precision', 'recall'),
                paper=dict(fid=None, precision=None, recall=None)),
            Row('trunc0.9', 'truncation psi 0.9', 'net', 'trunc:0.9', ('fid', 'precision', 'recall'),
                paper=dict(fid=None, precision=None, recall=None), baseline='random'),
            Row('trunc0.7', 'truncation psi 0.7', 'net', 'trunc:0.7', ('fid', 'precision', 'recall'),
                paper=dict(fid=None, precision=None, recall=None), baseline='random'),
            Row('hubness', 'hubness k=5, t=50, N=10,000 per batch', 'net', 'hubness:k=5,t=50,batch=10000',
                ('fid', 'precision', 'recall'), paper=dict(fid=None, precision=None, recall=None),
                baseline='random', claims=(('precision', '>'),)),
        ),
        num_latents=0, num_samples=50000),
    'demo': Table(
        name='demo', title='The papers\' directions on the embedded MNIST network, at small scale, offline',
        source='this project; the claims are the papers\' stated directions (MaGNET: recall up, attribute bias '
               'down; polarity rho < 0: precision up, rho > 0: recall up; MaGNET at psi 0.7: FID down; hubness: '
               'precision up)',
        models=DEMO_MODELS,
        rows=(
            Row('random', 'random, psi 1', 'embedded', 'random', ('fid', 'precision', 'recall', 'bias')),
            Row('magnet', 'MaGNET (rho 1, top 30)', 'embedded', 'polarity:bank={bank},rho=1,top_k=30',
                ('fid', 'precision', 'recall', 'bias'), baseline='random', claims=(('recall', '>'), ('bias', '<'))),
            Row('rho-0.2', 'polarity rho -0.2', 'embedded', 'polarity:bank={bank},rho=-0.2,top_k=30',
                ('fid', 'precision', 'recall', 'bias'), baseline='random', claims=(('precision', '>'),)),
            Row('rho+0.2', 'polarity rho +0.2', 'embedded', 'polarity:bank={bank},rho=0.2,top_k=30',
                ('fid', 'precision', 'recall', 'bias'), baseline='random', claims=(('recall', '>'),)),
            Row('psi0.7', 'truncation psi 0.7', 'embedded', 'trunc:0.7', ('fid', 'precision', 'recall', 'bias')),
            Row('psi0.7-magnet', 'psi 0.7, 100 % MaGNET', 'embedded', 'polarity:bank={bank},rho=1,top_k=30;trunc=0.7',
                ('fid', 'precision', 'recall', 'bias'), baseline='psi0.7', claims=(('fid', '<'),)),
            Row('hubness', 'hubness k=5, t=20 (W)', 'embedded', 'hubness:k=5,t=20,space=w',
                ('fid', 'precision', 'recall', 'bias'), baseline='random', claims=(('precision', '>'),)),
        ),
        num_latents=2000, num_samples=1000, detector='pretrained/mnist_classifier.pt'),
}


def metric_names(num_samples):
    """calc_metrics.py names of the row metrics for ``num_samples`` generated images, and the result keys."""
    size = f'{num_samples // 1000}k' if num_samples % 1000 == 0 else str(num_samples)
    pr = f'pr{size}3_full' if size.endswith('k') else f'pr{size}_3_full'
    names = dict(fid=f'fid{size}_full', precision=pr, recall=pr, bias=f'attr{size}')
    keys = dict(fid=names['fid'], precision=f'{pr}_precision', recall=f'{pr}_recall', bias=f'attr{size}_bias')
    return names, keys
