"""The embedded default data set: MVTec-AD-layout anomaly data generated offline from scikit-image's sample images.

Each category starts from one image shipped in scikit-image's wheel (``_SOURCES``: loader, licence); defective test
images carry one synthetic defect (:func:`apply_defect`) and its exact mask. Every draw comes from
``numpy.random.default_rng([seed, crc32(category), split, index])``, so the same parameters give byte-identical PNGs.
See the README, section "Data"; the command line is ``anomaly-diff-data --output DIR [--seed N] ...`` (``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import PIL
import scipy
import skimage
import skimage.data
from PIL import Image
from scipy import ndimage

from anomaly_diff.errors import DatasetError, OutputPathError
from anomaly_diff.utils.io import atomic_write_text

GENERATOR_VERSION = 3
"""Bumped whenever the same parameters would give different files; a cached set of another version is rebuilt.

Version 2 added the ``difficulty`` parameter, the realistic defects and four categories; ``difficulty="hard"`` writes
the same files as version 1 for version 1's five categories."""

MANIFEST_NAME = "manifest.json"
GENERATOR_NAME = "anomaly_diff.data.synthetic"
"""The manifest's ``generator`` value: how a directory this module wrote is told from user data."""

DIFFICULTIES: tuple[str, ...] = ("hard", "realistic")
"""The defect presets: ``realistic`` (the default) and ``hard`` (version 1's defects); see :func:`apply_defect`."""

DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "hard": ("deformation", "patch", "scratch", "stain"),
    "realistic": ("contamination", "crack", "hole", "scratch", "stain"),
}
"""Defect types of each difficulty, sorted; the names of the ``test/<defect_type>`` and ``ground_truth/<defect_type>``
folders."""

# Split codes that enter the random seed of every image.
_TRAIN, _TEST_GOOD, _TEST_DEFECT = 0, 1, 2


@dataclass(frozen=True)
class _Source:
    """Where a category's images come from.

    Attributes:
        loader: Name of the ``skimage.data`` function returning the source image.
        licence: Licence of the source image, as scikit-image's docstring states it.
        tint: ``(dark, light)`` RGB colours in ``[0, 1]`` that a grayscale source's black and white map to; ``None``
            keeps a grayscale source gray.
        region: ``(centre_x, centre_y, side)`` in source pixels of an object category's square crop; ``None`` for a
            texture, which is cropped anywhere.
        grain: Scale of the ``realistic`` defects' widths and radii: above 1 for a coarse texture, whose structure
            hides defects of the default size.
    """

    loader: str
    licence: str
    tint: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    region: tuple[float, float, float] | None = None
    grain: float = 1.0


_SOURCES: dict[str, _Source] = {
    "brick": _Source("brick", "CC0", tint=((0.16, 0.06, 0.04), (0.95, 0.64, 0.50))),
    "camera": _Source("camera", "CC0", region=(300.0, 160.0, 120.0)),
    "cell": _Source("cell", "CC0", region=(424.0, 380.0, 200.0)),
    "coffee": _Source("coffee", "CC0", region=(275.0, 200.0, 380.0)),
    "coins": _Source("coins", "no known copyright restrictions", tint=((0.06, 0.05, 0.04), (0.98, 0.86, 0.60)),
                     region=(343.0, 187.0, 76.0)),
    "grass": _Source("grass", "CC0", tint=((0.04, 0.12, 0.02), (0.70, 0.92, 0.38)), grain=1.3),
    "gravel": _Source("gravel", "CC0", tint=((0.10, 0.09, 0.08), (0.88, 0.84, 0.76)), grain=1.6),
    "paper": _Source("text", "no known copyright restrictions, public domain"),
    "tissue": _Source("immunohistochemistry", "no known copyright restrictions", grain=1.3),
}

EMBEDDED_CATEGORIES: tuple[str, ...] = tuple(sorted(_SOURCES))
"""The default categories, sorted (so a category's class index is its position here)."""

_GRAY_LOADERS = frozenset({"camera", "cell", "text"})
"""``skimage.data`` loaders of grayscale images; without a tint such a category stays gray."""

_VERSION_1_CATEGORIES: tuple[str, ...] = ("brick", "coffee", "coins", "grass", "gravel")
"""Version 1's categories: the donors of the ``hard`` preset's ``patch`` defects, so its files stay version 1's."""


