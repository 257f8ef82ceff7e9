"""A toy purifier that lives outside benchbench: a 3×3 box blur, clipped to [0, 1]."""

import torch
import torch.nn.functional as F


class BlurPurifier:
    """3×3 box blur of the noisy image (a test plugin)."""

    networks = ()

    def __init__(self, passes: int = 1):
        self.passes = passes

    def __call__(self, x_noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        x = x_noisy
        kernel = torch.full((x.shape[1], 1, 3, 3), 1 / 9, dtype=x.dtype, device=x.device)
        for _ in range(self.passes):
            x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
        return x.clamp(0, 1)
