"""The embedded default data set: MVTec-AD-layout anomaly data generated offline from scikit-image's sample images.

Every category starts from one image that scikit-image ships inside its wheel (no download): the CC0 textures
``brick``, ``grass`` and ``gravel`` (tinted, since they are grayscale) and crops of two photographs, the CC0 espresso
cup of ``coffee`` and one coin of ``coins`` (no known copyright restrictions, Brooklyn Museum). Normal images are
jittered crops of that image: random crops and flips for textures, small shifts and scale changes of one fixed
region for objects, plus slight brightness, contrast and colour-cast changes for both. Defective test images are
normal images with one synthetic defect from :data:`DEFECT_TYPES`, each with its exact pixel mask (see
:func:`apply_defect`).

Everything is drawn from ``numpy.random.default_rng([seed, crc32(category), split, index])``, so the same
parameters give byte-identical PNG files, and a category's images do not depend on which other categories are
generated. The layout is MVTec AD's::

    <root>/manifest.json
    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect_type>/000.png
    <root>/<category>/ground_truth/<defect_type>/000_mask.png      (0 or 255, same size as the image)

Command line (prints the data set's path)::

    anomaly-diff-data --output DIR [--seed N] [--image-size S] [--num-train N]
        [--num-test-good N] [--num-test-defective N] [--categories brick coffee ...]
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

from anomaly_diff.utils.io import atomic_write_text

GENERATOR_VERSION = 1
"""Bumped whenever the same parameters would give different files; a cached set of another version is rebuilt."""

MANIFEST_NAME = "manifest.json"
GENERATOR_NAME = "anomaly_diff.data.synthetic"
"""The manifest's ``generator`` value: how a directory this module wrote is told from user data."""

DEFECT_TYPES: tuple[str, ...] = ("deformation", "patch", "scratch", "stain")
"""Defect types, sorted; the names of the ``test/<defect_type>`` and ``ground_truth/<defect_type>`` folders."""

# Split codes that enter the random seed of every image.
_TRAIN, _TEST_GOOD, _TEST_DEFECT = 0, 1, 2


@dataclass(frozen=True)
class _Source:
    """Where a category's images come from.

    Attributes:
        loader: Name of the ``skimage.data`` function returning the source image.
        licence: Licence of the source image, as scikit-image's docstring states it.
        tint: ``(dark, light)`` RGB colours in ``[0, 1]`` that a grayscale source's black and white map to.
        region: ``(centre_x, centre_y, side)`` in source pixels of an object category's square crop; ``None`` for a
            texture, which is cropped anywhere.
    """

    loader: str
    licence: str
    tint: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    region: tuple[float, float, float] | None = None


_SOURCES: dict[str, _Source] = {
    "brick": _Source("brick", "CC0", tint=((0.16, 0.06, 0.04), (0.95, 0.64, 0.50))),
    "coffee": _Source("coffee", "CC0", region=(275.0, 200.0, 380.0)),
    "coins": _Source("coins", "no known copyright restrictions", tint=((0.06, 0.05, 0.04), (0.98, 0.86, 0.60)),
                     region=(343.0, 187.0, 76.0)),
    "grass": _Source("grass", "CC0", tint=((0.04, 0.12, 0.02), (0.70, 0.92, 0.38))),
    "gravel": _Source("gravel", "CC0", tint=((0.10, 0.09, 0.08), (0.88, 0.84, 0.76))),
}

EMBEDDED_CATEGORIES: tuple[str, ...] = tuple(sorted(_SOURCES))
"""The default categories, sorted (so a category's class index is its position here)."""


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
    if image.ndim == 2:
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

    Textures: a random square crop of 45-65 % of the source's side, random horizontal and vertical flips. Objects:
    the category's fixed region, shifted by up to 3 % and scaled by up to 4 % of its side. Both: brightness gain
    ``0.93..1.07``, contrast ``0.92..1.08`` around the image mean, offset ``-0.02..0.02``, and a colour cast (gain
    ``0.975..1.025`` per channel).

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
    image = image * rng.uniform(0.975, 1.025, size=3).astype(np.float32)  # white-balance cast
    return _to_uint8(image)


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


