"""Pixel-adaptive mask refinement (PAMR, Araslanov and Roth 2020), NACLIP's post-processing.

Class maps are smoothed by propagating each pixel's values from its neighbours (8 directions at each dilation),
weighted by how alike the pixels look: the affinity to a neighbour is a softmax over neighbours of
``-|I_p - I_q| / (0.1 * local std of I)``, averaged over the colour channels. The propagation is linear in the
maps and the same for every class, so known-class and new-name maps can be refined separately.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
PAMR_DILATIONS = (8, 16)  # pixels: NACLIP's setting


def _shifted(maps: torch.Tensor, dilations) -> torch.Tensor:
    """``(C, H, W)`` -> ``(C, 8 * len(dilations), H, W)``: the value at each pixel's neighbour, edges replicated."""
    height, width = maps.shape[-2:]
    shifts = []
    for dilation in dilations:
        padded = F.pad(maps[None], [dilation] * 4, mode="replicate")[0]
        for dy, dx in DIRECTIONS:
            top, left = dilation + dy * dilation, dilation + dx * dilation
            shifts.append(padded[:, top:top + height, left:left + width])
    return torch.stack(shifts, dim=1)


class PixelAdaptiveRefinement:
    """The affinities of one image, computed once; :meth:`refine` applies them to any class maps.

    ``image``: ``(3, H, W)`` float (normalised) at the resolution the maps are refined at.
    """

    def __init__(self, image: torch.Tensor, steps: int, dilations=PAMR_DILATIONS):
        self.steps = steps
        self.dilations = tuple(dilations)
        image = image.float()
        neighbours = _shifted(image, self.dilations)  # (3, P, H, W)
        spread = torch.cat([image[:, None], neighbours], dim=1).std(dim=1, keepdim=True)
        affinity = -(neighbours - image[:, None]).abs() / (1e-8 + 0.1 * spread)
        self.affinity = torch.softmax(affinity.mean(dim=0), dim=0)  # (P, H, W)

    def refine(self, maps: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        """``(C, h, w)`` maps (any resolution) upsampled to the image's and refined: ``(C, H, W)``. Classes go
        ``chunk`` at a time, so memory stays at ``chunk x neighbours`` maps whatever the vocabulary."""
        size = self.affinity.shape[-2:]
        maps = F.interpolate(maps[None].float(), size=size, mode="bilinear", align_corners=True)[0]
        refined = []
        for part in maps.split(chunk):
            for _ in range(self.steps):
                part = (_shifted(part, self.dilations) * self.affinity[None]).sum(dim=1)
            refined.append(part)
        return torch.cat(refined) if refined else maps
