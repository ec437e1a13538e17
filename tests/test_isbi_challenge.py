"""ISBI 2012 scores: ``isbi2012`` against a literal port of the challenge's Fiji code.

The first half of this file ports the challenge's evaluation from fiji/Trainable_Segmentation
(``trainableSegmentation.metrics``: Metrics, ClassificationStatistics, PixelError, RandError,
VariationOfInformation, WarpingError; ``trainableSegmentation.utils.WatershedTransform2D``),
fiji/VIB-lib (``util.FindConnectedRegions``) and the ImageJ behaviour they rely on
(``TypeConverter``'s scaled 8-bit conversion, ``FloatProcessor`` display ranges): loop for loop,
in the Java order, with Java's float / double / int semantics. It is slow and meant for small
images. Two liberties, both exact: sums skip the zero cells of the overlap matrices (adding +0.0
changes nothing, and Java's j-outer loop for b_j adds in the same i order) and the flood fill
remembers its own points instead of rescanning the image for them.

Reference inputs: ``labels`` (N, H, W) uint8 0/255 as ImageJ reads the challenge's label stack,
``proposal`` (N, H, W) float32 as it reads a submission; pixel (x, y) is ``array[y, x]``. The
second half checks the vectorised implementation against it to 1e-9 on random and structured
cases, and hand-computed values.
"""

from __future__ import annotations

import functools
import math
from collections import deque

import numpy as np
import pytest
import torch
from scipy import ndimage

from pixelwise.metrics import (
    ISBI2012_THRESHOLDS,
    ISBI2012_WARPING_THRESHOLDS,
    adapted_rand_error,
    isbi2012,
)
from pixelwise.metrics.isbi_topology import (
    FOUR,
    RING,
    count_splits_and_mergers,
    sequential_warp,
    simple_point_table,
    thin_borders,
)

# ================================================================ literal port of the Fiji code

MAX_INT = 2**31 - 1


def java_int(value: float) -> int:
    """Java's (int) cast of a double: NaN -> 0, saturating, truncation toward zero."""
    if math.isnan(value):
        return 0
    if value >= MAX_INT:
        return MAX_INT
    if value <= -(2**31):
        return -(2**31)
    return int(value)


def java_div(a: float, b: float) -> float:
    """Java's double division (x / 0 is +-Infinity or NaN, never an exception)."""
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def thresholds(lo: float, hi: float, step: float) -> list[float]:
    out, th = [], lo
    while th <= hi:
        out.append(th)
        th += step
    return out


def fscore(tp: float, tn: float, fp: float, fn: float) -> float:
    """ClassificationStatistics' constructor, the F-score it stores."""
    precision = 1.0 if fp == 0 else java_div(tp, tp + fp)
    recall = 1.0 if fn == 0 else java_div(tp, tp + fn)
    f = 0.0
    if precision + recall > 0:
        f = 2.0 * precision * recall / (precision + recall)
    return f


# ---------------------------------------------------------------- FindConnectedRegions ------


def connected_regions(values: list[list[float]], diagonal: bool) -> list[list[int]]:
    """FindConnectedRegions.run(im, diagonal, ..., valuesOver 0, minimum 1): all-regions image.

    ``values`` is [y][x]; returns labels [y][x] (0 = background), regions numbered in the
    order their first pixel is met scanning rows top to bottom, left to right.
    """
    height, width = len(values), len(values[0])
    data = [float(values[y][x]) for y in range(height) for x in range(width)]
    state = [0] * (width * height)  # 1 IN_QUEUE, 2 ADDED_TO_CURRENT_REGION, 3 IN_PREVIOUS_REGION
    labels = [0] * (width * height)
    region_number = 0
    ignore_x = ignore_y = 0
    while True:
        start = -1
        for y in range(ignore_y, height):
            for x in range(ignore_x if y == ignore_y else 0, width):
                index = y * width + x
                if state[index] == 3:
                    continue
                if data[index] > 0:
                    start = index
                    break
            if start >= 0:
                break
        if start < 0:
            break
        ignore_y, ignore_x = divmod(start, width)
        ignore_x += 1
        queue = [start]
        state[start] = 1
        added = []
        while queue:
            index = queue.pop()
            py, px = divmod(index, width)
            state[index] = 2
            added.append(index)
            data[index] = 0.0
            for y in range(max(0, py - 1), min(py + 1, height - 1) + 1):
                for x in range(max(0, px - 1), min(px + 1, width - 1) + 1):
                    off = (x != px) + (y != py)
                    if off == 0 or (not diagonal and off > 1):
                        continue
                    neighbour = y * width + x
                    if data[neighbour] <= 0:
                        continue
                    if state[neighbour] == 0:
                        state[neighbour] = 1
                        queue.append(neighbour)
        region_number += 1
        for index in added:
            labels[index] = region_number
            state[index] = 3
    return [labels[y * width : (y + 1) * width] for y in range(height)]


def components(binary: list[list[int]]) -> list[list[int]]:
    """Utils.connectedComponents(im, 4).allRegions."""
    return connected_regions(binary, diagonal=False)


