"""Self-contained HTML evaluation report and the pictures it shows.

:func:`write_report` writes one ``report.html`` that needs no server and no network: images are
embedded as base64 ``data:`` URIs, the CSS is inline and there is no script. The helpers build
its pictures: :func:`palette` (PASCAL VOC colour map), :func:`overlay` (labels blended over an
image, object contours drawn opaque), :func:`thumbnail_png` (PNG bytes via Pillow) and
:func:`confusion_matrix_png` (row-normalised, annotated matrix via matplotlib's Agg canvas).
All files are written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pixelwise.checkpoint import atomic_write

__all__ = ["confusion_matrix_png", "overlay", "palette", "thumbnail_png", "write_report"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; background: #fafafa; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.5rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
td, th { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #eee; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8rem; }
.card { background: #fff; border: 1px solid #ccc; border-radius: 4px; padding: 0.5rem; }
.card img, figure img { display: block; max-width: 256px; image-rendering: pixelated; }
.card .name { font-weight: 600; margin: 0.3rem 0; word-break: break-all; max-width: 256px; }
figure { display: inline-block; margin: 0 1rem 1rem 0; }
figure img { max-width: 480px; }
"""


def palette(n: int) -> np.ndarray:
    """PASCAL VOC colour map: (n, 3) uint8, index 0 black, 1 (128, 0, 0), 2 (0, 128, 0), ...

    Bits 0, 1, 2 of an index set the top bit of red, green, blue; bits 3, 4, 5 the next bit
    down, and so on, so the first colours are far apart.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    index = np.arange(n, dtype=np.int64)
    colours = np.zeros((n, 3), dtype=np.int64)
    for level in range(8):
        for channel in range(3):
            bit = (index >> (3 * level + channel)) & 1
            colours[:, channel] |= bit << (7 - level)
    return colours.astype(np.uint8)


_VOC_256 = palette(256)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) image -> (H, W, 3) uint8 (non-uint8: min-max scaled)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(
            f"image must be (H, W), (H, W, 1) or (H, W, 3), got shape {img.shape}; "
            "move channels last"
        )
    if img.dtype != np.uint8:
        values = img.astype(np.float64)
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        span = high - low if high > low else 1.0
        img = np.clip(np.round((np.nan_to_num(values, nan=low) - low) / span * 255), 0, 255)
        img = img.astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Object pixels whose label differs from one of their 4 neighbours (image edge excluded)."""
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )
    return differs & (labels > 0)


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    alpha: float = 0.4,
    palette: np.ndarray | None = None,
) -> np.ndarray:
    """Blend coloured labels over an image and draw object contours.

    Args:
        image: (H, W) or (H, W, 3) image; uint8 is used as is, any other dtype is min-max scaled
            to 0..255.
        labels: (H, W) non-negative integer class or instance map; 0 is left uncoloured.
        alpha: opacity of the label colours inside objects (contours are opaque).
        palette: (P, 3) uint8 colours; label ``l > 0`` gets colour ``1 + (l - 1) % (P - 1)``
            (so instance ids beyond P wrap around and never get the background colour).
            Default: the 256-entry VOC map.

    Returns:
        (H, W, 3) uint8 image.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _to_rgb(image)
    lab = np.asarray(labels)
    if lab.shape != rgb.shape[:2] or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer (H, W) map matching the image {rgb.shape[:2]}, got "
            f"shape {lab.shape} dtype {lab.dtype}"
        )
    if lab.size and lab.min() < 0:
        raise ValueError(f"labels must be >= 0, found {int(lab.min())}")
    colours = _VOC_256 if palette is None else np.asarray(palette, np.uint8)
    if colours.ndim != 2 or colours.shape[1] != 3 or colours.shape[0] < 2:
        raise ValueError(f"palette must be (P, 3) with P >= 2, got shape {colours.shape}")
    index = np.where(lab > 0, 1 + (lab - 1) % (colours.shape[0] - 1), 0)
    colour = colours[index].astype(np.float64)
    out = rgb.astype(np.float64)
    inside = lab > 0
    out[inside] = (1.0 - alpha) * out[inside] + alpha * colour[inside]
    edge = _boundaries(lab)
    out[edge] = colour[edge]
    return np.round(out).astype(np.uint8)


def thumbnail_png(rgb: np.ndarray, max_side: int = 256) -> bytes:
    """PNG bytes of an (H, W) or (H, W, 3) uint8 image, shrunk so its longer side <= max_side.

    Images already small enough keep their size (never upscaled); shrinking uses Lanczos.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    img = Image.fromarray(_to_rgb(rgb))
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


