"""Reading, checking and serving segmentation data: the public face of the data modules.

One module per concern; import from here (``from pixelwise.data import open_dataset``):

* :mod:`~pixelwise.data.io` — :func:`read_image`, :func:`page_count`, :func:`iter_pages`,
  :func:`read_stack`, :func:`write_image` (atomic, via :mod:`pixelwise.atomic`) for PNG, JPEG and
  (multi-page) TIFF; arrays keep their dtype: ``(H, W)`` or ``(H, W, C)``, stacks
  ``(Z, H, W[, C])``.
* :mod:`~pixelwise.data.palette` — :func:`voc_palette` / :data:`VOC_PALETTE`, the one colour map,
  and :func:`as_palette`.
* :mod:`~pixelwise.data.normalization` — :func:`to_chw_float` turns an image into a
  ``(C, H, W)`` float32 input scaled by its dtype (uint8 / 255, uint16 / 65535) and optionally
  normalised with a per-channel ``{"mean", "std", "scale"}`` record or per image by percentiles
  (:data:`PERCENTILE_NORMALIZATION`, :func:`percentile_levels`).
* :mod:`~pixelwise.data.masks` — :class:`MaskEncoding` and :func:`decode_mask`: stored masks
  (integer, 0/255, palette, RGB, instance labels) to ``(H, W)`` class indices.
* :mod:`~pixelwise.data.layouts` — :func:`open_dataset` lists image/mask pairs
  (:class:`Sample`) from folder pairs, PASCAL VOC or TIFF stacks into a :class:`DatasetIndex`.
* :mod:`~pixelwise.data.survey` — :func:`survey_dataset` reads every file once, collects *every*
  problem, infers the class count and measures the normalisation (:class:`SurveyReport`);
  :func:`check_dataset` renders it for ``pixelwise data check``.
* :mod:`~pixelwise.data.dataset` — :class:`SegmentationDataset` serves ``(C, H, W)`` images and
  ``(H, W)`` masks; :func:`load_dataset` refuses to build one from bad data.
* :mod:`~pixelwise.data.errors` — :class:`DataError` / :class:`Problem`: file, what is wrong, fix.
"""

from pixelwise.data.dataset import (
    LoadedSample,
    SegmentationDataset,
    Transform,
    WeightFn,
    load_dataset,
)
from pixelwise.data.errors import DataError, Problem, StrPath
from pixelwise.data.io import (
    IMAGE_SUFFIXES,
    JPEG_SUFFIXES,
    TIFF_SUFFIXES,
    iter_pages,
    page_count,
    read_image,
    read_stack,
    write_image,
)
from pixelwise.data.layouts import (
    IMAGE_DIR_NAMES,
    LAYOUTS,
    MASK_DIR_NAMES,
    DatasetIndex,
    Sample,
    open_dataset,
)
from pixelwise.data.masks import DecodedMask, MaskEncoding, decode_mask
from pixelwise.data.normalization import (
    NORMALIZE_METHODS,
    PERCENTILE_NORMALIZATION,
    Levels,
    dtype_scale,
    is_percentile,
    percentile_levels,
    to_chw_float,
)
from pixelwise.data.palette import VOC_PALETTE, as_palette, voc_palette
from pixelwise.data.survey import (
    SurveyReport,
    check_dataset,
    survey_dataset,
)

__all__ = [
    "IMAGE_DIR_NAMES",
    "IMAGE_SUFFIXES",
    "JPEG_SUFFIXES",
    "LAYOUTS",
    "MASK_DIR_NAMES",
    "NORMALIZE_METHODS",
    "PERCENTILE_NORMALIZATION",
    "TIFF_SUFFIXES",
    "VOC_PALETTE",
    "DataError",
    "DatasetIndex",
    "DecodedMask",
    "Levels",
    "LoadedSample",
    "MaskEncoding",
    "Problem",
    "Sample",
    "SegmentationDataset",
    "StrPath",
    "SurveyReport",
    "Transform",
    "WeightFn",
    "as_palette",
    "check_dataset",
    "decode_mask",
    "dtype_scale",
    "is_percentile",
    "iter_pages",
    "load_dataset",
    "open_dataset",
    "page_count",
    "percentile_levels",
    "read_image",
    "read_stack",
    "survey_dataset",
    "to_chw_float",
    "voc_palette",
    "write_image",
]