# ---------------------------------------------------------------- PixelError ----------------


def precision_recall_stats(label, proposal, th: float) -> tuple[float, float, float, float]:
    tp = tn = fp = fn = 0.0
    height, width = label.shape
    for i in range(width * height):
        y, x = divmod(i, width)
        pix1 = 1 if float(label[y, x]) > 0 else 0
        pix2 = 1 if float(proposal[y, x]) > th else 0
        if pix2 == 1:
            if pix1 == 1:
                tp += 1
            else:
                fp += 1
        elif pix1 == 1:
            fn += 1
        else:
            tn += 1
    return tp, tn, fp, fn


def maximal_micro_fscore(stats, labels, proposal, lo, hi, step) -> float:
    """Metrics' threshold loop with ClassificationStatistics of the counts added over slices.

    ``stats(label, proposal, th)`` gives one slice's (TP, TN, FP, FN); Fiji keeps the largest
    F-score, starting from 0.
    """
    best = 0.0
    for th in thresholds(lo, hi, step):
        tp = tn = fp = fn = 0.0
        for k in range(labels.shape[0]):
            a, b, c, d = stats(labels[k], proposal[k], th)
            tp, tn, fp, fn = tp + a, tn + b, fp + c, fn + d
        f = fscore(tp, tn, fp, fn)
        if f > best:
            best = f
    return best


def maximal_slice_mean(score, labels, proposal, lo, hi, step) -> float:
    """The threshold loop of the thinned scores: the per-slice score averaged, the largest kept."""
    best = 0.0
    for th in thresholds(lo, hi, step):
        total = 0.0
        for k in range(labels.shape[0]):
            total += score(labels[k], proposal[k], th)
        f = total / labels.shape[0]
        if f > best:
            best = f
    return best


def pixel_error_maximal_fscore(labels, proposal, lo=0.0, hi=1.0, step=0.1) -> float:
    """PixelError.getPixelErrorMaximalFScore."""
    return maximal_micro_fscore(precision_recall_stats, labels, proposal, lo, hi, step)


# ---------------------------------------------------------------- RandError -----------------


def binarize(label, proposal, th: float, proposal_inverted: bool = False):
    height, width = label.shape
    binary_label = [[0] * width for _ in range(height)]
    binary_proposal = [[0] * width for _ in range(height)]
    for x in range(width):
        for y in range(height):
            binary_label[y][x] = 255 if float(label[y, x]) > th else 0
            inside = float(proposal[y, x]) > th
            binary_proposal[y][x] = (
                (0 if inside else 255) if proposal_inverted else (255 if inside else 0)
            )
    return binary_label, binary_proposal


def overlap(cluster1, cluster2) -> tuple[float, int, int, dict]:
    """n (gt foreground pixels), nLabelsA, nLabelsB and the nonzero counts pij[i][j]."""
    n = 0.0
    counts: dict[tuple[int, int], float] = {}
    n_a = n_b = 0
    for row1, row2 in zip(cluster1, cluster2, strict=True):
        for a, b in zip(row1, row2, strict=True):
            if a != 0:
                n += 1
            counts[(a, b)] = counts.get((a, b), 0.0) + 1.0
            n_a, n_b = max(n_a, a), max(n_b, b)
    return n, n_a, n_b, counts


def normalised_rows(n, n_a, n_b, counts):
    """pij /= n, as rows {i: [(j, pij), ...]} with j ascending (zero cells left out)."""
    rows: dict[int, list[tuple[int, float]]] = {}
    for (i, j), c in sorted(counts.items()):
        rows.setdefault(i, []).append((j, java_div(c, n)))
    return rows


def marginals(rows, n_a: int, n_b: int) -> tuple[list[float], list[float], float]:
    """a_i (rows, i >= 1), b_j (columns j >= 1 over rows i >= 1), aux = sum_i p_i0."""
    ai = [0.0] * (n_a + 1)
    for i in range(1, n_a + 1):
        for _j, p in rows.get(i, []):
            ai[i] += p
    bj = [0.0] * (n_b + 1)
    for i in range(1, n_a + 1):  # Java loops j outside, i inside: same order within each b_j
        for j, p in rows.get(i, []):
            if j >= 1:
                bj[j] += p
    aux = 0.0
    for i in range(1, n_a + 1):
        for j, p in rows.get(i, []):
            if j == 0:
                aux += p
    return ai, bj, aux


def fr_rand_stats_n2(cluster1, cluster2) -> tuple[float, float, float, float]:
    """RandError.getForegroundRestrictedRandIndexStatsN2(ShortProcessor, ShortProcessor)."""
    n, n_a, n_b, counts = overlap(cluster1, cluster2)
    rows = normalised_rows(n, n_a, n_b, counts)
    ai, bj, aux = marginals(rows, n_a, n_b)
    sum_a2 = 0.0
    for v in ai:
        sum_a2 += v * v
    sum_b2 = 0.0
    for v in bj:
        sum_b2 += v * v
    sum_b2 += java_div(aux, n)
    sum_ab2 = 0.0
    for i in range(1, n_a + 1):
        for j, p in rows.get(i, []):
            if j >= 1:
                sum_ab2 += p * p
    sum_ab2 += java_div(aux, n)
    n2 = n * n
    tp = n2 * sum_ab2
    fp = n2 * sum_b2 - tp
    fn = n2 * sum_a2 - tp
    tn = n2 - tp - fp - fn
    return tp, tn, fp, fn


