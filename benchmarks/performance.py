"""Speed on the hardware at hand: training steps, torch.compile, ONNX Runtime, the training loop
and the command line's start-up, side by side; prints one markdown table.

    python benchmarks/performance.py            # full run (≤ 10 min on 2 cores)
    python benchmarks/performance.py --quick    # tiny sizes, one repeat (~2 min): a smoke test

Every measurement runs in a fresh subprocess (one family of calls each; torch.compile ones
under a time limit); times are medians of the repeats after a warm-up call. Sections:

1. Training step (forward, cross-entropy, backward, Adam) of the matched networks, batch 4 ×
   1 × 256²: pixelwise `UNet(base_channels=32, depth=5, padding="same", batch_norm=True)`
   (7.76 M parameters) in NCHW and channels_last, MONAI `BasicUNet(features=(32, 64, 128, 256,
   512, 32), norm="batch")` (7.78 M, fp32 NCHW, its default) when monai is installed, and
   `torch.compile` of the pixelwise step. bf16 autocast runs at that size where the CPU has
   native bf16 (`pixelwise.precision.native_bf16`), else at 1 × 64² against fp32 there
   (emulated bf16 is slow: the point of detecting it). The U-Net paper's valid network (base 64,
   depth 5, 31 M parameters) on its 572² tile (388² labelled): labelled pixels per second.
2. Inference of the same network on one 512² tile: eager NCHW, eager channels_last (the CPU
   default of `tiling.predict`), bf16 autocast (where native), `torch.compile` (channels_last),
   ONNX Runtime (`pixelwise.export.export_onnx`, CPU provider); max |logit − eager fp32|.
3. The whole `pixelwise train` loop with defaults (instances, three-class target, the matched
   network, batch 4, patch 256, elastic augmentation), per step (marginal: the difference of
   runs of 2 and 8 steps, so set-up and the final checkpoint cancel), with workers 0 and 2, and
   with border weights (two-class target), against the bare step of section 1 in the precision
   and memory format the loop picks (its overhead), MONAI's and the NCHW fp32 one.
4. `pixelwise predict` wall time including the Python start, on a 64² and a 1024² image, for
   this working tree and for the committed tree (HEAD, via `git archive`) when git is there.

Ratios are "× faster than" the section's first row (> 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import (
    Run,
    WorkerFailed,
    cli_seconds,
    make_parser,
    parse_args,
    run_worker,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
MATCHED = dict(base_channels=32, depth=5, padding="same", batch_norm=True)
MONAI_FEATURES = (32, 64, 128, 256, 512, 32)
CLASSES = 3
COMPILE_LIMIT_S = 240
"""Time limit of one torch.compile worker (compilation included); beyond it the row says so."""


# --------------------------------------------------------------------------------------------
# Worker side: one family of measurements per process
# --------------------------------------------------------------------------------------------


def _net(kind: str, arch: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "monai":
        from monai.networks.nets import BasicUNet

        return BasicUNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=CLASSES,
            features=tuple(arch["features"]),
            norm="batch",
        )
    from pixelwise.models import UNet

    return UNet(1, CLASSES, **arch)


def _times(fn, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """(warm-up times, timed times) of calls of `fn`."""
    cold, warm = [], []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        (cold if i < warmup else warm).append(time.perf_counter() - start)
    return cold, warm


def _step_worker(cfg: dict) -> dict:
    """Training steps of one network in one precision and memory format."""
    net = _net(cfg["net"], cfg["arch"]).train()
    batch, size = cfg["batch"], cfg["size"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=g)
    labelled = net.output_size(size) if hasattr(net, "output_size") else size  # valid: smaller
    y = torch.randint(0, CLASSES, (batch, labelled, labelled), generator=g)
    if cfg["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    dtype = {"bf16": torch.bfloat16, None: None}[cfg["autocast"]]
    forward = torch.compile(net) if cfg["compile"] else net

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    cold, warm = _times(step, cfg["repeats"], cfg["warmup"])
    return {
        "times": warm,
        "first": cold[0] if cold else None,
        "params": sum(p.numel() for p in net.parameters()),
        "labelled": batch * labelled**2,
    }


def _infer_worker(cfg: dict) -> dict:
    """Inference of the matched network on one tile with one engine, and its deviation from
    eager fp32."""
    net = _net("pixelwise", cfg["arch"]).eval()
    size = cfg["size"]
    x = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = net(x)
    engine = cfg["engine"]
    extra: dict[str, Any] = {}
    if engine == "onnx":
        import onnxruntime as ort

        from pixelwise.export import export_onnx

        path = Path(cfg["tmp"]) / "matched.onnx"
        start = time.perf_counter()
        export_onnx(net, path, example_size=size, verify=False)
        extra["export_s"] = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        feed = {name: x.numpy()}

        def call() -> torch.Tensor:
            return torch.from_numpy(session.run(None, feed)[0])
    else:
        model = net
        if cfg.get("channels_last"):
            model = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        if engine == "compile":
            model = torch.compile(model)
        dtype = torch.bfloat16 if cfg.get("autocast") == "bf16" else None

        def call() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=bool(dtype)):
                return model(x).float()

    cold, warm = _times(call, cfg["repeats"], cfg["warmup"])
    out = call()
    deviation = float((out - reference).abs().max())
    agree = float((out.argmax(1) == reference.argmax(1)).float().mean())
    return {"times": warm, "first": cold[0] if cold else None, "max_dev": deviation,
            "agree": agree, **extra}  # fmt: skip


def _loop_worker(cfg: dict) -> dict:
    """One `pixelwise.train.train` run of cfg["steps"] steps: its wall time."""
    from pixelwise.precision import resolve_precision
    from pixelwise.train import TrainConfig, train

    config = TrainConfig(
        data=cfg["data"],
        out=cfg["out"],
        instances=True,
        target=cfg["target"],
        model_args=dict(MATCHED) | cfg.get("arch", {}),
        steps=cfg["steps"],
        max_minutes=None,
        batch_size=cfg["batch"],
        patch_size=cfg["patch"],
        val_fraction=0.0,
        val_every=10_000,
        workers=cfg["workers"],
        device="cpu",
    )
    start = time.perf_counter()
    train(config, progress=False, log=lambda _line: None)
    seconds = time.perf_counter() - start
    precision = resolve_precision(config.precision, "cpu").name
    return {"seconds": seconds, "precision": precision, "cl": config.channels_last}


def worker(cfg: dict) -> dict:
    kind = cfg["kind"]
    result = {"step": _step_worker, "infer": _infer_worker, "loop": _loop_worker}[kind](cfg)
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _run(cfg: dict, timeout: float | None = None) -> dict:
    """A worker's result, or {"error": why} (a failure or the time limit)."""
    try:
        return run_worker(__file__, cfg, timeout=timeout)
    except WorkerFailed as e:
        return {"error": f"failed: {str(e).strip().splitlines()[-1][:160]}"}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class Table:
    """Rows of one table: section, variant, size, median seconds, ratio to the section's first
    row, notes; printed to stderr as they come."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._base: dict[str, float] = {}

    def add(self, section: str, variant: str, size: str, seconds: float | None, notes: str = "",
            *, base: str | None = None, repeats: int = 0) -> float | None:  # fmt: skip
        key = base or section
        if seconds is not None and key not in self._base:
            self._base[key] = seconds
        ref = self._base.get(key)
        ratio = ref / seconds if seconds and ref else None
        row = dict(section=section, variant=variant, size=size, seconds=seconds, ratio=ratio,
                   notes=notes, repeats=repeats)  # fmt: skip
        self.rows.append(row)
        print(self.format(row), file=sys.stderr, flush=True)
        return seconds

    @staticmethod
    def format(row: dict[str, Any]) -> str:
        s, r = row["seconds"], row["ratio"]
        seconds = "–" if s is None else f"{s:.3f}"
        ratio = "–" if r is None else f"{r:.2f}×"
        return (
            f"| {row['section']} | {row['variant']} | {row['size']} | {seconds} | "
            f"{row['repeats'] or '–'} | {ratio} | {row['notes']} |"
        )

    def markdown(self) -> str:
        head = (
            "| section | variant | size | median s | repeats | ratio | notes |\n"
            "|---|---|---|---|---|---|---|"
        )
        return "\n".join([head, *(self.format(r) for r in self.rows)])


def _median(result: dict) -> float | None:
    return statistics.median(result["times"]) if "times" in result else None


def _note(result: dict, *keys: str) -> str:
    if "error" in result:
        return result["error"]
    parts = []
    for key in keys:
        value = result.get(key)
        if value is None:
            continue
        if key == "first":
            parts.append(f"first call {value:.1f} s")
        elif key == "max_dev":
            parts.append(f"max dev {value:.1e}")
        elif key == "agree":
            parts.append(f"argmax agreement {100 * value:.2f} %")
        elif key == "export_s":
            parts.append(f"export {value:.1f} s")
        elif key == "rss_mb":
            parts.append(f"peak RSS {value:.0f} MB")
    return ", ".join(parts)


def _training_steps(table: Table, quick: bool, native: str | None) -> dict[str, float | None]:
    """Section 1; returns the median seconds of the bare steps the loop is compared with:
    "nchw" (fp32), "monai", and "loop" (the precision and memory format `pixelwise train`
    picks here: bf16 autocast + channels_last on a CPU with native bf16, else NCHW fp32)."""
    batch, size, repeats = (1, 64, 1) if quick else (4, 256, 3)
    arch = dict(MATCHED, base_channels=8) if quick else MATCHED
    shape = f"{batch}×1×{size}²"
    common = dict(kind="step", net="pixelwise", arch=arch, batch=batch, size=size, repeats=repeats,
                  warmup=1, channels_last=False, autocast=None, compile=False)  # fmt: skip
    section = "1 training step"
    nchw = _run(common)
    bare = table.add(section, "pixelwise NCHW fp32", shape, _median(nchw),
                     _note(nchw, "rss_mb") + f", {nchw.get('params', 0):,} parameters",
                     repeats=repeats)  # fmt: skip
    if _has("monai"):
        features = [8, 16, 32, 64, 128, 8] if quick else list(MONAI_FEATURES)
        monai = _run(common | dict(net="monai", arch=dict(features=features)))
        note = _note(monai, "rss_mb") + f", {monai.get('params', 0):,} parameters"
        monai_s = table.add(section, "MONAI BasicUNet NCHW fp32", shape, _median(monai), note,
                            repeats=repeats)  # fmt: skip
    else:
        monai_s = table.add(section, "MONAI BasicUNet NCHW fp32", shape, None,
                            "monai not installed")  # fmt: skip
    loop = bare
    cl = _run(common | dict(channels_last=True))
    table.add(section, "pixelwise channels_last fp32", shape, _median(cl), _note(cl, "rss_mb"),
              repeats=repeats)  # fmt: skip
    if native:
        bf = _run(common | dict(autocast="bf16"))
        table.add(section, f"pixelwise NCHW bf16 autocast ({native})", shape, _median(bf),
                  _note(bf, "rss_mb"), repeats=repeats)  # fmt: skip
        bfcl = _run(common | dict(autocast="bf16", channels_last=True))
        loop = table.add(section, "pixelwise channels_last bf16 autocast", shape, _median(bfcl),
                         _note(bfcl, "rss_mb"), repeats=repeats)  # fmt: skip
        bfclc = _run(common | dict(autocast="bf16", channels_last=True, compile=True),
                     timeout=COMPILE_LIMIT_S)  # fmt: skip
        table.add(section, "pixelwise channels_last bf16 autocast, torch.compile", shape,
                  _median(bfclc), _note(bfclc, "first"), repeats=repeats)  # fmt: skip
    else:
        small = dict(batch=1, size=64, repeats=1 if quick else 2)
        tiny = f"1×1×{small['size']}²"
        fp = _run(common | small)
        table.add(section, "pixelwise NCHW fp32 (small)", tiny, _median(fp), "bf16's reference",
                  base="bf16", repeats=small["repeats"])  # fmt: skip
        bf = _run(common | small | dict(autocast="bf16"))
        table.add(section, "pixelwise NCHW bf16 autocast, emulated (no AVX512_BF16/AMX)", tiny,
                  _median(bf), _note(bf, "rss_mb"), base="bf16",
                  repeats=small["repeats"])  # fmt: skip
    compiled = _run(common | dict(compile=True), timeout=COMPILE_LIMIT_S)
    table.add(section, "pixelwise NCHW fp32, torch.compile", shape, _median(compiled),
              _note(compiled, "first"), repeats=repeats)  # fmt: skip
    _paper_steps(table, quick, native)
    return {"nchw": bare, "monai": monai_s, "loop": loop}


def _paper_steps(table: Table, quick: bool, native: str | None) -> None:
    """The U-Net paper's valid network (base 64, depth 5: 31 M parameters) on its 572² tile,
    whose labelled output is 388²: NCHW fp32 and the precision and format `pixelwise train`
    picks here."""
    arch = dict(base_channels=8 if quick else 64, depth=3 if quick else 5, padding="valid")
    size = 92 if quick else 572
    common = dict(kind="step", net="pixelwise", arch=arch, batch=1, size=size,
                  repeats=1 if quick else 2, warmup=1, channels_last=False, autocast=None,
                  compile=False)  # fmt: skip
    section, shape = "1 training step, paper U-Net (valid)", f"1×1×{size}²"
    variants = [("NCHW fp32", {})]
    if native:
        variants.append(("channels_last bf16 autocast", dict(autocast="bf16", channels_last=True)))
    for variant, extra in variants:
        result = _run(common | extra)
        seconds = _median(result)
        note = _note(result, "rss_mb")
        if seconds:
            note += (
                f", {result['params']:,} parameters, "
                f"{result['labelled'] / seconds / 1e3:.1f} k labelled px/s"
            )
        table.add(section, f"pixelwise {variant}", shape, seconds, note,
                  repeats=common["repeats"])  # fmt: skip


def _inference(table: Table, quick: bool, native: str | None, tmp: Path) -> None:
    size, repeats = (64, 1) if quick else (512, 3)
    arch = dict(MATCHED, base_channels=8) if quick else MATCHED
    common = dict(kind="infer", arch=arch, size=size, repeats=repeats, warmup=1, tmp=str(tmp))
    section, shape = "2 inference (1 tile)", f"1×1×{size}²"
    for variant, extra, timeout in [
        ("eager NCHW fp32", dict(engine="eager"), None),
        ("eager channels_last fp32 (tiling.predict's CPU default)",
         dict(engine="eager", channels_last=True), None),
        *([(f"eager channels_last bf16 ({native})",
            dict(engine="eager", channels_last=True, autocast="bf16"), None)] if native else []),
        ("torch.compile channels_last fp32", dict(engine="compile", channels_last=True),
         COMPILE_LIMIT_S),
        ("ONNX Runtime CPU fp32", dict(engine="onnx"), 300),
    ]:  # fmt: skip
        result = _run(common | extra, timeout=timeout)
        note = _note(result, "max_dev", "agree", "first", "export_s")
        table.add(section, variant, shape, _median(result), note, repeats=repeats)


def _training_loop(table: Table, quick: bool, bare: dict[str, float | None], tmp: Path) -> None:
    from pixelwise.synthetic import write_dataset

    n, image = (4, 96) if quick else (16, 384)
    data = write_dataset(tmp / "cells", n, (image, image), seed=0)
    batch, patch = (1, 64) if quick else (4, 256)
    k1, k2 = (1, 2) if quick else (2, 8)
    arch = dict(base_channels=8) if quick else {}
    section = "3 train loop (per step)"
    table.add(section, "bare step at the loop's precision and format (section 1)",
              f"{batch}×1×{patch}²", bare["loop"], "the loop's reference", repeats=0)  # fmt: skip
    for variant, target, workers in [
        ("pixelwise train, defaults (three-class, workers 0)", "three-class", 0),
        ("pixelwise train, workers 2", "three-class", 2),
        ("pixelwise train, border weights (two-class), workers 0", "two-class", 0),
    ]:
        runs = []
        for steps in (k1, k2):
            out = tmp / f"run-{target}-{workers}-{steps}"
            runs.append(_run(dict(kind="loop", data=str(data), out=str(out), target=target,
                                  steps=steps, batch=batch, patch=patch, workers=workers,
                                  arch=arch)))  # fmt: skip
        if any("error" in r for r in runs):
            table.add(section, variant, f"{batch}×{patch}²", None, _note(runs[0]) or _note(runs[1]))
            continue
        per_step = (runs[1]["seconds"] - runs[0]["seconds"]) / (k2 - k1)
        versus = [
            f"{reference / per_step:.2f}× {name}"
            for name, reference in (("MONAI's bare step", bare["monai"]),
                                    ("the NCHW fp32 bare step", bare["nchw"]))
            if reference
        ]  # fmt: skip
        note = (
            f"{k1} and {k2} steps: {runs[0]['seconds']:.1f} s and {runs[1]['seconds']:.1f} s; "
            f"precision {runs[1]['precision']}, channels_last {runs[1]['cl']}; " + ", ".join(versus)
        )
        table.add(section, variant, f"{batch}×1×{patch}²", per_step, note, repeats=1)


def _cli_predict(table: Table, quick: bool, tmp: Path) -> None:
    """`pixelwise predict` wall time, this tree and HEAD's."""
    from PIL import Image

    from pixelwise import checkpoint
    from pixelwise.models import UNet

    torch.manual_seed(0)
    arch = dict(MATCHED, base_channels=8) if quick else MATCHED
    model = UNet(1, CLASSES, **arch)
    ckpt = tmp / "matched.safetensors"
    norm = {"mean": [0.5], "std": [0.25], "scale": 1 / 255}
    checkpoint.save(model, ckpt, normalization=norm, class_names=["a", "b", "c"])
    rng = np.random.default_rng(0)
    sizes = (64, 256) if quick else (64, 1024)
    images = {}
    for n in sizes:
        images[n] = tmp / f"image{n}.png"
        Image.fromarray(rng.integers(0, 255, (n, n), dtype=np.uint8)).save(images[n])
    trees = {"this tree": None}
    head = tmp / "head"
    try:
        head.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "src"],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(head)], input=archive, check=True)
        trees["HEAD (before)"] = str(head / "src")
    except (OSError, subprocess.CalledProcessError):
        pass
    repeats = 1 if quick else 3
    for n in sizes:
        for tree, path in trees.items():
            env = dict(os.environ)
            if path is not None:
                env["PYTHONPATH"] = path  # before the editable install's src on sys.path
            argv = ["predict", str(ckpt), str(images[n]), "--out", str(tmp / "predicted"),
                    "--no-progress"]  # fmt: skip
            done = cli_seconds(argv, repeats=repeats, env=env)
            note = "" if done.returncode == 0 else f"exit {done.returncode}: {done.output[-120:]}"
            table.add("4 pixelwise predict (wall, with Python start)", tree, f"{n}²",
                      done.seconds, note, base=f"cli{n}", repeats=repeats)  # fmt: skip


def main(quick: bool, run: Run) -> None:
    """Run the four sections (docstring above) and print the table; progress goes to stderr."""
    from pixelwise.precision import cpu_flags, native_bf16, resolve_precision

    native = native_bf16(cpu_flags())
    table = Table()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        bare = _training_steps(table, quick, native)
        _inference(table, quick, native, tmp)
        _training_loop(table, quick, bare, tmp)
        _cli_predict(table, quick, tmp)
    auto = resolve_precision("auto", "cpu").describe()
    text = "\n".join(
        [
            run.header(
                "Performance" + (" (--quick: tiny sizes, one repeat)" if quick else ""),
                f"--precision auto on this CPU: {auto}",
            ),
            "",
            table.markdown(),
            "",
        ]
    )
    print(text)
    out = ROOT / "bench-results" / "performance" / ("quick" if quick else "")
    write_results(out, text, {"rows": table.rows, "auto": auto, "quick": quick})


if __name__ == "__main__":
    parser = make_parser(__doc__, quick="tiny sizes and one repeat (~2 min), a smoke test")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parse_args(parser)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
    else:
        main(args.quick, Run("performance"))
