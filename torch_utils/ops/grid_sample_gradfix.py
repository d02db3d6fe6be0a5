"""grid_sample with NVlabs' fixed options (bilinear, zero padding, align_corners=False)."""

import torch.nn.functional as F

enabled = False  # Kept for API compatibility; current PyTorch supports double backward natively.


def grid_sample(input, grid):
    return F.grid_sample(input=input, grid=grid, mode='bilinear', padding_mode='zeros', align_corners=False)
