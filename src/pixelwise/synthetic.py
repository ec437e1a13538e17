"""Synthetic fluorescence-like images of touching cells, with exact instance labels.

The hard case U-Net's weighted loss was designed for: many cells share a boundary with no
background between them, so connected components of the foreground mask merge them.

* :func:`touching_cells` draws one image and its ``(H, W)`` int32 instance map
  (0 = background, 1..K = cells).
* :func:`touching_cells_dataset` draws ``n`` of them from independent, reproducible streams.
* :func:`write_dataset` stores them as ``images/cell_000.png`` (uint8, :func:`to_uint8`) +
  ``masks/cell_000.tif`` (uint16 ids), the folder-pair layout read by
  ``pixelwise.data.open_dataset(folder, instances=True)``; with ``separate=True`` touching
  cells are drawn apart by a background line, as in the U-Net paper's masks (the demo's data).

Which cells touch is :mod:`pixelwise.instances.contacts`' business (``count_touching_pairs``,
re-exported here, ``contact_pixels``, ``separate_touching``).

How an image is made:

1. **Outlines.** Cell ``i`` has a centre ``c_i`` and a star-shaped outline ``R_i(φ)``: an ellipse
   of mean radius ``r_i`` (random aspect and orientation, area ``π r_i²``) whose radius is
   modulated by low-frequency harmonics (k = 2, 3, 4). Its normalised radius at pixel ``p`` is
   ``ρ_i(p) = |p - c_i| / R_i(angle of p - c_i)``: 0 at the centre, 1 on the outline.
2. **Placement.** With probability ``touching`` a cell is placed so that it overlaps a random
   earlier cell (centre distance 75-90 % of the sum of their smallest radii, so the outlines
   cross by at least ~1.5 px); otherwise it is placed at least ``_GAP`` px clear of every earlier
   cell's largest radius. Later touching cells may attach to a free cell.
3. **Labels.** A pixel inside several outlines goes to the cell with the smallest ``ρ_i`` (the
   cell it is deepest inside): a Voronoi-like split scaled by cell size, so touching cells share
   a straight-ish boundary. Any stray fragment of a cell (not 4-connected to its main part) is
   set to background, so every object is one 4-connected component.
4. **Image.** Per-cell brightness × a radial fall-off ``1 - 0.25 ρ²`` × a fine texture, dimmed by
   ``_CONTACT_DIM`` on pixels touching another cell (the signal dips at contacts but stays well
   above background), on a dim background; multiplied by a smooth illumination field, blurred
   (``scipy.ndimage.gaussian_filter``) and corrupted by shot noise (variance ∝ intensity, the
   Gaussian approximation of Poisson noise) plus Gaussian read noise; clipped to [0, 1].
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pixelwise.data import write_image
from pixelwise.instances import contact_pixels, count_touching_pairs, separate_touching

__all__ = [
    "count_touching_pairs",  # re-exported from pixelwise.instances, where it lives
    "to_uint8",
    "touching_cells",
    "touching_cells_dataset",
    "write_dataset",
]

# Share of the image area the cells cover when n_cells is derived (before overlaps).
_COVERAGE = 0.3
# Placement tries per cell; a cell that finds no room is left out.
_ATTEMPTS = 30
# Background pixels kept between a free cell and every earlier cell.
_GAP = 3.0
# Touching cells: centre distance as a share of the sum of their smallest radii.
_TOUCH_DISTANCE = (0.75, 0.9)
# Harmonics k = 2, 3, 4 of the outline, each with a relative amplitude up to this value.
_HARMONICS = (2, 3, 4)
_HARMONIC_AMPLITUDE = 0.05
# Ellipse aspect ratio (major / minor axis) range.
_ASPECT = (1.0, 1.4)
# Intensities before illumination, blur and noise.
_BACKGROUND = 0.08
_BRIGHTNESS = (0.45, 0.8)
_FALLOFF = 0.25
_CONTACT_DIM = 0.8
_TEXTURE_SIGMA = 1.0
_TEXTURE_AMPLITUDE = 0.08
# Illumination field: random mix of the lowest 3 × 3 cosine modes (periods >= the image size).
_ILLUMINATION_MODES = 3

_IMAGE_DIR, _MASK_DIR, _STEM = "images", "masks", "cell"


@dataclass(frozen=True)
class _Outline:
    """Star-shaped cell outline ``R(φ) = ellipse(φ) · (1 + Σ_k a_k cos(kφ + p_k))``, in pixels.

    Attributes:
        major, minor: ellipse semi-axes (``major · minor = r²``, so the area is ``π r²``).
        angle: orientation of the major axis, radians.
        harmonics: complex ``a_k · exp(i p_k)`` for k in ``_HARMONICS``.
        r_min, r_max: bounds of ``R(φ)``: ``minor · (1 - Σ a_k)`` and ``major · (1 + Σ a_k)``.
    """

    major: float
    minor: float
    angle: float
    harmonics: tuple[complex, ...]
    r_min: float
    r_max: float

    def rho(self, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Normalised radius ``|d| / R(angle of d)`` of offsets ``d = (dy, dx)`` from the centre.

        Broadcasts ``dy`` against ``dx``; 0 at the centre, 1 on the outline. The ellipse part is
        ``hypot(u / major, v / minor)`` with ``(u, v)`` the offset in the ellipse's axes; the
        wobble uses ``z = exp(iφ)`` so that ``Re(a_k e^{i p_k} z^k) = a_k cos(kφ + p_k)``.
        """
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        ellipse = np.hypot((dx * cos + dy * sin) / self.major, (dy * cos - dx * sin) / self.minor)
        distance = np.maximum(np.hypot(dy, dx), 1e-12)  # z = 0 at the centre, where ρ = 0
        z = (dx + 1j * dy) / distance
        series = np.zeros_like(z)
        for coefficient in reversed(self.harmonics):  # Horner over consecutive k = 2, 3, 4
            series = (series + coefficient) * z
        wobble = 1 + (series * z ** (_HARMONICS[0] - 1)).real
        return ellipse / wobble


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_shape(shape: Any) -> tuple[int, int]:
    if (
        not isinstance(shape, tuple | list)
        or len(shape) != 2
        or not all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in shape)
        or min(shape) < 1
    ):
        raise ValueError(
            f"shape must be two positive integers (H, W), got {shape!r}; e.g. shape=(256, 256)"
        )
    return int(shape[0]), int(shape[1])


