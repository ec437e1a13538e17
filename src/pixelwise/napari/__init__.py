"""The napari plugin (`pip install "pixelwise[napari]"`): segment image layers from a widget.

Its npe2 manifest (`napari.yaml`, registered by the `napari.manifest` entry point) contributes:

* `widget.SegmentWidget`: checkpoint, image layer, tile size, tiles per batch, test-time
  augmentation, precision → the class map and, for instance models, the objects as Labels
  layers, computed in napari's thread worker with a progress bar and Cancel;
* `sample_data.touching_cells_sample`: the demo's held-out image and its true objects;
* `writer.write_labels`: Labels layers saved in the files `pixelwise predict` writes.

The parts below the widget import neither napari nor Qt: `job` (a segmentation as a generator
of per-tile progress, cancellable) and `layers` (a `Segmentation` as napari layer data).
Importing this package imports nothing of napari.
"""
