"""What a learned detector compares a conn against: a reference fitted on the local baseline.

A model pretrained on someone else's captures (IoT-23 is mostly malware) finds *their* traffic
normal; scored by its own yardstick (reconstruction error, masked-token likelihood), malware
looks normal to it and a local network's ordinary traffic looks odd (measured: autoencoder AUROC
0.10, MoE 0.27 on held-out captures, ``docs/results/detection.md``). So every learned detector
scores a conn by how far its model's view of the conn lies from the model's view of the
baseline conns. Two references, both measured (``bench/detect_models.py``):

- ``KnnReference``: mean cosine distance of a conn's embedding to its ``k`` nearest baseline
  embeddings ("unlike any conn of the baseline").
- ``ZReference``: robust z-scores of per-part errors (per modality, per token field) against the
  baseline's, the positive ones summed ("reconstructed or predicted worse than the baseline's
  conns are").
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, Self

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ModelError
from zeekml.flows.select import ts_sort_key
from zeekml.scoring.explain import reference_identity

if TYPE_CHECKING:      # torch is imported where a search runs (``zeekml cat`` never needs it)
    import torch

KNN = 5
MAX_REFERENCE = 4000      # baseline rows kept as kNN references (cost per scored conn is linear)
# Scored rows per distance block. Every block is padded to exactly this many rows: BLAS picks its
# kernel (and so its summation order) by matrix shape, so a conn scored alone or among 300 others
# would otherwise differ in the last bits (measured: up to 1.5e-5 in float32), and watch's small
# batches would not give score's bytes. 256: 64 to 512 rows all ran within 5% of each other on
# 20k conns against 4,000 references (bench/README.md), and a smaller block pads watch's small
# batches less.
CHUNK = 256

# Rows embedded per call in ``fit_split`` (and scored per call by ``KnnReference.score``). A call
# materialises the model's input for its rows (token ids ``[n, 16, 12]`` int64 = 1.5 kB a conn,
# modality matrices), so a 300k-conn baseline (the default 30% of 1M conns) in one call was the
# peak of `zeekml score` (1M conns: 1.78x the RSS of 100k, bench/score_memory.py). The rest of the
# table stays each piece's context, and a row's embedding does not depend on the rows embedded
# with it (``embed``'s contract), so the result is the same as in one call.
EMBED_PIECE = 65_536


def unit_rows(e: np.ndarray) -> np.ndarray:
    """Rows of ``e`` scaled to unit length (zero rows stay zero)."""
    e = np.asarray(e, dtype=np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-9)


def distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` grouped by their bytes: ``(first, inverse)`` with ``x[first[inverse]]``
    byte-equal to ``x``, ``first`` a position of each group's row. Two rows are grouped only
    if their bytes are equal; equal rows are grouped unless their 64-bit keys collide with
    another row's (then some stay apart: fewer rows saved, never a wrong group).

    Repetitive traffic gives identical embeddings (measured: only 29% of the GNN's and 63% of
    the MoE's on bench/score_speed.py's 100k log, which repeats captures; see bench/README.md
    for single captures), and a row's kNN distance depends on that row alone, so each distinct
    row is scored once. Keys instead of ``np.unique`` over whole rows: the sort then moves 8
    bytes a row, not 256, and no sorted copy of a large input's embeddings is made.

    Shapes:
        x ``[n, d]`` -> ``([u], [n])``
    """
    v = np.ascontiguousarray(x)
    n = len(v)
    if n < 2:
        return np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    width = v.shape[1] * v.itemsize if v.ndim == 2 else v.itemsize
    words = v.reshape(n, -1).view(np.uint8).reshape(n, width)
    if width % 8 == 0:
        words = words.view(np.uint64)
    elif width % 4 == 0:
        words = words.view(np.uint32)
    # FNV-1a over the row's words (wrapping uint64 arithmetic): equal rows, equal keys
    key = np.full(n, 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            key ^= words[:, j]
            key *= prime
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    first, inverse = first.astype(np.int64), inverse.reshape(-1).astype(np.int64)
    # a row whose bytes differ from its group's first row shares a key only: its own group
    step = 65_536
    apart = np.concatenate([np.flatnonzero((words[a:a + step] != words[first[inverse[a:a + step]]])
                                           .any(axis=1)) + a for a in range(0, n, step)])
    if len(apart):
        inverse[apart] = len(first) + np.arange(len(apart))
        first = np.concatenate([first, apart])
    return first, inverse


# Reference rows searched are padded to a multiple of this: the matrix product and top-k ran
# 1.4-1.6x slower over 3,951 or 3,658 columns than over 3,952, 3,664 or 4,000 (one thread, MKL,
# 25k conns at d = 64; the rows of the product start unaligned). Pads are zero rows whose
# similarities are set to -inf before the top-k (a zero row's 0 would beat negative ones, and a
# top-k wide enough to skip pads was 5x slower at k = 20 than at 5 over 864 columns).
INDEX_ALIGN = 16
# Repeats are merged only when that drops at least this share of the reference's rows: a
# varied baseline (the autoencoder's 4,000 rows held 49 repeats on bench/score_speed.py's log)
# is searched as it is.
MERGE_MIN_SAVING = 0.05


class KnnIndex:
    """A reference as ``knn_distance`` searches it: its finite rows (a model that gave NaN makes
    a row nobody's neighbour), where the reference repeats itself enough (``MERGE_MIN_SAVING``)
    each distinct row once with how many times it occurs, then zero rows that are nobody's
    neighbour up to a multiple of ``INDEX_ALIGN`` rows. The ``k`` nearest of a multiset are the nearest
    distinct rows, each repeated by its count, so the distances are those of the full reference
    (test) at the cost of the distinct rows alone.

    Shapes:
        ref ``[m, d]``; ``rows`` ``[w, d]`` float32 (the first ``searched`` real, the rest pads),
        ``counts`` ``[w]`` (sum ``m``, 0 for pads)
    """

    def __init__(self, ref: np.ndarray):
        ref = np.asarray(ref, dtype=np.float32)
        if ref.ndim != 2:
            raise ModelError(f"a kNN reference is a matrix of embeddings, not shape {ref.shape}")
        finite = np.isfinite(ref).all(axis=1)
        # the searched column of each given row (-1: not finite, nobody's neighbour), so that a
        # reference row can be scored against the others (``knn_blocks``' ``own``)
        self.column = np.full(len(ref), -1, dtype=np.int64)
        if not finite.all():
            ref = ref[finite]
        self.size = len(ref)
        first, inverse = distinct_rows(ref)
        if _aligned(len(first)) <= (1.0 - MERGE_MIN_SAVING) * len(ref):
            rows, counts = ref[first], np.bincount(inverse, minlength=len(first)).astype(np.int64)
            self.column[finite] = inverse
        else:
            rows, counts = ref, np.ones(len(ref), dtype=np.int64)
            self.column[finite] = np.arange(len(ref), dtype=np.int64)
        self.searched = len(rows)
        pad = _aligned(len(rows)) - len(rows)
        self.rows = np.ascontiguousarray(np.concatenate([rows, np.zeros((pad, ref.shape[1]), np.float32)]))
        self.counts = np.concatenate([counts, np.zeros(pad, dtype=np.int64)])
        self.pads = pad

    def __len__(self) -> int:
        return self.size


def _aligned(n: int) -> int:
    return -(-n // INDEX_ALIGN) * INDEX_ALIGN


def knn_distance(e: np.ndarray, ref: np.ndarray | KnnIndex, k: int) -> np.ndarray:
    """Mean cosine distance of each row of ``e`` (unit vectors) to its ``k`` nearest in ``ref``.

    Each distinct row of ``e`` is scored once (``distinct_rows``) against each distinct row of
    ``ref`` (``KnnIndex``; pass one to build it once for many calls). The similarities of a block
    are one float32 matrix product and the ``k`` nearest a ``torch.topk`` of each row (measured,
    20k conns x 4,000 references, one thread: 0.64 s with numpy's product and ``np.partition``,
    three quarters of it the partition; 0.24 s so), of the candidates ``nearest_in_block`` keeps
    on a wide reference. The ``k`` distances are averaged in float64,
    nearest first, so a row's score depends on its own similarities alone. Reference rows that
    are not finite (a model that gave NaN) are nobody's neighbour.

    Shapes:
        e ``[n, d]``, ref ``[m, d]`` -> ``[n]``
    """
    index = ref if isinstance(ref, KnnIndex) else KnnIndex(ref)
    e = np.asarray(e, dtype=np.float32)
    first, inverse = distinct_rows(e)
    if len(first) == len(e):
        return knn_blocks(e, index, k)
    return knn_blocks(e[first], index, k)[inverse]


# Reference columns per candidate group of ``nearest_in_block`` (divides ``INDEX_ALIGN``), and
# how many groups per neighbour a reference needs before the groups pay. Measured on the 100k-conn
# log of bench/score_speed.py (the three detectors' real embeddings against their 2,032, 4,000
# and 3,664-row references, one thread, CPU seconds, 5 rounds interleaved): the whole search
# 2.43 s with a plain top-k of every row, 2.16 s with groups of 8, 2.48 s with groups of 16.
GROUP = 8
MIN_GROUPS_PER_NEIGHBOUR = 4


def groups_pay() -> bool:
    """Whether ``knn_blocks`` selects through ``nearest_in_block``'s groups: with torch on one
    thread, not with more. Its extra ops (the group maxima, their top-k) are each an OpenMP
    region with two threads, and on a loaded box a region's mean cost is its rare waits for a
    descheduled thread (load 4, two threads, per block of the autoencoder's real search: the
    group maxima 0.33 ms median but 8.5 ms mean, the plain top-k 0.96 / 5.5 ms), which outweigh
    the saving; with one thread the groups took the block's search 0.415 -> 0.302 CPU s per
    120 blocks. Both give the same bits, so this only chooses the speed."""
    import torch

    return torch.get_num_threads() == 1


def nearest_in_block(sim: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top`` largest values of each row of ``sim`` and their columns, largest first: the
    values of ``sim.topk(top, dim=1)`` bit for bit, found without a top-k over every column.

    The columns are split into ``GROUP`` slices of ``w / GROUP`` columns, and column ``j`` of
    each slice makes group ``j`` (an element-wise maximum of the slices, contiguous memory). The
    ``top`` groups with the largest maxima hold the ``top`` largest values: a top value outside
    them would make each of the ``top`` kept groups' maxima at least as large, and those are
    ``top`` values of distinct columns at least as large as it. So a top-k of those ``top x
    GROUP`` candidates gives the same values; where values tie, the column it names may be
    another of the tied ones than ``topk`` over every column names (``knn_blocks`` reads the
    values, and counts only as they add up over ties, so its distances are the same bits). NaN
    counts as the largest value in both ``amax`` and ``topk``, as in the plain search.

    Shapes:
        sim ``[n, w]`` with ``w % GROUP == 0`` -> ``([n, top], [n, top])``
    """
    import torch

    n, w = sim.shape
    groups = w // GROUP
    if w % GROUP or groups < MIN_GROUPS_PER_NEIGHBOUR * top:
        near = sim.topk(top, dim=1)
        return near.values, near.indices
    best = sim.view(n, GROUP, groups).amax(dim=1)                       # [n, groups]
    kept = best.topk(top, dim=1, sorted=False).indices                  # [n, top]
    cols = (kept.unsqueeze(2) + torch.arange(0, w, groups)).view(n, top * GROUP)
    near = sim.gather(1, cols).topk(top, dim=1)
    return near.values, cols.gather(1, near.indices)


def knn_blocks(e: np.ndarray, index: KnnIndex, k: int, own: np.ndarray | None = None) -> np.ndarray:
    """``knn_distance`` of every row of ``e`` (unit vectors) as it stands, duplicates included,
    ``CHUNK`` rows at a time.

    ``own``: row ``i`` of ``e`` is reference row ``own[i]`` (a position in the rows the
    ``KnnIndex`` was built from), and is scored against the reference without one occurrence of
    itself (its count one less for it alone): a baseline conn kept as a reference row scored
    as a new conn would be against the other baseline conns (leave-one-out), so that every
    baseline conn can calibrate its detector. The ``k + 1`` nearest distinct rows hold the
    ``k`` nearest others: at most one of them is the row itself.

    Shapes:
        e ``[n, d]``, own ``[n]`` -> ``[n]``
    """
    import torch

    out = np.empty(len(e))
    others = index.size - (own is not None)
    if others < 1:
        out.fill(np.nan)
        return out
    k = max(1, min(k, others))
    real = index.searched
    top = min(k + (own is not None), real)       # the real rows that hold the k nearest (others)
    counted = own is not None or bool((index.counts[:real] > 1).any())
    grouped = groups_pay()
    r = torch.from_numpy(index.rows).T                              # [d, u], a view: BLAS transposes
    counts = torch.from_numpy(index.counts)
    cols = None if own is None else torch.from_numpy(index.column[np.asarray(own, dtype=np.int64)])
    slot = torch.arange(k).view(1, k, 1)
    x_all = torch.from_numpy(np.ascontiguousarray(e, dtype=np.float32))
    pad = None
    with torch.inference_mode():
        for a in range(0, len(e), CHUNK):
            x = x_all[a:a + CHUNK]
            n = len(x)
            if n < CHUNK:
                if pad is None:
                    pad = x.new_zeros(CHUNK, x.shape[1])
                pad[:n] = x
                pad[n:] = 0.0
                x = pad
            sim = torch.mm(x, r)
            if index.pads:
                sim[:, real:] = -torch.inf                                  # nobody's neighbour
            if grouped:                                                  # largest similarity
                vals, near = nearest_in_block(sim[:n], top)
            else:
                vals, near = sim[:n].topk(top, dim=1)
            if counted:
                # the j-th nearest of the multiset is the first distinct neighbour whose
                # running count exceeds j (neighbours are sorted, nearest first); a row's own
                # column counts one less for it
                c = counts[near]
                if cols is not None:
                    c = c - (near == cols[a:a + n].unsqueeze(1)).long()
                ends = c.cumsum(dim=1)                                      # [n, top]
                vals = vals.gather(1, (ends.unsqueeze(1) <= slot).sum(dim=2))   # [n, k]
            out[a:a + n] = (1.0 - vals).double().mean(dim=1).numpy()
    return out


# Rows per block of the explanation helpers below (memory bound: a block x 4,000 distances).
EXPLAIN_CHUNK = 512


def nearest_rows(e: np.ndarray, ref: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances to, and positions in ``ref`` of, the ``k`` nearest rows of ``ref`` for
    each row of ``e`` (both unit vectors), nearest first. Explanations only: alerts are few, so
    this keeps no bit-for-bit agreement with ``knn_distance``.

    Shapes:
        e ``[n, d]``, ref ``[m, d]`` -> ``([n, k'], [n, k'])``, ``k' = min(k, m)``
    """
    k = max(1, min(k, len(ref)))
    dist = np.empty((len(e), k))
    pos = np.empty((len(e), k), dtype=np.int64)
    for a in range(0, len(e), EXPLAIN_CHUNK):
        d = 1.0 - np.asarray(e[a:a + EXPLAIN_CHUNK], np.float32) @ ref.T
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        dd = np.take_along_axis(d, part, axis=1)
        order = np.argsort(dd, axis=1, kind="stable")
        dist[a:a + len(d)] = np.clip(np.take_along_axis(dd, order, axis=1), 0.0, 2.0)
        pos[a:a + len(d)] = np.take_along_axis(part, order, axis=1)
    return dist, pos


def baseline_nearest_q99(ref: np.ndarray) -> float:
    """99th percentile of each row's cosine distance to its nearest other row of ``ref`` (unit
    vectors); 0.0 for a single row."""
    if len(ref) < 2:
        return 0.0
    near = np.empty(len(ref))
    for a in range(0, len(ref), EXPLAIN_CHUNK):
        sim = ref[a:a + EXPLAIN_CHUNK] @ ref.T
        sim[np.arange(len(sim)), np.arange(a, a + len(sim))] = -np.inf     # not itself
        # 1 - x rounds monotonically, so 1 - (largest similarity) is the smallest distance,
        # bit for bit, without a distance matrix
        near[a:a + len(sim)] = 1.0 - sim.max(axis=1)
    return float(np.clip(np.quantile(near, 0.99), 0.0, 2.0))


class KnnReference:
    """Anomalous = far (cosine) from every baseline conn's embedding.

    Args:
        k: neighbours averaged (default 5).
        max_reference: baseline rows kept, drawn with ``seed`` when there are more (default 4000).
        seed: the draw (default 0).
    """

    kind = "knn"

    def __init__(self, k: int = KNN, max_reference: int = MAX_REFERENCE, seed: int = 0):
        self.k = k
        self.max_reference = max_reference
        self.seed = seed
        self.ref: np.ndarray | None = None
        self.rows: np.ndarray | None = None      # baseline row of each ``ref`` row
        self._index: KnnIndex | None = None       # ``ref`` as ``knn_distance`` searches it
        self._loo_q99: float | None = None

    def fit(self, embedding: np.ndarray) -> KnnReference:
        """Keep the (unit) embeddings of the baseline rows, ``[m, d]``."""
        n = len(embedding)
        if n == 0:
            raise ModelError("the baseline gave no conn to compare against")
        rows = np.arange(n, dtype=np.int64)
        if n > self.max_reference:
            # draw first, scale the drawn rows only: the same values (row by row) without a unit
            # copy of a large baseline's embeddings
            rows = np.random.default_rng(self.seed).choice(n, self.max_reference, replace=False)
            embedding = np.asarray(embedding)[rows]
        self.ref = unit_rows(embedding)
        self._index = KnnIndex(self.ref)
        # which baseline rows were kept, so an explanation can name the nearest baseline conns
        self.rows = rows
        self._loo_q99 = None
        return self

    def score(self, embedding: np.ndarray) -> np.ndarray:
        """Mean cosine distance to the ``k`` nearest baseline rows, ``[n]``."""
        if self._index is None:
            raise ModelError("KnnReference.score before fit")
        embedding = np.asarray(embedding)
        if len(embedding) == 0:
            return np.zeros(0)
        # each distinct row once, over the whole input (repeats span slabs: a capture's copies),
        # a slab at a time: a row's distance depends on that row alone (``knn_distance``), and
        # the unit copy of a 300k-conn baseline's embeddings is not needed all at once
        first, inverse = distinct_rows(embedding)
        return np.concatenate([knn_blocks(unit_rows(embedding[first[a:a + EMBED_PIECE]]), self._index, self.k)
                               for a in range(0, len(first), EMBED_PIECE)])[inverse]

    def _kept_at(self, fit_rows: np.ndarray, what: str) -> np.ndarray:
        """Each of ``fit_rows``' position among the kept reference rows, ``[n]`` (-1: the draw
        of ``max_reference`` left it out)."""
        if self._index is None or self.rows is None:
            raise ModelError(f"KnnReference.{what} before fit")
        fit_rows = np.asarray(fit_rows, dtype=np.int64)
        kept = np.full(int(max(self.rows.max(initial=-1), fit_rows.max(initial=-1))) + 1, -1, np.int64)
        kept[self.rows] = np.arange(len(self.rows), dtype=np.int64)
        return kept[fit_rows]

    def held_out_differs(self, fit_rows: np.ndarray) -> np.ndarray:
        """Which of ``fit_rows`` (rows given to ``fit``) ``score_held_out`` scores otherwise
        than ``score``: those kept as reference rows (the draw of ``max_reference`` left the
        others out, so nothing of them is in the reference). ``[n]`` bool."""
        return self._kept_at(fit_rows, "held_out_differs") >= 0

    def score_held_out(self, embedding: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
        """``score`` of rows that were given to ``fit``, each as if it had not been: row ``i`` of
        ``embedding`` is row ``fit_rows[i]`` of the fitted embedding, scored against the kept
        reference rows other than itself (``knn_blocks`` with ``own``; a row that the draw of
        ``max_reference`` left out is not in the reference, and is scored as any conn is).

        Shapes:
            embedding ``[n, d]``, fit_rows ``[n]`` -> ``[n]``
        """
        own = self._kept_at(fit_rows, "score_held_out")
        embedding = np.asarray(embedding)
        inside = own >= 0
        out = np.empty(len(embedding))
        if (~inside).any():
            out[~inside] = self.score(embedding[~inside])
        for a in range(0, int(inside.sum()), EMBED_PIECE):
            pos = np.flatnonzero(inside)[a:a + EMBED_PIECE]
            out[pos] = knn_blocks(unit_rows(embedding[pos]), self._index, self.k, own[pos])
        return out

    def nearest(self, embedding: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest baseline rows of each row of ``embedding`` (for explanations).

        Returns ``(distances, rows)``: cosine distances, nearest first, and the row numbers of
        those neighbours in the embedding given to ``fit`` (not positions in the kept subset).

        Shapes:
            embedding ``[n, d]`` -> ``([n, k'], [n, k'])`` with ``k' = min(k, kept rows)``
        """
        if self.ref is None or self.rows is None:
            raise ModelError("KnnReference.nearest before fit")
        d, pos = nearest_rows(unit_rows(embedding), self.ref, k)
        return d, self.rows[pos]

    def nearest_q99(self) -> float:
        """99th percentile, over the kept baseline rows, of each one's distance to its nearest
        *other* kept row: how far "far" is for this baseline (computed once, on first use)."""
        if self.ref is None:
            raise ModelError("KnnReference.nearest_q99 before fit")
        if self._loo_q99 is None:
            self._loo_q99 = baseline_nearest_q99(self.ref)
        return self._loo_q99


class ZReference:
    """Anomalous = some part of the conn's error is high *for this baseline*: each column of
    ``parts`` (an error per modality or per token field) becomes a robust z-score against the
    baseline (median, 1.4826 MAD; the std where the MAD is 0), and the positive ones are summed.
    A part that the baseline's conns already get wrong (a local service the model never saw)
    thereby stops counting against every conn."""

    kind = "zscore"
    # ``score_held_out`` scores each fitted row by the statistics of the other folds
    HELD_OUT_FOLDS = 10

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.median: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self._parts: np.ndarray | None = None

    @staticmethod
    def _stats(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        median = np.median(p, axis=0)
        mad = 1.4826 * np.median(np.abs(p - median), axis=0)
        # a column constant on the baseline: any change is news, measured in a small absolute unit
        return median, np.where(mad > 1e-9, mad, np.maximum(np.std(p, axis=0), 1e-3))

    def fit(self, parts: np.ndarray) -> ZReference:
        """Per-column median and spread of the baseline rows' parts, ``[m, c]``."""
        p = np.asarray(parts, dtype=np.float64)
        if len(p) == 0:
            raise ModelError("the baseline gave no conn to compare against")
        self.median, self.scale = self._stats(p)
        self._parts = p
        return self

    @staticmethod
    def _z(parts: np.ndarray, median: np.ndarray, scale: np.ndarray) -> np.ndarray:
        z = (np.asarray(parts, dtype=np.float64) - median) / scale
        return np.clip(z, 0.0, None).sum(axis=1)

    def score(self, parts: np.ndarray) -> np.ndarray:
        """Sum of the positive robust z-scores of each row's parts, ``[n]``."""
        if self.median is None:
            raise ModelError("ZReference.score before fit")
        if len(parts) == 0:
            return np.zeros(0)
        return self._z(parts, self.median, self.scale)

    def held_out_differs(self, fit_rows: np.ndarray) -> np.ndarray:
        """Every fitted row is in the statistics: ``score_held_out`` differs from ``score`` for
        all of ``fit_rows``. ``[n]`` bool."""
        return np.ones(len(fit_rows), dtype=bool)

    def score_held_out(self, parts: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
        """``score`` of rows given to ``fit`` (row ``i`` is fitted row ``fit_rows[i]``), each by
        the median and spread of the other ``HELD_OUT_FOLDS - 1`` folds of the fitted rows (a
        random fold per row, drawn with ``seed``): out of sample, as calibration needs.

        Shapes:
            parts ``[n, c]``, fit_rows ``[n]`` -> ``[n]``
        """
        if self._parts is None:
            raise ModelError("ZReference.score_held_out before fit")
        m = len(self._parts)
        if m < 2:
            return np.full(len(parts), np.nan)
        folds = min(self.HELD_OUT_FOLDS, m)
        fold = np.random.default_rng(self.seed).permutation(m) % folds
        fit_rows = np.asarray(fit_rows, dtype=np.int64)
        out = np.empty(len(parts))
        for f in range(folds):
            mine = fold[fit_rows] == f
            if mine.any():
                median, scale = self._stats(self._parts[fold != f])
                out[mine] = self._z(np.asarray(parts)[mine], median, scale)
        return out


def make_reference(kind: str, seed: int = 0) -> KnnReference | ZReference:
    """A fresh reference of ``kind`` (``"knn"`` or ``"zscore"``)."""
    if kind == "knn":
        return KnnReference(seed=seed)
    if kind == "zscore":
        return ZReference(seed=seed)
    raise ModelError(f"unknown baseline reference {kind!r} (knn, zscore)")


def same_context_rows(scored: pa.Table, rows: np.ndarray) -> np.ndarray:
    """Which of ``rows`` (the baseline ``scored.take(rows)``) have, for a detector whose context
    reaches back in time only, the same context in the baseline as in ``scored``: those earlier
    (strictly) than every conn of ``scored`` outside ``rows``. For the default baseline, the
    earliest share of the input, that is all of them but ties with the first conn after it.

    Shapes:
        rows ``[m]`` -> ``[m]`` bool
    """
    ts = ts_sort_key(scored)
    outside = np.ones(len(ts), dtype=bool)
    outside[rows] = False
    if not outside.any():                        # the whole input: every context is the same
        return np.ones(len(rows), dtype=bool)
    return ts[rows] < ts[outside].min()


def embed_in_pieces(embed: Callable[[pa.Table, np.ndarray | None], np.ndarray], table: pa.Table,
                    rows: np.ndarray | None = None, piece: int | None = None) -> np.ndarray:
    """``embed(table, rows)`` computed ``piece`` (default ``EMBED_PIECE``) rows at a time (every
    row of ``table`` when ``rows`` is None), the whole table the context of each piece.

    Shapes:
        rows ``[m]`` -> ``[m, ...]`` (``[table.num_rows, ...]`` without rows)
    """
    piece = EMBED_PIECE if piece is None else piece
    n = table.num_rows if rows is None else len(rows)
    if n <= piece:
        return embed(table, rows)
    idx = np.arange(table.num_rows, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    return np.concatenate([embed(table, idx[a:a + piece]) for a in range(0, n, piece)])


class SplitFitted(Protocol):
    """A baseline-relative detector as ``fit_split`` below uses it."""

    reference: KnnReference | ZReference

    def fit(self, table: pa.Table, reference_input: np.ndarray | None = None) -> Any: ...


def fit_split(det: SplitFitted, embed: Callable[[pa.Table, np.ndarray | None], np.ndarray],
              table: pa.Table, fit_rows: np.ndarray, cal_rows: np.ndarray,
              extra: pa.Table | None = None, scored: pa.Table | None = None,
              rows: np.ndarray | None = None,
              same_context: Callable[[pa.Table, np.ndarray], np.ndarray] | None = None,
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """Fit ``det`` on ``fit_rows`` of the baseline ``table`` and score its ``cal_rows`` out of
    sample, every baseline conn embedded once, in the whole baseline's context; with ``scored``
    (the input that ``table = scored.take(rows)`` was drawn from), score every conn of
    ``scored`` too, reusing the embeddings of the baseline conns whose context is the same there
    (``same_context_rows``), so that a baseline conn runs through the model once, not twice.

    A calibration row that is also a fit row is scored as if it had not been fitted on
    (``reference.score_held_out``: for the kNN, against the other baseline conns), so
    ``zeekml.pipeline.fitted.fit_calibrate`` fits on the whole baseline and calibrates on the
    whole baseline too; disjoint ``fit_rows`` and ``cal_rows`` (a split) are scored as any conn.

    ``embed(t, r)`` is the detector's reference input (embedding or per-part errors) of rows
    ``r`` of ``t`` (all when None), the other conns of ``t`` as context; its rows must not depend
    on which other rows are embedded with them. ``same_context(scored, rows)`` says which
    baseline rows embed alike in ``scored`` and in the baseline, ``[m]`` bool (default
    ``same_context_rows``: right for a context that reaches back in time only; the GNN, whose
    context also reaches forward, gives its own). ``extra``: conns fitted on beside
    ``fit_rows`` but never calibrated on (``zeekml.pipeline.fitted.fit_calibrate``), embedded
    with the baseline before them as context.

    Returns ``(scores of cal_rows, scores of every conn of scored or None)``.
    """
    x = embed_in_pieces(embed, table)
    fit_rows = np.asarray(fit_rows, dtype=np.int64)
    fit_x, fit_table = x[fit_rows], table.take(pa.array(fit_rows))
    if extra is not None and extra.num_rows:
        both = pa.concat_tables([table, extra.select(table.column_names)], promote_options="permissive")
        fit_x = np.concatenate([fit_x, embed_in_pieces(embed, both,
                                                       np.arange(table.num_rows, both.num_rows))])
        fit_table = pa.concat_tables([fit_table, both.slice(table.num_rows)])
    det.fit(fit_table, reference_input=fit_x)
    del fit_x, fit_table      # a large baseline's copies are not kept through calibration
    cal_rows = np.asarray(cal_rows, dtype=np.int64)
    # each calibration row's position among the fitted rows (-1: not fitted on)
    fitted_at = np.full(table.num_rows, -1, dtype=np.int64)
    fitted_at[fit_rows] = np.arange(len(fit_rows), dtype=np.int64)
    held = fitted_at[cal_rows] >= 0
    # of those, the ones the reference holds (the rest score as any conn: reused below)
    held[held] = det.reference.held_out_differs(fitted_at[cal_rows[held]])
    cal = np.empty(len(cal_rows))
    if held.any():
        cal[held] = _score_at(det.reference, x, cal_rows[held], fitted_at[cal_rows[held]])
    if scored is None:
        if (~held).any():
            cal[~held] = _score_at(det.reference, x, cal_rows[~held])
        return cal, None
    rows = np.asarray(rows, dtype=np.int64)
    same = np.asarray((same_context or same_context_rows)(scored, rows), dtype=bool)
    todo = np.ones(scored.num_rows, dtype=bool)
    todo[rows[same]] = False
    todo_rows = np.flatnonzero(todo)
    if not len(todo_rows) and np.array_equal(rows, np.arange(scored.num_rows)):
        all_x = x           # the baseline scored as its own input (chunked score): no copy
    else:
        all_x = np.empty((scored.num_rows,) + x.shape[1:], dtype=x.dtype)
        all_x[rows[same]] = x[same]
        if len(todo_rows):
            all_x[todo_rows] = embed_in_pieces(embed, scored, todo_rows)
    full = det.reference.score(all_x)
    # a calibration conn not fitted on, with the same embedding in the input, already has its
    # score there (a row's kNN distance depends on that row alone)
    reuse = ~held & same[cal_rows]
    cal[reuse] = full[rows[cal_rows[reuse]]]
    again = ~held & ~reuse
    if again.any():
        cal[again] = _score_at(det.reference, x, cal_rows[again])
    return cal, full


def _score_at(reference: KnnReference | ZReference, x: np.ndarray, rows: np.ndarray,
              fitted_at: np.ndarray | None = None) -> np.ndarray:
    """``reference.score(x[rows])`` (with ``fitted_at``, the rows' positions among the fitted
    rows: ``reference.score_held_out(x[rows], fitted_at)``) a piece of rows at a time (no copy
    of all of them at once)."""
    if len(rows) == 0:
        return np.zeros(0)
    return np.concatenate([reference.score(x[rows[a:a + EMBED_PIECE]]) if fitted_at is None
                           else reference.score_held_out(x[rows[a:a + EMBED_PIECE]], fitted_at[a:a + EMBED_PIECE])
                           for a in range(0, len(rows), EMBED_PIECE)])


class ReferenceSplitFit:
    """``fit`` and ``fit_split`` for a detector whose ``_reference_input(table, rows)`` is what
    its ``reference`` compares (the autoencoder's and the token models' embeddings or per-part
    errors); ``_identity`` keeps the kNN reference conns' uid, 4-tuple and service for
    explanations."""

    def fit(self, table: pa.Table, reference_input: np.ndarray | None = None) -> Self:
        """Build the reference from the baseline ``table`` (the weights stay as trained);
        ``reference_input``: its conns' embeddings (or parts) when already computed."""
        self.reference.fit(self._reference_input(table) if reference_input is None else reference_input)
        if self.reference.kind == "knn":
            # the reference conns' uid, 4-tuple and service, so an alert can name its nearest
            # every fit row's: ``KnnReference.nearest`` answers rows of the whole fit input,
            # not positions in the subset it keeps past ``max_reference``
            self._identity = reference_identity(table, np.arange(table.num_rows))
        self._fitted = True
        return self

    def fit_split(self, table: pa.Table, fit_rows: np.ndarray, cal_rows: np.ndarray,
                  extra: pa.Table | None = None, scored: pa.Table | None = None,
                  rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Fit on ``fit_rows`` of the baseline ``table``, score its ``cal_rows`` and, given the
        input ``scored`` it was drawn from (``table = scored.take(rows)``), every conn of the
        input, each conn through the model once (``fit_split`` above)."""
        return fit_split(self, self._reference_input, table, fit_rows, cal_rows, extra, scored, rows)