def _check_radius(radius: Any) -> tuple[float, float]:
    try:
        low, high = (float(r) for r in radius)
    except (TypeError, ValueError):
        low, high = math.nan, math.nan
    if not 1 <= low <= high < math.inf:
        raise ValueError(
            f"radius must be (min, max) with 1 <= min <= max, got {radius!r}; "
            "pass cell radii in pixels, e.g. radius=(8, 16)"
        )
    return low, high


def _check_fraction(name: str, value: float, meaning: str) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}; pass {meaning}")


def _check_non_negative(name: str, value: float, meaning: str) -> None:
    if not 0 <= value < math.inf:
        raise ValueError(f"{name} must be >= 0, got {value!r}; pass {meaning}")


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}; pass a count")
    return int(value)


def _as_generator(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, bool) or not isinstance(rng, int | np.integer) or rng < 0:
        raise ValueError(
            f"rng must be a numpy Generator or an integer seed >= 0, got {rng!r}; "
            "e.g. rng=0 or rng=np.random.default_rng(0)"
        )
    return np.random.default_rng(int(rng))


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def _random_outlines(
    rng: np.random.Generator, n: int, radius: tuple[float, float]
) -> list[_Outline]:
    """``n`` outlines with uniform random mean radius, aspect, orientation and harmonics."""
    r = rng.uniform(*radius, n)
    aspect = rng.uniform(*_ASPECT, n)
    angle = rng.uniform(0, math.pi, n)
    amplitudes = rng.uniform(0, _HARMONIC_AMPLITUDE, (n, len(_HARMONICS)))
    coefficients = amplitudes * np.exp(1j * rng.uniform(0, 2 * math.pi, amplitudes.shape))
    major, minor = r * np.sqrt(aspect), r / np.sqrt(aspect)
    total = amplitudes.sum(axis=1)
    return [
        _Outline(
            major=float(major[i]),
            minor=float(minor[i]),
            angle=float(angle[i]),
            harmonics=tuple(complex(c) for c in coefficients[i]),
            r_min=float(minor[i] * (1 - total[i])),
            r_max=float(major[i] * (1 + total[i])),
        )
        for i in range(n)
    ]


