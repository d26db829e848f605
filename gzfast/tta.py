"""Test-time augmentation: the model's mean output over K exact symmetries of the centred crop.

Galaxies have no up and no handedness that the labels care about, so the four right-angle rotations and
their mirror images are all valid views of the same galaxy. Rotating a square N×3×H×W batch by 90° or
flipping it is exact (no interpolation) and runs on the tensor the loader handed over, on its device, so
the GPU path never leaves the GPU and no loader needs a second graph. Every view has the batch's shape:
a compiled model sees one shape.

K = 1: the crop alone; 2: + its mirror image; 4: the four rotations; 8: the four rotations × mirror
(the dihedral group: the mean over K = 8 views of an image and of its 90°-rotated copy is the same).
"""
from __future__ import annotations

import torch

VIEW_COUNTS = (1, 2, 4, 8)


def check_views(k: int) -> int:
    if k not in VIEW_COUNTS:
        raise ValueError(f"--tta {k}: the number of views must be one of {', '.join(map(str, VIEW_COUNTS))} "
                         f"(1 = centre crop only, 8 = four rotations x flip)")
    return k


def view_params(k: int) -> list[tuple[int, bool]]:
    """(quarter turns, mirrored) of each of the K views."""
    check_views(k)
    turns = (0, 1, 2, 3) if k >= 4 else (0,)
    flips = (False, True) if k in (2, 8) else (False,)
    return [(t, f) for f in flips for t in turns]


def view(images: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """One view of an N×C×H×W batch, kept in the batch's memory format (channels-last stays so)."""
    if turns == 0 and not mirrored:
        return images
    out = torch.flip(images, dims=(3,)) if mirrored else images
    out = torch.rot90(out, turns, dims=(2, 3)) if turns else out
    fmt = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) and images.ndim == 4 \
        else torch.contiguous_format
    return out.contiguous(memory_format=fmt)


def predict_views(model, images: torch.Tensor, k: int) -> torch.Tensor:
    """`model(images)` (float32, N×outputs: the head's outputs, or features) averaged over K views of
    `images`; what follows from the outputs (fractions from concentrations) is computed from this mean.
    Call it under no_grad/autocast as needed; the result stays on the device."""
    if k >= 4 and images.shape[2] != images.shape[3]:
        raise ValueError(f"rotating views need square images, got {images.shape[2]}x{images.shape[3]}")
    total = None
    for turns, mirrored in view_params(k):
        out = model(view(images, turns, mirrored)).float()
        total = out if total is None else total + out
    return total / k