def is_grayscale(category: str) -> bool:
    """Whether a category's images are gray (MVTec AD's grid, screw, zipper are): RGB files with equal channels."""
    return _SOURCES[category].tint is None and _SOURCES[category].loader in _GRAY_LOADERS


@cache
def _source_image(category: str) -> np.ndarray:
    """Load a category's source image as RGB.

    Args:
        category: One of :data:`EMBEDDED_CATEGORIES`.

    Returns:
        ``(H, W, 3)`` uint8, read-only (it is cached and shared).
    """
    spec = _SOURCES[category]
    image = getattr(skimage.data, spec.loader)()
    if image.ndim == 2 and spec.tint is None:  # a gray category: equal channels
        image = np.repeat(image[..., None], 3, axis=-1)
    elif image.ndim == 2:
        dark, light = (np.asarray(colour, dtype=np.float32) for colour in spec.tint)
        grey = image.astype(np.float32)[..., None] / 255.0
        image = np.round((dark + grey * (light - dark)) * 255.0).astype(np.uint8)
    image = np.ascontiguousarray(image[..., :3])
    image.flags.writeable = False
    return image


def _image_rng(seed: int, category: str, split: int, index: int) -> np.random.Generator:
    """The generator of one image, independent of every other image and of the other categories."""
    return np.random.default_rng([seed, zlib.crc32(category.encode()), split, index])


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """``(..., 3)`` float in ``[0, 1]`` (clipped) to uint8 by rounding."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def normal_image(category: str, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Draw one defect-free image of a category.

    Textures: a random crop of 45-65 % of the source's side plus flips; objects: the fixed region, shifted by up to 3 %
    and scaled by up to 4 %. Both: small brightness, contrast and colour-cast jitter.

    Args:
        category: One of :data:`EMBEDDED_CATEGORIES`.
        rng: Source of randomness.
        image_size: Side of the square output.

    Returns:
        ``(image_size, image_size, 3)`` uint8 RGB.
    """
    source = _source_image(category)
    height, width = source.shape[:2]
    spec = _SOURCES[category]
    if spec.region is None:
        side = rng.uniform(0.45, 0.65) * min(height, width)
        x0, y0 = rng.uniform(0.0, width - side), rng.uniform(0.0, height - side)
    else:
        centre_x, centre_y, side = spec.region
        side = min(side * rng.uniform(0.96, 1.04), height, width)
        # Shift, then keep the box inside the source (PIL refuses boxes past the border).
        x0 = np.clip(centre_x - side / 2 + rng.uniform(-0.03, 0.03) * side, 0.0, width - side)
        y0 = np.clip(centre_y - side / 2 + rng.uniform(-0.03, 0.03) * side, 0.0, height - side)
    # PIL's resize with a float box crops and resamples in one (antialiased) step, sub-pixel shifts included.
    crop = Image.fromarray(source).resize(
        (image_size, image_size), Image.Resampling.BICUBIC, box=(float(x0), float(y0), float(x0 + side),
                                                                  float(y0 + side)))
    image = np.asarray(crop, dtype=np.float32) / 255.0
    if spec.region is None:
        if rng.random() < 0.5:
            image = image[:, ::-1]
        if rng.random() < 0.5:
            image = image[::-1]
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.92, 1.08) + mean * rng.uniform(0.93, 1.07) + rng.uniform(-0.02, 0.02)
    cast = rng.uniform(0.975, 1.025, size=3).astype(np.float32)  # white-balance cast
    if is_grayscale(category):
        cast[:] = cast.mean()  # a gray category stays gray
    return _to_uint8(image * cast)


