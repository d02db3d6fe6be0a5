"""PyTorch utilities that NVlabs network pickles import by this exact package name."""
