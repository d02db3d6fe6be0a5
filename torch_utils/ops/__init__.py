"""Differentiable image-processing ops used by the networks (pure PyTorch, any device)."""
