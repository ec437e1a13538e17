"""The U-Net paper's data augmentation: elastic deformation, rotation, shift, flips, gray values;
and four it does not use: a random zoom and a dimming (off by default), a Gaussian blur and
added noise (off in `Augment`; on in the instance training defaults).

U-Net (Ronneberger et al. 2015, sec. 3.1) deforms training images with "random displacement
vectors on a coarse 3 by 3 grid", drawn from a Gaussian with 10 pixels standard deviation, and
computes per-pixel displacements by bicubic interpolation. Shifts, rotations and gray-value
variations complete the augmentation. The zoom (`Augment(zoom=...)`, off by default) scales the
content by a random factor, as nnU-Net's scaling and Cellpose's size augmentation do, so that a
model trained on nuclei of one size also meets smaller and larger ones; the dimming
(`Augment(dim=...)`, off by default) does the same for brightness: objects dimmer than the
training images' over the same background. The blur (`Augment(blur=...)`) and the noise
(`Augment(noise=...)`) vary the optics and the camera, as nnU-Net's Gaussian blur and noise
do; the noise matters for a second reason: resampling by the warp's bilinear interpolation
smooths every training patch a little, so a model trained without it learns that smoothness
and breaks sharper, noisier images of other microscopes into pieces (measured in
benchmarks/nuclei_instances.py --split groups; see pixelwise.train.config.INSTANCE_DEFAULTS).

Every geometric part (flips, rotation, zoom, shift, elastic field, output crop) is composed into
ONE source-coordinate map per sample (`SpatialTransform.coordinates`), and each array is resampled
once with `torch.nn.functional.grid_sample`: single-threaded it is several times faster than
`scipy.ndimage.map_coordinates`, which alone misses the 20 ms budget for resampling a 512 × 512
image, mask and weight map (see benchmarks/losses_augment.py). Image, mask and weight map share
the map, so they stay aligned:

* image: bilinear by default (`image_order=1`), or bicubic (`image_order=3`, Keys' cubic
  convolution, which can overshoot at sharp edges and makes a sample about 1.7× slower);
* mask: nearest neighbour, so it keeps its dtype and holds only labels already present;
* weight map: bilinear.

Outside the image all three are mirrored about the border pixels (scipy's mode "mirror",
numpy's pad mode "reflect"), as the paper's overlap-tile strategy mirrors. Gray-value variation
(gamma, contrast, brightness) touches the image only.

This module owns the per-sample random transforms of training images; it knows nothing of
networks (the size arithmetic of models is `pixelwise.models.Geometry`, a different thing).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.nn import functional as F

__all__ = [
    "Augment",
    "SpatialTransform",
    "adjust_gray",
    "dim_above_minimum",
    "elastic_field",
    "warp",
]

IMAGE_ORDERS = {1: "bilinear", 3: "bicubic"}
# float32 holds every integer of magnitude ≤ 2^24 exactly: masks are resampled as float32.
_MAX_LABEL = 2**24


# --------------------------------------------------------------------------------------------
# Elastic field
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _cubic_upsampling_matrix(n_out: int, n_grid: int) -> torch.Tensor:
    """(n_out, n_grid) matrix M with M @ v = ndi.zoom(v, n_out / n_grid, order=3, mode="mirror").

    Cubic spline zooming is linear and separable, so upsampling a coarse (g, g) grid C to
    (H, W) is M_H @ C @ M_W.T: two thin matrix products instead of a 2-D spline evaluation.
    The grid's corner points sit on the corner pixels (grid_mode=False). A torch tensor because
    numpy's matmul with an inner size of 3 is erratic on a busy CPU (0.3 to 30 ms at 512²).
    """
    matrix = ndi.zoom(np.eye(n_grid), (n_out / n_grid, 1), order=3, mode="mirror")
    return torch.from_numpy(matrix.astype(np.float32))


def elastic_field(
    shape: tuple[int, int], *, grid: int = 3, sigma: float = 10.0, rng: np.random.Generator
) -> np.ndarray:
    """Smooth random displacement field: Gaussian vectors on a coarse grid, bicubically upsampled.

    Args:
        shape: (H, W) of the image.
        grid: coarse grid points per side (paper: 3), ≥ 2; its corners sit on the image corners.
        sigma: standard deviation of each coarse displacement component in pixels (paper: 10).
        rng: source of the 2 · grid² Gaussian draws.

    Returns:
        (2, H, W) float32 displacements (rows, cols) in pixels.
    """
    _check_elastic(grid, sigma)
    coarse = torch.from_numpy(rng.normal(0.0, sigma, size=(2, grid, grid)).astype(np.float32))
    rows = _cubic_upsampling_matrix(shape[0], grid)
    cols = _cubic_upsampling_matrix(shape[1], grid)
    return (rows @ coarse @ cols.T).numpy()


def _check_elastic(grid: int, sigma: float) -> None:
    if not (isinstance(grid, int) and grid >= 2):
        raise ValueError(
            f"elastic grid must be an int >= 2, got {grid!r}; pass e.g. 3 (the paper's 3×3 grid)"
        )
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(
            f"elastic sigma must be finite and >= 0, got {sigma}; pass a distance in pixels "
            "(paper: 10.0)"
        )


# --------------------------------------------------------------------------------------------
# Spatial transform: one coordinate map, one resampling per array
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpatialTransform:
    """A composed geometric transform: output pixel → source coordinate in the input.

    For an output pixel p = (row, col) in the input frame (the output window starts at `origin`),
    with c = ((H − 1) / 2, (W − 1) / 2) the image centre and w the output window's centre:

        q = w + (p − w) / zoom                       (zoom about the window's centre)
        source(p) = c + R(angle) (q − c) − shift + displacement(p)

    and the flips then reverse the output's rows and/or columns. Zooming about the window's
    centre keeps a window anywhere in the image on its own neighbourhood, so a crop near the edge
    still sees the content there.

    Attributes:
        angle: rotation in degrees; positive turns the content counter-clockwise as displayed,
            so angle=90 gives `np.rot90(image)` on square images.
        shift: (rows, cols) translation of the content in pixels.
        zoom: scale of the content: 2 shows it twice as large (each output pixel half a source
            pixel), 0.5 half as large.
        flip: (rows reversed, columns reversed), i.e. (vertical flip, horizontal flip).
        displacement: (2, H, W) elastic displacement of the source coordinates in pixels
            (`elastic_field`), or None.
        origin: (row, col) of the output window's top-left pixel in the input frame.
        size: (h, w) of the output window; None = the input size (H, W) - origin.
    """

    angle: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    zoom: float = 1.0
    flip: tuple[bool, bool] = (False, False)
    displacement: np.ndarray | None = None
    origin: tuple[int, int] = (0, 0)
    size: tuple[int, int] | None = None

    def output_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the output for an input of (H, W) = `shape`."""
        if self.size is not None:
            return self.size
        return shape[0] - self.origin[0], shape[1] - self.origin[1]

    def is_grid_aligned(self) -> bool:
        """True when the transform only crops and flips: no resampling needed."""
        return (
            self.angle == 0
            and self.zoom == 1
            and self.shift == (0.0, 0.0)
            and self.displacement is None
        )

    def coordinates(self, shape: tuple[int, int]) -> np.ndarray:
        """(2, h, w) float32 source coordinates (rows, cols) for an input of shape (H, W).

        `scipy.ndimage.map_coordinates(image, transform.coordinates(image.shape), mode="mirror")`
        applies the transform; `warp` does the same faster.
        """
        height, width = self.output_shape(shape)
        center_row, center_col = (shape[0] - 1) / 2, (shape[1] - 1) / 2
        # q − c: the output pixel's offset from the window centre, divided by the zoom, plus the
        # window centre's offset from the image centre. Worked example, a 4-pixel window at
        # origin 0 of a 4-pixel image, zoom 2: offsets (−1.5, −0.5, 0.5, 1.5) / 2 + 0, so the
        # output samples source pixels 0.75, 1.25, 1.75, 2.25: the middle half, twice as large.
        rows = _zoomed_offsets(height, self.origin[0] - center_row, self.zoom)[:, None]
        cols = _zoomed_offsets(width, self.origin[1] - center_col, self.zoom)[None, :]
        theta = math.radians(self.angle)
        cos, sin = np.float32(math.cos(theta)), np.float32(math.sin(theta))
        coords = np.empty((2, height, width), np.float32)
        # Worked example, angle = 90 on N × N: cos = 0, sin = 1 gives source row = col and
        # source col = N − 1 − row, i.e. out[r, c] = in[c, N − 1 − r] = np.rot90(in)[r, c].
        coords[0] = cos * rows + sin * cols + np.float32(center_row - self.shift[0])
        coords[1] = cos * cols - sin * rows + np.float32(center_col - self.shift[1])
        if self.displacement is not None:
            window = _window(self.origin, (height, width))
            coords += self.displacement[(slice(None), *window)]
        if self.flip[0]:
            coords = coords[:, ::-1]
        if self.flip[1]:
            coords = coords[:, :, ::-1]
        return coords


def _zoomed_offsets(n: int, start: float, zoom: float) -> np.ndarray:
    """(n,) float32 offsets q − c along one axis of an n-pixel window whose first pixel is
    `start` from the image centre: (i − (n − 1)/2) / zoom + start + (n − 1)/2."""
    half = (n - 1) / 2
    offsets = np.arange(n, dtype=np.float32) - np.float32(half)
    if zoom != 1:
        offsets /= np.float32(zoom)
    return offsets + np.float32(start + half)


def _window(origin: tuple[int, int], size: tuple[int, int]) -> tuple[slice, slice]:
    return slice(origin[0], origin[0] + size[0]), slice(origin[1], origin[1] + size[1])


def _normalized_grid(coords: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """(1, h, w, 2) grid for `grid_sample(align_corners=True)`: pixel 0 → -1, pixel n−1 → +1."""
    grid = np.empty((*coords.shape[1:], 2), np.float32)
    np.multiply(coords[1], np.float32(2 / (shape[1] - 1)), out=grid[..., 0])  # x = col
    np.multiply(coords[0], np.float32(2 / (shape[0] - 1)), out=grid[..., 1])  # y = row
    grid -= np.float32(1)
    return torch.from_numpy(grid)[None]


def _sample(stack: np.ndarray, grid: torch.Tensor, mode: str) -> np.ndarray:
    """Resample a (K, H, W) float32 stack at `grid`, mirrored outside: (K, h, w) float32."""
    sampled = F.grid_sample(
        torch.from_numpy(stack)[None],
        grid,
        mode=mode,
        padding_mode="reflection",
        align_corners=True,
    )
    return sampled[0].numpy()


def warp(
    transform: SpatialTransform,
    image: np.ndarray,
    mask: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    *,
    image_order: int = 1,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Apply one `SpatialTransform` to an image and, identically, to its mask and weight map.

    Args:
        transform: the transform.
        image: (C, H, W) or (H, W) floating-point image.
        mask: (H, W) integer labels (|label| < 2^24) or None; resampled by nearest neighbour.
        weight: (H, W) weight map or None; resampled bilinearly.
        image_order: 1 (bilinear) or 3 (bicubic) for the image.

    Returns:
        (image float32 with the input's layout, mask with its dtype, weight float32) at the
        transform's output size; None stays None. A transform that only crops and flips copies
        pixels exactly, without interpolation.
    """
    image, mask, weight = _check_arrays(image, mask, weight)
    _check_image_order(image_order)
    shape = image.shape[-2:]
    out_shape = transform.output_shape(shape)
    origin = transform.origin
    if (
        min(origin) < 0
        or origin[0] + out_shape[0] > shape[0]
        or origin[1] + out_shape[1] > shape[1]
    ):
        raise ValueError(
            f"the output window at origin {origin} of size {out_shape} must lie inside the "
            f"image (H, W) = {shape}; pass a smaller SpatialTransform.size or origin"
        )
    if transform.is_grid_aligned():
        window = _window(transform.origin, out_shape)
        flip_axes = tuple(axis for axis, flip in zip((-2, -1), transform.flip, strict=True) if flip)

        def exact(array: np.ndarray | None) -> np.ndarray | None:
            if array is None:
                return None
            return np.flip(array[(..., *window)], flip_axes).copy()

        return exact(image.astype(np.float32, copy=False)), exact(mask), exact(weight)

    grid = _normalized_grid(transform.coordinates(shape), shape)
    planes = image.reshape(-1, *shape).astype(np.float32, copy=False)
    out_weight = None
    if image_order == 1 and weight is not None:  # one bilinear call for image and weight
        both = _sample(np.concatenate([planes, weight[None].astype(np.float32)]), grid, "bilinear")
        out_image, out_weight = both[:-1], both[-1]
    else:
        out_image = _sample(np.ascontiguousarray(planes), grid, IMAGE_ORDERS[image_order])
        if weight is not None:
            out_weight = _sample(weight[None].astype(np.float32), grid, "bilinear")[0]
    out_mask = None
    if mask is not None:
        labels = _sample(mask[None].astype(np.float32), grid, "nearest")[0]
        out_mask = labels.astype(mask.dtype)
    return out_image.reshape(*image.shape[:-2], *out_shape), out_mask, out_weight


def _check_image_order(image_order: int) -> None:
    if image_order not in IMAGE_ORDERS:
        raise ValueError(
            f"image_order must be one of {tuple(IMAGE_ORDERS)}, got {image_order!r}; "
            "pass 1 (bilinear) or 3 (bicubic)"
        )


def _check_arrays(
    image: np.ndarray, mask: np.ndarray | None, weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"image must be a floating-point (C, H, W) or (H, W) array, got shape {image.shape} "
            f"and dtype {image.dtype}; convert with .astype(np.float32)"
        )
    shape = image.shape[-2:]
    if min(shape) < 2:
        raise ValueError(f"image must be at least 2×2 pixels, got {shape}; pass a larger image")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != shape or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
            raise ValueError(
                f"mask must be an integer (H, W) = {shape} array, got shape {mask.shape} and "
                f"dtype {mask.dtype}; pass the label image of this image"
            )
        largest = max(-int(mask.min()), int(mask.max())) if mask.dtype.itemsize > 2 else 0
        if largest >= _MAX_LABEL:
            raise ValueError(
                f"mask labels must be smaller than 2**24 in magnitude, got {largest}; "
                "relabel consecutively (e.g. np.unique(mask, return_inverse=True))"
            )
    if weight is not None:
        weight = np.asarray(weight)
        if weight.shape != shape:
            raise ValueError(
                f"weight must have the image's (H, W) = {shape}, got {weight.shape}; "
                "pass the weight map of this image"
            )
    return image, mask, weight


# --------------------------------------------------------------------------------------------
# Gray values
# --------------------------------------------------------------------------------------------


def adjust_gray(
    image: np.ndarray, *, gamma: float = 1.0, contrast: float = 1.0, brightness: float = 0.0
) -> np.ndarray:
    """Gamma, contrast and brightness change, in units of the image's own value range.

    With lo, hi = image.min(), image.max() and x = (image − lo) / (hi − lo) ∈ [0, 1]:

        y = contrast · (x^gamma − m) + m + brightness,   m = mean(x^gamma)

    and the result is lo + (hi − lo) · y. So it works for raw [0, 255], [0, 1] and standardised
    images alike. A constant image is returned unchanged.

    Args:
        image: (C, H, W) or (H, W) floating-point image.
        gamma: exponent > 0 (1 = unchanged).
        contrast: factor around the mean (1 = unchanged).
        brightness: offset as a fraction of the value range (0 = unchanged).

    Returns:
        New float32 array of the image's shape.
    """
    out = np.array(image, dtype=np.float32)
    low, high = out.min(), out.max()
    span = high - low
    if not span > 0:
        return out
    out -= low
    out *= np.float32(1 / span)
    if gamma != 1.0:
        np.power(out, np.float32(gamma), out=out)
    mean = out.mean(dtype=np.float64)
    out *= np.float32(contrast)
    out += np.float32((1 - contrast) * mean + brightness)
    out *= span
    out += low
    return out


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel of a (C, H, W) or (H, W) image by `sigma` pixels
    (`scipy.ndimage.gaussian_filter`, mirrored borders); float32, unchanged for sigma 0."""
    image = np.asarray(image, np.float32)
    if sigma <= 0:
        return image
    sigmas = (0.0,) * (image.ndim - 2) + (sigma, sigma)
    return ndi.gaussian_filter(image, sigmas, mode="mirror").astype(np.float32, copy=False)


def add_noise(image: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """The image plus Gaussian noise of standard deviation `scale` × its value range (max −
    min); float32. Worked example: an image spanning [0, 2] with scale 0.05 gets noise of
    std 0.1."""
    image = np.asarray(image, np.float32)
    std = float(scale) * float(image.max() - image.min())
    if not std > 0:
        return image
    return image + rng.normal(0.0, std, image.shape).astype(np.float32)


def dim_above_minimum(image: np.ndarray, factor: float) -> np.ndarray:
    """lo + factor · (image − lo) with lo = image.min(): a fluorescence image's objects made
    dimmer (factor < 1) over an unchanged background; float32.

    Worked example: [0, 2, 10] with factor 0.5 → [0, 1, 5]; [-1, 1] → [-1, 0].
    """
    image = np.asarray(image, np.float32)
    low = image.min()
    return (low + np.float32(factor) * (image - low)).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# Random augmentation
# --------------------------------------------------------------------------------------------


class Augment:
    """Random U-Net augmentation applied identically to image, mask and weight map.

    One call draws a `SpatialTransform` (flips, rotation, zoom, shift, elastic field, crop) and
    gray-value parameters from `rng`, then resamples each array once (`warp`). The same generator
    state gives the same output.

    Args:
        elastic_sigma: std of the coarse displacement vectors in pixels (paper: 10).
        elastic_grid: coarse grid points per side (paper: 3).
        p_elastic: probability of the elastic deformation per sample.
        rotation: maximum rotation in degrees; the angle is uniform in [-rotation, rotation]
            (180 = any angle).
        shift: maximum translation in PIXELS per axis, uniform in [-shift, shift].
        zoom: largest zoom factor z >= 1; the factor is log-uniform in [1/z, z] (z = 1.5: from
            0.67× to 1.5× the size, as often smaller as larger); 1 = none (the paper's).
        flip: flip rows and columns, each with probability 1/2.
        gray: strength s of the gray-value variation: log(gamma), contrast − 1 and brightness
            (as a fraction of the value range) are each uniform in [-s, s]; 0 disables it.
        dim: smallest intensity factor f in (0, 1]: after the gray values, the image's values
            above its minimum are scaled by a log-uniform factor in [f, 1] (the background
            stays, the objects dim), so that a model trained on bright nuclei also finds dim
            ones; 1 = none (the paper's).
        blur: largest Gaussian blur in pixels: after the warp, the image is blurred by a sigma
            uniform in [0, blur] (other optics, focus); 0 = none (the paper's).
        noise: largest noise level: last, Gaussian noise of a standard deviation uniform in
            [0, noise] × the patch's value range is added (other cameras; it also restores the
            pixel noise that the warp's interpolation smooths away); 0 = none (the paper's).
        image_order: 1 (bilinear, default: meets the 20 ms budget at 512 × 512) or 3 (bicubic).
        out_size: (h, w) of a random crop taken after the transform, or None for the input
            size. The crop is folded into the coordinate map, so only the crop is computed.

    Call:
        image (C, H, W) or (H, W) float, mask (H, W) int, weight (H, W) or None, rng →
        (image float32, mask of the same dtype, weight float32 or None), at (H, W) or out_size.
    """

    def __init__(
        self,
        *,
        elastic_sigma: float = 10.0,
        elastic_grid: int = 3,
        p_elastic: float = 1.0,
        rotation: float = 180.0,
        shift: float = 0.0,
        zoom: float = 1.0,
        flip: bool = True,
        gray: float = 0.1,
        dim: float = 1.0,
        blur: float = 0.0,
        noise: float = 0.0,
        image_order: int = 1,
        out_size: tuple[int, int] | None = None,
    ) -> None:
        _check_elastic(elastic_grid, elastic_sigma)
        _check_range("p_elastic", p_elastic, 0.0, 1.0, "a probability")
        _check_range("rotation", rotation, 0.0, 180.0, "a maximum angle in degrees")
        _check_range("shift", shift, 0.0, math.inf, "a maximum shift in pixels")
        _check_range("zoom", zoom, 1.0, 4.0, "a largest zoom factor like 1.5 (1 = none)")
        _check_range("gray", gray, 0.0, 0.99, "a strength like 0.1")
        _check_range("dim", dim, 0.01, 1.0, "a smallest intensity factor like 0.3 (1 = none)")
        _check_range("blur", blur, 0.0, 10.0, "a largest blur sigma in pixels like 1 (0 = none)")
        _check_range("noise", noise, 0.0, 1.0, "a largest noise level like 0.05 (0 = none)")
        _check_image_order(image_order)
        if out_size is not None and not (
            len(out_size) == 2 and all(isinstance(n, int) and n >= 2 for n in out_size)
        ):
            raise ValueError(
                f"out_size must be None or (h, w) with ints >= 2, got {out_size!r}; "
                "pass e.g. (256, 256)"
            )
        self.elastic_sigma = elastic_sigma
        self.elastic_grid = elastic_grid
        self.p_elastic = p_elastic
        self.rotation = rotation
        self.shift = shift
        self.zoom = zoom
        self.flip = flip
        self.gray = gray
        self.dim = dim
        self.blur = blur
        self.noise = noise
        self.image_order = image_order
        self.out_size = None if out_size is None else (int(out_size[0]), int(out_size[1]))

    def sample_transform(
        self, shape: tuple[int, int], rng: np.random.Generator
    ) -> SpatialTransform:
        """Draw the random geometric transform for an input of (H, W) = `shape`."""
        flip = tuple(bool(f) for f in rng.random(2) < 0.5) if self.flip else (False, False)
        angle = float(rng.uniform(-self.rotation, self.rotation)) if self.rotation else 0.0
        shift = tuple(rng.uniform(-self.shift, self.shift, 2).tolist()) if self.shift else (0, 0)
        displacement = None
        if self.elastic_sigma > 0 and rng.random() < self.p_elastic:
            displacement = elastic_field(
                shape, grid=self.elastic_grid, sigma=self.elastic_sigma, rng=rng
            )
        origin, size = (0, 0), None
        if self.out_size is not None:
            if self.out_size[0] > shape[0] or self.out_size[1] > shape[1]:
                raise ValueError(
                    f"out_size {self.out_size} must fit in the image (H, W) = {shape}; pass a "
                    "smaller out_size or larger images"
                )
            origin = (
                int(rng.integers(0, shape[0] - self.out_size[0] + 1)),
                int(rng.integers(0, shape[1] - self.out_size[1] + 1)),
            )
            size = self.out_size
        zoom = 1.0
        if self.zoom > 1:  # drawn last, so that zoom = 1 leaves the other draws as they were
            zoom = math.exp(rng.uniform(-math.log(self.zoom), math.log(self.zoom)))
        return SpatialTransform(
            angle=angle,
            shift=(float(shift[0]), float(shift[1])),
            zoom=zoom,
            flip=(flip[0], flip[1]),
            displacement=displacement,
            origin=origin,
            size=size,
        )

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        weight: np.ndarray | None = None,
        *,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        shape = np.shape(image)[-2:]
        transform = self.sample_transform((int(shape[0]), int(shape[1])), rng)
        out_image, out_mask, out_weight = warp(
            transform, image, mask, weight, image_order=self.image_order
        )
        if self.blur > 0:  # the optics, before the gray values and the camera's noise
            out_image = blur(out_image, float(rng.uniform(0.0, self.blur)))
        if self.gray > 0:
            gamma, contrast, brightness = rng.uniform(-self.gray, self.gray, 3)
            out_image = adjust_gray(
                out_image,
                gamma=math.exp(gamma),
                contrast=1.0 + contrast,
                brightness=float(brightness),
            )
        if self.dim < 1:
            out_image = dim_above_minimum(out_image, math.exp(rng.uniform(math.log(self.dim), 0.0)))
        if self.noise > 0:
            out_image = add_noise(out_image, float(rng.uniform(0.0, self.noise)), rng)
        return out_image, out_mask, out_weight

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"Augment({fields})"


def _check_range(name: str, value: float, low: float, high: float, meaning: str) -> None:
    if not (isinstance(value, int | float) and low <= value <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}; pass {meaning}")
