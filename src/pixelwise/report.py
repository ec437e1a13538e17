"""Self-contained HTML evaluation report and the pictures it shows.

:func:`write_report` writes one ``report.html`` that needs no server and no network: images are
embedded as base64 ``data:`` URIs, the CSS is inline and there is no script. The helpers build
its pictures: :func:`overlay` (labels blended over an image, object contours drawn opaque; a
colour per class or per object), :func:`outcome_overlay` (objects coloured by their matching
outcome: true positives, false positives, misses; :data:`OUTCOME_COLOURS` is its legend),
:func:`thumbnail_png` (PNG bytes via Pillow), :func:`confusion_matrix_png` (row-normalised,
annotated matrix) and :func:`plot_curves` (learning curves of one or more training runs).

Figures use matplotlib's object API (``Figure`` + the Agg canvas, no ``pyplot`` state). Colours
come from the one VOC colour map, :func:`pixelwise.data.voc_palette` (``palette`` here is the
same function, kept for old imports). Files are written with :mod:`pixelwise.atomic`. Scores
are computed elsewhere (:mod:`pixelwise.metrics`); this module only shows them.
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
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pixelwise.atomic import atomic_write, write_bytes, write_text
from pixelwise.data import voc_palette

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "OUTCOME_COLOURS",
    "confusion_matrix_png",
    "outcome_overlay",
    "overlay",
    "plot_curves",
    "thumbnail_png",
    "write_report",
]

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
.legend span { display: inline-block; margin-right: 1rem; }
.legend i { display: inline-block; width: 0.9rem; height: 0.9rem; border: 1px solid #444;
  vertical-align: middle; margin-right: 0.3rem; }
p.note { max-width: 60rem; }
"""


_VOC_256 = voc_palette(256)


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


OUTCOME_COLOURS: dict[str, tuple[int, int, int]] = {
    "true positive (matched object)": (0, 200, 0),
    "false positive (predicted, no match)": (230, 30, 30),
    "miss (ground truth, no match)": (255, 215, 0),
}
"""Colours of :func:`outcome_overlay`, by outcome: the legend of the report's object pictures."""


def outcome_overlay(
    image: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    matched_pred: np.ndarray,
    matched_gt: np.ndarray,
    alpha: float = 0.25,
) -> np.ndarray:
    """Objects coloured by matching outcome: TP green, FP red (predicted objects, outlined and
    tinted), misses yellow (ground-truth objects, outlined on top).

    Args:
        image: (H, W) or (H, W, 3) image (as for :func:`overlay`).
        pred: (H, W) predicted instance ids (0 = background).
        gt: (H, W) ground-truth instance ids.
        matched_pred, matched_gt: ids of the matched predicted and ground-truth objects (e.g.
            ``pred_ids`` and ``gt_ids`` of :func:`pixelwise.metrics.objects.matched_pairs`).
        alpha: tint of predicted objects' insides (contours are opaque).

    Returns:
        (H, W, 3) uint8 image.
    """
    tp, fp, miss = (np.array(c, np.uint8) for c in OUTCOME_COLOURS.values())
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt must be label maps of the same (H, W), got {pred.shape} and {gt.shape}"
        )
    outcome = np.where(np.isin(pred, matched_pred), 1, 2) * (pred > 0)  # (H, W): 0, 1 TP, 2 FP
    rgb = overlay(image, outcome, alpha=alpha, palette=np.stack([tp, tp, fp]))
    rgb[_boundaries(pred) & (outcome == 1)] = tp  # contours per object, not per outcome
    rgb[_boundaries(pred) & (outcome == 2)] = fp
    missed = np.where(np.isin(gt, matched_gt), 0, gt)  # (H, W) ids of the misses
    rgb[_boundaries(missed)] = miss
    return rgb


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


def _figure(*, figsize: tuple[float, float]) -> Figure:
    """A matplotlib Figure on the Agg canvas, 100 dpi (matplotlib imported here, on first use:
    it costs 0.65 s of start-up that `pixelwise predict` without a report does not need)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


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
    fig = _figure(figsize=(side + 1.0, side))
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
    return write_bytes(path, buffer.getvalue())


# (key, label, style) of each curve, per panel: losses on a log scale, scores on [0, 1]
_LOSS_CURVES = (("train_loss", "training loss", "-"), ("val_loss", "validation loss", "o-"))
_SCORE_CURVES = (("val_mean_iou", "mean IoU", "o-"), ("val_dice", "Dice", "s-"))


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that hold `key`; strings (from log.csv) are parsed."""
    points = [
        (int(float(r["step"])), float(r[key]))
        for r in rows
        if r.get(key) not in (None, "") and r.get("step") not in (None, "")
    ]
    return [p[0] for p in points], [p[1] for p in points]


