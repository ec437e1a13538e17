"""Benchmark of large images through `pixelwise predict`: compressed tiled TIFF in, class map out.

    python benchmarks/large_images.py            # 8192², 16384², 32768² (~25 min on 2 cores)
    python benchmarks/large_images.py --quick    # 512², 1024², 2048² (~1 min)

One tiny valid U-Net (base 4, depth 3, 3 classes, random weights, uint8 normalisation
recorded), default tiles and batch (a streamed image's 512 MiB budget, counting its row bands),
CPU, torch's default threads and `--precision auto`. Every row
is one `predict_files` call (what `pixelwise predict CKPT IMAGE --out OUT --format F --device
cpu` runs; --quick streams its small images with stream_pixels=256²) in a fresh process,
checkpoint loading and writing included; time is its wall time, peak RSS its ru_maxrss. Rows,
at the main size (16384²; --quick 1024²):

* zlib-tiled TIFF (512² tiles) → class map TIFF (tiled, zlib): the lazy path (tifffile's zarr
  store, region by region; outputs by row bands of chunks);
* the same TIFF → OME-Zarr (`--format ome-zarr`: NGFF label image with its pyramid);
* the uncompressed TIFF of the same pixels (memory-mapped) → class map TIFF: the
  "uncompressed path" the lazy one is compared with (throughput ratio, goal ≥ 0.9);
* the zlib-tiled TIFF read whole (`tifffile.imread`), then the same engine into a memory-mapped
  TIFF: what `pixelwise predict` did before it read compressed TIFFs lazily;
* the lazy path with `--memory-budget-mb 1024`, the in-memory default (streamed images had it
  before they got their own);

and the zlib-tiled TIFF → TIFF at half and twice the main size, to show that peak RSS stays
flat as the image grows (goal ≤ 900 MB at 16384²). Every class map is compared with the
uncompressed path's, band by band ("same map": identical, or the share of equal pixels).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from common import Run, make_parser, parse_args, run_worker

TILE = 512
ARCH = dict(base_channels=4, depth=3)
NORM = {"mean": [0.5], "std": [0.15], "scale": 1 / 255}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _block(top: int, left: int, rows: int, cols: int) -> np.ndarray:
    """uint8 pixels of the synthetic slide at [top, top + rows) × [left, left + cols): blobs
    a few pixels across plus noise (seeded by the position), so tiles differ and compress
    like microscopy rather than like a constant."""
    y, x = np.mgrid[top : top + rows, left : left + cols].astype(np.float32)
    rng = np.random.default_rng([top, left])
    value = 128 + 50 * np.sin(x / 6.0) * np.cos(y / 7.5) + rng.normal(0, 10, (rows, cols))
    return np.clip(value, 0, 255).astype(np.uint8)


def write_tiled(path: Path, size: int) -> None:
    """A size² zlib-compressed, 512²-tiled (Big)TIFF, written tile by tile."""

    def tiles():
        for top in range(0, size, TILE):
            for left in range(0, size, TILE):
                yield _block(top, left, TILE, TILE)

    tifffile.imwrite(path, tiles(), shape=(size, size), dtype=np.uint8, tile=(TILE, TILE),
                     compression="zlib", bigtiff=size * size > 2**31,
                     photometric="minisblack")  # fmt: skip


def write_uncompressed(path: Path, size: int) -> None:
    """The same pixels as an uncompressed contiguous TIFF (memory-mappable), band by band."""
    data = tifffile.memmap(path, shape=(size, size), dtype=np.uint8, photometric="minisblack")
    for top in range(0, size, TILE):
        for left in range(0, size, TILE):
            data[top : top + TILE, left : left + TILE] = _block(top, left, TILE, TILE)
    data.flush()
    del data


def save_checkpoint(path: Path) -> None:
    import pixelwise
    from pixelwise.models import UNet

    torch.manual_seed(0)
    model = UNet(1, 3, **ARCH).eval()
    pixelwise.save(model, path, normalization=NORM, class_names=["bg", "a", "b"])


# --------------------------------------------------------------------------------------------
# Worker side: one measurement per process
# --------------------------------------------------------------------------------------------


def worker(cfg: dict) -> dict:
    """Run one measurement; returns seconds, Mpx/s and the process's peak RSS."""
    size = cfg["size"]
    start = time.perf_counter()
    if cfg["kind"] == "predict":
        from pixelwise.inference import predict_files

        summary = predict_files(cfg["checkpoint"], [cfg["image"]], cfg["out"], device="cpu",
                                output_format=cfg["format"], stream_pixels=cfg["stream_pixels"],
                                progress=False, log=None, **cfg["options"])  # fmt: skip
        if not summary.ok:
            raise RuntimeError(summary.report())
    elif cfg["kind"] == "base":  # what every row pays before any pixel: imports, the model
        from pixelwise.checkpoint import load_state
        from pixelwise.inference import predict_files

        load_state(cfg["checkpoint"])
    else:  # "whole": decode the file whole, then the engine into a memory-mapped TIFF
        from pixelwise import tiling
        from pixelwise.checkpoint import load_state
        from pixelwise.inference import NormalizedImage
        from pixelwise.precision import resolve_precision

        model, meta, _ = load_state(cfg["checkpoint"])
        autocast = resolve_precision("auto", "cpu").autocast  # as pixelwise predict's default
        image = tifffile.imread(cfg["image"])  # (H, W) uint8, decoded whole
        view = NormalizedImage(image, meta["normalization"], cfg["image"])
        out = tifffile.memmap(cfg["result"], shape=image.shape, dtype=np.uint8)
        tiling.predict(model, view, output="labels", out=out, device="cpu", autocast=autocast)
        out.flush()
        del out
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "mpx_s": size * size / seconds / 1e6,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _run(cfg: dict) -> dict:
    return run_worker(__file__, cfg)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _class_map(path: Path):
    """A class map output opened lazily: (H, W) array-like (TIFF or NGFF level 0)."""
    import zarr

    if path.is_dir():
        return zarr.open_group(str(path), mode="r")["0"]
    return zarr.open_array(tifffile.imread(path, aszarr=True), mode="r")