def _blob_alpha(rng: np.random.Generator, size: int, radius: float, softness: float, floor: float) -> np.ndarray:
    """Opacity of an irregular blob (a rotated ellipse with a wavy outline) at a random place.

    The outline is ``r(theta) = radius * (1 + sum_k a_k cos(k theta + phi_k))``, ``k = 2..4``; inside it the opacity
    ramps from ``floor`` at the outline to 1 over ``softness`` of the radius, outside it is exactly 0.

    Args:
        rng: Source of randomness.
        size: Side of the square image.
        radius: Mean radius in pixels.
        softness: Width of the ramp as a fraction of the radius (0 for a hard edge).
        floor: Opacity just inside the outline, so every masked pixel is visibly changed.

    Returns:
        ``(size, size)`` float32 opacity in ``[0, 1]``, positive exactly on the blob.
    """
    centre = rng.uniform(0.15, 0.85, size=2) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    angle = rng.uniform(0.0, np.pi)
    elongation = rng.uniform(1.0, 2.2)
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / np.sqrt(elongation)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) * np.sqrt(elongation)
    theta = np.arctan2(v, u)
    outline = np.ones_like(theta)
    for k in (2, 3, 4):
        outline += rng.uniform(0.0, 0.25 / k) * np.cos(k * theta + rng.uniform(0.0, 2 * np.pi))
    inside = 1.0 - np.hypot(u, v) / (radius * outline)
    ramp = np.clip(inside / max(softness, 1e-6), 0.0, 1.0)
    return np.where(inside > 0, floor + (1.0 - floor) * ramp, 0.0).astype(np.float32)


def _hard_scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved line, brighter or darker than the surface it crosses.

    The centreline turns with a heading ``theta0 + c1 t + c2 t^2``; pixels within half the width of it (Euclidean
    distance transform) are the defect.
    """
    size = image.shape[0]
    scale = size / 256.0
    length = rng.uniform(0.08, 0.5) * size
    half_width = rng.uniform(0.0, 1.6) * scale
    steps = np.linspace(0.0, 1.0, max(int(length * 2), 2))
    heading = rng.uniform(0.0, 2 * np.pi) + rng.uniform(-1.5, 1.5) * steps + rng.uniform(-1.5, 1.5) * steps**2
    start = rng.uniform(0.15, 0.85, size=2) * size
    step = length / len(steps)
    ys = start[0] + np.cumsum(np.sin(heading)) * step
    xs = start[1] + np.cumsum(np.cos(heading)) * step
    keep = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
    centreline = np.zeros((size, size), dtype=bool)
    centreline[ys[keep].astype(int), xs[keep].astype(int)] = True
    if not centreline.any():  # the whole curve left the image: keep its start, which is inside
        centreline[int(start[0]), int(start[1])] = True
    distance = ndimage.distance_transform_edt(~centreline)
    on_line = distance <= half_width
    strength = rng.uniform(0.3, 1.0)
    alpha = np.where(on_line, strength * (1.0 - 0.5 * distance / (half_width + 1.0)), 0.0)
    shift = rng.uniform(0.15, 0.5) * (1.0 if rng.random() < 0.5 else -1.0)
    overlay = image + shift
    return overlay, alpha.astype(np.float32)


def _hard_stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A colour blob: the surface tinted by a per-channel gain, so its texture shows through."""
    size = image.shape[0]
    alpha = _blob_alpha(rng, size, max(rng.uniform(0.02, 0.11) * size, 2.0), softness=rng.uniform(0.2, 0.8), floor=0.35)
    direction = rng.normal(size=3)
    gain = 1.0 + rng.uniform(0.15, 0.45) * direction / np.linalg.norm(direction) - rng.uniform(0.0, 0.15)
    overlay = image * gain.astype(np.float32)
    return overlay, alpha * rng.uniform(0.4, 0.9)