def _scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
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


def _stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A colour blob: the surface tinted by a per-channel gain, so its texture shows through."""
    size = image.shape[0]
    alpha = _blob_alpha(rng, size, max(rng.uniform(0.02, 0.11) * size, 2.0), softness=rng.uniform(0.2, 0.8), floor=0.35)
    direction = rng.normal(size=3)
    gain = 1.0 + rng.uniform(0.15, 0.45) * direction / np.linalg.norm(direction) - rng.uniform(0.0, 0.15)
    overlay = image * gain.astype(np.float32)
    return overlay, alpha * rng.uniform(0.4, 0.9)


def _patch(image: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
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


def _deformation(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A local elastic warp: a swirl or a push inside a disc; the mask is where pixels moved by at least half a pixel.

    The displacement is ``amplitude * (1 - (r / R)^2)^2`` inside the disc of radius ``R`` (zero outside), either
    along a fixed direction (push) or as a rotation about the centre by that many pixels of arc (swirl). The output
    samples the image at ``x - d(x)`` with bilinear interpolation (``scipy.ndimage.map_coordinates``).
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


def apply_defect(
    image: np.ndarray, defect_type: str, rng: np.random.Generator, donor: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Add one synthetic defect to an image and return its exact mask.

    Each defect gives an overlay and an opacity that is positive exactly on the defect; masked pixels become the
    rounded blend ``(1 - opacity) * image + opacity * overlay``, every other pixel is copied unchanged, so the mask
    is exactly the set of pixels the defect touched. Sizes and strengths vary from small and faint to large and
    plain; lengths scale with the image side.

    Args:
        image: ``(H, W, 3)`` uint8 RGB defect-free image, ``H == W``.
        defect_type: One of :data:`DEFECT_TYPES`: ``scratch`` (thin curved line), ``stain`` (colour blob),
            ``patch`` (pasted piece of ``donor``), ``deformation`` (local elastic warp).
        rng: Source of randomness.
        donor: ``(H, W, 3)`` uint8 image of another surface; required for ``patch`` only.

    Returns:
        ``(defected, mask)``: ``(H, W, 3)`` uint8 and ``(H, W)`` bool, non-empty.

    Raises:
        ValueError: If ``defect_type`` is unknown, the image is not square RGB uint8, or ``patch`` gets no donor of
            the image's shape.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1] or image.dtype != np.uint8:
        raise ValueError(f"apply_defect needs a square (H, W, 3) uint8 image, got shape {image.shape} {image.dtype}")
    base = image.astype(np.float32) / 255.0
    if defect_type == "scratch":
        overlay, alpha = _scratch(base, rng)
    elif defect_type == "stain":
        overlay, alpha = _stain(base, rng)
    elif defect_type == "patch":
        if donor is None or donor.shape != image.shape:
            shape = None if donor is None else donor.shape
            raise ValueError(f"defect_type 'patch' needs a donor image of shape {image.shape}, got {shape}")
        overlay, alpha = _patch(base, donor.astype(np.float32) / 255.0, rng)
    elif defect_type == "deformation":
        overlay, alpha = _deformation(base, rng)
    else:
        raise ValueError(f"defect_type must be one of {DEFECT_TYPES}, got {defect_type!r}")
    mask = alpha > 0
    opacity = alpha[mask][:, None]
    defected = image.copy()
    defected[mask] = _to_uint8((1.0 - opacity) * base[mask] + opacity * overlay[mask])
    return defected, mask


def _defect_counts(num_test_defective: int) -> dict[str, int]:
    """Spread the defective test images over :data:`DEFECT_TYPES` as evenly as possible (earlier types first)."""
    share, extra = divmod(num_test_defective, len(DEFECT_TYPES))
    return {name: share + (i < extra) for i, name in enumerate(DEFECT_TYPES)}


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # zlib level 1 instead of PIL's default 6: the default set takes 6 s instead of 11 s here, 45 MB instead of 44.
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
    donors = [name for name in EMBEDDED_CATEGORIES if name != category]
    offset = 0
    for defect_type, count in _defect_counts(params["num_test_defective"]).items():
        for index in range(count):
            rng = _image_rng(seed, category, _TEST_DEFECT, offset + index)
            image = normal_image(category, rng, size)
            donor = normal_image(donors[rng.integers(len(donors))], rng, size) if defect_type == "patch" else None
            defected, mask = apply_defect(image, defect_type, rng, donor)
            _save_png(defected, directory / "test" / defect_type / f"{index:03d}.png")
            _save_png(mask.astype(np.uint8) * 255, directory / "ground_truth" / defect_type / f"{index:03d}_mask.png")
        offset += count
        if count:
            counts[f"test/{defect_type}"] = count
    return counts


def _read_manifest(root: Path) -> dict | None:
    """The manifest of a data set this module wrote at ``root``; ``None`` if ``root`` is missing or empty.

    Raises:
        FileExistsError: If ``root`` holds anything but such a data set (it is never overwritten).
        NotADirectoryError: If ``root`` is a file.
    """
    if not root.exists():
        return None
    if not root.is_dir():
        raise NotADirectoryError(f"Embedded data set root {root} is a file; give a directory that is empty or new")
    manifest_path = root / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise FileExistsError(f"{manifest_path} is not valid JSON ({error}); refusing to overwrite {root}. "
                                  "Delete it or choose another --output") from error
        if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR_NAME:
            return manifest
        raise FileExistsError(f"{manifest_path} was not written by {GENERATOR_NAME}; refusing to overwrite {root}. "
                              "Delete it or choose another --output")
    if any(root.iterdir()):
        raise FileExistsError(f"{root} exists, is not empty and holds no {MANIFEST_NAME} of an embedded data set; "
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
) -> Path:
    """Write the embedded data set in MVTec AD layout under ``root``, or reuse the one already there.

    If ``root`` holds a manifest with the same generator version and parameters, nothing is done. Otherwise the
    set is written to a temporary sibling directory, which is renamed to ``root`` once complete (the manifest is
    its last file), so an interrupted run never leaves a complete-looking set. An earlier embedded set at ``root``
    with other parameters is replaced; anything else at ``root`` is never touched.

    Args:
        root: Destination directory; missing or empty, or holding an earlier embedded data set.
        seed: Seed of every random draw.
        image_size: Side of the square RGB images, at least 32.
        num_train: Normal training images per category, at least 1.
        num_test_good: Normal test images per category.
        num_test_defective: Defective test images per category, spread evenly over :data:`DEFECT_TYPES` (a type
            with no image gets no folder).
        categories: Subset of :data:`EMBEDDED_CATEGORIES`; ``None`` for all of them.

    Returns:
        ``root`` as an absolute path.

    Raises:
        ValueError: If a count, the size or a category is invalid.
        FileExistsError: If ``root`` is non-empty and holds no embedded data set.
        NotADirectoryError: If ``root`` is a file.
    """
    root = Path(root).expanduser().absolute()
    categories = list(EMBEDDED_CATEGORIES if categories is None else categories)
    unknown = sorted(set(categories) - set(EMBEDDED_CATEGORIES))
    if unknown or not categories or len(set(categories)) != len(categories):
        raise ValueError(f"categories must be distinct names from {EMBEDDED_CATEGORIES}, got {categories}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    if num_train < 1 or num_test_good < 0 or num_test_defective < 0:
        raise ValueError(f"need num_train >= 1, num_test_good >= 0, num_test_defective >= 0; got {num_train}, "
                         f"{num_test_good}, {num_test_defective}")
    params = {"seed": int(seed), "image_size": int(image_size), "num_train": int(num_train),
              "num_test_good": int(num_test_good), "num_test_defective": int(num_test_defective),
              "categories": sorted(categories)}
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
            "defect_types": list(DEFECT_TYPES),
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
    args = parser.parse_args(argv)
    root = generate_embedded_dataset(args.output, seed=args.seed, image_size=args.image_size,
                                     num_train=args.num_train, num_test_good=args.num_test_good,
                                     num_test_defective=args.num_test_defective, categories=args.categories)
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
