"""A small StyleGAN2 training loop (one process, CPU or one GPU) that writes NVlabs-style run folders.

A run folder holds:

* ``training_options.json``: every argument of :func:`training_loop` (calc_metrics.py looks for
  this file next to a snapshot, as NVlabs' does).
* ``network-snapshot-{kimg:06d}.pkl``: G, D, G_ema and ``training_set_kwargs`` in NVlabs' snapshot
  layout (written with ``legacy.save_network_pkl``; read back safely with ``legacy.load_network_pkl``).
* ``reals.png``, ``fakes_init.png``, ``fakes{kimg:06d}.png``: image grids; the fakes use the same
  fixed latents every time, z = ``np.random.RandomState(seed).randn(z_dim)`` for seeds 0, 1, ...
  (so ``generate.py --seeds`` reproduces any cell).
* ``stats.jsonl``: one JSON line per tick, ``{"Loss/G/loss": {"num": .., "mean": .., "std": ..},
  ..., "Progress/kimg": .., "Timing/sec_per_kimg": .., "timestamp": ..}`` (NVlabs' format).
* ``log.txt``: the human-readable line printed at every tick.

Optimisation follows StyleGAN2: Adam with betas (0, 0.99), lazy regularisation (the regulariser
runs every ``*_reg_interval`` minibatches; the main phase's learning rate and betas are adjusted by
``mb_ratio = interval / (interval + 1)`` so the optimiser's effective step stays the same), and an
exponential moving average G_ema whose half-life is ``ema_kimg`` thousand images (optionally ramped
up over the first images: half-life <= ``ema_rampup`` * images seen).

Resuming (``resume_pkl``) loads G, D and G_ema from a snapshot with the safe loader and copies their
weights into the networks built from ``G_kwargs`` / ``D_kwargs`` (names and shapes must match). Our
snapshots also hold a ``training_state`` entry (NVlabs' code ignores it): the exact image count, tick
and minibatch index, both optimisers' state (Adam moments and step counts), the random generators
(torch, numpy) and the position in the data order, and the path-length mean. Resuming from such a
snapshot continues the run exactly: on CPU with num_workers=0 the resumed run's networks equal those of
an uninterrupted run bit for bit (tests/test_train.py); the learning rates and betas are those of the
resuming options. From a snapshot without it (NVlabs' own), the image counter continues from
``resume_kimg``, which defaults to the number in the file name (``network-snapshot-000120.pkl`` -> 120
kimg; 0 for other names), and the optimiser moments and the data order start afresh, as in NVlabs' code.
:func:`find_resumable_run` finds the run folder a re-run with the same options continues in place.

On CPU with ``data_loader_kwargs`` num_workers=0 a run is deterministic for a given ``random_seed``.
"""

import copy
import json
import os
import re
import time

import numpy as np
import torch

import dnnlib
import legacy
from torch_utils import images as image_utils
from training.dataset import open_dataset

# ----------------------------------------------------------------------------


