"""Small utilities that NVlabs network pickles import by this exact package name."""

from .util import EasyDict, make_cache_dir_path

__all__ = ["EasyDict", "make_cache_dir_path"]