def _candidates(
    rng: np.random.Generator,
    outline: _Outline,
    centres: np.ndarray,
    r_min: np.ndarray,
    size: np.ndarray,
    touch: bool,
) -> np.ndarray:
    """(_ATTEMPTS, 2) candidate centres (y, x): next to random placed cells, or anywhere."""
    if not touch:
        return rng.uniform(0, size, (_ATTEMPTS, 2))
    neighbour = rng.integers(len(centres), size=_ATTEMPTS)
    direction = rng.uniform(0, 2 * math.pi, _ATTEMPTS)
    distance = (outline.r_min + r_min[neighbour]) * rng.uniform(*_TOUCH_DISTANCE, _ATTEMPTS)
    offset = np.stack([np.sin(direction), np.cos(direction)], axis=1) * distance[:, None]
    return centres[neighbour] + offset


def _place_cells(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_cells: int,
    radius: tuple[float, float],
    touching: float,
) -> list[tuple[np.ndarray, _Outline]]:
    """Draw up to ``n_cells`` (centre (2,) as (y, x), outline) with centres inside the image.

    Each cell draws ``_ATTEMPTS`` candidate centres at once and takes the first that is inside
    the image and clear of the placed cells; a cell without such a candidate is left out.
    """
    size = np.array(shape, dtype=np.float64)
    centres = np.empty((n_cells, 2))
    r_min = np.empty(n_cells)
    r_max = np.empty(n_cells)
    cells: list[tuple[np.ndarray, _Outline]] = []
    wants_contact = rng.random(n_cells) < touching
    for outline, wants in zip(_random_outlines(rng, n_cells, radius), wants_contact, strict=True):
        placed = len(cells)
        touch = placed > 0 and bool(wants)
        candidates = _candidates(rng, outline, centres[:placed], r_min[:placed], size, touch)
        # (attempts, placed) centre distances to every placed cell.
        distances = np.hypot(
            *(candidates[:, None, :] - centres[None, :placed, :]).transpose(2, 0, 1)
        )
        if touch:
            clear = distances >= _TOUCH_DISTANCE[0] * (outline.r_min + r_min[:placed])
        else:
            clear = distances >= outline.r_max + r_max[:placed] + _GAP
        inside = np.all((candidates >= 0) & (candidates <= size - 1), axis=1)
        valid = np.flatnonzero(inside & clear.all(axis=1))
        if valid.size:
            centre = candidates[valid[0]]
            centres[placed], r_min[placed], r_max[placed] = centre, outline.r_min, outline.r_max
            cells.append((centre, outline))
    return cells


def _rasterize(
    shape: tuple[int, int], cells: list[tuple[np.ndarray, _Outline]]
) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids (H, W) int32 and normalised radius ρ (H, W) float64 (inf on background).

    Each pixel goes to the cell with the smallest ρ among those whose outline contains it. Ids
    are renumbered 1..K at the end: a cell smaller than a pixel may cover no pixel centre.
    """
    labels = np.zeros(shape, dtype=np.int32)
    rho = np.full(shape, np.inf)
    for index, (centre, outline) in enumerate(cells, start=1):
        reach = outline.r_max + 1
        y0, x0 = (max(0, math.floor(c - reach)) for c in centre)
        y1 = min(shape[0], math.ceil(centre[0] + reach) + 1)
        x1 = min(shape[1], math.ceil(centre[1] + reach) + 1)
        dy = np.arange(y0, y1)[:, None] - centre[0]
        dx = np.arange(x0, x1)[None, :] - centre[1]
        cell_rho = outline.rho(dy, dx)
        window = (slice(y0, y1), slice(x0, x1))
        wins = (cell_rho <= 1) & (cell_rho < rho[window])
        labels[window][wins] = index
        rho[window][wins] = cell_rho[wins]
    _drop_fragments(labels)
    rho[labels == 0] = np.inf
    return _relabel_contiguous(labels), rho


def _relabel_contiguous(labels: np.ndarray) -> np.ndarray:
    """Renumber the ids present to 1..K in increasing order (0 stays background)."""
    ids = np.flatnonzero(np.bincount(labels.ravel()))
    ids = ids[ids > 0]
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lookup[labels]


def _drop_fragments(labels: np.ndarray) -> None:
    """Keep each object's largest 4-connected part, in place; other parts become background."""
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:  # cell covers no pixel centre
            continue
        parts, n_parts = ndimage.label(labels[window] == index)
        if n_parts > 1:
            sizes = np.bincount(parts.ravel())[1:]
            stray = (parts > 0) & (parts != 1 + int(np.argmax(sizes)))
            labels[window][stray] = 0


# --------------------------------------------------------------------------------------------
# Image formation
# --------------------------------------------------------------------------------------------


