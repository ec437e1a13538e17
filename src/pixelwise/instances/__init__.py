"""From semantic maps to object instances, and what is said about them.

One step of the prediction flow (models → tiling → predict → instances → metrics → report):

* :mod:`~pixelwise.instances.labelling`: :func:`label` (connected components, optionally a
  seeded watershed) and :func:`instances_from_border_class` turn a class map or probabilities
  into an (H, W) instance map (0 = background, objects 1..N);
* :mod:`~pixelwise.instances.tables`: :func:`object_table` / :func:`write_object_csv` (one row
  per object) and :func:`to_coco` / :func:`write_coco_json` with COCO's uncompressed RLE
  (:func:`rle_encode`, and :func:`rle_decode` for reading COCO output back);
* :mod:`~pixelwise.instances.contacts`: which objects touch (:func:`touching_pairs`,
  :func:`count_touching_pairs`, :func:`contact_pixels`), :func:`separate_touching` (the
  background lines of the U-Net paper's masks) and :func:`touching_pairs_separated`.

Scores of instance maps against ground truth (matching, AP, merges) are
:func:`pixelwise.metrics.match_instances`.
"""

from pixelwise.instances.contacts import (
    contact_pixels,
    count_touching_pairs,
    separate_touching,
    touching_pairs,
    touching_pairs_separated,
)
from pixelwise.instances.labelling import instances_from_border_class, label
from pixelwise.instances.postprocess import (
    TARGETS,
    PostProcessing,
    object_scores,
    objects_from_probabilities,
    postprocessing_from_metadata,
)
from pixelwise.instances.tables import (
    CSV_COLUMNS,
    object_table,
    rle_decode,
    rle_encode,
    to_coco,
    write_coco_json,
    write_object_csv,
)

__all__ = [
    "CSV_COLUMNS",
    "TARGETS",
    "PostProcessing",
    "contact_pixels",
    "count_touching_pairs",
    "instances_from_border_class",
    "label",
    "object_scores",
    "object_table",
    "objects_from_probabilities",
    "postprocessing_from_metadata",
    "rle_decode",
    "rle_encode",
    "separate_touching",
    "to_coco",
    "touching_pairs",
    "touching_pairs_separated",
    "write_coco_json",
    "write_object_csv",
]
