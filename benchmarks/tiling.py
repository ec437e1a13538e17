"""Benchmark of overlap-tile inference (`pixelwise.tiling.predict`); prints one markdown table.

    python benchmarks/tiling.py            # full run (< 15 min on 2 cores)
    python benchmarks/tiling.py --quick    # smaller images (~1 min)

Sections (every measurement runs in a fresh subprocess with torch.set_num_threads(2); time is
the wall time of one call after the model is built, peak RSS the worker's ru_maxrss):

1. Padded U-Net (padding="same", batch norm in eval mode, base 32, depth 5) on a 2048² image:
   `predict` at its defaults vs MONAI's sliding_window_inference (roi 256, overlap 0.25,
   gaussian, sw_batch_size 4; also with model and input converted to channels_last by hand, as
   `predict` does on a CPU) vs whole-image inference; deviation from the whole image.
2. The paper's valid U-Net geometry (depth 5, base 32): tiled (defaults, and the paper's
   572-pixel tiles) vs the whole mirror-extended image.
3. An 8192² uint8 TIFF → uint8 class-map TIFF, streamed through out=tifffile.memmap with a small
   valid U-Net (depth 5, base 8): throughput and peak RSS.
4. Achieved GFLOP/s (convolution FLOPs counted with torch.utils.flop_counter on the meta device
   for every input shape the model saw) against fp32 torch.mm in the same run; channels_last and
   bfloat16 autocast against plain fp32 on the section-1 network (bf16 on a 256² image when the
   CPU has no native bf16).
5. Precision auto, the default of the command line and of `pixelwise.Segmenter`: `pixelwise
   predict CKPT IMAGE` (defaults, in a fresh process) on section 1's network and image, its
   marginal time (the 2048² run minus a 64² run of the same checkpoint: the Python start,
   imports and model loading cancel) against MONAI's sliding window of section 1, argmax
   agreement of its class map with the fp32 whole image; and a trained network, the shipped
   nuclei model (`pixelwise.pretrained("nuclei")`, a raw 1024² uint8 image of touching cells
   from `pixelwise.synthetic`): precision auto against fp32, argmax agreement, max |Δp| and
   the objects found.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from common import Run, cli_seconds, make_parser, median_seconds, parse_args, run_worker
from references import whole_image_probs

THREADS = 2
SAME = dict(base_channels=32, depth=5, padding="same", batch_norm=True)
VALID = dict(base_channels=32, depth=5, padding="valid")
SMALL = dict(base_channels=8, depth=5, padding="valid")


# --------------------------------------------------------------------------------------------
# Worker side: one measurement per process
# --------------------------------------------------------------------------------------------


def _build(arch: dict, state: str) -> torch.nn.Module:
    from pixelwise.models import UNet

    model = UNet(1, 2, **arch)
    model.load_state_dict(torch.load(state, weights_only=True))
    return model.eval()


def _flops(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on an input of `shape`, counted on the meta device."""
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    state = {
        k: torch.empty_like(v, device="meta")
        for k, v in itertools.chain(model.named_parameters(), model.named_buffers())
    }
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        functional_call(model, state, (torch.empty(shape, device="meta"),))
    return counter.get_total_flops()


def _monai(model: torch.nn.Module, image: np.ndarray, channels_last: bool) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    if channels_last:  # what a user can do by hand: model and input in channels_last
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logits = sliding_window_inference(
            x, roi_size=(256, 256), sw_batch_size=4, predictor=model, overlap=0.25,
            mode="gaussian",
        )  # fmt: skip
    return logits.softmax(1)[0].numpy()


