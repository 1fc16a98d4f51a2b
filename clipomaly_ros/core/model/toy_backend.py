"""A deterministic toy vision-language backend whose embeddings mean something: colour.

Every name in :data:`TOY_LEXICON` has a colour. The embedding space has one axis per lexicon colour plus spare
axes. A pixel embeds as its Gaussian similarity to each lexicon colour, so a pixel painted in a name's colour
matches that name; a name outside the lexicon embeds on a spare axis chosen from its hash and so matches no
pixel. Synonyms share a colour ("car" and "automobile"), as they would share meaning in CLIP.

It runs in milliseconds on a CPU and proves the pipeline's logic end to end (tests, demos, ROS integration)
without CLIP weights. :mod:`.scenes` draws street scenes in these colours.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backend import DenseFeatures
from .toy_lexicon import TOY_LEXICON


SPARE_AXES = 16
COLOUR_WIDTH = 24.0  # Gaussian width in RGB units: colours further apart than ~50 do not match


def _palette() -> np.ndarray:
    colours: list[tuple[int, int, int]] = []
    for colour in TOY_LEXICON.values():
        if colour not in colours:
            colours.append(colour)
    return np.asarray(colours, dtype=np.float32)


class ToyColourBackend:
    """Colour embeddings standing in for CLIP (see the module docstring).

    ``patch`` is the side in working pixels of one feature cell; ``inference_size`` the working short side.
    """

    description = "toy colour backend (deterministic, no weights) on cpu"

    def __init__(self, inference_size: int = 448, patch: int = 2):
        self.device = torch.device("cpu")
        lexicon = ";".join(f"{name}={rgb}" for name, rgb in TOY_LEXICON.items())
        self.identity = f"toy:colour:{hashlib.sha256(lexicon.encode()).hexdigest()[:12]}"
        self.palette = torch.from_numpy(_palette())
        self._palette_norms = (self.palette ** 2).sum(-1)
        self.embed_dim = len(self.palette) + SPARE_AXES
        self.inference_size = inference_size
        self.patch = patch
        self.mean_colour = (123, 117, 104)

    # text ------------------------------------------------------------------------------------------------------
    @staticmethod
    def _name_in(prompt: str) -> str | None:
        """The lexicon name a prompt is about: the first one that follows an article and ends the name slot, so
        that "a photo of a car on the road." is about the car and "a photo of a car door." about nothing."""
        text = prompt.lower()
        found = [(match.start(), -len(name), name) for name in TOY_LEXICON
                 if (match := re.search(rf"\b(?:a|an|the)\s+(?:small\s+|large\s+)?{re.escape(name)}"
                                        r"(?=[.,]|\s+(?:on|in)\s|$)", text))]
        return min(found)[2] if found else None

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        rows = torch.zeros(len(prompts), self.embed_dim)
        colours = [tuple(c) for c in self.palette.int().tolist()]
        for row, prompt in zip(rows, prompts):
            name = self._name_in(prompt)
            if name is not None:
                row[colours.index(TOY_LEXICON[name])] = 1.0
            else:
                digest = hashlib.sha256(prompt.encode()).digest()
                row[len(colours) + digest[0] % SPARE_AXES] = 1.0
                row[len(colours) + digest[1] % SPARE_AXES] += 0.5
        return F.normalize(rows, dim=-1)

    # images ----------------------------------------------------------------------------------------------------
    def _colour_similarities(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(H, W, C)`` Gaussian similarity of every pixel of an ``(H, W, 3)`` RGB image (0..255) to each of the
        C lexicon colours."""
        pixels = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
        pixels = pixels.float().reshape(-1, 3)
        # |p - c|^2 expanded into one matrix product: exact on integer colours, and far cheaper than a
        # broadcast difference over every pixel and colour
        distance2 = (pixels * pixels).sum(-1, keepdim=True) - 2.0 * pixels @ self.palette.T + self._palette_norms
        similarity = torch.exp(distance2.clamp_(min=0.0) * (-1.0 / (2 * COLOUR_WIDTH ** 2)))
        return similarity.reshape(*image.shape[:2], len(self.palette))

    def _with_spare_axes(self, colour_part: torch.Tensor) -> torch.Tensor:
        return torch.cat([colour_part, colour_part.new_zeros(*colour_part.shape[:-1], SPARE_AXES)], dim=-1)

    def _pixel_embeddings(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W, D)`` unnormalised embeddings of every pixel."""
        return self._with_spare_axes(self._colour_similarities(image))

    def encode_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        rows = [self._pixel_embeddings(image).reshape(-1, self.embed_dim).mean(0) for image in images]
        return F.normalize(torch.stack(rows), dim=-1)

    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(N, D)`` of crops ``(N, 3, S, S)`` (0..255): the mean of their pixels' embeddings."""
        return self.encode_images(list(crops.permute(0, 2, 3, 1)))

    clock = None  # no vision transformer
    crop_size = 64  # the colour of a region does not need more pixels

    def dense_features_batch(self, images: Sequence[np.ndarray]) -> list[DenseFeatures]:
        return [self.dense_features(image) for image in images]

    def dense_features(self, image: np.ndarray) -> DenseFeatures:
        import cv2

        height, width = image.shape[:2]
        scale = self.inference_size / min(height, width)
        working = (self.patch * max(1, round(height * scale / self.patch)),
                   self.patch * max(1, round(width * scale / self.patch)))
        if working != (height, width):
            image = cv2.resize(image, (working[1], working[0]), interpolation=cv2.INTER_AREA)
        rows, columns, patch = working[0] // self.patch, working[1] // self.patch, self.patch
        # the mean per patch, before the spare (all-zero) axes are added; summed slice by slice, which on a CPU
        # is several times faster than a strided mean over two axes
        blocks = self._colour_similarities(image).reshape(rows, patch, columns, patch, -1)
        row_sums = sum(blocks[:, i] for i in range(patch))
        colour_part = sum(row_sums[:, :, j] for j in range(patch)) / patch ** 2
        grid = self._with_spare_axes(colour_part)
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        return DenseFeatures(F.normalize(grid + 1e-6, dim=-1), working, pixels)