def agreement(a: Path, b: Path) -> float:
    """Share of pixels where two class maps agree, compared in bands of 1024 rows (1.0:
    identical); NaN when their shapes differ."""
    x, y = _class_map(a), _class_map(b)
    if tuple(x.shape) != tuple(y.shape):
        return float("nan")
    equal = sum(
        int(np.count_nonzero(np.asarray(x[r : r + 1024]) == np.asarray(y[r : r + 1024])))
        for r in range(0, x.shape[0], 1024)
    )
    return equal / (x.shape[0] * x.shape[1])


def main(quick: bool, run: Run) -> None:
    """Write the inputs, run the rows (module docstring), print the table."""
    main_size = 1024 if quick else 16384
    sizes = (main_size // 2, main_size, main_size * 2)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        checkpoint = tmp / "tiny.safetensors"
        save_checkpoint(checkpoint)
        results: dict[str, dict] = {}
        maps: dict[str, Path] = {}

        stream_pixels = 256**2 if quick else 4096**2  # the default: 16384² is streamed

        def predict(key: str, image: Path, size: int, fmt: str, **options: float) -> None:
            out = tmp / key
            results[key] = _run(
                {"kind": "predict", "checkpoint": str(checkpoint), "image": str(image),
                 "out": str(out), "format": fmt, "stream_pixels": stream_pixels, "size": size,
                 "options": options}
            )  # fmt: skip
            suffix = ".ome.zarr" if fmt == "ome-zarr" else ".tif"
            maps[key] = out / f"{image.stem}{suffix}"
            print(key, results[key], file=sys.stderr, flush=True)

        base = _run({"kind": "base", "checkpoint": str(checkpoint), "size": 1})
        write_uncompressed(tmp / "raw.tif", main_size)
        predict("raw→tif", tmp / "raw.tif", main_size, "tif")
        for size in sizes:
            write_tiled(tmp / f"zlib{size}.tif", size)
            predict(f"zlib{size}→tif", tmp / f"zlib{size}.tif", size, "tif")
            if size == main_size:
                predict("zlib→ome-zarr", tmp / f"zlib{size}.tif", size, "ome-zarr")
                predict("budget 1024", tmp / f"zlib{size}.tif", size, "tif", memory_budget_mb=1024)
                image = tmp / f"zlib{size}.tif"
                maps["whole"] = tmp / "whole.tif"
                results["whole"] = _run(
                    {"kind": "whole", "checkpoint": str(checkpoint), "image": str(image),
                     "result": str(maps["whole"]), "size": size}
                )  # fmt: skip
                print("whole", results["whole"], file=sys.stderr, flush=True)
            else:
                (tmp / f"zlib{size}.tif").unlink()  # keep the disk use small
        main_keys = [f"zlib{main_size}→tif", "zlib→ome-zarr", "whole", "budget 1024"]
        same = {k: agreement(maps[k], maps["raw→tif"]) for k in main_keys}
        same["raw→tif"] = 1.0
        sizes_mb = {k: _disk_mb(p) for k, p in maps.items()}

    raw = results["raw→tif"]
    rows = [
        ("zlib-tiled TIFF (lazy)", "TIFF", main_size, f"zlib{main_size}→tif"),
        ("zlib-tiled TIFF (lazy)", "OME-Zarr", main_size, "zlib→ome-zarr"),
        ("uncompressed TIFF (memmap)", "TIFF", main_size, "raw→tif"),
        ("zlib-tiled TIFF read whole (before)", "memmap TIFF", main_size, "whole"),
        ("zlib-tiled TIFF (lazy), --memory-budget-mb 1024", "TIFF", main_size, "budget 1024"),
        ("zlib-tiled TIFF (lazy)", "TIFF", sizes[0], f"zlib{sizes[0]}→tif"),
        ("zlib-tiled TIFF (lazy)", "TIFF", sizes[2], f"zlib{sizes[2]}→tif"),
    ]
    header = (
        "| input | class map out | image | time s | Mpx/s | × uncompressed | peak RSS MB | "
        "RSS − base MB | out MB | same map |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for source, out, size, key in rows:
        r = results[key]
        disk = f"{sizes_mb[key]:.0f}"
        share = same.get(key)
        same_text = "–" if share is None else "yes" if share == 1.0 else f"{100 * share:.3f} %"
        lines.append(
            f"| {source} | {out} | {size}² | {r['seconds']:.1f} | {r['mpx_s']:.2f} | "
            f"{r['mpx_s'] / raw['mpx_s']:.2f} | {r['rss_mb']:.0f} | "
            f"{r['rss_mb'] - base['rss_mb']:.0f} | {disk} | {same_text} |"
        )
    lazy = results[f"zlib{main_size}→tif"]
    print(
        run.header(
            f"pixelwise large-image benchmark{' (--quick)' if quick else ''}",
            f"model: valid U-Net base {ARCH['base_channels']}, depth {ARCH['depth']}, 3 classes; "
            f"inputs: 512² zlib tiles (the uncompressed row: contiguous strips); torch "
            f"{torch.get_num_threads()} threads, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}; base RSS (imports, model loaded, no "
            f"pixels) {base['rss_mb']:.0f} MB",
        )
    )
    print()
    print("\n".join(lines))
    print()
    print(
        f"At {main_size}²: lazy zlib TIFF → TIFF peak RSS {lazy['rss_mb']:.0f} MB (goal ≤ 900 "
        f"at 16384²), {lazy['mpx_s'] / raw['mpx_s']:.2f}× the uncompressed path's throughput "
        f"(goal ≥ 0.90), {results['budget 1024']['rss_mb']:.0f} MB with --memory-budget-mb "
        f"1024 (the default budget is 512 for streamed images); reading the file whole "
        f"peaked at {results['whole']['rss_mb']:.0f} MB. "
        f"Peak RSS at {sizes[0]}² / {sizes[1]}² / {sizes[2]}²: "
        + " / ".join(f"{results[f'zlib{s}→tif']['rss_mb']:.0f}" for s in sizes)
        + " MB."
    )


def _disk_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    return path.stat().st_size / 2**20


if __name__ == "__main__":
    parser = make_parser(__doc__, quick="512², 1024², 2048² images, ~1 minute")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parse_args(parser)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
    else:
        main(args.quick, Run("large_images"))
