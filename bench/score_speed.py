"""``zeekml score`` with every shipped detector against ``--no-models``, same log, one run.

    python bench/score_speed.py                      # ~100k conns, both modes, per-stage table
    python bench/score_speed.py --conns 30000 --modes models
    python bench/score_speed.py --json out.json --markdown
    python bench/score_speed.py --repeat 3             # modes alternated 3 times, median runs
    python bench/score_speed.py --against /tmp/wt-old --repeat 3   # another checkout, alternated
    python bench/score_speed.py --learned-ab COMMIT    # GNN + autoencoder: COMMIT's code vs this tree's
    python bench/score_speed.py --timeline             # when each step of one models run began and ended
    python bench/score_speed.py --tooling-embeddings   # the detectors' forwards: eager, ONNX Runtime, int8

The log: copies of real labeled conn logs from the shared data set (IoT-23 CTU-34-1 and two
Stratosphere mixed captures), each copy shifted in time past the previous one and its uids
suffixed so that no two conns share a uid, written as rotated files of one directory (what
``zeekml score DIR`` reads). The copies keep every conn's fields, so featurisation and the models
see real value distributions; a host's sequences restart with each copy.

Each mode runs ``zeekml score DIR --out OUT`` in its own fresh Python process (so imports count,
and nothing warmed by one mode helps the other), in-process through ``zeekml.cli.main``, with
timers wrapped around the library's stage functions by this script (the library is unchanged).
A timer records its *self* time (nested timers subtract), keyed by phase (fit: a detector fitted
on half the baseline; calibrate: the other half scored for its threshold; score: every conn
scored), detector and stage, so the rows of the table add up to the run's wall time. The parent
prints flows/s of each mode and the ratio models / --no-models, and checks that both runs wrote
one verdict per conn.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("ZEEKML_DATA", "/work/shared/data")
SOURCES = [os.path.join(DATA, "iot23-ctu-34-1", "conn.log.labeled"),
           os.path.join(DATA, "stratosphere-security-datasets-for-testing", "008-zeek-mixed", "data",
                        "conn.log.labeled"),
           os.path.join(DATA, "stratosphere-security-datasets-for-testing", "010-zeek-mixed", "data",
                        "conn.log.labeled")]


# -- the log ---------------------------------------------------------------------------------

def _read_source(path: str) -> tuple[list[str], list[list[str]], int, int]:
    """``(header lines, data rows split on tab, ts column, uid column)`` of a Zeek TSV log."""
    header, rows = [], []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            if line.startswith("#"):
                if not rows:
                    header.append(line)
                continue
            rows.append(line.rstrip("\n").split("\t"))
    fields = next(h for h in header if h.startswith("#fields")).rstrip("\n").split("\t")[1:]
    return header, rows, fields.index("ts"), fields.index("uid")


def build_log(out_dir: str, conns: int, sources: list[str] = SOURCES) -> int:
    """Write ~``conns`` conns as rotated files under ``out_dir``; returns the number written."""
    parsed = [_read_source(p) for p in sources]
    tss = [float(r[ti]) for _, rows, ti, _ in parsed for r in rows if r[ti] not in ("-", "")]
    span = max(tss) - min(tss) + 3600.0
    written, copy = 0, 0
    while written < conns:
        shift = copy * span
        for si, (header, rows, ti, ui) in enumerate(parsed):
            take = rows[:conns - written]
            if not take:
                break
            path = os.path.join(out_dir, f"conn.{copy:03d}-{si}.log")
            with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.writelines(header)
                for r in take:
                    r = list(r)
                    if r[ti] not in ("-", ""):
                        r[ti] = f"{float(r[ti]) + shift:.6f}"
                    r[ui] = f"{r[ui]}x{copy}"
                    f.write("\t".join(r) + "\n")
            written += len(take)
        copy += 1
    return written


# -- timers (worker side) --------------------------------------------------------------------

class Stages:
    """Self-time per ``(phase, detector, stage)``; nested timers subtract from their parent.

    Beside the wall-clock self time (``self_s``), the main thread's CPU self time
    (``self_cpu_s``, ``time.thread_time``): where a stage's CPU is far below its wall time the
    main thread waited, e.g. reading while the detectors' libraries import in the background
    (``zeekml._core.preload``): that thread holds the GIL most of the time, so the reader's wall
    time is mostly the imports'. Threads of torch and BLAS are not in it (a model's forward
    shows little CPU here although its cores were busy). Timers are for the main thread only."""

    def __init__(self) -> None:
        self.self_s: dict[tuple[str, str, str], float] = defaultdict(float)
        self.self_cpu_s: dict[tuple[str, str, str], float] = defaultdict(float)
        self.stack: list[list] = []          # [key, start, child seconds, start CPU, child CPU]
        self.phase = "other"
        self.detector = "-"
        self.background: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, stage: str, phase: str | None = None, detector: str | None = None):
        saved = (self.phase, self.detector)
        if phase is not None:
            self.phase = phase
        if detector is not None:
            self.detector = detector
        frame = [(self.phase, self.detector, stage), time.perf_counter(), 0.0, time.thread_time(), 0.0]
        self.stack.append(frame)
        try:
            yield
        finally:
            self.stack.pop()
            total = time.perf_counter() - frame[1]
            cpu = time.thread_time() - frame[3]
            self.self_s[frame[0]] += total - frame[2]
            self.self_cpu_s[frame[0]] += cpu - frame[4]
            if self.stack:
                self.stack[-1][2] += total
                self.stack[-1][4] += cpu
            self.phase, self.detector = saved

    def time_background_imports(self) -> None:
        """Record how long ``zeekml._core.preload``'s import thread ran (wall and its own CPU,
        from its start), apart from the stages: it overlaps them."""
        from zeekml._core import preload

        run = preload.Preload._run
        st = self

        @functools.wraps(run)
        def timed_run(pl):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return run(pl)
            finally:
                st.background["wall_s"] = st.background.get("wall_s", 0.0) + time.perf_counter() - t0
                st.background["cpu_s"] = st.background.get("cpu_s", 0.0) + time.thread_time() - c0

        preload.Preload._run = timed_run

    def wrap(self, owner, attr: str, stage: str, phase: str | None = None,
             detector_of=None) -> None:
        """Replace ``owner.attr`` by a timed wrapper (``detector_of(args)`` names the detector)."""
        fn = getattr(owner, attr)
        st = self

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            det = detector_of(args) if detector_of else None
            with st.timed(stage, phase, det):
                return fn(*args, **kwargs)

        setattr(owner, attr, wrapper)

    def wrap_generator(self, owner, attr: str, stage: str) -> None:
        """Time each ``next()`` of the generator ``owner.attr`` returns (the consumer's work between
        items is not counted)."""
        fn = getattr(owner, attr)
        st = self

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            it = iter(fn(*args, **kwargs))
            while True:
                with st.timed(stage):
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                yield item

        setattr(owner, attr, wrapper)


def install(st: Stages) -> None:
    """Wrap the library's stage functions (where they are looked up) with ``st``'s timers."""
    from zeekml.features.flow_features import FlowFeaturizer
    from zeekml.pipeline import batch, fitted
    from zeekml.scoring.calibrate import ThresholdCalibrator
    from zeekml.scoring.detectors.iforest import IsolationForestDetector
    from zeekml.sinks.run_outputs import ScoreOutputs

    with contextlib.suppress(ImportError, AttributeError):
        st.time_background_imports()
    st.wrap(batch, "load_conns", "read + parse")
    with contextlib.suppress(ImportError, AttributeError):
        from zeekml.pipeline import chunked

        st.wrap_generator(chunked, "read_conn_batches", "read + parse")
        # the main thread idle until the background imports are in (zeekml._core.preload)
        st.wrap(chunked, "wait_started", "wait for background imports")
        if hasattr(chunked, "prepare"):      # torch-free featurisation before that wait
            st.wrap(chunked, "prepare", "featurise (shared, before the wait)")
    st.wrap(batch, "render_verdicts", "render verdicts")
    st.wrap(ScoreOutputs, "write_batch", "write")
    st.wrap(ScoreOutputs, "finish", "write")
    st.wrap(fitted, "build_detectors", "load models (imports, weights)", phase="fit")
    st.wrap(fitted, "combine", "combine", phase="score")
    st.wrap(ThresholdCalibrator, "fit", "calibrate (quantile)")
    st.wrap(ThresholdCalibrator, "calibrate", "calibrate (apply)")
    st.wrap(FlowFeaturizer, "transform", "featurise")
    name = lambda a: a[0].name
    st.wrap(IsolationForestDetector, "fit", "fit (sklearn)", detector_of=name)
    st.wrap(IsolationForestDetector, "score", "forward (sklearn)", detector_of=name)
    for det_cls in _learned_classes():
        st.wrap(det_cls, "fit", "detector (other)", detector_of=name)
        if hasattr(det_cls, "fit_split"):       # fit, calibrate and (reusing) score in one call
            st.wrap(det_cls, "fit_split", "detector (other)", detector_of=name)
    for det_cls in _learned_classes() + [IsolationForestDetector]:
        st.wrap(det_cls, "explain", "explain", phase="explain", detector_of=name)
    _wrap_fit_calibrate(st, batch, fitted)

    from zeekml.features.graph import FlowGraphBuilder
    from zeekml.scoring.detectors import gnn, mae, token

    st.wrap(token.LoadedTokenModel, "tokens", "featurise")
    st.wrap(token.LoadedTokenModel, "run", "forward")
    if hasattr(token.LoadedTokenModel, "stream_embedding"):    # a causal_window base (moe-causal)
        from zeekml.features.tokens import FlowTokenizer

        st.wrap(token.LoadedTokenModel, "stream_embedding", "forward")
        st.wrap(FlowTokenizer, "host_stream", "featurise")
    if hasattr(token.LoadedTokenModel, "profile"):          # the baseline-relative detectors
        st.wrap(token.LoadedTokenModel, "profile", "forward")
    with contextlib.suppress(ImportError):
        from zeekml.scoring.detectors import reference

        st.wrap(reference, "knn_distance", "kNN to reference")
        # KnnReference.score searches its distinct rows itself (knn_blocks), not via knn_distance
        st.wrap(reference.KnnReference, "score", "kNN to reference")
    st.wrap(mae.LoadedMAE, "modalities", "featurise")
    st.wrap(mae.LoadedMAE, "run", "forward")
    st.wrap(gnn, "embed_rows", "forward")      # the GNN searches through KnnReference.score
    st.wrap_generator(FlowGraphBuilder, "iter_graphs", "graph build")
    for mod in ("zeekml.features.host_history",):
        with contextlib.suppress(ImportError):
            hh = __import__(mod, fromlist=["HostHistory"])
            st.wrap(hh.HostHistory, "of", "host history index (shared)")


def _learned_classes() -> list:
    from zeekml.scoring.detectors import gnn, mae, token

    return [gnn.GNNDetector, mae.MAEDetector, token.TokenDetector]


def _wrap_fit_calibrate(st: Stages, batch, fitted) -> None:
    """Phases: inside ``fit_calibrate`` a detector's ``fit`` is "fit" and its ``score`` is
    "calibrate" (where the pipeline scores each conn once, that call scores the whole input and
    ``score_batch`` reuses it); inside ``score_batch`` everything is "score"."""
    orig_fc, orig_sb = fitted.fit_calibrate, fitted.score_batch

    @functools.wraps(orig_fc)
    def fit_calibrate(*args, **kwargs):
        with st.timed("fit/calibrate (other)", phase="fit"):
            return orig_fc(*args, **kwargs)

    @functools.wraps(orig_sb)
    def score_batch(*args, **kwargs):
        with st.timed("score (other)", phase="score"):
            return orig_sb(*args, **kwargs)

    batch.fit_calibrate = fitted.fit_calibrate = fit_calibrate
    batch.score_batch = fitted.score_batch = score_batch
    with contextlib.suppress(ImportError):      # score's chunked path imports them by name too
        from zeekml.pipeline import chunked

        chunked.fit_calibrate, chunked.score_batch = fit_calibrate, score_batch
    # A detector's score called inside fit_calibrate scores the calibration half.
    from zeekml.scoring.detectors.iforest import IsolationForestDetector

    for cls in _learned_classes() + [IsolationForestDetector]:
        score = cls.score

        @functools.wraps(score)
        def phased(self, table, _score=score):
            phase = "calibrate" if st.phase == "fit" else None
            with st.timed("detector (other)", phase=phase, detector=self.name):
                return _score(self, table)

        cls.score = phased


# What each mode adds to ``zeekml score LOG --out OUT``. committee: the shipped known-bad
# committee as the only learned detector, as issue 14 advises for an archive with no clean
# period (on this log, mostly IoT-23 malware, it alerts on most conns).
MODE_ARGS = {"models": [], "no-models": ["--no-models"],
             "committee": ["--models", os.path.join(ROOT, "models", "malicious-committee")]}


def worker(mode: str, log_dir: str, out_dir: str, result: str) -> None:
    """One ``zeekml score`` run in this process, timed by stage; writes ``result`` (JSON)."""
    t0 = time.perf_counter()
    st = Stages()
    with st.timed("import zeekml.cli"):
        from zeekml.cli import main
    install(st)
    args = ["score", log_dir, "--out", out_dir] + MODE_ARGS[mode]
    with st.timed("cli (other)"):
        try:
            main(args, standalone_mode=False)
        except SystemExit as e:
            if e.code:
                raise
    wall = time.perf_counter() - t0
    # every thread of this process (torch's, BLAS's, the import thread): on a shared box a
    # run's CPU moves far less with the load than its wall time does
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.path.join(out_dir, "summary.json")) as f:
        summary = json.load(f)
    torch = sys.modules.get("torch")                 # the threads the run chose (None: no torch)
    with open(result, "w") as f:
        json.dump({"mode": mode, "wall_s": wall, "scored": summary.get("scored"),
                   "process_cpu_s": usage.ru_utime + usage.ru_stime,
                   "torch_threads": torch.get_num_threads() if torch else None,
                   "load_average_end": os.getloadavg()[0],
                   "stages": [[*k, v] for k, v in st.self_s.items()],
                   "stages_cpu": [[*k, v] for k, v in st.self_cpu_s.items()],
                   "background_imports": st.background}, f)


# -- timeline: when each step of one run began and ended ---------------------------------------

class Timeline:
    """Steps' starts and ends in seconds from this object's creation, with their thread and,
    where asked, their thread's CPU seconds (``timeline_worker``)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.steps: list[dict] = []

    @contextlib.contextmanager
    def span(self, step: str, cpu: bool = False):
        import threading
        start, cpu0 = time.perf_counter() - self.t0, time.thread_time()
        try:
            yield
        finally:
            row = {"step": step, "thread": threading.current_thread().name, "start_s": start,
                   "end_s": time.perf_counter() - self.t0}
            if cpu:
                row["thread_cpu_s"] = time.thread_time() - cpu0
            self.steps.append(row)

    def wrap(self, owner, attr: str, step: str) -> None:
        """Replace ``owner.attr`` by a wrapper timing each call as ``step``."""
        inner = getattr(owner, attr)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            with self.span(step):
                return inner(*args, **kwargs)
        setattr(owner, attr, timed)

    def wrap_entry(self, owner, attr: str, step: str) -> None:
        """Replace the context manager ``owner.attr`` by one timing its entry as ``step`` (the
        work its ``with`` block does is not counted)."""
        inner = getattr(owner, attr)

        @contextlib.contextmanager
        def timed(*args, **kwargs):
            with contextlib.ExitStack() as stack:
                with self.span(step):
                    got = stack.enter_context(inner(*args, **kwargs))
                yield got
        setattr(owner, attr, timed)


