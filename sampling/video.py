"""Videos of samplers: rho sweeps, truncation sweeps and W-space interpolations between hub latents, as MP4.

Every frame is a grid of images with a caption band above it (what changes: rho, psi, the hub pair). Frames are
encoded by the ffmpeg binary that imageio-ffmpeg ships (H.264, yuv420p, even sizes, so that every player shows
them) into a temporary file beside the target, renamed onto it when complete: a killed run leaves no partial
video.

* :func:`rho_sweep_frames` -- the same polarity draw (same seed, so the same uniforms) for each rho of a sweep,
  from negative (toward the modes) to positive (toward the anti-modes): the images change only where the
  weights move the draw.
* :func:`truncation_sweep_frames` -- the same latents at each psi of a sweep.
* :func:`interpolation_frames` -- straight lines in W between consecutive hub latents (the hubs' w at psi 1,
  truncated like any w); for StyleGAN3 the input may also translate and rotate over the video.
"""

import contextlib
import os
import tempfile

import numpy as np
import torch

from sampling.images import label_font, make_grid, to_uint8
from sampling.synthesis import set_input_transform, synthesize

CAPTION_HEIGHT = 24


def to_rgb(frame):
    """HxW or HxWxC (C = 1 or 3) uint8 -> HxWx3 uint8."""
    frame = np.asarray(frame, dtype=np.uint8)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    return np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame


def pad_even(frame):
    """Pad a frame with black to an even height and width (yuv420p needs both)."""
    h, w = frame.shape[:2]
    return np.pad(frame, [(0, h % 2), (0, w % 2), (0, 0)]) if (h % 2 or w % 2) else frame