class ResumeError(ValueError, dnnlib.util.UserError):
    """The snapshot to resume from cannot be used; the message is one line saying why."""


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless stream of dataset indices: a fresh seeded permutation for every pass over the data."""

    def __init__(self, dataset, shuffle=True, seed=0, start=0):
        assert len(dataset) > 0
        self.num_items = len(dataset)
        self.shuffle = shuffle
        self.seed = seed
        self.start = int(start)   # Items of the stream already consumed (a resumed run skips them).

    def __iter__(self):
        rnd = np.random.RandomState(self.seed)
        skip = self.start
        while True:
            order = rnd.permutation(self.num_items) if self.shuffle else np.arange(self.num_items)
            if skip >= self.num_items:
                skip -= self.num_items
                continue
            yield from order[skip:].tolist()
            skip = 0


def lazy_regularization_opt_kwargs(opt_kwargs, reg_interval):
    """Optimiser arguments of a main phase whose regulariser runs every ``reg_interval`` minibatches.

    Over ``reg_interval + 1`` optimiser steps (``reg_interval`` main, one regularisation) the
    learning rate is scaled by ``mb_ratio = reg_interval / (reg_interval + 1)`` and the Adam betas
    raised to ``mb_ratio``, so that the moments decay per minibatch as without lazy regularisation.
    """
    opt_kwargs = dnnlib.EasyDict(opt_kwargs)
    mb_ratio = 1 if reg_interval is None else reg_interval / (reg_interval + 1)
    opt_kwargs.lr = opt_kwargs.lr * mb_ratio
    if 'betas' in opt_kwargs:
        # Floats: torch's Adam refuses a mix of int and float betas such as [0, 0.99].
        opt_kwargs.betas = tuple(float(beta) ** mb_ratio for beta in opt_kwargs.betas)
    return opt_kwargs


def ema_beta(batch_size, ema_kimg, cur_nimg, ema_rampup=None):
    """Per-step decay of G_ema: after ``ema_nimg`` images the old weights keep half their weight.

    ``ema_nimg = ema_kimg * 1000``, capped at ``cur_nimg * ema_rampup`` when ramping up.
    """
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema, G, beta):
    """G_ema <- beta * G_ema + (1 - beta) * G for parameters; buffers (w_avg, noise) are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def resume_kimg_from_name(path):
    """120 for '.../network-snapshot-000120.pkl', 0 for any other file name."""
    match = re.fullmatch(r'network-snapshot-(\d+)\.pkl', os.path.basename(str(path)))
    return int(match.group(1)) if match else 0


def copy_weights(src, dst, what, where):
    """Copy every parameter and buffer of ``src`` into ``dst``; names and shapes must agree."""
    src_tensors = dict(list(src.named_parameters()) + list(src.named_buffers()))
    dst_tensors = dict(list(dst.named_parameters()) + list(dst.named_buffers()))
    if set(src_tensors) != set(dst_tensors):
        only = sorted(set(src_tensors) ^ set(dst_tensors))
        raise ResumeError(f'{where}: {what} does not match the network being trained (e.g. {only[0]}); '
                         'train with the options the snapshot was made with')
    with torch.no_grad():
        for name, tensor in dst_tensors.items():
            if src_tensors[name].shape != tensor.shape:
                raise ResumeError(f'{where}: {what}.{name} has shape {list(src_tensors[name].shape)}, the network '
                                 f'being trained {list(tensor.shape)}; train with the snapshot\'s options')
            tensor.copy_(src_tensors[name])

# ----------------------------------------------------------------------------


