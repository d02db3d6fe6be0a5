"""Our CUDA path against our CPU path: the same inputs on both, one line per check, PASS/FAIL against a tolerance.

Checks (TF32 is switched off for matmuls and cuDNN, so both devices compute in IEEE float32):

* generator images, G(z, c, truncation_psi=1, noise_mode='const'): a small seeded StyleGAN2 (32 px, 1 channel)
  and the embedded pretrained/mnist32-stylegan2.pkl; relative error |img_dev - img_cpu| / |img_cpu| <= 1e-4;
* exact k-occurrence (sampling.hubness), N = 20,000, d = 512, k = 5, count_self both ways: counts identical;
* Jacobian singular values (sampling.volume, pixel space of the small StyleGAN2 with its 4 highest resolutions
  built for float16 as in NVlabs' networks, 4 latents, top 30), methods
  'exact', 'projected' and 'lowrank': relative error |s_dev - s_cpu| / |s_cpu| of each latent's 30 values <= 1e-3
  (the worst single value is printed too: a leaky ReLU input within rounding of 0 that lands on the other side on
  the other device changes the Jacobian by a finite step; with weights perturbed by 1e-6 on the CPU such a flip moved
  the 30th singular value of one latent by 1e-3 relative, its 30 values by 2e-4);
* an NVAE decoder (random weights in NVAE's layout, tests/nvae_writer.py, loaded through legacy.load_network):
  images at temperature 0.8 relative error <= 1e-4, and after readjust_bn (3 train-mode passes) on each
  device the re-estimated running statistics relative error <= 1e-4;
* the embedded MNIST classifier (the metrics' feature network) on 500 generated images: class probabilities
  max abs error <= 1e-4, FID statistics (feature mean and covariance) relative error <= 1e-4.

    python benchmarks/cuda_parity.py                  # --device cuda
    python benchmarks/cuda_parity.py --device cpu     # CPU against CPU: only checks that the script runs

Exit status 1 if any check fails (a check that raises counts as failed and the others still run).
"""

import copy
import os
import sys
import time
import traceback

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import legacy  # noqa: E402
from metrics import mnist_classifier  # noqa: E402
from metrics.frechet_inception_distance import mean_cov  # noqa: E402
from sampling import hubness, volume  # noqa: E402
from sampling.cli import DEFAULT_NETWORK  # noqa: E402
from sampling.images import to_uint8  # noqa: E402
from sampling.latents import random_labels  # noqa: E402
from training.networks_stylegan2 import Generator  # noqa: E402

# ----------------------------------------------------------------------------

def small_generator(seed=0, num_fp16_res=0):
    """A seeded 32 px, 1-channel StyleGAN2 with non-zero biases and noise strengths (so every path matters)."""
    torch.manual_seed(seed)
    G = Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=1, mapping_kwargs=dict(num_layers=2),
                  channel_base=2048, channel_max=128, num_fp16_res=num_fp16_res)
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith('bias') or name.endswith('noise_strength'):
                param.add_(torch.randn_like(param) * 0.1)
    return G.eval().requires_grad_(False)


def embedded_generator():
    with open(DEFAULT_NETWORK, 'rb') as f:
        return legacy.load_network_pkl(f)['G_ema'].eval().requires_grad_(False)


def latents(num, dim, seed):
    return torch.from_numpy(np.random.RandomState(seed).standard_normal([num, dim]).astype(np.float32))


def errors(ref, other):
    """(max abs error, relative error |other - ref| / |ref|) of two arrays, in float64."""
    ref = torch.as_tensor(np.asarray(ref.cpu() if isinstance(ref, torch.Tensor) else ref), dtype=torch.float64)
    other = torch.as_tensor(np.asarray(other.cpu() if isinstance(other, torch.Tensor) else other),
                            dtype=torch.float64)
    diff = other - ref
    return float(diff.abs().max()), float(diff.norm() / ref.norm().clamp(min=1e-300))


# ----------------------------------------------------------------------------
# The checks. Each returns a list of (name, passed, message).