def _hard_patch(image: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A piece of another surface pasted in; 70 % of the time colour-matched, so only its texture differs.

    Colour matching maps each donor channel's mean and standard deviation under the blob onto the host's.
    """
    size = image.shape[0]
    alpha = _blob_alpha(rng, size, max(rng.uniform(0.025, 0.12) * size, 2.0), softness=rng.uniform(0.0, 0.3), floor=0.8)
    overlay = donor
    if rng.random() < 0.7:
        region = alpha > 0
        host, foreign = image[region], donor[region]
        overlay = (donor - foreign.mean(0)) / (foreign.std(0) + 1e-3) * host.std(0) + host.mean(0)
    return overlay, alpha


def _hard_deformation(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A local elastic warp: a swirl or a push inside a disc; the mask is where pixels moved by at least half a pixel.

    Displacement ``amplitude * (1 - (r / R)^2)^2`` inside the disc of radius ``R``, sampled bilinearly at ``x - d(x)``.
    """
    size = image.shape[0]
    scale = size / 256.0
    radius = max(rng.uniform(0.05, 0.15) * size, 3.0)
    amplitude = rng.uniform(0.2, 0.45) * radius + max(1.5 * scale, 1.0)
    centre = rng.uniform(0.15, 0.85, size=2) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    r = np.hypot(dy, dx)
    bump = np.where(r < radius, (1.0 - (r / radius) ** 2) ** 2, 0.0)
    if rng.random() < 0.5:
        direction = rng.uniform(0.0, 2 * np.pi)
        move_y, move_x = amplitude * bump * np.sin(direction), amplitude * bump * np.cos(direction)
    else:
        # r * bump(r) peaks at 0.2862 * R (r = R / sqrt(5)), so the largest arc is ``amplitude``.
        angle = amplitude * bump / (0.2862 * radius) * (1.0 if rng.random() < 0.5 else -1.0)
        move_y = dy * np.cos(angle) + dx * np.sin(angle) - dy
        move_x = -dy * np.sin(angle) + dx * np.cos(angle) - dx
    moved = np.hypot(move_y, move_x) >= 0.5
    coords = np.stack([yy - move_y, xx - move_x])
    warped = np.stack(
        [ndimage.map_coordinates(image[..., c], coords, order=1, mode="reflect") for c in range(3)], axis=-1)
    return warped, moved.astype(np.float32)


def _centreline(rng: np.random.Generator, size: int, length: float, bend: float, jag: float,
                start: np.ndarray | None = None, heading: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points about half a pixel apart along a random curve of ``length`` pixels: ``(ys, xs)``.

    The heading is ``theta0 + c1 t + c2 t^2`` (``|c| <= bend``) plus, for a jagged line, a piecewise constant offset
    of standard deviation ``jag`` radians that changes every 4 points.
    """
    count = max(int(length * 2), 2)
    steps = np.linspace(0.0, 1.0, count)
    theta0 = rng.uniform(0.0, 2 * np.pi) if heading is None else heading
    angles = theta0 + rng.uniform(-bend, bend) * steps + rng.uniform(-bend, bend) * steps**2
    if jag > 0:
        angles = angles + np.repeat(rng.normal(0.0, jag, size=count // 4 + 1), 4)[:count]
    if start is None:
        start = rng.uniform(0.2, 0.8, size=2) * size
    step = length / count
    return start[0] + np.cumsum(np.sin(angles)) * step, start[1] + np.cumsum(np.cos(angles)) * step


def _line_alpha(size: int, lines: list[tuple[np.ndarray, np.ndarray]], half_width: float,
                strength: float) -> np.ndarray:
    """Opacity of lines of ``half_width`` around centrelines (Euclidean distance), fading by a third to the edge."""
    centreline = np.zeros((size, size), dtype=bool)
    for ys, xs in lines:
        keep = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
        centreline[ys[keep].astype(int), xs[keep].astype(int)] = True
    if not centreline.any():  # the curve left the image: keep the pixel nearest its start
        ys, xs = lines[0]
        centreline[int(np.clip(ys[0], 0, size - 1)), int(np.clip(xs[0], 0, size - 1))] = True
    distance = ndimage.distance_transform_edt(~centreline)
    return np.where(distance <= half_width, strength * (1.0 - distance / (3.0 * half_width + 3.0)),
                    0.0).astype(np.float32)


def _real_scratch(image: np.ndarray, rng: np.random.Generator, grain: float) -> tuple[np.ndarray, np.ndarray]:
    """A smooth curved line 4-7 px wide (at 256 px, times ``grain``), bright (bare metal, 70 %) or dark."""
    size = image.shape[0]
    scale = size / 256.0 * grain
    line = _centreline(rng, size, rng.uniform(0.2, 0.5) * size, bend=1.2, jag=0.0)
    alpha = _line_alpha(size, [line], max(rng.uniform(1.5, 3.0) * scale, 0.5), rng.uniform(0.8, 1.0))
    if rng.random() < 0.7:
        overlay = image + (1.0 - image) * rng.uniform(0.7, 0.95)
    else:
        overlay = image * rng.uniform(0.1, 0.3)
    return overlay, alpha


def _crack(image: np.ndarray, rng: np.random.Generator, grain: float) -> tuple[np.ndarray, np.ndarray]:
    """A dark jagged line 3-6 px wide (at 256 px, times ``grain``), with a branch 60 % of the time."""
    size = image.shape[0]
    scale = size / 256.0 * grain
    length = rng.uniform(0.2, 0.45) * size
    main = _centreline(rng, size, length, bend=0.8, jag=0.45)
    lines = [main]
    if rng.random() < 0.6:
        at = rng.integers(len(main[0]) // 4, max(len(main[0]) * 3 // 4, len(main[0]) // 4 + 1))
        start = np.array([main[0][at], main[1][at]])
        lines.append(_centreline(rng, size, length * rng.uniform(0.25, 0.55), bend=0.8, jag=0.45, start=start))
    alpha = _line_alpha(size, lines, max(rng.uniform(1.2, 2.5) * scale, 0.5), rng.uniform(0.85, 1.0))
    return image * rng.uniform(0.05, 0.3), alpha


def _hole(image: np.ndarray, rng: np.random.Generator, grain: float) -> tuple[np.ndarray, np.ndarray]:
    """A dark hole 12-36 px across (at 256 px, times ``grain``) with a bright torn rim 1-2.5 px wide."""
    size = image.shape[0]
    scale = size / 256.0 * grain
    alpha = _blob_alpha(rng, size, max(rng.uniform(6.0, 18.0) * scale, 2.0), softness=0.15, floor=0.9)
    depth = ndimage.distance_transform_edt(alpha > 0)
    rim = depth <= max(rng.uniform(1.0, 2.5) * scale, 1.0)
    dark = 0.03 + image * rng.uniform(0.05, 0.25)
    bright = image + (1.0 - image) * rng.uniform(0.3, 0.6)
    overlay = np.where(rim[..., None], bright, dark)
    return overlay, np.where(alpha > 0, 1.0, 0.0).astype(np.float32)


def _real_stain(image: np.ndarray, rng: np.random.Generator, grain: float) -> tuple[np.ndarray, np.ndarray]:
    """A soft blob 30-70 px across (at 256 px, times ``grain``) of oil (dark), rust (brown) or residue (whitish).

    The surface's texture shows through.
    """
    size = image.shape[0]
    scale = size / 256.0 * grain
    alpha = _blob_alpha(rng, size, max(rng.uniform(15.0, 36.0) * scale, 2.0), softness=rng.uniform(0.3, 0.7),
                        floor=0.6)
    kind = rng.integers(3)
    if kind == 0:  # oil
        overlay = image * rng.uniform(0.08, 0.3)
    elif kind == 1:  # rust: the surface's brightness in a brown
        brown = np.array([0.55, 0.30, 0.12], dtype=np.float32) * rng.uniform(0.7, 1.2)
        overlay = brown * (0.5 + image.mean(-1, keepdims=True))
    else:  # dried residue
        overlay = image + (1.0 - image) * rng.uniform(0.6, 0.85)
    return overlay, alpha * rng.uniform(0.85, 1.0)


def _contamination(
    image: np.ndarray, donor: np.ndarray, rng: np.random.Generator, grain: float
) -> tuple[np.ndarray, np.ndarray]:
    """Foreign material on the surface, in a colour unlike the surface's.

    A particle (70 %) with the donor's texture, or a fibre: a thin wavy line 2-4 px wide at 256 px.
    """
    size = image.shape[0]
    scale = size / 256.0 * grain
    host = image.mean((0, 1))
    colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    # Unlike the surface: 0.35 apart in some channel, or 0.3 in brightness on a gray surface (it will be gray).
    while (abs(colour.mean() - host.mean()) < 0.3) if _is_gray(image) else (np.abs(colour - host).max() < 0.35):
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    luminance = donor.mean(-1, keepdims=True)
    overlay = np.clip(colour + 0.8 * (luminance - luminance.mean()), 0.0, 1.0)
    if rng.random() < 0.7:
        alpha = _blob_alpha(rng, size, max(rng.uniform(5.0, 18.0) * scale, 2.0), softness=0.1, floor=0.9)
    else:
        line = _centreline(rng, size, rng.uniform(0.15, 0.4) * size, bend=3.0, jag=0.15)
        alpha = _line_alpha(size, [line], max(rng.uniform(0.8, 1.6) * scale, 0.5), 1.0)
    return overlay, alpha


def _is_gray(image: np.ndarray) -> bool:
    """Whether an ``(H, W, 3)`` image has equal channels."""
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


_HARD = {"deformation": _hard_deformation, "scratch": _hard_scratch, "stain": _hard_stain}
_REALISTIC = {"crack": _crack, "hole": _hole, "scratch": _real_scratch, "stain": _real_stain}
_DONOR_TYPES = {"hard": "patch", "realistic": "contamination"}
"""The defect type of each difficulty that pastes a piece of another category's image (its ``donor``)."""


def apply_defect(
    image: np.ndarray,
    defect_type: str,
    rng: np.random.Generator,
    donor: np.ndarray | None = None,
    difficulty: str = "realistic",
    grain: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Add one synthetic defect to an image and return its exact mask.

    Masked pixels become the rounded blend ``(1 - opacity) * image + opacity * overlay``; every other pixel is
    unchanged. Lengths scale with the image side; a gray image gets a gray defect. ``realistic`` (MVTec AD-like,
    strong contrast): ``contamination``, ``crack``, ``hole``, ``scratch``, ``stain``. ``hard`` (generator version 1's,
    thin or faint): ``deformation``, ``patch``, ``scratch``, ``stain``; its mask is the pixels touched (rounding can
    leave one unchanged).

    Args:
        image: ``(H, W, 3)`` uint8 RGB defect-free image, ``H == W``.
        defect_type: One of ``DEFECT_TYPES[difficulty]``.
        rng: Source of randomness.
        donor: ``(H, W, 3)`` uint8 image of another surface; required for ``contamination`` and ``patch`` only.
        difficulty: One of :data:`DIFFICULTIES`.
        grain: ``realistic`` only: multiplies widths and radii, so defects on a coarse texture are as plain as on a
            fine one (the category's ``grain``).

    Returns:
        ``(defected, mask)``: ``(H, W, 3)`` uint8 and ``(H, W)`` bool, non-empty.

    Raises:
        ValueError: If ``difficulty`` or ``defect_type`` is unknown, the image is not square RGB uint8, or a
            ``contamination`` or ``patch`` gets no donor of the image's shape.
    """
    _check_difficulty(difficulty)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1] or image.dtype != np.uint8:
        raise ValueError(f"apply_defect needs a square (H, W, 3) uint8 image, got shape {image.shape} {image.dtype}")
    if defect_type not in DEFECT_TYPES[difficulty]:
        raise ValueError(f"defect_type must be one of {DEFECT_TYPES[difficulty]} for difficulty {difficulty!r}, "
                         f"got {defect_type!r}")
    base = image.astype(np.float32) / 255.0
    if defect_type == _DONOR_TYPES[difficulty]:
        if donor is None or donor.shape != image.shape:
            shape = None if donor is None else donor.shape
            raise ValueError(f"defect_type {defect_type!r} needs a donor image of shape {image.shape}, got {shape}")
        if difficulty == "hard":
            overlay, alpha = _hard_patch(base, donor.astype(np.float32) / 255.0, rng)
        else:
            overlay, alpha = _contamination(base, donor.astype(np.float32) / 255.0, rng, grain)
    elif difficulty == "hard":
        overlay, alpha = _HARD[defect_type](base, rng)
    else:
        overlay, alpha = _REALISTIC[defect_type](base, rng, grain)
    if _is_gray(image):
        overlay = np.repeat(overlay.mean(-1, keepdims=True), 3, axis=-1)
    mask = alpha > 0
    opacity = alpha[mask][:, None]
    defected = image.copy()
    defected[mask] = _to_uint8((1.0 - opacity) * base[mask] + opacity * overlay[mask])
    if difficulty == "realistic":
        mask &= (defected != image).any(-1)
    return defected, mask


def _check_difficulty(difficulty: str) -> None:
    if difficulty not in DIFFICULTIES:
        raise DatasetError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")


def _defect_counts(num_test_defective: int, difficulty: str) -> dict[str, int]:
    """Spread the defective test images over a difficulty's defect types as evenly as possible (earlier first)."""
    types = DEFECT_TYPES[difficulty]
    share, extra = divmod(num_test_defective, len(types))
    return {name: share + (i < extra) for i, name in enumerate(types)}


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # zlib level 1 instead of PIL's default 6: much faster, for files hardly larger.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _write_category(directory: Path, category: str, params: dict) -> dict[str, int]:
    """Write one category's train and test images and masks under ``directory``; return the count per folder."""
    seed, size = params["seed"], params["image_size"]
    for index in range(params["num_train"]):
        _save_png(normal_image(category, _image_rng(seed, category, _TRAIN, index), size),
                  directory / "train" / "good" / f"{index:03d}.png")
    for index in range(params["num_test_good"]):
        _save_png(normal_image(category, _image_rng(seed, category, _TEST_GOOD, index), size),
                  directory / "test" / "good" / f"{index:03d}.png")
    counts = {"train/good": params["num_train"], "test/good": params["num_test_good"]}
    difficulty = params["difficulty"]
    pool = _VERSION_1_CATEGORIES if difficulty == "hard" else EMBEDDED_CATEGORIES
    donors = [name for name in pool if name != category]
    offset = 0
    for defect_type, count in _defect_counts(params["num_test_defective"], difficulty).items():
        for index in range(count):
            rng = _image_rng(seed, category, _TEST_DEFECT, offset + index)
            image = normal_image(category, rng, size)
            donor = None
            if defect_type == _DONOR_TYPES[difficulty]:
                donor = normal_image(donors[rng.integers(len(donors))], rng, size)
            defected, mask = apply_defect(image, defect_type, rng, donor, difficulty, _SOURCES[category].grain)
            _save_png(defected, directory / "test" / defect_type / f"{index:03d}.png")
            _save_png(mask.astype(np.uint8) * 255, directory / "ground_truth" / defect_type / f"{index:03d}_mask.png")
        offset += count
        if count:
            counts[f"test/{defect_type}"] = count
    return counts


def _read_manifest(root: Path) -> dict | None:
    """The manifest of a data set this module wrote at ``root``; ``None`` if ``root`` is missing or empty.

    Raises:
        OutputPathError: If ``root`` is a file or holds anything but such a data set (it is never overwritten).
    """
    if not root.exists():
        return None
    if not root.is_dir():
        raise OutputPathError(f"Embedded data set root {root} is a file; give a directory that is empty or new")
    manifest_path = root / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise OutputPathError(f"{manifest_path} is not valid JSON ({error}); refusing to overwrite {root}. "
                                  "Delete it or choose another --output") from error
        if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR_NAME:
            return manifest
        raise OutputPathError(f"{manifest_path} was not written by {GENERATOR_NAME}; refusing to overwrite {root}. "
                              "Delete it or choose another --output")
    if any(root.iterdir()):
        raise OutputPathError(f"{root} exists, is not empty and holds no {MANIFEST_NAME} of an embedded data set; "
                              "refusing to overwrite it. Give an empty or new directory")
    return None


def _matches(manifest: dict | None, params: dict) -> bool:
    """Whether ``manifest`` describes the set that ``params`` and this generator version would write."""
    return (manifest is not None and manifest.get("version") == GENERATOR_VERSION
            and manifest.get("parameters") == params)


def _publish(staging: Path, root: Path, params: dict) -> None:
    """Move a finished data set from ``staging`` to ``root``, replacing only an earlier embedded data set there."""
    manifest = _read_manifest(root)
    if _matches(manifest, params):  # another process finished the same set first
        shutil.rmtree(staging)
        return
    if manifest is None:
        if root.exists():
            root.rmdir()  # empty (checked by _read_manifest)
        os.replace(staging, root)
        return
    retired = root.with_name(f".{root.name}.old-{uuid.uuid4().hex}")
    os.replace(root, retired)
    os.replace(staging, root)
    shutil.rmtree(retired)


def generate_embedded_dataset(
    root: str | Path,
    seed: int = 0,
    image_size: int = 256,
    num_train: int = 60,
    num_test_good: int = 10,
    num_test_defective: int = 20,
    categories: Sequence[str] | None = None,
    difficulty: str = "realistic",
) -> Path:
    """Write the embedded data set in MVTec AD layout under ``root``, or reuse the one already there.

    A manifest with the same generator version and parameters means nothing to do. Otherwise the set is written to a
    temporary sibling and renamed into place (manifest last), so an interrupted run never leaves a complete-looking set;
    an earlier embedded set with other parameters is replaced, anything else at ``root`` is never touched.

    Args:
        root: Destination directory; missing or empty, or holding an earlier embedded data set.
        seed: Seed of every random draw.
        image_size: Side of the square RGB images, at least 32.
        num_train: Normal training images per category, at least 1.
        num_test_good: Normal test images per category.
        num_test_defective: Defective test images per category, spread evenly over ``DEFECT_TYPES[difficulty]``
            (a type with no image gets no folder).
        categories: Subset of :data:`EMBEDDED_CATEGORIES`; ``None`` for all of them.
        difficulty: Defect preset, one of :data:`DIFFICULTIES` (see :func:`apply_defect`).

    Returns:
        ``root`` as an absolute path.

    Raises:
        ValueError: If a count, the size, a category or the difficulty is invalid.
        OutputPathError: If ``root`` is a file, or non-empty and holds no embedded data set.
    """
    root = Path(root).expanduser().absolute()
    _check_difficulty(difficulty)
    categories = list(EMBEDDED_CATEGORIES if categories is None else categories)
    unknown = sorted(set(categories) - set(EMBEDDED_CATEGORIES))
    if unknown or not categories or len(set(categories)) != len(categories):
        raise DatasetError(f"categories must be distinct names from {EMBEDDED_CATEGORIES}, got {categories}")
    if image_size < 32:
        raise DatasetError(f"image_size must be at least 32, got {image_size}")
    if num_train < 1 or num_test_good < 0 or num_test_defective < 0:
        raise DatasetError(f"need num_train >= 1, num_test_good >= 0, num_test_defective >= 0; got {num_train}, "
                         f"{num_test_good}, {num_test_defective}")
    params = {"seed": int(seed), "image_size": int(image_size), "num_train": int(num_train),
              "num_test_good": int(num_test_good), "num_test_defective": int(num_test_defective),
              "categories": sorted(categories), "difficulty": difficulty}
    if _matches(_read_manifest(root), params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        counts = {category: _write_category(staging / category, category, params)
                  for category in params["categories"]}
        manifest = {
            "generator": GENERATOR_NAME,
            "version": GENERATOR_VERSION,
            "parameters": params,
            "defect_types": list(DEFECT_TYPES[difficulty]),
            "counts": counts,
            "sources": {name: f"skimage.data.{_SOURCES[name].loader}() ({_SOURCES[name].licence})"
                        for name in params["categories"]},
            "libraries": {"scikit-image": skimage.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
                          "pillow": PIL.__version__},
        }
        atomic_write_text(staging / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
        _publish(staging, root, params)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the embedded data set to ``--output`` and print its path.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status, 0.
    """
    parser = argparse.ArgumentParser(
        prog="anomaly-diff-data",
        description="Write the embedded anomaly detection data set (MVTec AD layout) generated offline from "
                    "scikit-image's sample images. Reuses DIR if it already holds the same set.")
    parser.add_argument("--output", required=True, type=Path, help="destination directory (new, empty, or an "
                        "earlier embedded data set)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=60, help="training normals per category "
                        "(default: %(default)s)")
    parser.add_argument("--num-test-good", type=int, default=10, help="normal test images per category "
                        "(default: %(default)s)")
    parser.add_argument("--num-test-defective", type=int, default=20, help="defective test images per category "
                        "(default: %(default)s)")
    parser.add_argument("--categories", nargs="+", choices=EMBEDDED_CATEGORIES, default=None,
                        help="subset of the categories (default: all)")
    parser.add_argument("--difficulty", choices=DIFFICULTIES, default="realistic",
                        help="defect preset: MVTec AD-like or version 1's far harder defects (default: %(default)s)")
    args = parser.parse_args(argv)
    root = generate_embedded_dataset(args.output, seed=args.seed, image_size=args.image_size,
                                     num_train=args.num_train, num_test_good=args.num_test_good,
                                     num_test_defective=args.num_test_defective, categories=args.categories,
                                     difficulty=args.difficulty)
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