def training_loop(
    run_dir                 = '.',      # Output folder.
    training_set_kwargs     = None,     # Dataset: class_name, path, use_labels, max_size, xflip, resolution, ...
    data_loader_kwargs      = None,     # torch DataLoader options (num_workers, pin_memory, ...).
    G_kwargs                = None,     # Generator: class_name and constructor arguments.
    D_kwargs                = None,     # Discriminator: class_name and constructor arguments.
    G_opt_kwargs            = None,     # Generator optimiser: class_name, lr, betas, eps.
    D_opt_kwargs            = None,     # Discriminator optimiser.
    loss_kwargs             = None,     # Loss: class_name and arguments (r1_gamma, ...).
    random_seed             = 0,
    batch_size              = 32,
    ema_kimg                = 10,       # Half-life of G_ema in thousands of images.
    ema_rampup              = 0.05,     # Half-life <= this fraction of the images seen; None = no ramp-up.
    G_reg_interval          = None,     # Path-length regularisation every N minibatches; None = with the main loss.
    D_reg_interval          = 16,       # R1 regularisation every N minibatches; None = with the main loss.
    total_kimg              = 1000,     # Train until this many thousand real images have been shown.
    kimg_per_tick           = 4,        # Progress line, stats and snapshot checks every N thousand images.
    image_snapshot_ticks    = 10,       # Image grid every N ticks; None = never.
    network_snapshot_ticks  = 10,       # Network snapshot every N ticks; None = never (the last is always written).
    resume_pkl              = None,     # Snapshot to resume from.
    resume_kimg             = None,     # Images already shown at the snapshot, in thousands; None = from its name.
    device                  = 'cpu',
    grid_size               = None,     # (columns, rows) of the image grids; None = by resolution.
    verbose                 = True,     # Print the progress lines (they always go to log.txt).
):
    """Train a GAN and write the run folder described in the module docstring.

    Returns
    -------
    EasyDict
        ``cur_nimg`` (images shown at the end, counting from the resumed position) and
        ``snapshot_pkl`` (path of the last network snapshot).
    """
    if training_set_kwargs is None:
        raise ValueError('training_loop() needs training_set_kwargs (class_name, path, ...)')
    data_loader_kwargs, G_kwargs, D_kwargs, G_opt_kwargs, D_opt_kwargs, loss_kwargs = (
        kwargs or {} for kwargs in (data_loader_kwargs, G_kwargs, D_kwargs, G_opt_kwargs, D_opt_kwargs, loss_kwargs))
    options = dict(run_dir=run_dir, training_set_kwargs=training_set_kwargs, data_loader_kwargs=data_loader_kwargs,
                   G_kwargs=G_kwargs, D_kwargs=D_kwargs, G_opt_kwargs=G_opt_kwargs, D_opt_kwargs=D_opt_kwargs,
                   loss_kwargs=loss_kwargs, random_seed=random_seed, batch_size=batch_size, ema_kimg=ema_kimg,
                   ema_rampup=ema_rampup, G_reg_interval=G_reg_interval, D_reg_interval=D_reg_interval,
                   total_kimg=total_kimg, kimg_per_tick=kimg_per_tick, image_snapshot_ticks=image_snapshot_ticks,
                   network_snapshot_ticks=network_snapshot_ticks, resume_pkl=resume_pkl, resume_kimg=resume_kimg,
                   device=str(device), grid_size=grid_size)
    os.makedirs(run_dir, exist_ok=True)
    _write_json(os.path.join(run_dir, 'training_options.json'), options)
    log = _RunLog(run_dir, verbose)
    start_time = time.time()
    device = torch.device(device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # Keep float32 numerics comparable with CPU runs.
        torch.backends.cudnn.allow_tf32 = False
    np.random.seed(random_seed)
    torch.manual_seed(random_seed)
    rnd = np.random.RandomState(random_seed)

    # Data.
    training_set = open_dataset(**training_set_kwargs)  # Our class only, even for kwargs read from a file.
    sampler = InfiniteSampler(training_set, seed=random_seed)
    loader = torch.utils.data.DataLoader(training_set, sampler=sampler, batch_size=batch_size, **data_loader_kwargs)
    training_set_iterator = iter(loader)
    log(f'Dataset: {training_set.name}, {len(training_set)} images of {training_set.image_shape}, '
        f'label_dim {training_set.label_dim}')

    # Networks.
    common_kwargs = dict(c_dim=training_set.label_dim, img_resolution=training_set.resolution,
                         img_channels=training_set.num_channels)
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common_kwargs).train().requires_grad_(False).to(device)
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **common_kwargs).train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()
    cur_nimg = 0
    resume_data, state = None, None
    in_place = resume_pkl is not None and os.path.samefile(os.path.dirname(os.path.abspath(resume_pkl)), run_dir)
    if resume_pkl is not None:
        log(f'Resuming from {resume_pkl}')
        resume_data = _load_snapshot(resume_pkl)
        state = resume_data.get('training_state')
        if state is not None and not _usable_state(state):
            log(f'warning: {resume_pkl} has a training state this code does not read; resuming the weights only')
            state = None
        if state is not None:
            # Continue the data order where the snapshot was taken: a new iterator over the shifted sampler
            # (any batches the first one prefetched are dropped with it).
            sampler.start = int(state['data_position'])
            training_set_iterator = iter(loader)
        for name, module in (('G', G), ('D', D), ('G_ema', G_ema)):
            if resume_data[name] is None:
                raise ResumeError(f'{resume_pkl} has no {name} network to resume from')
            copy_weights(resume_data[name], module, name, resume_pkl)
        if resume_kimg is not None:
            cur_nimg = int(round(resume_kimg * 1000))
        elif state is not None:
            cur_nimg = int(state['cur_nimg'])
        else:
            cur_nimg = int(round(resume_kimg_from_name(resume_pkl) * 1000))
    log(f'Parameters: G {_num_params(G):,}, D {_num_params(D):,}')

    # Optimisation phases: a main phase every minibatch, a regularisation phase every reg_interval.
    loss = dnnlib.util.construct_class_by_name(G=G, D=D, device=device, **loss_kwargs)
    phases = []
    optimizers = {}
    for name, module, opt_kwargs, reg_interval in (('G', G, G_opt_kwargs, G_reg_interval),
                                                   ('D', D, D_opt_kwargs, D_reg_interval)):
        opt = dnnlib.util.construct_class_by_name(params=module.parameters(),
                                                  **lazy_regularization_opt_kwargs(opt_kwargs, reg_interval))
        if state is not None:
            _load_optimizer_state(opt, state['optimizers'][name], resume_pkl, name)
        optimizers[name] = opt
        if reg_interval is None:
            phases.append(dnnlib.EasyDict(name=name + 'both', module=module, opt=opt, interval=1))
        else:
            phases.append(dnnlib.EasyDict(name=name + 'main', module=module, opt=opt, interval=1))
            phases.append(dnnlib.EasyDict(name=name + 'reg', module=module, opt=opt, interval=reg_interval))

    # Image grids: real images, then the fixed latents through G_ema.
    if grid_size is None:
        side = int(np.clip(512 // training_set.resolution, 4, 16))
        grid_size = (side, side)
    grid_z, grid_c = _grid_latents(training_set, G.z_dim, grid_size[0] * grid_size[1], device)
    if image_snapshot_ticks is not None and not (in_place and os.path.exists(os.path.join(run_dir, 'fakes_init.png'))):
        reals = [training_set[int(idx)][0] for idx in
                 rnd.choice(len(training_set), size=len(grid_z), replace=len(grid_z) > len(training_set))]
        _save_grid(os.path.join(run_dir, 'reals.png'), np.stack(reals).transpose(0, 2, 3, 1), grid_size)
        _save_grid(os.path.join(run_dir, 'fakes_init.png'), _generate(G_ema, grid_z, grid_c), grid_size)

    # Train.
    cur_tick = 0
    batch_idx = 0
    if state is not None:
        cur_tick, batch_idx = int(state['cur_tick']), int(state['batch_idx'])
        _restore_random_state(state, rnd, device)
        loss.pl_mean.copy_(state['pl_mean'].to(device))
        log(f'Resumed exactly at {cur_nimg / 1000:.3f} kimg, tick {cur_tick} (optimiser state, random generators '
            f'and data position restored)')
        if in_place:
            _trim_stats(os.path.join(run_dir, 'stats.jsonl'), cur_tick)
    if cur_nimg >= total_kimg * 1000:
        log(f'Already at {cur_nimg / 1000:.3f} kimg, the requested length is {total_kimg} kimg: nothing to train')
        return dnnlib.EasyDict(cur_nimg=cur_nimg, snapshot_pkl=resume_pkl)
    log(f'Training for {total_kimg} kimg on {device}...')
    tick_start_nimg = cur_nimg
    tick_start_time = time.time()
    maintenance_time = tick_start_time - start_time
    tick_stats = {}
    snapshot_pkl = None
    batch_idx_since_start = 0
    while True:
        real_img, real_c = next(training_set_iterator)
        real_img = real_img.to(device).to(torch.float32) / 127.5 - 1
        real_c = real_c.to(device)
        all_gen_z = torch.randn([len(phases), batch_size, G.z_dim], device=device)
        all_gen_c = [_random_labels(training_set, batch_size, rnd, device) for _ in phases]

        for phase, gen_z, gen_c in zip(phases, all_gen_z, all_gen_c):
            if batch_idx % phase.interval != 0:
                continue
            phase.opt.zero_grad(set_to_none=True)
            phase.module.requires_grad_(True)
            stats = loss.accumulate_gradients(phase=phase.name, real_img=real_img, real_c=real_c, gen_z=gen_z,
                                              gen_c=gen_c, gain=phase.interval, cur_nimg=cur_nimg)
            phase.module.requires_grad_(False)
            for param in phase.module.parameters():
                if param.grad is not None:
                    torch.nan_to_num_(param.grad, nan=0, posinf=1e5, neginf=-1e5)
            phase.opt.step()
            for key, value in stats.items():
                tick_stats.setdefault(key, []).append(value.detach().to(torch.float64).cpu().flatten())

        update_ema(G_ema, G, ema_beta(batch_size, ema_kimg, cur_nimg, ema_rampup))
        cur_nimg += batch_size
        batch_idx += 1
        batch_idx_since_start += 1

        # A tick ends after the first minibatch, then every kimg_per_tick thousand images.
        done = cur_nimg >= total_kimg * 1000
        if not done and cur_tick != 0 and cur_nimg < tick_start_nimg + kimg_per_tick * 1000:
            continue

        tick_end_time = time.time()
        tick_kimg = (cur_nimg - tick_start_nimg) / 1000
        timing = {
            'Progress/tick': cur_tick,
            'Progress/kimg': cur_nimg / 1000,
            'Timing/total_sec': tick_end_time - start_time,
            'Timing/sec_per_tick': tick_end_time - tick_start_time,
            'Timing/sec_per_kimg': (tick_end_time - tick_start_time) / max(tick_kimg, 1e-8),
            'Timing/maintenance_sec': maintenance_time,
        }
        peak_rss_gb = _peak_rss_gb()
        if peak_rss_gb is not None:
            timing['Resources/peak_cpu_mem_gb'] = peak_rss_gb
        if device.type == 'cuda':
            timing['Resources/peak_gpu_mem_gb'] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        summary = {key: _summarize(values) for key, values in sorted(tick_stats.items())}
        log(_tick_line(timing, summary))
        _append_jsonl(os.path.join(run_dir, 'stats.jsonl'), summary, timing)
        tick_stats = {}

        kimg_name = f'{cur_nimg // 1000:06d}'
        if image_snapshot_ticks is not None and (done or cur_tick % image_snapshot_ticks == 0):
            _save_grid(os.path.join(run_dir, f'fakes{kimg_name}.png'), _generate(G_ema, grid_z, grid_c), grid_size)
        if done or (network_snapshot_ticks is not None and cur_tick % network_snapshot_ticks == 0):
            snapshot_pkl = os.path.join(run_dir, f'network-snapshot-{kimg_name}.pkl')
            snapshot_state = _training_state(
                cur_nimg=cur_nimg, cur_tick=cur_tick + 1, batch_idx=batch_idx,
                data_position=sampler.start + batch_idx_since_start * batch_size, optimizers=optimizers, rnd=rnd,
                pl_mean=loss.pl_mean, device=device)
            legacy.save_network_pkl(snapshot_pkl, G=G, D=D, G_ema=G_ema,
                                    training_set_kwargs=dnnlib.EasyDict(training_set_kwargs),
                                    extra=dict(training_state=snapshot_state))

        cur_tick += 1
        tick_start_nimg = cur_nimg
        tick_start_time = time.time()
        maintenance_time = tick_start_time - tick_end_time
        if done:
            break

    log(f'Done: {cur_nimg / 1000:.1f} kimg in {dnnlib.util.format_time(time.time() - start_time)}; '
        f'last snapshot {snapshot_pkl}')
    return dnnlib.EasyDict(cur_nimg=cur_nimg, snapshot_pkl=snapshot_pkl)

# ----------------------------------------------------------------------------


def _load_snapshot(path):
    try:
        with open(path, 'rb') as f:
            return legacy.load_network_pkl(f)
    except (OSError, legacy.NetworkLoadError) as err:
        raise ResumeError(f'cannot resume from {path}: {err}') from None


TRAINING_STATE_FORMAT = 1


def _cpu_copy(value):
    """Tensors inside nested dicts/lists moved to the CPU and detached (a snapshot holds CPU tensors)."""
    if torch.is_tensor(value):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(item) for item in value)
    return value


def _numpy_rng_state(get_state):
    """A numpy MT19937 state (``RandomState.get_state`` or ``np.random.get_state``) as bytes and numbers."""
    _, keys, pos, has_gauss, cached_gaussian = get_state()
    return [keys.astype('<u4').tobytes(), int(pos), int(has_gauss), float(cached_gaussian)]


def _set_numpy_rng_state(set_state, saved):
    keys, pos, has_gauss, cached_gaussian = saved
    set_state(('MT19937', np.frombuffer(keys, dtype='<u4').astype(np.uint32), pos, has_gauss, cached_gaussian))


def _training_state(cur_nimg, cur_tick, batch_idx, data_position, optimizers, rnd, pl_mean, device):
    """What continues a run exactly, stored in the snapshot as ``training_state``.

    Plain data only: numbers, bytes (the random generators' states) and the optimisers' tensors, which have
    the dtypes of the parameters they belong to, so a safe loader that checks a network's tensors reads it.
    """
    return dict(
        format=TRAINING_STATE_FORMAT, cur_nimg=int(cur_nimg), cur_tick=int(cur_tick), batch_idx=int(batch_idx),
        data_position=int(data_position),
        optimizers={name: _cpu_copy(opt.state_dict()) for name, opt in optimizers.items()},
        torch_rng=torch.get_rng_state().numpy().tobytes(),
        cuda_rng=torch.cuda.get_rng_state(device).numpy().tobytes() if device.type == 'cuda' else None,
        numpy_rng=_numpy_rng_state(rnd.get_state), numpy_global_rng=_numpy_rng_state(np.random.get_state),
        pl_mean=pl_mean.detach().cpu().clone())


def _usable_state(state):
    keys = ('cur_nimg', 'cur_tick', 'batch_idx', 'data_position', 'optimizers', 'torch_rng', 'numpy_rng',
            'numpy_global_rng', 'pl_mean')
    return (isinstance(state, dict) and state.get('format') == TRAINING_STATE_FORMAT and all(k in state for k in keys)
            and isinstance(state['optimizers'], dict) and {'G', 'D'} <= set(state['optimizers']))


def _load_optimizer_state(opt, saved, path, name):
    """Restore Adam's moments and step counts; keep this run's learning rate, betas and eps."""
    hyper = [{k: v for k, v in group.items() if k != 'params'} for group in opt.param_groups]
    try:
        opt.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ResumeError(f'{path}: the {name} optimiser state does not fit this run ({err}); train with the '
                          'options the snapshot was made with') from None
    for group, values in zip(opt.param_groups, hyper):
        group.update(values)


def _restore_random_state(state, rnd, device):
    def as_tensor(data):
        return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    torch.set_rng_state(as_tensor(state['torch_rng']))
    if device.type == 'cuda' and state.get('cuda_rng') is not None:
        torch.cuda.set_rng_state(as_tensor(state['cuda_rng']), device)
    _set_numpy_rng_state(rnd.set_state, state['numpy_rng'])
    _set_numpy_rng_state(np.random.set_state, state['numpy_global_rng'])


def _trim_stats(path, cur_tick):
    """Drop the stats lines of ticks after the snapshot a run resumes from (they are trained again)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line)['Progress/tick']['mean'] < cur_tick:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue   # A line cut short by the kill.
    with dnnlib.util.atomic_write(path, 'w') as f:
        f.writelines(keep)


def find_resumable_run(outdir, desc, options):
    """``(run_dir, snapshot)`` of an unfinished run under `outdir` with the same options, or None.

    A run folder ``NNNNN-<desc>`` qualifies when its ``training_options.json`` equals `options` except for
    what does not change the trained networks (run_dir, resume_pkl/resume_kimg, total_kimg, tick and
    snapshot intervals, data loader, device) and its latest snapshot holds a ``training_state`` short of
    `options['total_kimg']`.
    """
    ignore = ('run_dir', 'resume_pkl', 'resume_kimg', 'total_kimg', 'kimg_per_tick', 'image_snapshot_ticks',
              'network_snapshot_ticks', 'data_loader_kwargs', 'device', 'verbose', 'grid_size')

    def comparable(opts):
        return {k: v for k, v in json.loads(json.dumps(opts, default=str)).items() if k not in ignore}

    if not os.path.isdir(outdir):
        return None
    want = comparable(options)
    runs = sorted((name for name in os.listdir(outdir) if re.fullmatch(r'\d+-' + re.escape(desc), name)), reverse=True)
    for name in runs:
        run_dir = os.path.join(outdir, name)
        try:
            with open(os.path.join(run_dir, 'training_options.json')) as f:
                if comparable(json.load(f)) != want:
                    continue
        except (OSError, ValueError):
            continue
        snapshots = sorted(n for n in os.listdir(run_dir) if re.fullmatch(r'network-snapshot-\d+\.pkl', n))
        for snapshot in reversed(snapshots):   # The latest readable one.
            path = os.path.join(run_dir, snapshot)
            try:
                state = _load_snapshot(path).get('training_state')
            except ResumeError:
                continue
            if not _usable_state(state) or state['cur_nimg'] >= options['total_kimg'] * 1000:
                break
            return run_dir, path
    return None


def _peak_rss_gb():
    try:
        import resource  # Unix only.
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux reports KiB.


def _num_params(module):
    return sum(p.numel() for p in module.parameters())


def _random_labels(training_set, batch_size, rnd, device):
    labels = [training_set.get_label(int(idx)) for idx in rnd.randint(len(training_set), size=batch_size)]
    return torch.from_numpy(np.stack(labels)).to(device)


def _grid_latents(training_set, z_dim, count, device):
    """Latents of seeds 0..count-1 (NVlabs' per-seed convention); classes cycle for one-hot labels."""
    z = np.stack([np.random.RandomState(seed).randn(z_dim) for seed in range(count)])
    if training_set.has_onehot_labels and training_set.label_dim > 0:
        c = np.eye(training_set.label_dim, dtype=np.float32)[np.arange(count) % training_set.label_dim]
    else:
        c = np.stack([training_set.get_label(idx % len(training_set)) for idx in range(count)])
    return torch.from_numpy(z).to(device, torch.float32), torch.from_numpy(c).to(device, torch.float32)


@torch.no_grad()
def _generate(G, z, c, batch=64):
    out = [image_utils.to_uint8(G(z[i:i + batch], c[i:i + batch], noise_mode='const')) for i in range(0, len(z), batch)]
    return np.concatenate(out)


def _save_grid(path, images_nhwc, grid_size):
    import PIL.Image
    grid = image_utils.make_grid(images_nhwc, cols=grid_size[0])
    image = PIL.Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    with dnnlib.util.atomic_write(path) as f:
        image.save(f, format='png')


def _summarize(values):
    values = torch.cat(values)
    return dict(num=int(values.numel()), mean=float(values.mean()),
                std=float(values.std(unbiased=False)) if values.numel() > 1 else 0.0)


def _tick_line(timing, summary):
    fields = [f'tick {timing["Progress/tick"]:<5d}', f'kimg {timing["Progress/kimg"]:<8.1f}',
              f'time {dnnlib.util.format_time(timing["Timing/total_sec"]):<12s}',
              f'sec/tick {timing["Timing/sec_per_tick"]:<7.1f}', f'sec/kimg {timing["Timing/sec_per_kimg"]:<7.2f}',
              f'maintenance {timing["Timing/maintenance_sec"]:<6.1f}']
    for key, label in (('Loss/G/loss', 'loss/G'), ('Loss/D/loss', 'loss/D'), ('Loss/r1_penalty', 'r1'),
                       ('Loss/pl_penalty', 'pl')):
        if key in summary:
            fields.append(f'{label} {summary[key]["mean"]:<7.3f}')
    return ' '.join(fields)


def _append_jsonl(path, summary, timing):
    record = dict(summary)
    record.update({key: dict(num=1, mean=float(value), std=0.0) for key, value in timing.items()})
    record['timestamp'] = time.time()
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')
        f.flush()


def _write_json(path, obj):
    text = json.dumps(obj, indent=2, default=str)
    with dnnlib.util.atomic_write(path, 'w') as f:
        f.write(text)


class _RunLog:
    """Prints a line (when verbose) and appends it to log.txt in the run folder."""

    def __init__(self, run_dir, verbose):
        self.path = os.path.join(run_dir, 'log.txt')
        self.verbose = verbose

    def __call__(self, line):
        if self.verbose:
            print(line, flush=True)
        with open(self.path, 'a') as f:
            f.write(line + '\n')