def timeline_worker(log_dir: str, out_dir: str, result: str, mode: str = "models") -> None:
    """One ``zeekml score`` run of ``mode`` (``MODE_ARGS``; default every shipped detector) in
    this process, each step's start
    and end (seconds from before zeekml is imported) into ``result`` (JSON): the input read and
    spilled, the background imports waited for, each task run side by side (a detector's fit,
    the baseline check, an explanation: its thread and its thread's CPU seconds), the scoring
    after the fits and the rendering. The stage table says how long each stage took; this says
    which of them overlap, i.e. what the wall time waits on."""
    tl = Timeline()
    from zeekml.cli import main
    from zeekml.pipeline import batch, chunked, fitted, side_by_side

    run = side_by_side.run

    def run_timed(calls, how, meanwhile=None):
        def task(name, call):
            def go():
                # names of work beside the detectors start with a NUL; a detector's parts
                # (``fitted.PART``) hold one before "part"
                with tl.span(f"task {str(name).strip(chr(0)).replace(chr(0), ' ')}", cpu=True):
                    return call()
            return go
        # meanwhile (the main thread's render while the alerts are explained) is timed as
        # "render verdicts"
        return run({k: task(k, c) for k, c in calls.items()}, how, meanwhile=meanwhile)

    side_by_side.run = run_timed
    tl.wrap_entry(batch, "spill_inputs", "read + parse + spill")
    tl.wrap(chunked, "wait_started", "wait for background imports")
    tl.wrap(chunked, "fit_calibrate", "fit + calibrate")
    tl.wrap(chunked, "score_batch", "score after the fits (explanations)")
    tl.wrap(batch, "render_verdicts", "render verdicts")
    # beyond one chunk (--conns over ScoreOptions.chunk_rows): each chunk set up in its context,
    # its detectors' calls in their lanes (side_by_side.Lanes), its verdicts written
    submit = side_by_side.Lanes.submit

    def submit_timed(self, lane, call, order=0):
        def go():
            with tl.span(f"task {lane} (chunk {order})", cpu=True):
                return call()
        return submit(self, lane, go, order)

    side_by_side.Lanes.submit = submit_timed
    tl.wrap(chunked, "in_context", "set up a chunk in context")
    tl.wrap(chunked, "trim_heap", "trim the heap")
    from zeekml.sinks import run_outputs
    tl.wrap(run_outputs.ScoreOutputs, "write_batch", "write verdicts")
    tl.wrap(fitted, "baseline_infection", "baseline check's verdict")
    try:
        main(["score", log_dir, "--out", out_dir] + MODE_ARGS[mode], standalone_mode=False)
    except SystemExit as e:
        if e.code:
            raise
    wall = time.perf_counter() - tl.t0
    with open(result, "w") as f:
        json.dump({"wall_s": wall, "steps": sorted(tl.steps, key=lambda r: r["start_s"])}, f)