def _pretrained(cfg: dict) -> dict:
    """The shipped nuclei model on a raw image at `cfg["precision"]`: time, probabilities
    saved to `cfg["result"]`, the objects found."""
    import pixelwise

    # as is (no diameter measured): one pass, so the row times the precision alone
    segmenter = pixelwise.pretrained("nuclei", precision=cfg["precision"], diameter=None)
    image = np.load(cfg["image"])
    segmenter.predict(image[:256, :256])  # warm-up: first-call costs are not the precision's
    t0 = time.perf_counter()
    result = segmenter.predict(image)
    seconds = time.perf_counter() - t0
    np.save(cfg["result"], result.probabilities)
    return {
        "seconds": seconds,
        "mpx_s": image.size / seconds / 1e6,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "objects": int(result.instances.max()),
        "precision": segmenter.precision.describe(),
    }


def worker(cfg: dict) -> dict:
    torch.set_num_threads(THREADS)
    from pixelwise.tiling import predict

    if cfg["kind"] == "pretrained":
        return _pretrained(cfg)
    if cfg["kind"] == "mm":
        a = torch.randn(4096, 4096)
        seconds = median_seconds(lambda: a @ a, repeats=5, warmup=1)
        return {"gflops": 2 * 4096**3 / seconds / 1e9}

    model = _build(cfg["arch"], cfg["state"])
    shapes: Counter = Counter()
    hook = model.register_forward_hook(lambda _m, a, _y: shapes.update([tuple(a[0].shape)]))
    kind = cfg["kind"]
    if kind == "stream":
        import tifffile

        source = tifffile.memmap(cfg["image"], mode="r")
        sink = tifffile.memmap(cfg["result"], shape=source.shape, dtype=np.uint8)
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # random weights on raw uint8: the engine's speed only
            warnings.filterwarnings("ignore", "tiling.predict got an image of dtype uint8")
            predict(model, source, output="labels", out=sink)
        sink.flush()
        seconds = time.perf_counter() - t0
        pixels = source.shape[0] * source.shape[1]
        fractions = (
            np.bincount(np.asarray(sink[::64, ::64]).ravel(), minlength=2) / sink[::64, ::64].size
        )
        extra = {"class1": float(fractions[1])}
    else:
        image = np.load(cfg["image"], mmap_mode="r")
        pixels = image.shape[0] * image.shape[1]
        t0 = time.perf_counter()
        if kind == "whole":
            probs = whole_image_probs(model, np.asarray(image))
        elif kind == "monai":
            probs = _monai(model, image, cfg.get("channels_last", False))
        else:
            probs = predict(model, image, **cfg.get("kwargs", {}))
        seconds = time.perf_counter() - t0
        np.save(cfg["result"], probs)
        extra = {}
    calls = ", ".join(f"{c}×{tuple(s)}" for s, c in shapes.items())
    hook.remove()  # the FLOP count below runs the model on the meta device
    flops = sum(count * _flops(model, shape) for shape, count in shapes.items())
    return {
        "seconds": seconds,
        "mpx_s": pixels / seconds / 1e6,
        "gflops": flops / seconds / 1e9,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "calls": calls,
        **extra,
    }


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _run(cfg: dict) -> dict:
    return run_worker(__file__, cfg)