def _curves_figure(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """The figure of :func:`plot_curves` (an Agg canvas attached, nothing written)."""
    fig = _figure(figsize=(10, 3.6))
    losses, scores = fig.subplots(1, 2)
    for ax, curves in ((losses, _LOSS_CURVES), (scores, _SCORE_CURVES)):
        for name, rows in histories.items():
            prefix = f"{name}: " if name else ""
            for key, label, style in curves:
                steps, values = _series(rows, key)
                if steps:
                    ax.plot(steps, values, style, label=prefix + label)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend()
    if any(v > 0 for line in losses.lines for v in line.get_ydata()):
        losses.set_yscale("log")
    scores.set_ylim(0, 1)
    fig.tight_layout()
    return fig


def plot_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike
) -> Path:
    """Learning curves of one or more runs as one PNG: losses (left, log scale), scores (right).

    Args:
        histories: ``{run name: rows}``; each row a mapping with ``"step"`` and any of
            ``"train_loss"``, ``"val_loss"``, ``"val_mean_iou"``, ``"val_dice"``, as numbers or as
            strings (rows read back from ``log.csv``). Missing or empty values are skipped, so
            training rows and validation rows can be mixed. A run named ``""`` gets unprefixed
            legend labels (one run), others ``"<name>: <curve>"``.
        path: destination ``.png`` (written atomically).

    Returns:
        ``Path(path)``.

    Example:
        plot_curves({"": run.history}, out / "curves.png")  # one run
        plot_curves({"weighted": a, "unweighted": b}, out / "curves.png")  # compared
    """
    fig = _curves_figure(histories)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


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


def _row_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as a table with one column per key (the keys of the first row)."""
    if not rows:
        return "<table></table>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(_format_value(r.get(k)))}</td>" for k in rows[0])
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _legend(colours: Mapping[str, Sequence[int]]) -> str:
    """Colour swatches with their meaning."""
    items = "".join(
        f'<span><i style="background: rgb({int(r)}, {int(g)}, {int(b)})"></i>'
        f"{html.escape(name)}</span>"
        for name, (r, g, b) in colours.items()
    )
    return f'<p class="legend">{items}</p>'


def _data_uri(png: Any, what: str) -> str:
    if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(_PNG_SIGNATURE):
        raise ValueError(f"{what} must be PNG bytes; make them with thumbnail_png")
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def _sort_rows(
    rows: Sequence[Mapping[str, Any]], sort_key: str, descending: bool
) -> list[Mapping[str, Any]]:
    """Rows ordered worst first; rows without a finite ``sort_key`` value (NaN: a score that is
    undefined for that image) go last."""

    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)

    def number(row: Mapping[str, Any]) -> float | None:
        value = row.get(sort_key)
        if is_number(value):
            return None if math.isnan(float(value)) else float(value)
        return None

    if rows and not any(is_number(r.get(sort_key)) for r in rows):
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
    notes: Sequence[str] = (),
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    legend: Mapping[str, Sequence[int]] | None = None,
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
        notes: paragraphs of plain text under the title (how the scores were made).
        tables: optional ``{caption: rows}`` shown under the summary, one column per key of the
            first row (e.g. object scores per IoU threshold).
        legend: optional ``{meaning: (r, g, b)}`` shown above the image cards (e.g.
            :data:`OUTCOME_COLOURS`).

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
        *(f'<p class="note">{html.escape(note)}</p>' for note in notes),
        "<h2>Summary</h2>",
        _table(summary),
    ]
    for caption, table_rows in (tables or {}).items():
        parts += [f"<h2>{html.escape(caption)}</h2>", _row_table(table_rows)]
    for caption, png in (figures or {}).items():
        uri = _data_uri(png, f"figure {caption!r}")
        text = html.escape(caption)
        parts.append(
            f'<figure><img src="{uri}" alt="{text}"><figcaption>{text}</figcaption></figure>'
        )
    parts.append(
        f"<h2>Images ({len(ordered)}), worst first: {direction} {html.escape(sort_key)} first</h2>"
    )
    if legend:
        parts.append(_legend(legend))
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
    return write_text(Path(out_dir) / "report.html", page)