def print_timeline(r: dict) -> None:
    print("| step | thread | start s | end s | seconds | thread CPU s |\n|---|---|--:|--:|--:|--:|")
    for s in r["steps"]:
        cpu = s.get("thread_cpu_s")
        print(f"| {s['step']} | {s['thread']} | {s['start_s']:.2f} | {s['end_s']:.2f} | "
              f"{s['end_s'] - s['start_s']:.2f} | {'' if cpu is None else f'{cpu:.2f}'} |")
    print(f"| **wall** | | | **{r['wall_s']:.2f}** | | |")


# -- inference tooling: eager vs int8 dynamic quantisation vs torch.compile -------------------

def tooling(log_dir: str, conns: int, models_dir: str, compile_: bool) -> dict:
    """Each shipped token model and the autoencoder scored on the same inputs (the first
    ``conns`` conns of the log), eager float32 (the reference), int8 dynamic quantisation
    (``zeekml.nn.quantize``) and ``torch.compile``: flows/s and the largest score difference."""
    import numpy as np
    import torch

    from zeekml._core.device import configure_torch
    from zeekml.nn.quantize import SCORE_RTOL, quantize_int8, relative_spread_difference
    from zeekml.parse import Quarantine
    from zeekml.pipeline import ScoreSummary, load_conns
    from zeekml.scoring.detectors.mae import LoadedMAE
    from zeekml.scoring.detectors.token import LoadedTokenModel

    configure_torch()
    files = sorted(glob.glob(os.path.join(log_dir, "*.log")))
    table = load_conns(files, Quarantine(), ScoreSummary()).slice(0, conns)
    out: dict = {"conns": table.num_rows, "threads": torch.get_num_threads(), "score_rtol": SCORE_RTOL}
    batch = 1024

    def token_scorer(L):
        ids = L.tokens(table)

        def score() -> np.ndarray:
            with torch.inference_mode():
                return np.concatenate([L._nll(torch.as_tensor(ids[s:s + batch]), None).numpy()
                                       for s in range(0, len(ids), batch)])
        return score

    def mae_scorer(L):
        m = L.modalities(table)
        return lambda: L.run(m)["score"]

    for name in ("dense-base", "mae-base", "moe-base"):
        path = os.path.join(models_dir, name)
        if name == "mae-base":
            L = LoadedMAE.from_dir(path)
            score, parts = mae_scorer(L), ("model",)
        else:
            L = LoadedTokenModel.from_dir(path)
            score, parts = token_scorer(L), ("encoder", "mlm")
        eager = {p: getattr(L, p) for p in parts}
        variants = [("eager", None), ("int8 dynamic", quantize_int8)]
        if compile_:
            variants.append(("torch.compile", torch.compile))
        ref = None
        rows = {}
        for label, transform in variants:
            t0 = time.perf_counter()
            for p, m in eager.items():
                setattr(L, p, m if transform is None else transform(m))
            first = score()                     # compile happens here; timed apart
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            s = score()
            dt = time.perf_counter() - t0
            if ref is None:
                ref = s
            rows[label] = {"flows_per_s": len(s) / dt, "setup_s": setup,
                           "max_abs_diff": float(np.abs(s - ref).max()),
                           "rel_spread_diff": relative_spread_difference(torch.as_tensor(ref), torch.as_tensor(s)),
                           "steady_equals_first": bool(np.array_equal(first, s))}
            print(f"  {name:10s} {label:14s} {rows[label]['flows_per_s']:9,.0f} flows/s  setup "
                  f"{setup:6.1f} s  max|diff| {rows[label]['max_abs_diff']:.3g}  "
                  f"rel {rows[label]['rel_spread_diff']:.3g}", flush=True)
        for p, m in eager.items():
            setattr(L, p, m)
        out[name] = rows
    return out