def check_generators(device):
    results = []
    for name, G in (('small StyleGAN2', small_generator()), ('embedded mnist32-stylegan2.pkl', embedded_generator())):
        G_dev = copy.deepcopy(G).to(device)
        z = latents(16, G.z_dim, seed=1)
        c = torch.from_numpy(random_labels(1, 16, G.c_dim))  # The embedded network is conditional.
        with torch.no_grad():
            ref = G(z, c, truncation_psi=1, noise_mode='const')
            out = G_dev(z.to(device), c.to(device), truncation_psi=1, noise_mode='const')
        abs_err, rel_err = errors(ref, out)
        results.append((f'generator {name}, 16 images', rel_err <= 1e-4,
                        f'max abs {abs_err:.2e}, rel {rel_err:.2e} (tol: rel <= 1e-4)'))
    return results


def check_k_occurrence(device):
    x = np.random.RandomState(0).standard_normal([20_000, 512]).astype(np.float32)
    results = []
    for count_self in (True, False):
        ref = hubness.k_occurrence(x, 5, count_self=count_self).numpy()
        out = hubness.k_occurrence(x, 5, count_self=count_self, device=device).numpy()
        differ = int((ref != out).sum())
        results.append((f'k_occurrence N=20000 d=512 k=5 count_self={count_self}', differ == 0,
                        f'max abs {int(np.abs(ref - out).max())}, differing points {differ} (tol: identical)'))
    return results


# 'lowrank' with its defaults (block 10, 16 blocks = 160 >= z_dim 64) would silently run 'exact'; a Krylov space of
# 5 blocks of 10 (50 < 64) runs the real Lanczos code, and tol=0 makes both devices run all 5 blocks.
LOWRANK_KWARGS = dict(block_size=10, num_iters=4, tol=0)


def check_jacobians(device):
    # float16 layers on CUDA (as in NVlabs' networks): the space map must run them in float32 on every device.
    G = small_generator(num_fp16_res=4)
    G_dev = copy.deepcopy(G).to(device)
    f, f_dev = volume.make_space_fn(G, 'pixel'), volume.make_space_fn(G_dev, 'pixel')
    z = latents(4, G.z_dim, seed=2)
    results = []
    for method in ('exact', 'projected', 'lowrank'):
        kwargs = LOWRANK_KWARGS if method == 'lowrank' else {}
        ref = volume.jacobian_singular_values(f, z, method, top_k=30, **kwargs)
        out = volume.jacobian_singular_values(f_dev, z.to(device), method, top_k=30, **kwargs).cpu()
        rel = float(((out - ref).norm(dim=1) / ref.norm(dim=1)).max())
        rel_value = float(((out - ref).abs() / ref.abs().clamp(min=1e-300)).max())
        note = ''
        if method == 'lowrank':
            note = ('; lowrank: block 10 x 5, tol 0, start block drawn by a seeded CPU generator on both devices, '
                    'so compared directly')
        results.append((f'jacobian_singular_values {method}, 4 latents, top 30', rel <= 1e-3,
                        f'rel {rel:.2e} (|diff| / |ref| of each latent\'s 30 values, worst latent), max abs '
                        f'{float((out - ref).abs().max()):.2e}, worst single value rel {rel_value:.2e} '
                        f'(tol: rel <= 1e-3){note}'))
    return results


def check_nvae(device):
    import tempfile
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests'))
    import nvae_writer

    from training import networks_nvae
    with tempfile.TemporaryDirectory() as tmp:
        path = nvae_writer.write_checkpoint(os.path.join(tmp, 'checkpoint.pt'), seed=1)
        G, G_dev = legacy.load_network(path), legacy.load_network(path, device=device)
    z = latents(16, G.z_dim, seed=4)
    with torch.no_grad():
        abs_err, rel_err = errors(G(z, None, truncation_psi=0.8), G_dev(z.to(device), None, truncation_psi=0.8))
    results = [('NVAE decoder (small, NVAE layout), 16 images at t = 0.8', rel_err <= 1e-4,
                f'max abs {abs_err:.2e}, rel {rel_err:.2e} (tol: rel <= 1e-4)')]
    for net in (G, G_dev):
        networks_nvae.readjust_bn(net, num_passes=3, batch_size=8, temperature=0.8, seed=0)
    stats = lambda net: torch.cat([torch.cat([m.running_mean.cpu(), m.running_var.cpu()])
                                   for m in networks_nvae.batch_norms(net)])
    abs_err, rel_err = errors(stats(G), stats(G_dev))
    results.append(('NVAE readjust_bn, 3 passes of 8: running statistics', rel_err <= 1e-4,
                    f'max abs {abs_err:.2e}, rel {rel_err:.2e} (tol: rel <= 1e-4)'))
    return results


