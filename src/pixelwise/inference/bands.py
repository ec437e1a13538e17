"""Row bands: the sink that turns tile-by-tile writes into whole chunk rows of a chunked array.

Overlap-tile inference (`pixelwise.tiling.predict`) writes each tile's output window into its
`out` array, tile rows from top to bottom, tiles left to right. A compressed chunked array
(zarr) would recompress a chunk every time a tile touches it. `BandWriter` sits in between:
it keeps the rows not yet complete in memory, in bands of the target's chunk height, and
writes a band to the target, once, when the writes have moved below it (a write that starts at
row r means every row above r is complete). Memory: the bands between the last complete row
and the lowest row written, (tile height / chunk height + 2) bands of C × chunk × W values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class BandWriter:
    """(…, H, W) array-like that collects row-ordered writes into bands and writes each band
    to `target` once it is complete.

    Writes are `writer[..., rows, cols] = values` with slices (step 1) for rows and columns
    and full slices for any leading axis; a write starting at row r declares rows < r
    complete. A band is checked complete (every column of every row written) before it goes
    to the target, and a write above the rows already written raises, so a writer fed out of
    order fails loudly instead of writing zeros. Reading (`writer[...]`) first writes every
    pending band (reading means the writing is over) and reads the target.

    Args:
        target: (…, H, W) array written by row bands (a zarr array, np.memmap, ...).
        rows: band height, the target's chunk height (so each chunk is written once).
    """

    def __init__(self, target: Any, *, rows: int) -> None:
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.target = target
        self.shape = tuple(target.shape)
        self.dtype = np.dtype(target.dtype)
        self.ndim = len(self.shape)
        self._rows = rows
        self._bands: dict[int, np.ndarray] = {}  # band number → (…, rows, W) values
        self._covered: dict[int, np.ndarray] = {}  # band number → (rows,) columns written
        self._next = 0  # the first band not yet written to the target

    @property
    def pending_bytes(self) -> int:
        """Bytes held in bands not yet written."""
        return sum(b.nbytes for b in self._bands.values())

    def __setitem__(self, key: Any, values: Any) -> None:
        rows, cols = self._region(key)
        height, width = self.shape[-2:]
        if rows.start < self._next * self._rows:
            raise RuntimeError(
                f"rows {rows.start}..{rows.stop} are written after rows below them were "
                f"completed (band writer at row {self._next * self._rows}); write tiles in row "
                f"order"
            )
        self._write_complete(rows.start // self._rows)
        values = np.broadcast_to(
            np.asarray(values, dtype=self.dtype),
            (*self.shape[:-2], rows.stop - rows.start, cols.stop - cols.start),
        )
        for band in range(rows.start // self._rows, math.ceil(rows.stop / self._rows)):
            top = band * self._rows
            lo, hi = max(rows.start, top), min(rows.stop, top + self._rows)
            if band not in self._bands:
                n = min(self._rows, height - top)
                self._bands[band] = np.zeros((*self.shape[:-2], n, width), self.dtype)
                self._covered[band] = np.zeros(n, np.int64)
            self._bands[band][..., lo - top : hi - top, cols] = values[
                ..., lo - rows.start : hi - rows.start, :
            ]
            self._covered[band][lo - top : hi - top] += cols.stop - cols.start

    def __getitem__(self, key: Any) -> np.ndarray:
        self.flush()
        return np.asarray(self.target[key])

    def flush(self) -> None:
        """Write every pending band (all rows must have been written)."""
        self._write_complete(math.ceil(self.shape[-2] / self._rows))

    def _write_complete(self, stop: int) -> None:
        """Write bands [next, stop) to the target; each must be complete."""
        width = self.shape[-1]
        for band in range(self._next, stop):
            values = self._bands.pop(band, None)
            covered = self._covered.pop(band, None)
            if values is None or np.any(covered != width):
                top = band * self._rows
                missing = "none" if covered is None else f"{int(np.sum(width - covered))} px"
                raise RuntimeError(
                    f"rows {top}..{top + self._rows} are incomplete (written: {missing} "
                    f"missing) when rows below them are written; every tile must be written, "
                    f"in row order"
                )
            top = band * self._rows
            self.target[..., top : top + values.shape[-2], :] = values
            self._next = band + 1

    def _region(self, key: Any) -> tuple[slice, slice]:
        """(rows, cols) slices of a write, bounds resolved; leading axes must be whole."""
        key = key if isinstance(key, tuple) else (key,)
        if Ellipsis in key:
            at = key.index(Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))  # numpy: missing axes are whole
        *lead, rows, cols = key
        if len(lead) != self.ndim - 2 or not all(
            isinstance(k, slice) and k == slice(None) for k in lead
        ):
            raise TypeError(
                f"BandWriter writes (…, rows, cols) regions with whole leading axes, got {key}"
            )
        height, width = self.shape[-2:]
        resolved = []
        for s, n in ((rows, height), (cols, width)):
            if not isinstance(s, slice):
                raise TypeError(f"BandWriter writes slices of rows and columns, got {key}")
            start, stop, step = s.indices(n)
            if step != 1:
                raise TypeError(f"BandWriter writes contiguous slices, got {key}")
            resolved.append(slice(start, max(start, stop)))
        return resolved[0], resolved[1]