def _smooth_image(size: int, seed: int) -> np.ndarray:
    """Normalised smooth noise: blobs a few pixels across, zero mean, unit variance."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 3)
    return (image - image.mean()) / image.std()


def _save_model(arch: dict, path: Path) -> str:
    """Seeded weights; batch-norm statistics and affine parameters randomised so that batch
    norm is not the identity."""
    from pixelwise.models import UNet

    torch.manual_seed(0)
    model = UNet(1, 2, **arch)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    torch.save(model.state_dict(), path)
    return str(path)


def _write_tiff(path: Path, size: int) -> None:
    """A size² uint8 contiguous TIFF written strip by strip (never the float image in memory)."""
    import tifffile

    data = tifffile.memmap(path, shape=(size, size), dtype=np.uint8)
    strip = 512
    for top in range(0, size, strip):
        block = _smooth_image(strip, seed=top)[: min(strip, size - top), :]
        block = np.tile(block, (1, -(-size // strip)))[:, :size]
        data[top : top + block.shape[0]] = np.clip(block * 40 + 128, 0, 255).astype(np.uint8)
    data.flush()
    del data


def _deviation(result: str, reference: str) -> dict:
    a, b = np.load(result, mmap_mode="r"), np.load(reference, mmap_mode="r")
    diff = np.abs(np.asarray(a) - np.asarray(b))
    agree = float((np.asarray(a).argmax(0) == np.asarray(b).argmax(0)).mean())
    return {"max_dev": float(diff.max()), "mean_dev": float(diff.mean()), "agree": agree}


def _save_checkpoint(arch: dict, state: str, path: Path) -> str:
    """Section 1's network as a pixelwise checkpoint whose normalisation is the identity on
    float32 images (the benchmark images are already normalised)."""
    from pixelwise import checkpoint

    model = _build(arch, state)
    identity = {"mean": [0.0], "std": [1.0], "scale": 1.0}
    checkpoint.save(model, path, normalization=identity, class_names=["a", "b"])
    return str(path)


def _cli_seconds(ckpt: str, image: Path, out: Path, repeats: int) -> tuple[float, str]:
    """Median wall seconds of `pixelwise predict CKPT IMAGE --out OUT` (defaults) in a fresh
    process (`cli_seconds`), and the run header (its precision line)."""
    run = cli_seconds(["predict", ckpt, str(image), "--out", str(out), "--no-progress"],
                      repeats=repeats)  # fmt: skip
    if run.returncode:
        raise RuntimeError(f"pixelwise predict failed: {run.output[-500:]}")
    return run.seconds, run.output.strip().splitlines()[0]


def _class_map_agreement(path: Path, reference: str) -> float:
    """Share of pixels where the class map at `path` equals the argmax of `reference`."""
    from pixelwise.data import read_image

    labels = read_image(path)
    return float((labels == np.load(reference, mmap_mode="r").argmax(0)).mean())


def _row(section: str, method: str, size: str, r: dict, mm: float) -> str:
    dev = (
        f"{r['max_dev']:.2e} | {r['mean_dev']:.2e} | {100 * r['agree']:.3f}%"
        if "max_dev" in r
        else "– | – | –"
    )
    row = (
        f"| {section} | {method} | {size} | {r['seconds']:.1f} | {r['mpx_s']:.3f} | "
        f"{r['gflops']:.1f} ({r['gflops'] / mm:.2f}) | {r['rss_mb']:.0f} | {dev} | {r['calls']} |"
    )
    print(row, file=sys.stderr, flush=True)  # progress; the table is printed at the end
    return row


def main(quick: bool, run: Run) -> None:
    """Run the four sections (docstring above) and print the table; progress goes to stderr.

    One long function on purpose: it reads top to bottom as the benchmark's protocol.
    """
    s1, s2, s3, s4 = (512, 256, 2048, 256) if quick else (2048, 1024, 8192, 1024)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        same = _save_model(SAME, tmp / "same.pt")
        valid = _save_model(VALID, tmp / "valid.pt")
        small = _save_model(SMALL, tmp / "small.pt")
        rows = []
        mm = _run({"kind": "mm"})["gflops"]

        def measure(name: str, cfg: dict, reference: str | None = None) -> dict:
            cfg = {**cfg, "result": str(tmp / f"{name}.npy")}
            r = _run(cfg)
            if reference is not None:
                r |= _deviation(cfg["result"], str(tmp / f"{reference}.npy"))
            return r

        # 1. same-padding U-Net: predict vs MONAI vs whole image
        np.save(tmp / "img1.npy", _smooth_image(s1, seed=1))
        base = {"arch": SAME, "state": same, "image": str(tmp / "img1.npy")}
        whole1 = measure("whole1", {**base, "kind": "whole"})
        pw1 = measure("pw1", {**base, "kind": "predict"}, "whole1")
        monai1 = measure("monai1", {**base, "kind": "monai"}, "whole1")
        monai1cl = measure("monai1cl", {**base, "kind": "monai", "channels_last": True}, "whole1")
        size1 = f"{s1}²"
        rows += [
            _row("1 same U-Net", "whole image", size1, whole1, mm),
            _row("1 same U-Net", "pixelwise predict (defaults)", size1, pw1, mm),
            _row("1 same U-Net", "MONAI sliding window (256, 0.25, gaussian)", size1, monai1, mm),
            _row("1 same U-Net", "MONAI, model + input channels_last", size1, monai1cl, mm),
        ]

        # 2. valid (paper) U-Net: tiled vs whole mirror-extended image
        np.save(tmp / "img2.npy", _smooth_image(s2, seed=2))
        base = {"arch": VALID, "state": valid, "image": str(tmp / "img2.npy")}
        whole2 = measure("whole2", {**base, "kind": "whole"})
        pw2 = measure("pw2", {**base, "kind": "predict"}, "whole2")
        paper2 = measure("paper2", {**base, "kind": "predict", "kwargs": {"tile_size": 572}})
        paper2 |= _deviation(str(tmp / "paper2.npy"), str(tmp / "whole2.npy"))
        size2 = f"{s2}²"
        rows += [
            _row("2 valid U-Net", "whole mirror-extended image", size2, whole2, mm),
            _row("2 valid U-Net", "pixelwise predict (defaults)", size2, pw2, mm),
            _row("2 valid U-Net", "pixelwise predict (tile 572, paper)", size2, paper2, mm),
        ]

        # 3. streaming a large uint8 TIFF to a class-map TIFF
        _write_tiff(tmp / "big.tif", s3)
        stream = _run(
            {
                "kind": "stream",
                "arch": SMALL,
                "state": small,
                "image": str(tmp / "big.tif"),
                "result": str(tmp / "labels.tif"),
            }
        )
        rows.append(_row("3 stream (base 8)", "TIFF → labels TIFF", f"{s3}² uint8", stream, mm))

        # 4. channels_last / bf16 against fp32 on the section-1 network. A CPU without native
        # bf16 (no AVX512-BF16/AMX) runs bf16 ~30× slower than fp32, so there the bf16 rows
        # use a 256² image with an fp32 reference of the same size.
        variants = {
            "channels_last (predict's CPU default)": {"channels_last": True},
            "bf16 autocast": {"autocast": "bf16", "channels_last": False},
            "bf16 + channels_last": {"autocast": "bf16", "channels_last": True},
        }
        sizes4 = {label: s4 for label in variants}
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            sizes4 |= {label: 256 for label in variants if "bf16" in label}
        speed4, fp32_by_size = {}, {}
        for n in sorted(set(sizes4.values()), reverse=True):
            np.save(tmp / f"img4_{n}.npy", _smooth_image(n, seed=4))
            base = {"arch": SAME, "state": same, "image": str(tmp / f"img4_{n}.npy")}
            base["kind"] = "predict"
            fp32 = fp32_by_size[n] = measure(
                f"fp32_{n}", {**base, "kwargs": {"channels_last": False}}
            )
            rows.append(_row("4 precision", "fp32", f"{n}²", fp32, mm))
            for i, label in enumerate(k for k, v in sizes4.items() if v == n):
                cfg = {**base, "kwargs": variants[label]}
                r = measure(f"v{i}_{n}", cfg, f"fp32_{n}")
                speed4[label] = (fp32["seconds"] / r["seconds"], r["agree"])
                rows.append(_row("4 precision", label, f"{n}²", r, mm))

        # 5. precision auto: the command line's defaults, and a trained model
        import tifffile

        ckpt = _save_checkpoint(SAME, same, tmp / "same.safetensors")
        tifffile.imwrite(tmp / "cli_big.tif", np.load(tmp / "img1.npy"))
        tifffile.imwrite(tmp / "cli_small.tif", _smooth_image(64, seed=5))
        repeats5 = 1 if quick else 2
        big_s, cli_header = _cli_seconds(ckpt, tmp / "cli_big.tif", tmp / "cli", repeats5)
        small_s, _ = _cli_seconds(ckpt, tmp / "cli_small.tif", tmp / "cli", repeats5)
        marginal = big_s - small_s
        cli_agree = _class_map_agreement(tmp / "cli" / "cli_big.png", str(tmp / "whole1.npy"))
        rows.append(
            f"| 5 precision auto | `pixelwise predict` defaults, marginal ({big_s:.1f} s − "
            f"{small_s:.1f} s at 64²) | {size1} | {marginal:.1f} | {s1 * s1 / marginal / 1e6:.3f} "
            f"| – | – | – | – | {100 * cli_agree:.3f}% | {cli_header} |"
        )
        from pixelwise.synthetic import to_uint8, touching_cells

        cells, _ = touching_cells((s4, s4), radius=(8, 14), rng=5)
        np.save(tmp / "cells.npy", to_uint8(cells))
        trained = {}
        for precision in ("fp32", "auto"):
            trained[precision] = _run({"kind": "pretrained", "precision": precision,
                                       "image": str(tmp / "cells.npy"),
                                       "result": str(tmp / f"nuclei_{precision}.npy")})  # fmt: skip
        trained["auto"] |= _deviation(str(tmp / "nuclei_auto.npy"), str(tmp / "nuclei_fp32.npy"))
        for precision, r in trained.items():
            dev = (
                f"{r['max_dev']:.2e} | {r['mean_dev']:.2e} | {100 * r['agree']:.3f}%"
                if "agree" in r
                else "– | – | –"
            )
            rows.append(
                f"| 5 precision auto | shipped nuclei model, Segmenter precision={precision} | "
                f"{s4}² uint8 | {r['seconds']:.1f} | {r['mpx_s']:.3f} | – | {r['rss_mb']:.0f} | "
                f"{dev} | {r['objects']} objects; {r['precision']} |"
            )

    header = (
        "| section | method | image | time s | Mpx/s | GFLOP/s (÷ mm) | peak RSS MB | "
        "max abs dev | mean abs dev | argmax agree | model calls (count×input shape) |"
    )
    print(
        run.header(
            f"pixelwise tiling benchmark{' (--quick)' if quick else ''}",
            f"workers: {THREADS} threads each, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, fp32 torch.mm {mm:.1f} GFLOP/s",
        )
    )
    print()
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    print("\n".join(rows))
    print()
    vs_monai = monai1["seconds"] / pw1["seconds"]
    print(
        f"1: predict {vs_monai:.2f}× MONAI's throughput (target ≥ 1.5; "
        f"{monai1cl['seconds'] / pw1['seconds']:.2f}× MONAI with channels_last by hand), max dev "
        f"{pw1['max_dev']:.1e} vs MONAI {monai1['max_dev']:.1e}. "
        f"2: max dev {pw2['max_dev']:.1e} (target ≤ 1e-4), throughput "
        f"{whole2['seconds'] / pw2['seconds']:.2f}× whole image (target ≥ 0.7). "
        f"3: peak RSS {stream['rss_mb']:.0f} MB (target ≤ 1536). "
        f"4: fp32 at {fp32_by_size[s4]['gflops'] / mm:.2f}× mm (aim ≥ 0.5); "
        + "; ".join(
            f"{k} {v[0]:.2f}× fp32 speed, {100 * v[1]:.3f}% agree" for k, v in speed4.items()
        )
        + f". 5: `pixelwise predict` defaults {monai1['seconds'] / marginal:.2f}× MONAI's "
        f"sliding window (marginal time; target ≥ 3 with native bf16, ≥ 1.5 without), "
        f"{100 * cli_agree:.3f}% argmax agreement with the fp32 whole image (target ≥ 99.5 %); "
        f"shipped nuclei model auto vs fp32: {100 * trained['auto']['agree']:.3f}% agree, "
        f"{trained['fp32']['seconds'] / trained['auto']['seconds']:.2f}× speed."
    )


if __name__ == "__main__":
    parser = make_parser(__doc__, quick="small images, ~1 minute")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parse_args(parser)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
    else:
        main(args.quick, Run("tiling"))