def fr_rand_stats_of_slice(label, proposal, th):
    binary_label, binary_proposal = binarize(label, proposal, th)
    return fr_rand_stats_n2(components(binary_label), components(binary_proposal))


def fr_rand_index_maximal_fscore(labels, proposal, lo=0.0, hi=1.0, step=0.1) -> float:
    """RandError.getForegroundRestrictedRandIndexMaximalFScore."""
    return maximal_micro_fscore(fr_rand_stats_of_slice, labels, proposal, lo, hi, step)


# ---------------------------------------------------------------- WatershedTransform2D ------

MASK, WSHED, INIT, INQUEUE = -2, 0, -1, -3


def watershed(binary: list[list[int]]) -> list[list[int]]:
    """WatershedTransform2D(ip, 4).apply() on a ByteProcessor (display range 0..255)."""
    height, width = len(binary), len(binary[0])
    h_min, h_max = 0.0, 255.0
    tab = [[INIT] * height for _ in range(width)]  # tabLabels[x][y]
    current_label = 0
    flag = False
    pixel_list = []
    seq = 0
    for x in range(width):
        for y in range(height):
            h = float(binary[y][x])
            if h_min <= h <= h_max:
                pixel_list.append((h, seq, x, y))
                seq += 1
    pixel_list.sort()  # by value, then creation order

    def neighbours(x, y):
        return ((x - 1, y), (x, y - 1), (x + 1, y), (x, y + 1))

    fifo: deque = deque()
    h = h_min
    current_index = 0
    height_index1 = height_index2 = current_index
    while current_index < len(pixel_list) and h <= h_max:
        h = pixel_list[current_index][0]
        for pixel_index in range(height_index1, len(pixel_list)):
            value, _, i, j = pixel_list[pixel_index]
            if value != h:
                height_index1 = pixel_index
                break
            tab[i][j] = MASK
            for u, v in neighbours(i, j):
                if 0 <= u < width and 0 <= v < height and tab[u][v] >= WSHED:
                    fifo.append((i, j))
                    tab[i][j] = INQUEUE
                    break
        while fifo:
            i, j = fifo.popleft()
            for u, v in neighbours(i, j):
                if 0 <= u < width and 0 <= v < height:
                    if tab[u][v] > 0:
                        if tab[i][j] == INQUEUE or (tab[i][j] == WSHED and flag):
                            tab[i][j] = tab[u][v]
                        elif tab[i][j] > 0 and tab[i][j] != tab[u][v]:
                            tab[i][j] = WSHED
                            flag = False
                    elif tab[u][v] == WSHED:
                        if tab[i][j] == INQUEUE:
                            tab[i][j] = WSHED
                            flag = True
                    elif tab[u][v] == MASK:
                        tab[u][v] = INQUEUE
                        fifo.append((u, v))
        pixel_index = height_index2
        while pixel_index < len(pixel_list):
            value, _, i, j = pixel_list[pixel_index]
            if value != h:
                height_index2 = pixel_index
                break
            if tab[i][j] == MASK:
                current_label += 1
                fifo.append((i, j))
                tab[i][j] = current_label
                while fifo:
                    p2 = fifo.popleft()
                    for u, v in neighbours(*p2):
                        if 0 <= u < width and 0 <= v < height and tab[u][v] == MASK:
                            fifo.append((u, v))
                            tab[u][v] = current_label
            pixel_index += 1
            current_index += 1
    return [[0 if tab[x][y] == INIT else tab[x][y] for x in range(width)] for y in range(height)]


def thinned(label, proposal, th):
    binary_label, binary_proposal = binarize(label, proposal, th, proposal_inverted=True)
    return components(binary_label), watershed(binary_proposal)


def maximal_v_rand_after_thinning(labels, proposal, lo=0.0, hi=1.0, step=0.1) -> float:
    """RandError.getMaximalVRandAfterThinning(lo, hi, step, perSliceAverage=true)."""

    def score(label, slice_proposal, th):
        return fscore(*fr_rand_stats_n2(*thinned(label, slice_proposal, th)))

    return maximal_slice_mean(score, labels, proposal, lo, hi, step)


# ---------------------------------------------------------------- VariationOfInformation ----