def _illumination_field(
    rng: np.random.Generator, shape: tuple[int, int], strength: float
) -> np.ndarray:
    """(H, W) smooth multiplicative field spanning [1 - strength, 1]."""
    # Random mix of the lowest 2-D cosine (DCT-II) modes: cos(π k (y + 0.5) / H), k = 0..K-1.
    basis = [
        np.cos(np.pi * np.outer((np.arange(n) + 0.5) / n, np.arange(_ILLUMINATION_MODES)))
        for n in shape
    ]
    coefficients = rng.standard_normal((_ILLUMINATION_MODES, _ILLUMINATION_MODES))
    smooth = basis[0] @ coefficients @ basis[1].T
    span = smooth.max() - smooth.min()
    unit = (smooth - smooth.min()) / span if span > 0 else np.zeros(shape)
    return 1 - strength * unit


def _render(
    rng: np.random.Generator,
    labels: np.ndarray,
    rho: np.ndarray,
    *,
    noise: float,
    blur: float,
    illumination: float,
) -> np.ndarray:
    """(H, W) float32 image in [0, 1] of the cells in ``labels`` (see the module docstring)."""
    n_objects = int(labels.max())
    brightness = np.concatenate([[0.0], rng.uniform(*_BRIGHTNESS, n_objects)])
    texture = ndimage.gaussian_filter(rng.standard_normal(labels.shape), _TEXTURE_SIGMA)
    spread = float(texture.std()) or 1.0  # 0 only for a one-pixel image
    texture = 1 + _TEXTURE_AMPLITUDE * np.clip(texture / spread, -2.5, 2.5)
    field = _illumination_field(rng, labels.shape, illumination)
    inside = labels > 0
    cell = brightness[labels] * (1 - _FALLOFF * np.where(inside, rho, 0) ** 2) * texture
    cell[contact_pixels(labels)] *= _CONTACT_DIM
    image = np.where(inside, cell, _BACKGROUND) * field
    if blur > 0:
        image = ndimage.gaussian_filter(image, blur)
    if noise > 0:
        # Poisson-Gaussian noise in its Gaussian approximation (a few times faster than
        # rng.poisson on 512 × 512): variance noise² · v (shot) + (noise / 2)² (read).
        # Worked example: v = 0.5, noise = 0.08 → std = sqrt(0.0032 + 0.0016) ≈ 0.069.
        std = np.sqrt(noise**2 * image + (noise / 2) ** 2)
        image = image + std * rng.standard_normal(image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def touching_cells(
    shape: tuple[int, int] = (256, 256),
    *,
    n_cells: int | None = None,
    radius: tuple[float, float] = (8, 16),
    touching: float = 0.6,
    noise: float = 0.08,
    blur: float = 1.5,
    illumination: float = 0.4,
    rng: np.random.Generator | int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One fluorescence-like image of cells, many touching, with its instance labels.

    The geometry is drawn first, so images that differ only in ``noise``, ``blur`` or
    ``illumination`` have the same instances (and, for a given seed, the same texture).

    Args:
        shape: (H, W) of the image.
        n_cells: cells to place; ``None`` = enough to cover ~30 % of the image at the mean
            radius (about 46 for 256 × 256 and radius (8, 16)). A cell that finds no room after
            30 tries is left out, so crowded settings give fewer objects.
        radius: (min, max) mean cell radius in pixels; each cell draws its radius uniformly.
        touching: share of cells placed in contact with an earlier cell, in [0, 1]; with 0 no
            two cells touch.
        noise: shot-noise std at intensity 1 (variance ``noise² · v`` at intensity ``v``, the
            Gaussian approximation of Poisson noise) plus Gaussian read noise of std
            ``noise / 2``; 0 = noise-free.
        blur: sigma in pixels of the Gaussian blur (optics); 0 = none.
        illumination: strength of the uneven illumination in [0, 1): the field spans
            [1 - illumination, 1].
        rng: numpy Generator or integer seed.

    Returns:
        image: (H, W) float32 in [0, 1].
        instances: (H, W) int32, 0 = background, objects 1..K; each object is one 4-connected
            component.

    Raises:
        ValueError: invalid argument (the message states the rule).
    """
    size = _check_shape(shape)
    low, high = _check_radius(radius)
    _check_fraction("touching", touching, "the share of cells placed in contact, e.g. 0.6")
    _check_non_negative("noise", noise, "the shot-noise std at full brightness, e.g. 0.08")
    _check_non_negative("blur", blur, "a Gaussian sigma in pixels, e.g. 1.5")
    if not 0 <= illumination < 1:
        raise ValueError(
            f"illumination must be in [0, 1), got {illumination!r}; pass the strength of the "
            "uneven illumination, e.g. 0.4"
        )
    if n_cells is None:
        mean_radius = (low + high) / 2
        n_cells = max(1, round(_COVERAGE * size[0] * size[1] / (math.pi * mean_radius**2)))
    n_cells = _check_count("n_cells", n_cells)
    generator = _as_generator(rng)
    cells = _place_cells(generator, size, n_cells, (low, high), touching)
    labels, rho = _rasterize(size, cells)
    image = _render(generator, labels, rho, noise=noise, blur=blur, illumination=illumination)
    return image, labels


def touching_cells_dataset(
    n: int, shape: tuple[int, int], *, seed: int = 0, **kwargs: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` images from :func:`touching_cells`, image ``i`` seeded by ``(seed, i)``.

    Image ``i`` does not depend on ``n``: the first images of a larger dataset are the images
    of a smaller one with the same seed.

    Args:
        n: number of images (>= 0).
        shape: (H, W) of every image.
        seed: base seed (>= 0).
        **kwargs: further :func:`touching_cells` arguments (not ``rng``).

    Returns:
        List of ``(image (H, W) float32, instances (H, W) int32)``.
    """
    return list(_iter_dataset(n, shape, seed, kwargs))


def _iter_dataset(
    n: int, shape: tuple[int, int], seed: int, kwargs: dict[str, Any]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    n = _check_count("n", n)
    seed = _check_count("seed", seed)
    if "rng" in kwargs:
        raise ValueError("rng cannot be passed here; pass seed= (image i is seeded by (seed, i))")
    for index in range(n):
        yield touching_cells(shape, rng=np.random.default_rng([seed, index]), **kwargs)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W) float image in [0, 1] -> uint8 ``round(255 · image)`` (clipped), as stored."""
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_dataset(
    folder: str | os.PathLike[str],
    n: int,
    shape: tuple[int, int],
    *,
    seed: int = 0,
    separate: bool = False,
    **kwargs: Any,
) -> Path:
    """Write :func:`touching_cells_dataset` as image/mask folder pairs.

    Layout: ``folder/images/cell_000.png`` (uint8, :func:`to_uint8`) and
    ``folder/masks/cell_000.tif`` (uint16 instance ids, uint32 above 65535 objects), read by
    ``pixelwise.data.open_dataset(folder, instances=True)``. Names have at least three digits
    (more when ``n > 1000``). Every file is written atomically (temporary file + rename), so an
    error never leaves a partial file. Re-running with the same ``n`` overwrites the files.

    Args:
        folder: dataset folder (created when missing).
        n: number of image/mask pairs (>= 0).
        shape: (H, W) of every image.
        seed: base seed, as in :func:`touching_cells_dataset`.
        separate: store the masks with a background line wherever two cells touch
            (:func:`pixelwise.instances.separate_touching`), as the U-Net paper's training
            masks; the images are unchanged.
        **kwargs: further :func:`touching_cells` arguments.

    Returns:
        ``Path(folder)``.

    Raises:
        FileExistsError: ``images/`` or ``masks/`` holds files this call would not write (they
            would be read as part of the dataset).
    """
    n = _check_count("n", n)
    root = Path(folder)
    digits = max(3, len(str(n - 1)))
    stems = [f"{_STEM}_{index:0{digits}d}" for index in range(n)]
    expected = {_IMAGE_DIR: {f"{s}.png" for s in stems}, _MASK_DIR: {f"{s}.tif" for s in stems}}
    for sub, names in expected.items():
        directory = root / sub
        # Ignore hidden temporaries (".name.tmp") a crashed writer may have left.
        others = sorted(
            p.name
            for p in (directory.iterdir() if directory.is_dir() else ())
            if p.name not in names and not p.name.startswith(".")
        )
        if others:
            raise FileExistsError(
                f"{directory} already holds {len(others)} other file(s) (first: {others[0]!r}) "
                "that would join the dataset; write into an empty folder or delete them"
            )
    for stem, (image, instances) in zip(stems, _iter_dataset(n, shape, seed, kwargs), strict=True):
        if separate:
            instances = separate_touching(instances)
        ids = instances.astype(np.uint16 if instances.max(initial=0) <= 65535 else np.uint32)
        write_image(root / _IMAGE_DIR / f"{stem}.png", to_uint8(image))
        write_image(root / _MASK_DIR / f"{stem}.tif", ids)
    return root