def confusion_matrix_png(
    cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike
) -> Path:
    """Plot a row-normalised confusion matrix (rows = ground truth) to a PNG file.

    Each cell shows ``cm[i, j] / sum_j cm[i, j]`` (recall along the diagonal); rows of absent
    classes stay 0. Cells are annotated with two decimals when K <= 30.

    Args:
        cm: (K, K) counts from :func:`pixelwise.metrics.confusion_matrix`.
        class_names: K names.
        path: destination ``.png``.

    Returns:
        ``Path(path)``.
    """
    counts = np.asarray(cm, dtype=np.float64)
    k = counts.shape[0]
    if counts.ndim != 2 or counts.shape != (k, k) or len(class_names) != k:
        raise ValueError(
            f"cm must be (K, K) with K = len(class_names) = {len(class_names)}, got shape "
            f"{counts.shape}"
        )
    totals = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = max(4.0, 0.45 * k + 2.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=list(class_names), rotation=90)
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                colour = "white" if norm[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{norm[i, j]:.2f}", ha="center", va="center", color=colour, fontsize=7
                )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return _write_bytes(path, buffer.getvalue())


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.4f}"
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float, np.number)) for v in value
    ):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _table(items: Mapping[str, Any]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format_value(v))}</td></tr>"
        for k, v in items.items()
    )
    return f"<table>{cells}</table>"


def _data_uri(png: Any, what: str) -> str:
    if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(_PNG_SIGNATURE):
        raise ValueError(f"{what} must be PNG bytes; make them with thumbnail_png")
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def _sort_rows(
    rows: Sequence[Mapping[str, Any]], sort_key: str, descending: bool
) -> list[Mapping[str, Any]]:
    """Rows ordered worst first; rows without a finite ``sort_key`` value go last."""

    def number(row: Mapping[str, Any]) -> float | None:
        value = row.get(sort_key)
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            return None if math.isnan(float(value)) else float(value)
        return None

    if rows and all(number(r) is None for r in rows):
        keys = sorted({k for r in rows for k in r if k not in ("name", "thumbnail_png")})
        raise ValueError(
            f"sort_key {sort_key!r} has no numeric value in any row; choose one of {keys}"
        )
    scored = [r for r in rows if number(r) is not None]
    unscored = [r for r in rows if number(r) is None]
    scored.sort(key=lambda r: number(r), reverse=descending)
    return scored + unscored


def write_report(
    out_dir: str | os.PathLike,
    *,
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    title: str,
    sort_key: str = "mean_iou",
    worst_first_descending: bool = False,
    figures: Mapping[str, bytes] | None = None,
) -> Path:
    """Write ``out_dir/report.html``: summary table, optional figures, per-image cards.

    Args:
        out_dir: directory (created if missing).
        summary: dataset-level scores, shown as a two-column table (floats with 4 decimals,
            lists of numbers inline, anything else as JSON).
        rows: one per image: ``"name"`` (str), ``"thumbnail_png"`` (PNG bytes, e.g. from
            :func:`thumbnail_png` of an :func:`overlay`) and any scores, which are listed on the
            card.
        title: page title and heading.
        sort_key: score by which cards are ordered, worst first.
        worst_first_descending: True when larger is worse (``"pixel_error"``), False when
            smaller is worse (``"mean_iou"``). Rows without a numeric ``sort_key`` come last.
        figures: optional ``{caption: PNG bytes}`` shown under the summary (e.g. the confusion
            matrix from :func:`confusion_matrix_png`).

    Returns:
        Path of the written ``report.html``.
    """
    ordered = _sort_rows(rows, sort_key, worst_first_descending)
    direction = "highest" if worst_first_descending else "lowest"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>",
        _table(summary),
    ]
    for caption, png in (figures or {}).items():
        uri = _data_uri(png, f"figure {caption!r}")
        text = html.escape(caption)
        parts.append(
            f'<figure><img src="{uri}" alt="{text}"><figcaption>{text}</figcaption></figure>'
        )
    parts.append(
        f"<h2>Images ({len(ordered)}), worst first: {direction} {html.escape(sort_key)} first</h2>"
    )
    parts.append('<div class="cards">')
    for i, row in enumerate(ordered):
        name = str(row.get("name", f"image {i}"))
        uri = _data_uri(row.get("thumbnail_png"), f"row {name!r} thumbnail_png")
        scores = {k: v for k, v in row.items() if k not in ("name", "thumbnail_png")}
        parts.append(
            f'<div class="card"><img src="{uri}" alt="{html.escape(name)}">'
            f'<div class="name">{html.escape(name)}</div>{_table(scores)}</div>'
        )
    parts.append("</div></body></html>\n")
    page = "\n".join(parts)
    target = Path(out_dir) / "report.html"
    atomic_write(target, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return target