def fr_info_fscore(cluster1, cluster2) -> float:
    """VariationOfInformation.foregroundRestrictedFscore."""
    n, n_a, n_b, counts = overlap(cluster1, cluster2)
    rows = normalised_rows(n, n_a, n_b, counts)
    ai, bj, aux = marginals(rows, n_a, n_b)
    log_n = math.log(n) if n > 0 else -math.inf

    def times(a: float, b: float) -> float:  # Java: 0 * -Infinity = NaN
        return math.nan if (a == 0 and math.isinf(b)) else a * b

    sum_a = 0.0
    for v in ai:
        if v != 0:
            sum_a += v * math.log(v)
    sum_b = 0.0
    for v in bj:
        if v != 0:
            sum_b += v * math.log(v)
    sum_b -= times(aux, log_n)
    sum_ab = 0.0
    for i in range(1, n_a + 1):
        for j, p in rows.get(i, []):
            if j >= 1 and p != 0:
                sum_ab += p * math.log(p)
    sum_ab -= times(aux, log_n)
    ha, hb = -sum_a, -sum_b
    hab, hba = sum_b - sum_ab, sum_a - sum_ab
    prec = java_div(ha - hab, ha)
    rec = java_div(hb - hba, hb)
    if ha == 0:
        prec, rec = 0.0, 1.0
    if hb == 0:
        prec, rec = 1.0, 0.0
    return java_div(2.0 * prec * rec, prec + rec)


def maximal_v_info_after_thinning(labels, proposal, lo=0.0, hi=1.0, step=0.1) -> float:
    """VariationOfInformation.getMaximalVInfoAfterThinning."""

    def score(label, slice_proposal, th):
        return fr_info_fscore(*thinned(label, slice_proposal, th))

    return maximal_slice_mean(score, labels, proposal, lo, hi, step)


# ---------------------------------------------------------------- WarpingError --------------


def nca(inp, con, space):
    if con == 6:
        t = sum(int(inp[k]) for k in (4, 10, 12, 14, 16, 22))
        return 6 * space - t if space == 1 else t
    if con == 18:
        idx = (1, 3, 4, 5, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 21, 22, 23, 25)
        t = sum(int(inp[k]) for k in idx)
        return 18 * space - t if space == 1 else t
    if con == 26:
        t = sum(int(inp[k]) for k in range(27) if k != 13)
        return 26 * space - t if space == 1 else t
    return 0


