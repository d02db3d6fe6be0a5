"""Support code of the demo scripts (demo.py, demo_samplers.py, montage.py, generate_video.py): the README's
first run and the sampler comparison. Script layer: it may use sampling and metrics; nothing below imports it."""