def captioned(frame, text, height=CAPTION_HEIGHT):
    """``frame`` (HxWx3 uint8) under a white band with ``text`` in black."""
    import PIL.Image
    import PIL.ImageDraw
    band = PIL.Image.new('RGB', (frame.shape[1], height), 'white')
    PIL.ImageDraw.Draw(band).text((6, height // 2), text, fill='black', font=label_font(max(10, height * 2 // 3)),
                                  anchor='lm')
    return np.concatenate([np.asarray(band), frame], axis=0)


def grid_frame(images, cols, scale=1):
    """NHWC uint8 images -> one RGB grid, each image enlarged ``scale`` times (nearest neighbour)."""
    images = np.asarray(images)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    return to_rgb(make_grid(images, cols=cols))


def render(G, z=None, c=None, ws=None, truncation_psi=1, noise_mode='const', batch_size=16):
    """uint8 NHWC images of latents ``z`` (labels ``c``) or of ``ws`` [N, num_ws, w_dim]."""
    return np.concatenate([to_uint8(img) for img in synthesize(G, z=z, c=c, ws=ws, truncation_psi=truncation_psi,
                                                               noise_mode=noise_mode, batch_size=batch_size)])

# ----------------------------------------------------------------------------
# Sweeps.


def sweep_values(start, stop, num):
    """``num`` evenly spaced values from ``start`` to ``stop`` (both included), rounded to 6 decimals."""
    if num < 1:
        raise ValueError(f'a sweep needs at least one frame, got {num}')
    return [round(float(v), 6) for v in np.linspace(start, stop, num)]


def rho_sweep_frames(G, bank, rhos, num, seed=0, top_k=None, per_class=None, truncation_psi=1, cols=None, scale=2,
                     noise_mode='const'):
    """Yield one captioned frame per rho: ``num`` latents of ``bank`` drawn with polarity rho and seed ``seed``.

    The draw is that of ``generate_magnet.py`` (:class:`sampling.samplers.PolaritySource`, with replacement;
    ``per_class`` defaults to True for a labelled bank), so a frame equals ``generate_magnet.py --rho R --seed S``.
    """
    from sampling import samplers, volume, volume_report
    per_class = bank.c_dim > 0 if per_class is None else per_class
    cols = cols or num
    log_volume = volume.log_volume(np.asarray(bank['svds'], dtype=np.float64), top_k=top_k)
    ids = volume_report.class_ids(bank) if per_class else None
    for rho in rhos:
        source = samplers.PolaritySource(bank, G.z_dim, G.c_dim, rho=rho, top_k=top_k, per_class=per_class,
                                         normalizes_z=bool(getattr(G, 'normalizes_z', True)))
        drawn = source.draw(num, seed)
        z, c = drawn.z, drawn.c
        images = render(G, z=z, c=c, truncation_psi=truncation_psi, noise_mode=noise_mode)
        ess = volume_report.ess_curve(log_volume, [rho], ids)[0]  # As the bank report gives it.
        yield captioned(grid_frame(images, cols, scale), f'rho = {rho:+.3f}   (bank ESS {ess:.0f} of {len(bank)})')


def truncation_sweep_frames(G, z, c, psis, cols=None, scale=2, noise_mode='const'):
    """Yield one captioned frame per psi: the same latents ``z`` (labels ``c``) at truncation psi."""
    cols = cols or len(z)
    for psi in psis:
        images = render(G, z=z, c=c, truncation_psi=psi, noise_mode=noise_mode)
        yield captioned(grid_frame(images, cols, scale), f'truncation psi = {psi:.3f}')


def hub_ws(G, bank, truncation_psi=1):
    """The hubs' w [N, num_ws, w_dim] float32: the bank's ``w`` (psi 1) if stored, else mapped; then truncated."""
    device = next(G.parameters()).device
    with torch.no_grad():
        if 'w' in bank:
            w = torch.as_tensor(np.asarray(bank['w']), dtype=torch.float32, device=device)
        else:
            z = torch.as_tensor(bank.latents, dtype=torch.float32, device=device)
            c = torch.as_tensor(bank.labels, dtype=torch.float32, device=device).reshape(len(bank), G.c_dim)
            w = G.mapping(z, c, truncation_psi=1)[:, 0]
        w_avg = G.mapping.w_avg.to(device, torch.float32)
        w = w_avg + (w - w_avg) * truncation_psi
    return w[:, None, :].repeat(1, G.num_ws, 1)


def interpolation_frames(G, ws, paths, steps, translate=(0, 0), rotate=0, scale=2, noise_mode='const'):
    """Yield frames of ``paths`` parallel W-space walks through consecutive hubs.

    ``ws`` [N, num_ws, w_dim] is split into ``paths`` walks of ``N // paths`` keyframes (walk i takes hubs
    i, i + paths, ...); each segment between keyframes takes ``steps`` frames of straight-line (lerp) motion,
    and the last keyframe ends the video. For StyleGAN3 the input transform moves linearly from no motion to
    ``translate`` (fraction of the image) and ``rotate`` (degrees) over the video; the transform is reset after.
    """
    ws = torch.as_tensor(ws, dtype=torch.float32)
    keys = len(ws) // paths
    if keys < 2:
        raise ValueError(f'an interpolation needs at least 2 hubs per path: {len(ws)} hubs for {paths} paths')
    ws = ws[:keys * paths].reshape(keys, paths, *ws.shape[1:])   # [key, path, num_ws, w_dim]
    total = (keys - 1) * steps + 1
    moving = translate != (0, 0) or rotate != 0
    try:
        for frame in range(total):
            segment, offset = min(frame // steps, keys - 2), frame - min(frame // steps, keys - 2) * steps
            t = offset / steps
            w = ws[segment] * (1 - t) + ws[segment + 1] * t
            if moving:
                progress = frame / max(total - 1, 1)
                set_input_transform(G, (translate[0] * progress, translate[1] * progress), rotate * progress)
            images = render(G, ws=w, noise_mode=noise_mode)
            yield captioned(grid_frame(images, paths, scale), f'hubs {segment} -> {segment + 1}, t = {t:.2f}')
    finally:
        if moving:
            set_input_transform(G)

# ----------------------------------------------------------------------------
# Encoding.


def write_mp4(path, frames, fps=12, quality=8, progress=None):
    """Encode an iterable of HxWx3 (or HxW) uint8 frames as H.264 / yuv420p MP4 at ``path``, atomically.

    Every frame must have the size of the first (padded to even sides). Returns the number of frames.
    """
    import imageio_ffmpeg
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp.mp4')
    os.close(fd)
    count, writer, size = 0, None, None
    try:
        for frame in frames:
            frame = pad_even(to_rgb(frame))
            if writer is None:
                size = (frame.shape[1], frame.shape[0])
                writer = imageio_ffmpeg.write_frames(tmp, size, fps=fps, codec='libx264', pix_fmt_in='rgb24',
                                                     pix_fmt_out='yuv420p', quality=quality, macro_block_size=2,
                                                     ffmpeg_log_level='error', output_params=['-movflags', '+faststart'])
                writer.send(None)  # Start ffmpeg.
            elif (frame.shape[1], frame.shape[0]) != size:
                raise ValueError(f'frame {count} is {frame.shape[1]}x{frame.shape[0]}, not {size[0]}x{size[1]} as the first')
            writer.send(np.ascontiguousarray(frame))
            count += 1
            if progress is not None:
                progress(1)
        if writer is None:
            raise ValueError('no frames to write')
        writer.close()
        writer = None
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return count


def read_mp4(path):
    """Decode an MP4 with imageio-ffmpeg: ``(frames uint8 [T, H, W, 3], meta)``."""
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(os.fspath(path))
    meta = next(reader)
    width, height = meta['size']
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros([0, height, width, 3], np.uint8), meta


def strip_indices(total, num=5):
    """``num`` evenly spaced frame indices of ``total`` frames (first and last included), without repeats."""
    return np.unique(np.linspace(0, total - 1, min(num, total)).round().astype(int)).tolist()


def frame_strip(frames, num=5):
    """``num`` evenly spaced frames of a list, stacked top to bottom with a white gap (for a README figure)."""
    frames = list(frames)
    gap = np.full([4, frames[0].shape[1], 3], 255, dtype=np.uint8)
    parts = []
    for i in strip_indices(len(frames), num):
        parts += [frames[i], gap]
    return np.concatenate(parts[:-1], axis=0)

# ----------------------------------------------------------------------------