_Z = [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
A6M = [[[0, 1, 0], [1, 5, 1], [0, 1, 0]], _Z, _Z]
A18M = [[[0, 0, 0], [0, 1, 1], [0, 0, 0]], [[0, 0, 0], [0, 0, 1], [0, 0, 0]], _Z]
A26M = [[[0, 0, 0], [0, 1, 1], [0, 1, 1]], [[0, 0, 0], [0, 0, 1], [0, 1, 1]], _Z]
B18M = [[[0, 1, 0], [0, 1, 9], [0, 1, 0]], [[0, 1, 1], [0, 0, 1], [0, 1, 1]], _Z]
B26M = [[[0, 0, 0], [0, 1, 1], [0, 1, 7]], [[0, 0, 0], [0, 0, 1], [0, 1, 1]], _Z]


def _cube(inp):
    """(x, y, z, value) of a 27-voxel neighbourhood in ncb's loop order (x, then y, then z)."""
    for x in range(3):
        for y in range(3):
            for z in range(3):
                yield x, y, z, inp[x + y * 3 + z * 9]


def _sums12(m, inp):
    ts = [0.0] * 12
    for x, y, z, v in _cube(inp):
        ts[0] += m[x][y][z] * v
        ts[1] += m[x][y][2 - z] * v
        ts[2] += m[2 - x][y][z] * v
        ts[3] += m[2 - x][y][2 - z] * v
        ts[4] += m[y][x][z] * v
        ts[5] += m[y][x][2 - z] * v
        ts[6] += m[2 - y][x][z] * v
        ts[7] += m[2 - y][x][2 - z] * v
        ts[8] += m[x][z][y] * v
        ts[9] += m[x][z][2 - y] * v
        ts[10] += m[2 - x][z][y] * v
        ts[11] += m[2 - x][z][2 - y] * v
    return ts


def _sums8(m, inp):
    ts = [0.0] * 8
    for x, y, z, v in _cube(inp):
        ts[0] += m[x][y][z] * v
        ts[1] += m[2 - x][y][z] * v
        ts[2] += m[x][2 - y][z] * v
        ts[3] += m[x][y][2 - z] * v
        ts[4] += m[2 - x][2 - y][z] * v
        ts[5] += m[x][2 - y][2 - z] * v
        ts[6] += m[2 - x][y][2 - z] * v
        ts[7] += m[2 - x][2 - y][2 - z] * v
    return ts


def ncb(inp, ctyp, con, space):
    if ctyp == "a":
        if con == 6:
            ts = [0.0] * 6
            for x, y, z, v in _cube(inp):
                ts[0] += A6M[x][y][z] * v
                ts[1] += A6M[2 - x][y][z] * v
                ts[2] += A6M[y][x][z] * v
                ts[3] += A6M[2 - y][x][z] * v
                ts[4] += A6M[z][y][x] * v
                ts[5] += A6M[2 - z][y][x] * v
            return sum(1 for t in ts if t == 5 - space)
        if con == 18:
            return sum(1 for t in _sums12(A18M, inp) if t == 3 - 3 * space)
        if con == 26:
            return sum(1 for t in _sums8(A26M, inp) if t == 7 - 7 * space)
        return 0
    if ctyp == "b":
        if con == 18:
            return sum(1 for t in _sums12(B18M, inp) if t == 9 - space)
        if con == 26:
            return sum(1 for t in _sums8(B26M, inp) if t == 7 - space)
    return 0


def simple3d(inp, region) -> bool:
    if region == 6:
        inp = [0.0 if v == 1.0 else 1.0 for v in inp]
    elif region != 26:
        return False
    if nca(inp, 6, 1) == 1 or nca(inp, 26, 0) == 1:
        return True
    if ncb(inp, "b", 26, 0) == 0:
        if nca(inp, 18, 0) == 1:
            return True
        if (
            ncb(inp, "a", 6, 1) == 0
            and ncb(inp, "b", 18, 0) == 0
            and (nca(inp, 6, 1) - ncb(inp, "a", 18, 1) + ncb(inp, "a", 26, 1)) == 1
        ):
            return True
    return False


@functools.cache
def simple2d_bertrand(patch: tuple[float, ...]) -> bool:
    """simple2DBertrand(patch, 4): the 3x3 patch (row-major) as the middle of a 3x3x3 cube."""
    inp = [0.0] * 27
    for i in range(9):
        inp[i + 9] = patch[i]
    return simple3d(inp, 6)


def simple_point_warp_2d(label, proposal, th):
    """simplePointWarp2d(source=label, target=proposal, mask=null, th) -> (warped, mismatches)."""
    height, width = label.shape
    w2 = width + 2
    target_real = [0.0] * (w2 * (height + 2))
    source = [0.0] * (w2 * (height + 2))
    for y in range(height):
        for x in range(width):
            target_real[(x + 1) + (y + 1) * w2] = float(proposal[y, x])
            source[(x + 1) + (y + 1) * w2] = float(label[y, x])
    source = [1.0 if v > 0 else v for v in source]
    target_bin = [0.0 if v <= th else 1.0 for v in target_real]
    diff = 5e-324  # Double.MIN_VALUE
    mismatches: list = []
    while True:
        pixels = [abs(s - t) for s, t in zip(source, target_bin, strict=True)]
        diff_before = diff
        diff = float(sum(1 for v in pixels if v != 0))
        if diff == 0:
            mismatches = []
            break
        if diff == diff_before:
            break
        current = []
        for x in range(1, width + 1):
            for y in range(1, height + 1):
                if pixels[x + y * w2] != 0:
                    z = float(np.float32(abs(target_real[x + y * w2] - th)))
                    current.append((x, y, z))
        current.sort(key=lambda p: -p[2])  # Collections.sort is stable too
        for x, y, z in current:
            if z < 0:
                continue
            val = tuple(source[(x + dx) + (y + dy) * w2] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
            if simple2d_bertrand(val):
                source[x + y * w2] = 0.0 if val[4] > 0.0 else 1.0
        mismatches = current
    warped = [[source[(x + 1) + (y + 1) * w2] for x in range(width)] for y in range(height)]
    return warped, [(x - 1, y - 1) for x, y, _ in mismatches]


def to_byte_scaled(values, display_min: float, display_max: float):
    """FloatProcessor.convertToByte(true): create8BitImage with the display range."""
    scale = java_div(255.0, display_max - display_min)
    out = []
    for row in values:
        new_row = []
        for v in row:
            value = float(np.float32(v)) - display_min
            if value < 0.0:
                value = 0.0
            ivalue = java_int(value * scale + 0.5)
            new_row.append(min(ivalue, 255))
        out.append(new_row)
    return out


def get_neighborhood(image, px, py):
    height, width = len(image), len(image[0])
    out = []
    for j in range(py - 1, py + 2):
        for i in range(px - 1, px + 2):
            if (i != px or j != py) and 0 <= j < height and 0 <= i < width:
                out.append(image[j][i])
    return out


def unique_in_order(values):
    seen = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


OBJECT_ADDITION, HOLE_DELETION, MERGE = "object_addition", "hole_deletion", "merge"
HOLE_ADDITION, OBJECT_DELETION, SPLIT = "hole_addition", "object_deletion", "split"


def classify_mismatches_2d(warped, mismatches, radius, display_range):
    """classifyMismatches2d(warpedLabels, mismatches, radius)."""
    height, width = len(warped), len(warped[0])
    radius_to_use = radius
    if radius < 1 or radius > width or radius > height:
        radius_to_use = -1
    byte_image = to_byte_scaled(warped, *display_range)
    comps = components(byte_image)
    out = []
    for x, y in mismatches:
        unique_id = unique_in_order(get_neighborhood(comps, x, y))
        centre = comps[y][x]
        if len(unique_id) == 1 and unique_id[0] == 0:
            out.append(OBJECT_DELETION if centre != 0 else OBJECT_ADDITION)
        elif len(unique_id) == 1 and unique_id[0] != 0:
            out.append(HOLE_ADDITION if centre != 0 else HOLE_DELETION)
        elif len(unique_id) == 2:
            if centre == 0:
                out.append(HOLE_ADDITION)
                continue
            if radius_to_use != -1:
                r = radius_to_use
                pixels2 = [[0] * (2 * r + 1) for _ in range(2 * r + 1)]
                for i, col in zip(range(x - r, x + r + 1), range(2 * r + 1), strict=True):
                    for j, row in zip(range(y - r, y + r + 1), range(2 * r + 1), strict=True):
                        inside = 0 <= i < width and 0 <= j < height
                        # FloatProcessor.getPixel: float bits, 0 outside the image
                        bits = warped[j][i] != 0.0 if inside else False
                        pixels2[row][col] = 255 if bits else 0
                poi = (r, r)
            else:
                pixels2 = [list(row) for row in byte_image]
                poi = (x, y)
            pixels2[poi[1]][poi[0]] = 0
            comps2 = components(pixels2)
            unique_id2 = unique_in_order(get_neighborhood(comps2, *poi))
            out.append(SPLIT if len(unique_id2) > 2 else HOLE_DELETION)
        else:
            out.append(MERGE if centre == 0 else SPLIT)
    return out


def minimum_splits_and_mergers_error(labels, proposal, lo=0.0, hi=0.9, step=0.1, radius=20):
    """getMinimumSplitsAndMergersErrorValue(lo, hi, step, clusterByError=false, radius)."""
    n_slices, height, width = labels.shape
    min_error = 1.7976931348623157e308
    for th in thresholds(lo, hi, step):
        error = 0.0
        for k in range(n_slices):
            slice_values = [float(v) for v in labels[k].ravel()]
            display = (min(slice_values), max(slice_values))
            warped, mismatches = simple_point_warp_2d(labels[k], proposal[k], th)
            classes = classify_mismatches_2d(warped, mismatches, radius, display)
            error += classes.count(MERGE) + classes.count(SPLIT)
        error = error / (width * height * n_slices)
        if error < min_error:
            min_error = error
    return min_error


# ---------------------------------------------------------------- the challenge's scores ----


def challenge_scores(labels: np.ndarray, proposal: np.ndarray) -> dict[str, float]:
    """What the challenge's two Fiji scripts print, under isbi2012's keys."""
    return {
        "rand_error": 1.0 - fr_rand_index_maximal_fscore(labels, proposal),
        "pixel_error": 1.0 - pixel_error_maximal_fscore(labels, proposal),
        "warping_error": minimum_splits_and_mergers_error(labels, proposal),
        "v_rand_thin": maximal_v_rand_after_thinning(labels, proposal),
        "v_info_thin": maximal_v_info_after_thinning(labels, proposal),
    }


# ================================================================ test data


def tessellation(h: int, w: int, rng: np.random.Generator, cells: int, width: int = 1):
    """(H, W) uint8 label: Voronoi cells (255) separated by membranes (0) ``width`` px wide."""
    seeds = rng.uniform(0, [h, w], size=(cells, 2))
    yy, xx = np.mgrid[:h, :w]
    owner = ((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2).argmin(-1)
    edge = np.zeros((h, w), dtype=bool)
    edge[:-1] |= owner[:-1] != owner[1:]
    edge[:, :-1] |= owner[:, :-1] != owner[:, 1:]
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1)
    return np.where(edge, 0, 255).astype(np.uint8)


def smooth_prediction(label: np.ndarray, rng: np.random.Generator, levels: int | None = None):
    """(H, W) float32 interior probability: the blurred label plus smooth noise, clipped."""
    soft = ndimage.gaussian_filter((label > 0).astype(float), 1.5)
    noise = ndimage.gaussian_filter(rng.normal(size=label.shape), 1.0) * 0.9
    p = np.clip(soft + noise, 0.0, 1.0)
    if levels:  # few distinct values: many ties in the warp's confidence order
        p = np.round(p * levels) / levels
    return p.astype(np.float32)


def _case(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N, H, W) uint8 0/255, probabilities (N, H, W) float32) of a named test case."""
    rng = np.random.default_rng(seed)
    if name == "blobs":
        labels = tessellation(48, 56, rng, 9, width=2)[None]
        return labels, smooth_prediction(labels[0], rng)[None]
    if name == "thin membranes":
        labels = tessellation(64, 48, rng, 16, width=1)[None]
        return labels, smooth_prediction(labels[0], rng)[None]
    if name == "96 px":
        labels = tessellation(96, 96, rng, 20, width=2)[None]
        return labels, smooth_prediction(labels[0], rng)[None]
    if name == "stack of three":
        labels = np.stack([tessellation(40, 44, rng, 8, width=1 + k % 2) for k in range(3)])
        return labels, np.stack([smooth_prediction(lab, rng) for lab in labels])
    if name == "ties":
        labels = tessellation(48, 48, rng, 10, width=2)[None]
        return labels, smooth_prediction(labels[0], rng, levels=4)[None]
    if name == "noise":
        labels = tessellation(40, 40, rng, 10, width=1)[None]
        return labels, rng.random((1, 40, 40)).astype(np.float32)
    if name == "binary prediction":
        labels = tessellation(40, 48, rng, 9, width=2)[None]
        return labels, (smooth_prediction(labels[0], rng) > 0.5).astype(np.float32)[None]
    if name == "all interior":
        labels = np.full((1, 32, 36), 255, np.uint8)
        return labels, smooth_prediction(tessellation(32, 36, rng, 6), rng)[None]
    if name == "no interior":
        labels = np.zeros((1, 32, 36), np.uint8)
        return labels, smooth_prediction(tessellation(32, 36, rng, 6), rng)[None]
    if name == "empty and full slices":
        base = tessellation(30, 34, rng, 7, width=2)
        labels = np.stack([base, np.zeros_like(base), np.full_like(base, 255)])
        return labels, np.stack([smooth_prediction(base, rng) for _ in range(3)])
    if name == "empty prediction":
        labels = tessellation(36, 40, rng, 8, width=2)[None]
        return labels, np.zeros((1, 36, 40), np.float32)
    if name == "small image":  # below the warping radius of 20: whole-image split test
        labels = tessellation(14, 17, rng, 4, width=1)[None]
        return labels, smooth_prediction(labels[0], rng)[None]
    raise AssertionError(name)


CASES = [
    ("blobs", 1),
    ("thin membranes", 2),
    ("96 px", 3),
    ("stack of three", 4),
    ("ties", 5),
    ("noise", 6),
    ("binary prediction", 7),
    ("all interior", 8),
    ("no interior", 9),
    ("empty and full slices", 10),
    ("empty prediction", 11),
    ("small image", 12),
    ("small image", 13),
]


def assert_same_scores(ours: dict[str, float], fiji: dict[str, float]) -> None:
    assert set(ours) == set(fiji)
    for key, value in fiji.items():
        assert ours[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key


# ================================================================ the pieces against Fiji's


def test_thresholds_are_javas_accumulated_doubles():
    assert list(ISBI2012_THRESHOLDS) == thresholds(0.0, 1.0, 0.1)
    assert list(ISBI2012_WARPING_THRESHOLDS) == thresholds(0.0, 0.9, 0.1)
    assert len(ISBI2012_THRESHOLDS) == 11 and len(ISBI2012_WARPING_THRESHOLDS) == 10
    assert ISBI2012_THRESHOLDS[3] == 0.30000000000000004
    assert ISBI2012_THRESHOLDS[-1] == 0.9999999999999999


def test_simple_point_table_is_fijis_3d_test():
    table = simple_point_table()
    for code in range(256):
        for centre in (0.0, 1.0):
            patch = [0.0] * 9
            patch[4] = centre
            for bit, (dy, dx) in enumerate(RING):
                if code >> bit & 1:
                    patch[(dy + 1) * 3 + dx + 1] = 1.0
            assert simple2d_bertrand(tuple(patch)) == table[code], (code, centre)


def test_components_are_numbered_like_find_connected_regions():
    rng = np.random.default_rng(0)
    for _ in range(10):
        binary = (rng.random((17, 23)) < rng.uniform(0.3, 0.8)) * 255
        expected = np.array(components(binary.tolist()))
        np.testing.assert_array_equal(ndimage.label(binary, structure=FOUR)[0], expected)


def test_thin_borders_is_fijis_watershed():
    rng = np.random.default_rng(1)
    masks = [tessellation(30, 40, rng, 7, width=3) > 0 for _ in range(6)]
    masks += [rng.random((25, 31)) < p for p in (0.2, 0.5, 0.8)]
    masks += [np.zeros((9, 11), bool), np.ones((9, 11), bool)]
    masks += [ndimage.binary_erosion(tessellation(40, 36, rng, 5, width=1) > 0, iterations=3)]
    for interior in masks:
        binary = np.where(interior, 0, 255).tolist()  # Fiji inverts: membrane white
        np.testing.assert_array_equal(thin_borders(interior), np.array(watershed(binary)))


@pytest.mark.parametrize("seed", range(6))
def test_sequential_warp_and_classification_are_fijis(seed):
    rng = np.random.default_rng(seed)
    h, w = (14, 18) if seed == 5 else (36, 40)
    label = tessellation(h, w, rng, 7, width=1 + seed % 2)
    probs = smooth_prediction(label, rng, levels=4 if seed % 3 == 0 else None)
    display = (float(label.min()), float(label.max()))
    for th in (0.0, 0.30000000000000004, 0.5, 0.8999999999999999):
        warped, mismatches = simple_point_warp_2d(label, probs, th)
        ours, ys, xs = sequential_warp(label > 0, probs, th)
        np.testing.assert_array_equal(ours, np.array(warped) > 0)
        assert sorted(zip(xs.tolist(), ys.tolist(), strict=True)) == sorted(mismatches)
        classes = classify_mismatches_2d(warped, mismatches, 20, display)
        splits, mergers = count_splits_and_mergers(ours, ys, xs, blank_components=label.min() > 0)
        assert (splits, mergers) == (classes.count(SPLIT), classes.count(MERGE))


# ================================================================ isbi2012 against Fiji's scripts


@pytest.mark.parametrize(("name", "seed"), CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_isbi2012_is_what_the_challenge_scripts_print(name, seed):
    labels, probs = _case(name, seed)
    assert_same_scores(isbi2012(probs, labels), challenge_scores(labels, probs))


def test_eight_bit_probabilities_are_read_as_value_over_255():
    labels, probs = _case("blobs", 21)
    eight_bit = np.round(probs * 255).astype(np.uint8)
    as_float = (eight_bit / 255.0).astype(np.float32)
    assert_same_scores(isbi2012(eight_bit, labels), challenge_scores(labels, as_float))
    assert isbi2012(torch.from_numpy(eight_bit), torch.from_numpy(labels)) == isbi2012(
        as_float, labels > 0
    )


def test_custom_thresholds_replace_every_sweep():
    labels, probs = _case("blobs", 22)
    ours = isbi2012(probs, labels, thresholds=(0.5,))
    assert ours["pixel_error"] == pytest.approx(
        1 - pixel_error_maximal_fscore(labels, probs, 0.5, 0.5), abs=1e-12
    )
    assert ours["rand_error"] == pytest.approx(
        1 - fr_rand_index_maximal_fscore(labels, probs, 0.5, 0.5), abs=1e-12
    )
    assert ours["warping_error"] == pytest.approx(
        minimum_splits_and_mergers_error(labels, probs, 0.5, 0.5), abs=1e-12
    )
    best = isbi2012(probs, labels, scores=("pixel_error", "rand_error"))
    assert best["pixel_error"] <= ours["pixel_error"] and best["rand_error"] <= ours["rand_error"]
    assert list(best) == ["rand_error", "pixel_error"]


# ================================================================ hand-computed values


def test_a_cell_cut_in_its_middle():
    # a 1x5 cell in a membrane frame (3 x 7); the prediction calls its middle pixel membrane
    labels = np.zeros((3, 7), np.uint8)
    labels[1, 1:6] = 255
    probs = (labels > 0).astype(np.float32)
    probs[1, 3] = 0.0
    scores = isbi2012(probs, labels)
    # Rand, N^2 counting: TP = 2^2 + 2^2 + 1 (the singleton) = 9 of 5^2 = 25 same-cell pairs,
    # precision 1: F = 2 (9/25) / (34/25) = 9/17. Counting pairs of distinct pixels (skimage's
    # adapted Rand error) gives 2/3 instead.
    assert scores["rand_error"] == pytest.approx(8 / 17, abs=1e-12)
    assert adapted_rand_error(probs, labels) == pytest.approx(2 / 3)
    assert scores["pixel_error"] == pytest.approx(1 / 9, abs=1e-12)  # TP 4, FN 1: F = 8/9
    assert scores["warping_error"] == pytest.approx(1 / 21, abs=1e-12)  # one split pixel
    # thinning: the two halves stay apart (no watershed line touches the cell's pixels)
    assert scores["v_rand_thin"] == pytest.approx(9 / 17, abs=1e-12)


def test_perfect_prediction_scores_perfectly():
    labels = tessellation(40, 40, np.random.default_rng(3), 8, width=2)
    scores = isbi2012((labels > 0).astype(np.float32), labels)
    assert scores == {
        "rand_error": 0.0,
        "pixel_error": 0.0,
        "warping_error": 0.0,
        "v_rand_thin": pytest.approx(1.0),
        "v_info_thin": pytest.approx(1.0),
    }


def test_probabilities_are_compared_in_float64_after_rounding_to_float32():
    # float32(0.3) = 0.30000001192... is above Java's third threshold 0.30000000000000004, so at
    # that threshold the pixel is interior; float64 0.3 would not be.
    labels = np.zeros((1, 3), np.uint8)
    labels[0, 1] = 255
    probs = np.array([[0.0, 0.3, 0.0]])
    at = ISBI2012_THRESHOLDS[3]
    assert isbi2012(probs, labels, scores=("pixel_error",), thresholds=(at,))["pixel_error"] == 0
    assert np.float64(0.3) <= at < np.float64(np.float32(0.3))


def test_bad_inputs_say_what_to_pass():
    labels = np.full((8, 8), 255, np.uint8)
    probs = np.full((8, 8), 0.5, np.float32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        isbi2012(probs + 1, labels)
    with pytest.raises(ValueError, match="labels must be binary"):
        isbi2012(probs, labels // 2)
    with pytest.raises(ValueError, match="same shape"):
        isbi2012(probs[:7], labels)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        isbi2012(probs[None, None], labels[None, None])
    with pytest.raises(ValueError, match="subset of"):
        isbi2012(probs, labels, scores=("dice",))
    with pytest.raises(ValueError, match="thresholds"):
        isbi2012(probs, labels, thresholds=(1.5,))
    with pytest.raises(ValueError, match="0..255"):
        isbi2012(np.full((8, 8), 300), labels)