# -- the shipped detectors' embedding forwards: eager vs ONNX Runtime vs int8 ---------------

@contextlib.contextmanager
def _onnx_traceable():
    """What the TorchScript ONNX exporter cannot trace in a ``causal_window`` encoder, swapped for
    the same arithmetic while it traces (the eager path is left as it is outside this block):
    ``F.embedding_bag(..., padding_idx=0)`` (no ONNX form) becomes an embedding and a sum over
    the fields (the padding row is zero, so the sum is the same), and the MoE dispatch's stable
    argsort (the exporter has none) an unstable one (it orders the tokens of one expert, whose
    rows the expert computes independently)."""
    import torch
    import torch.nn.functional as F

    import zeekml.nn.dense as dense
    import zeekml.nn.moe as moe

    class _Torch:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def argsort(x, stable=False, **kw):
            return torch.argsort(x, **kw)

    forward = dense.StreamEmbedding.forward
    dense.StreamEmbedding.forward = lambda self, ids: F.embedding(ids, self.tok.weight).sum(1)
    moe.torch = _Torch()
    try:
        yield
    finally:
        dense.StreamEmbedding.forward = forward
        moe.torch = torch


def tooling_embeddings(log_dir: str, conns: int, models_dir: str, rounds: int) -> dict:
    """The forward passes the shipped learned detectors run on every conn, on the same inputs:
    the autoencoder's encoder (``mae-base``: ``encode`` of 1,024-conn batches) and the causal
    token models' stream passes (``moe-causal``, the detector, and its dense twin
    ``dense-causal``: ``forward_stream`` over 8,192-row pieces of the host streams, each piece
    on its own), as eager float32 (the reference), ONNX Runtime (CPU execution provider, the
    model exported by ``torch.onnx.export``'s TorchScript exporter; the dynamo exporter stops
    at the MoE's data-dependent expert capacity) and int8 dynamic quantisation. One thread
    each (torch and ONNX Runtime), ``rounds`` interleaved rounds, best kept: rows per CPU
    second; the largest embedding difference from eager, absolute and relative to the eager
    embeddings' spread. The GNN is left out: its message passing is a sparse matrix product,
    which ONNX has no operator for."""
    import numpy as np
    import torch

    from zeekml._core.device import batch_rows, configure_torch
    from zeekml.nn.quantize import quantize_int8, relative_spread_difference
    from zeekml.parse import Quarantine
    from zeekml.pipeline import ScoreSummary, load_conns
    from zeekml.scoring.detectors.mae import INFER_BATCH, LoadedMAE, modality_tensors
    from zeekml.scoring.detectors.token import STREAM_BATCH, LoadedTokenModel

    try:
        import onnxruntime as ort
    except ImportError:
        sys.exit("score_speed --tooling-embeddings: onnxruntime is not installed "
                 "(pip install onnxruntime onnx; bench only, not a zeekml dependency)")
    configure_torch()
    torch.set_num_threads(1)
    files = sorted(glob.glob(os.path.join(log_dir, "*.log")))
    table = load_conns(files, Quarantine(), ScoreSummary()).slice(0, conns)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    tmp = tempfile.mkdtemp(prefix="zeekml-onnx-")
    out: dict = {"conns": table.num_rows, "onnxruntime": ort.__version__, "torch": torch.__version__,
                 "rounds": rounds}

    class _Call(torch.nn.Module):
        def __init__(self, fn, module):
            super().__init__()
            self.module, self.fn = module, fn

        def forward(self, *xs):
            return self.fn(self.module, *xs)

    def models():
        L = LoadedMAE.from_dir(os.path.join(models_dir, "mae-base"))
        m = L.modalities(table)
        batches = [tuple(t.contiguous() for t in modality_tensors(
            m.take(batch_rows(s, s + INFER_BATCH)), "cpu")) for s in range(0, len(m), INFER_BATCH)]
        yield "mae-base encode", L.model, (lambda mod, q, sq, e: mod.encode(q, sq, e)), batches, \
            ("q", "sq", "e"), True
        for name in ("moe-causal", "dense-causal"):
            T = LoadedTokenModel.from_dir(os.path.join(models_dir, name))
            enc = T.encoder
            st = T.tokenizer.host_stream(table, None, width=max(enc.spans), hide_service=T.hide_service)
            pieces = []
            for s in range(0, len(st.ids) - STREAM_BATCH + 1, STREAM_BATCH):
                keys = st.keys[s:s + STREAM_BATCH] - s
                keys[st.keys[s:s + STREAM_BATCH] < s] = -1         # predecessors before the piece
                pieces.append((torch.as_tensor(st.ids[s:s + STREAM_BATCH]), torch.as_tensor(keys)))
            # traced at one piece's size: the MoE's expert capacity is a number of that size
            yield f"{name} stream", enc, (lambda mod, ids, keys: mod.forward_stream(ids, keys).hidden), \
                pieces, ("ids", "keys"), False

    for label, module, fn, inputs, names, dynamic in models():
        module.eval()
        call = _Call(fn, module).eval()
        path = os.path.join(tmp, label.replace(" ", "_") + ".onnx")
        t0 = time.perf_counter()
        with _onnx_traceable(), warnings_quiet():
            torch.onnx.export(call, inputs[0], path, dynamo=False, input_names=list(names),
                              output_names=["out"],
                              dynamic_axes={n: {0: "rows"} for n in (*names, "out")} if dynamic else None)
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        export_s = time.perf_counter() - t0
        quantised = _Call(fn, quantize_int8(module)).eval()
        variants = {
            "eager": lambda x: call(*x).numpy(),
            "onnxruntime": lambda x: session.run(None, {n: t.numpy() for n, t in zip(names, x)})[0],
            "int8 dynamic": lambda x: quantised(*x).numpy(),
        }
        rows = sum(len(x[0]) for x in inputs)
        outs, best = {}, {k: float("inf") for k in variants}
        with torch.inference_mode():
            for k, run_one in variants.items():
                outs[k] = np.concatenate([run_one(x) for x in inputs])       # warm, and the outputs
            for _ in range(rounds):
                for k, run_one in variants.items():
                    t0 = time.process_time()
                    for x in inputs:
                        run_one(x)
                    best[k] = min(best[k], time.process_time() - t0)
        ref = torch.as_tensor(outs["eager"])
        res = {}
        for k in variants:
            got = torch.as_tensor(outs[k])
            res[k] = {"rows_per_cpu_s": rows / best[k], "vs_eager": best["eager"] / best[k],
                      "max_abs_diff": float((got - ref).abs().max()),
                      "rel_spread_diff": relative_spread_difference(ref, got),
                      "bit_equal": bool(torch.equal(got, ref))}
            print(f"  {label:22s} {k:13s} {res[k]['rows_per_cpu_s']:9,.0f} rows/CPU-s "
                  f"{res[k]['vs_eager']:5.2f}x  max|diff| {res[k]['max_abs_diff']:.2g}  "
                  f"rel {res[k]['rel_spread_diff']:.2g}", flush=True)
        out[label] = {"rows": rows, "export_s": export_s, "variants": res}
    shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def warnings_quiet():
    """The exporter's and the deprecated quantisation API's warnings off (they are expected)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- the GNN and autoencoder detectors, a commit's code against this tree's, in one process ----

# What ``--learned-ab`` loads from the other commit (the rest, models included, is this tree's).
AB_MODULES = {"_ab_flow_features": "zeekml/features/flow_features.py",
              "_ab_graph": "zeekml/features/graph.py",
              "_ab_nn_gnn": "zeekml/nn/gnn.py",
              "_ab_modality": "zeekml/features/modality.py",
              "_ab_det_gnn": "zeekml/scoring/detectors/gnn.py"}
AB_IMPORTS = [("from zeekml.features.flow_features import", "from _ab_flow_features import"),
              ("from zeekml.features.graph import", "from _ab_graph import"),
              ("@register_kind(NAME)", "")]


def _module_at(commit: str, name: str, path: str):
    """``path`` as it is at ``commit``, loaded as module ``name`` (its imports of the flow
    features and the graph builder pointed at the other loaded modules)."""
    import types

    src = subprocess.run(["git", "-C", ROOT, "show", f"{commit}:{path}"], check=True,
                         capture_output=True, text=True).stdout
    for a, b in AB_IMPORTS:
        src = src.replace(a, b)
    mod = types.ModuleType(name)
    mod.__file__ = f"{commit}:{path}"
    sys.modules[name] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def learned_ab(log_dir: str, commit: str, rounds: int) -> dict:
    """The GNN detector as ``score`` calls it (its ``fit_split`` where it has one, else fit on the
    baseline's fit half, score its calibration half, score the input) and the autoencoder's
    ``fit_split``, with the graph
    builder, GNN encoder, flow features, modalities and GNN detector of ``commit`` against
    this tree's, alternately in this process, one thread; seconds of each and the sha256 of
    every score array (they must be equal for a change meant to keep the bits)."""
    import copy
    import hashlib

    import numpy as np
    import pyarrow as pa

    from zeekml._core.device import configure_torch
    from zeekml.flows.select import ts_sort_key
    from zeekml.parse import Quarantine
    from zeekml.pipeline import ScoreSummary, load_conns
    from zeekml.pipeline.options import ScoreOptions
    from zeekml.scoring.detectors.mae import MAEDetector
    from zeekml.scoring.registry import load_model_detectors

    os.environ.setdefault("ZEEKML_TORCH_THREADS", "1")     # one thread unless asked: both sides alike
    configure_torch()
    old = {name: _module_at(commit, name, path) for name, path in AB_MODULES.items()}
    table = load_conns(sorted(glob.glob(os.path.join(log_dir, "*.log"))), Quarantine(), ScoreSummary())
    opts = ScoreOptions()
    rows = opts.baseline_rows(ts_sort_key(table))
    baseline = table.take(pa.array(rows))
    # fitted and calibrated on every baseline conn, as zeekml does (pipeline.fitted.calibration_scores)
    fit_idx = cal_idx = np.arange(baseline.num_rows, dtype=np.int64)
    fit_t, cal_t = baseline.take(pa.array(fit_idx)), baseline.take(pa.array(cal_idx))
    dets = {d.name: d for d in load_model_detectors("", "cpu")}
    gnn_new, mae_loaded = dets["gnn"], dets["mae"].loaded
    b = gnn_new.bundle
    model = old["_ab_nn_gnn"].FlowGNN(b.model.cfg)
    model.load_state_dict(b.model.state_dict())
    dg = old["_ab_det_gnn"]
    bundle = dg.GNNBundle(model.eval(), old["_ab_flow_features"].FlowFeaturizer.from_dict(b.featurizer.to_dict()),
                          old["_ab_graph"].GraphConfig.from_dict(b.graph.to_dict()), b.classes, b.hide_service)
    loaded_old = copy.copy(mae_loaded)
    f = mae_loaded.featurizer
    loaded_old.featurizer = old["_ab_modality"].ModalityFeaturizer.from_dict(f.to_dict(), f.w2v_vectors)
    sides = {commit: (dg.GNNDetector(bundle), loaded_old), "tree": (gnn_new, mae_loaded)}

    def sha(a) -> str:
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

    out: dict = {"conns": table.num_rows, "commit": commit, "rounds": []}
    for r in range(-1, rounds):                 # round -1 warms both sides up (caches, torch), untimed
        for side, (gnn, loaded) in sides.items():
            t0 = time.perf_counter()
            if hasattr(gnn, "fit_split"):
                # since issue 15's "each conn once" for the GNN: as fit_calibrate calls it
                g_cal, g_all = gnn.fit_split(baseline, fit_idx, cal_idx, scored=table, rows=rows)
            else:
                gnn.fit(fit_t)
                g_cal, g_all = gnn.score(cal_t), gnn.score(table)
            t1 = time.perf_counter()
            m_cal, m_all = MAEDetector(loaded).fit_split(baseline, fit_idx, cal_idx, scored=table, rows=rows)
            t2 = time.perf_counter()
            rec = {"side": side, "gnn_s": t1 - t0, "mae_s": t2 - t1,
                   "sha256": {k: sha(v) for k, v in (("gnn_cal", g_cal), ("gnn_all", g_all),
                                                     ("mae_cal", m_cal), ("mae_all", m_all))}}
            if r < 0:
                continue
            out["rounds"].append(rec)
            print(f"  round {r + 1} {side:>12}: gnn {rec['gnn_s']:6.2f} s  mae {rec['mae_s']:6.2f} s", flush=True)
    for side in sides:
        mine = [x for x in out["rounds"] if x["side"] == side]
        out[side] = {k: float(np.median([x[k] for x in mine])) for k in ("gnn_s", "mae_s")}
    out["same_scores"] = len({json.dumps(x["sha256"], sort_keys=True) for x in out["rounds"]}) == 1
    # a change meant to move scores (a GNN fitted another way) still gives each side the same
    # scores every round
    out["each_side_repeats"] = all(len({json.dumps(x["sha256"], sort_keys=True) for x in out["rounds"]
                                        if x["side"] == side}) == 1 for side in sides)
    moved = [k for k in out["rounds"][0]["sha256"]
             if len({x["sha256"][k] for x in out["rounds"]}) > 1] if out["rounds"] else []
    print(f"medians: {commit} gnn {out[commit]['gnn_s']:.2f} s mae {out[commit]['mae_s']:.2f} s; this tree "
          f"gnn {out['tree']['gnn_s']:.2f} s mae {out['tree']['mae_s']:.2f} s; scores "
          f"{'identical' if out['same_scores'] else 'DIFFERENT: ' + ', '.join(moved)} (sha256), each side "
          f"{'the same every round' if out['each_side_repeats'] else 'NOT the same every round'}")
    return out


# -- the parent ------------------------------------------------------------------------------

def run_mode(mode: str, log_dir: str, tmp: str, threads: int | None, root: str = ROOT) -> dict:
    """One ``mode`` run of the checkout at ``root`` (its zeekml, its own timers), in a fresh
    process."""
    tag = "" if root == ROOT else "-against"
    out = os.path.join(tmp, f"out-{mode}{tag}")
    res = os.path.join(tmp, f"{mode}{tag}.json")
    env = dict(os.environ, PYTHONPATH=root)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    script = os.path.join(root, "bench", "score_speed.py")
    subprocess.run([sys.executable, script, "--worker", mode, "--log-dir", log_dir, "--out", out,
                    "--result", res], check=True, env=env, stdout=subprocess.DEVNULL)
    with open(res) as f:
        r = json.load(f)
    with open(os.path.join(out, "verdicts.jsonl"), "rb") as f:
        r["verdict_lines"] = sum(1 for _ in f)
    return r


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time (the lower of the two middle ones for an even count), with
    every run's wall time added as ``rounds_wall_s`` (in run order)."""
    if not runs:
        raise ValueError("no runs")
    order = sorted(range(len(runs)), key=lambda i: runs[i]["wall_s"])
    r = dict(runs[order[(len(runs) - 1) // 2]])
    r["rounds_wall_s"] = [x["wall_s"] for x in runs]
    return r


def round_ratios(models: list[dict], no_models: list[dict]) -> list[float]:
    """flows/s of each round's models run over its --no-models run (the two ran back to back)."""
    return [m["flows_per_s"] / b["flows_per_s"] for m, b in zip(models, no_models)]


def table(r: dict) -> list[tuple[str, str, str, float]]:
    rows = sorted(r["stages"], key=lambda s: (["other", "fit", "calibrate", "score", "explain"].index(s[0])
                                              if s[0] in ("other", "fit", "calibrate", "score", "explain") else 9,
                                              s[1], -s[3]))
    return [tuple(x) for x in rows if x[3] >= 0.005]


def cpu_of(r: dict) -> dict[tuple[str, str, str], float]:
    """The main thread's CPU self seconds per stage (empty for a result file from before they
    were recorded)."""
    return {tuple(x[:3]): x[3] for x in r.get("stages_cpu", [])}


def background_line(r: dict) -> str:
    """One line on the background imports of a run (empty when none were timed)."""
    b = r.get("background_imports") or {}
    if not b:
        return ""
    return (f"background imports (a thread overlapping the stages above): {b['wall_s']:.2f} s wall, "
            f"{b['cpu_s']:.2f} s CPU in that thread")


def markdown(r: dict) -> str:
    cpu = cpu_of(r)
    lines = ["| phase | detector | stage | seconds | main-thread CPU s | share |", "|---|---|---|---|---|---|"]
    for phase, det, stage, s in table(r):
        c = cpu.get((phase, det, stage))
        lines.append(f"| {phase} | {det} | {stage} | {s:.2f} | {'' if c is None else f'{c:.2f}'} | "
                     f"{100 * s / r['wall_s']:.1f}% |")
    lines.append(f"| | | **wall** | **{r['wall_s']:.2f}** | | |")
    if background_line(r):
        lines += ["", background_line(r)]
    return "\n".join(lines)


def compare(paths: list[str]) -> str:
    """Markdown: the models run's stages (summed over phases) side by side for result files of
    several runs (``--json`` of this script), then flows/s and the ratio of each."""
    runs = []
    for p in paths:
        with open(p) as f:
            runs.append(json.load(f))
    keys: dict[tuple[str, str], list[float]] = {}
    for i, r in enumerate(runs):
        for phase, det, stage, sec in r["models"]["stages"]:
            stage = {"detector (other)": "other", "fit/calibrate (other)": "other",
                     "score (other)": "other", "cli (other)": "other"}.get(stage, stage)
            keys.setdefault((det, stage), [0.0] * len(runs))[i] += sec
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    lines = ["| detector | stage | " + " | ".join(f"{n} s" for n in names) + " |",
             "|---|---|" + "---|" * len(runs)]
    for (det, stage), secs in sorted(keys.items(), key=lambda kv: -max(kv[1])):
        if max(secs) >= 0.05:
            lines.append(f"| {det} | {stage} | " + " | ".join(f"{s:.2f}" for s in secs) + " |")
    def row(label: str, cells) -> None:
        lines.append(f"| | **{label}** | " + " | ".join(cells) + " |")

    row("wall, all detectors", (f"**{r['models']['wall_s']:.1f}**" for r in runs))
    row("flows/s, all detectors", (f"{r['models']['flows_per_s']:,.0f}" for r in runs))
    row("flows/s, --no-models", (f"{r['no-models']['flows_per_s']:,.0f}" for r in runs))
    if all("process_cpu_s" in r["models"] for r in runs):
        row("process CPU s, all detectors", (f"{r['models']['process_cpu_s']:.1f}" for r in runs))
    lines.append("| | **ratio** | " + " | ".join(f"**{r['ratio']:.3f}x**" for r in runs) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=100_000, help="conns in the generated log (default 100000)")
    ap.add_argument("--modes", default="models,no-models",
                    help="comma list of models, no-models, committee (the shipped known-bad "
                         "committee alone: --models models/malicious-committee)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of the modes, alternated (default 1); the tables and --json show each "
                         "mode's median run, with every round's wall time and ratio beside it")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS of the runs (default: unset, as a user runs zeekml)")
    ap.add_argument("--json", help="write the results here (with --against, the other checkout's "
                                   "to this name with -against before the extension)")
    ap.add_argument("--against", metavar="DIR",
                    help="also run the checkout at DIR (a git worktree of another commit) on the same "
                         "log, its modes then this tree's in each round, each side its own timers")
    ap.add_argument("--markdown", action="store_true", help="print the stage tables as Markdown")
    ap.add_argument("--tooling", action="store_true",
                    help="instead: eager vs int8 dynamic quantisation vs torch.compile per model")
    ap.add_argument("--tooling-conns", type=int, default=20_000, help="conns for --tooling (default 20000)")
    ap.add_argument("--no-compile", action="store_true", help="--tooling without torch.compile")
    ap.add_argument("--tooling-embeddings", action="store_true",
                    help="instead: the shipped detectors' embedding forwards, eager vs ONNX Runtime "
                         "vs int8 (needs onnxruntime and onnx installed; --tooling-conns conns)")
    ap.add_argument("--learned-ab", metavar="COMMIT",
                    help="instead: the GNN and autoencoder detectors with COMMIT's graph builder, "
                         "GNN encoder, flow features, modalities and GNN detector against this "
                         "tree's, alternately in one process (seconds, sha256 of the scores)")
    ap.add_argument("--rounds", type=int, default=3, help="alternations for --learned-ab (default 3)")
    ap.add_argument("--timeline", action="store_true",
                    help="instead: one run of the first of --modes (default: the shipped models), "
                         "when each step began and ended (which steps overlap), --repeat times")
    ap.add_argument("--compare", nargs="+", metavar="JSON",
                    help="instead: print the stage tables of earlier --json results side by side")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--log-dir", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.repeat < 1:
        ap.error(f"--repeat must be at least 1, not {a.repeat}")
    if a.worker and a.worker.startswith("timeline-"):
        timeline_worker(a.log_dir, a.out, a.result, a.worker[len("timeline-"):])
        return
    if a.worker:
        worker(a.worker, a.log_dir, a.out, a.result)
        return
    if a.compare:
        print(compare(a.compare))
        return
    if a.against and not os.path.isfile(os.path.join(a.against, "bench", "score_speed.py")):
        ap.error(f"--against {a.against}: not a zeekml checkout (no bench/score_speed.py in it)")
    unknown = [m for m in a.modes.split(",") if m not in MODE_ARGS]
    if unknown:
        ap.error(f"--modes: unknown mode {unknown[0]!r} (known: {', '.join(MODE_ARGS)})")
    if a.against:
        with open(os.path.join(a.against, "bench", "score_speed.py"), encoding="utf-8") as f:
            theirs = f.read()
        # an older worker (before MODE_ARGS) runs a mode it does not know as "models": refuse
        old = [m for m in a.modes.split(",") if m not in ("models", "no-models")
               and ("MODE_ARGS = " not in theirs or f'"{m}":' not in theirs)]
        if old:
            ap.error(f"--against {a.against}: its score_speed.py has no mode {old[0]!r}")
    missing = [p for p in SOURCES if not os.path.exists(p)]
    if missing:
        sys.exit(f"score_speed: source log missing: {missing[0]} (set ZEEKML_DATA)")
    with tempfile.TemporaryDirectory(prefix="zeekml-score-speed-") as tmp:
        log_dir = os.path.join(tmp, "logs")
        os.makedirs(log_dir)
        n = build_log(log_dir, a.conns)
        print(f"log: {n} conns in {len(glob.glob(os.path.join(log_dir, '*.log')))} files; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        if a.learned_ab:
            res = learned_ab(log_dir, a.learned_ab, a.rounds)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(res, f, indent=1)
            return
        if a.timeline:
            res = []
            for rnd in range(a.repeat):
                # the first of --modes (by default every shipped detector)
                r = run_mode("timeline-" + a.modes.split(",")[0], log_dir, tmp, a.threads)
                r["load_average_end"] = os.getloadavg()[0]
                print(f"\nround {rnd + 1}/{a.repeat} (load average at the end {r['load_average_end']:.1f})")
                print_timeline(r)
                res.append(r)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(res, f, indent=1)
            return
        if a.tooling_embeddings:
            res = tooling_embeddings(log_dir, a.tooling_conns, os.path.join(ROOT, "models"), a.rounds)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(res, f, indent=1)
            return
        if a.tooling:
            res = tooling(log_dir, a.tooling_conns, os.path.join(ROOT, "models"), not a.no_compile)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(res, f, indent=1)
            return
        modes = a.modes.split(",")
        # with --against, each round runs the other checkout's modes, then this tree's, so both
        # see the same stretch of a shared box's load
        sides = [("against", os.path.abspath(a.against)), ("this", ROOT)] if a.against else [("this", ROOT)]
        runs: dict[str, dict[str, list[dict]]] = {side: {m: [] for m in modes} for side, _ in sides}
        for rnd in range(a.repeat):
            for side, root in sides:
                for mode in modes:
                    r = run_mode(mode, log_dir, tmp, a.threads, root)
                    if r["verdict_lines"] != n:
                        sys.exit(f"score_speed: {side} {mode}: {r['verdict_lines']} verdicts for {n} conns")
                    r["flows_per_s"] = n / r["wall_s"]
                    runs[side][mode].append(r)
                    if a.repeat > 1 or a.against:
                        print(f"round {rnd + 1}/{a.repeat} {side + ' ' if a.against else ''}{mode}: "
                              f"{r['wall_s']:.1f} s = {r['flows_per_s']:,.0f} flows/s{cpu_text(r)} "
                              f"(load average at the end {r.get('load_average_end', 0):.1f})", flush=True)
        for side, root in sides:
            if a.against:
                print(f"\n== {side}: {root}")
            results = report(runs[side], modes, n, a.repeat, a.markdown)
            results["root"] = root
            if a.json:
                path = a.json if side == "this" else "{}-against{}".format(*os.path.splitext(a.json))
                with open(path, "w") as f:
                    json.dump(results, f, indent=1)


def cpu_text(r: dict) -> str:
    """", process CPU X s" of a run (empty for a worker that did not record it: an older
    checkout's under --against)."""
    return f", process CPU {r['process_cpu_s']:.1f} s" if "process_cpu_s" in r else ""


def report(runs: dict[str, list[dict]], modes: list[str], n: int, repeat: int,
           as_markdown: bool) -> dict:
    """Print each mode's median run (stage table, flows/s) and the ratio; the results for
    ``--json``."""
    results: dict = {}
    for mode in modes:
        r = median_run(runs[mode])
        results[mode] = r
        if repeat > 1:
            print(f"\n{mode}: the median of {repeat} rounds (walls "
                  f"{', '.join(f'{w:.1f}' for w in r['rounds_wall_s'])} s)", end="")
        print(f"\n{mode}: {n} conns in {r['wall_s']:.1f} s = {r['flows_per_s']:,.0f} flows/s{cpu_text(r)} "
              f"(torch threads {r.get('torch_threads')}, load average at the end "
              f"{r.get('load_average_end', 0):.1f})", flush=True)
        if as_markdown:
            print(markdown(r))
        else:
            cpu = cpu_of(r)
            print(f"  {'phase':9s} {'detector':7s} {'stage':34s} {'wall':>10s} {'main CPU':>10s}")
            for phase, det, stage, s in table(r):
                print(f"  {phase:9s} {det:7s} {stage:34s} {s:8.2f} s {cpu.get((phase, det, stage), 0.0):8.2f} s "
                      f"{100 * s / r['wall_s']:5.1f}%")
            if background_line(r):
                print("  " + background_line(r))
    if "models" in results and "no-models" in results:
        ratio = results["models"]["flows_per_s"] / results["no-models"]["flows_per_s"]
        print(f"\nmodels / --no-models: {results['models']['flows_per_s']:,.0f} / "
              f"{results['no-models']['flows_per_s']:,.0f} flows/s = {ratio:.3f}x (target >= 0.4x)")
        results["ratio"] = ratio
        if repeat > 1:
            per_round = round_ratios(runs["models"], runs["no-models"])
            results["round_ratios"] = per_round
            print(f"per round (each models run over the --no-models run beside it): "
                  f"{', '.join(f'{x:.3f}x' for x in per_round)}")
    results["conns"] = n
    results["load_average_end"] = os.getloadavg()[0]
    return results


if __name__ == "__main__":
    main()