def check_classifier(device):
    G = embedded_generator()
    z, c = latents(500, G.z_dim, seed=3), torch.from_numpy(random_labels(3, 500, G.c_dim))
    with torch.no_grad():
        images = np.concatenate([to_uint8(G(z_part, c_part, truncation_psi=1, noise_mode='const'))
                                 for z_part, c_part in zip(z.split(100), c.split(100))])
    images = torch.from_numpy(images.transpose(0, 3, 1, 2))   # NHWC -> NCHW uint8
    clf = mnist_classifier.load_classifier(device='cpu')
    clf_dev = mnist_classifier.load_classifier(device=device)
    probs = mnist_classifier.classify(images, clf, device='cpu')
    probs_dev = mnist_classifier.classify(images, clf_dev, device=device)
    abs_err, _ = errors(probs, probs_dev)
    results = [('mnist classifier probabilities, 500 generated images', abs_err <= 1e-4,
                f'max abs {abs_err:.2e} (tol: abs <= 1e-4)')]
    with torch.no_grad():
        feats = clf(images).numpy()
        feats_dev = clf_dev(images.to(device)).cpu().numpy()
    mu, sigma = mean_cov(feats)
    mu_dev, sigma_dev = mean_cov(feats_dev)
    abs_mu, rel_mu = errors(mu, mu_dev)
    abs_sigma, rel_sigma = errors(sigma, sigma_dev)
    results.append(('mnist classifier FID statistics (mean, covariance)', max(rel_mu, rel_sigma) <= 1e-4,
                    f'mean: max abs {abs_mu:.2e}, rel {rel_mu:.2e}; covariance: max abs {abs_sigma:.2e}, '
                    f'rel {rel_sigma:.2e} (tol: rel <= 1e-4)'))
    return results

# ----------------------------------------------------------------------------

@click.command()
@click.option('--device', type=str, default='cuda', show_default=True, help='Device compared with the CPU.')
def main(device):
    """Compare our computations on --device with the same computations on the CPU."""
    device = torch.device(device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise click.ClickException(f'--device {device}: CUDA is not available in this torch build / machine')
        if device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())
        torch.cuda.set_device(device)
        what = f'{device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})'
    else:
        what = str(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f'torch {torch.__version__}: {what} against cpu; TF32 off (matmul and cuDNN)')

    passed, failed = 0, 0
    start = time.perf_counter()
    for check in (check_generators, check_k_occurrence, check_jacobians, check_nvae, check_classifier):
        t0 = time.perf_counter()
        try:
            results = check(device)
        except Exception as err:  # A crash on the device is a failed check; the others still run.
            traceback.print_exc()
            results = [(check.__name__, False, f'raised {type(err).__name__}: {err}')]
        for name, ok, message in results:
            print(f'{"PASS" if ok else "FAIL"}  {name}: {message}', flush=True)
            passed, failed = passed + ok, failed + (not ok)
        print(f'      ({check.__name__}: {time.perf_counter() - t0:.1f} s)', flush=True)
    verdict = 'ALL PASS' if failed == 0 else f'{failed} FAILED'
    print(f'SUMMARY {verdict}: {passed} / {passed + failed} checks passed, {device} against cpu, '
          f'{time.perf_counter() - start:.0f} s')
    if failed:
        sys.exit(1)


if __name__ == '__main__':
    main()
