"""Speed of the MoE encoder against its dense twin (and a dense model as big in total), same inputs.

    python bench/moe_vs_dense.py --threads 1 --json docs/results/moe_speed.json

One run: the token sequences of one real conn log (default IoT-23 CTU-34-1 from the shared data
set, tokenised once with the MoE base's tokenizer and saved to a temporary .npy) are fed to each
model in its own subprocess, so the peak RSS is that model's alone. Per model: throughput
(flows/s, one sequence per flow, batch 1024, encoder + pooling + a classifier head), latency
p50/p99 at batch 1 and 64, peak resident memory (sampled from /proc after every batch; "model +
activations" = that peak less the resident size before the model was built) and, when CUDA is
present, ``torch.cuda.max_memory_allocated``. Every model runs under glibc's default malloc and
under tcmalloc (``--allocators``, see ``ALLOCATORS``). ``torch.set_num_threads(--threads)`` in every worker.

Models: by default ``models/dense-base``, ``models/moe-base`` (the shipped bases: trained weights,
so the MoE's routing is the trained one) and ``dense-wide``: the twin with its MoE-position blocks
``n_experts * d_expert`` wide (as many feed-forward parameters as the MoE; random weights, which
do not change a dense model's speed). ``--models DIR... [dense-wide:DIR]`` times any model
directories instead (the accuracy/speed frontier of ``bench/moe_fewshot.py frontier``), ratios
against the first; they must share one tokenizer. ``--rounds N`` runs every model N times,
interleaved (model 1, 2, ..., 1, 2, ...), each run in a fresh process, and keeps each model's best
run: on a shared machine the load moves under a long run, and the best of interleaved runs
compares the models at the same quiet moments.

    python bench/moe_vs_dense.py --allocators glibc --rounds 3 --min-seconds 4 \
        --models models/dense-base models/moe-base /tmp/moe_frontier/moe-d32 ...

``--detector-speed LOG...`` times the token *detectors* of ``--models`` instead (embedding + kNN
of every conn of each log, one process, interleaved; ``score-speed:N`` builds
``bench/score_speed.py``'s log): full-attention bases against ``causal_window`` ones, which embed
each conn once from its host's stream (``docs/results/moe.md``, "Causal window"). There a model
may also be ``ffn=W:DIR`` or ``ffn-alt=W:DIR`` (``ffn_variant``): the dense model ``DIR`` with its
feed-forward blocks cut to ``W`` units, everywhere or at the MoE positions only; ``W = 1`` bounds
what any sparse feed-forward design could gain over ``DIR`` (bench/README.md, "MoE vs its dense twin").

    python bench/moe_vs_dense.py --threads 1 --rounds 3 --detector-speed score-speed:100000 \
        --models models/dense-causal ffn-alt=1:models/dense-causal ffn=1:models/dense-causal models/moe-causal

``arch:`` values are ints, floats or words (``arch:dense:attention=causal_window,d_ff=64``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.environ.get("ZEEKML_DATA", "/work/shared/data")
DEFAULT_LOG = os.path.join(DATA, "iot23-ctu-34-1", "conn.log.labeled")


def _arch_value(text: str) -> int | float | str:
    """A config value of an ``arch:`` spec: an int, a float, else the text (``attention=causal_window``)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def build(spec: str, device: str):
    """``(encoder, head, anchor)`` for a model dir, ``dense-wide:DIR`` (wide twin of DIR's MoE) or
    ``arch:moe|dense:key=value,...`` (an untrained encoder of that ``MoEConfig``/``DenseConfig``)."""
    import torch

    from zeekml.nn.dense import ClassifierHead, DenseConfig, DenseEncoder
    from zeekml.nn.moe import MoEConfig, MoEEncoder, twin_of
    from zeekml.train.moe import LoadedTokenModel

    if spec.startswith("arch:"):
        # arch:KIND:key=value,...: an untrained encoder of the shipped MoE's token shape (a speed
        # screen of layouts not trained; an untrained router spreads tokens about evenly)
        _, kind, kv = spec.split(":", 2)
        loaded = LoadedTokenModel.from_dir(os.path.join(ROOT, "models", "moe-base"), device)
        shape = {k: loaded.config["encoder"][k] for k in ("vocab_size", "n_fields", "seq_len")}
        opts = {k: _arch_value(v) for k, v in (x.split("=") for x in kv.split(",") if x)}
        torch.manual_seed(0)
        enc = (MoEEncoder(MoEConfig(**shape, **opts)) if kind == "moe"
               else DenseEncoder(DenseConfig(**shape, **opts))).to(device).eval()
    elif spec.startswith("dense-wide:"):
        loaded = LoadedTokenModel.from_dir(spec.split(":", 1)[1], device)
        mcfg = MoEConfig(**loaded.config["encoder"])
        dcfg: DenseConfig = twin_of(mcfg)
        dcfg.d_ff_alt = mcfg.n_experts * mcfg.d_expert
        torch.manual_seed(0)
        enc = DenseEncoder(dcfg).to(device).eval()
    else:
        loaded = LoadedTokenModel.from_dir(spec, device)
        enc = loaded.encoder
    d = enc.config.d_model
    head = ClassifierHead(2 * d, 4, 64, 0.0).to(device).eval()
    return enc, head, loaded.tokenizer.anchor


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


# glibc raises its mmap threshold as big blocks are freed, after which freed activation buffers of
# varying sizes stay on the heap: MoE batches (one buffer per expert, a different size every batch)
# grow the heap far more than dense ones. A fixed threshold returns them at once (and pays a page
# fault per allocation); tcmalloc and jemalloc (Debian: libtcmalloc-minimal4, libjemalloc2) keep
# size classes instead. Allocators whose library is missing are skipped.
_LIB = "/usr/lib/x86_64-linux-gnu"
ALLOCATORS = {"glibc": {}, "mmap64k": {"MALLOC_MMAP_THRESHOLD_": "65536"},
              "tcmalloc": {"LD_PRELOAD": f"{_LIB}/libtcmalloc_minimal.so.4"},
              "jemalloc": {"LD_PRELOAD": f"{_LIB}/libjemalloc.so.2"}}


def _available(alloc: str) -> bool:
    lib = ALLOCATORS[alloc].get("LD_PRELOAD")
    return lib is None or os.path.exists(lib)


def worker(args) -> None:
    import torch

    from zeekml.nn.dense import pool

    torch.set_num_threads(args.threads)
    device = args.device
    ids_all = np.load(args.ids)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cur0 = _current_rss_mb()
    enc, head, anchor = build(args.worker, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    peak_cur = [cur0]

    def run(batch: np.ndarray) -> None:
        x = torch.as_tensor(batch, device=device)
        # as the detectors run it: a pooled embedding reads the CLS and last positions alone
        out = enc(x, positions=[0, x.shape[1]] if anchor == "last" else None)
        head(pool(out.hidden, x, anchor)).argmax(-1).cpu()
        peak_cur[0] = max(peak_cur[0], _current_rss_mb())

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    res = {"model": args.worker, "n_params": sum(p.numel() for p in enc.parameters()),
           "n_params_active": enc.n_active_params, "threads": args.threads, "device": device}
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        # throughput: the whole log in batches of 1024, after one warm-up batch
        bs = 1024
        run(ids_all[:bs])
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        reps = 0
        while True:
            for s in range(0, len(ids_all), bs):
                run(ids_all[s:s + bs])
                n += min(bs, len(ids_all) - s)
            reps += 1
            sync()
            if time.perf_counter() - t0 > args.min_seconds or reps >= 3:
                break
        res["throughput_flows_per_s"] = n / (time.perf_counter() - t0)
        # per CPU-second of this process: steadier than wall time when other jobs share the cores
        res["throughput_flows_per_cpu_s"] = n / (time.process_time() - c0)
        for b in (1, 64):
            times = []
            for _ in range(5):
                run(ids_all[:b])
            for _ in range(args.latency_iters):
                s = int(rng.integers(0, len(ids_all) - b))
                sync()
                t = time.perf_counter()
                run(ids_all[s:s + b])
                sync()
                times.append((time.perf_counter() - t) * 1e3)
            res[f"latency_ms_b{b}_p50"] = float(np.percentile(times, 50))
            res[f"latency_ms_b{b}_p99"] = float(np.percentile(times, 99))
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["rss_before_model_mb"] = rss0 / 1024
    # ru_maxrss is often set by imports; the resident size sampled after every batch shows what
    # the model and its activations add over the process as it was before the model was built
    res["current_rss_before_model_mb"] = cur0
    res["peak_current_rss_mb"] = peak_cur[0]
    res["model_rss_mb"] = peak_cur[0] - cur0
    if device == "cuda":
        res["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print(json.dumps(res))


def one_process(args, specs: list[str], names: dict[str, str], ids_all: np.ndarray) -> list[str]:
    """Every model in this one process, measured interleaved: ``--rounds`` rounds, each passing
    ``--flows`` flows through every model in turn (batches of 1024, CPU seconds, best round kept),
    then batch-1 and batch-64 latencies (CPU time) with each random slice timed on every model in
    turn. On a shared machine the load moves between separate runs; interleaved, every model sees
    the same moments, so the ratios hold where the absolute rates do not. Returns the table's lines."""
    import torch

    from zeekml.nn.dense import pool

    torch.set_num_threads(args.threads)
    built = {s: build(s, args.device) for s in specs}

    def run(spec: str, batch: np.ndarray) -> None:
        enc, head, anchor = built[spec]
        x = torch.as_tensor(batch, device=args.device)
        out = enc(x, positions=[0, x.shape[1]] if anchor == "last" else None)
        head(pool(out.hidden, x, anchor)).argmax(-1).cpu()

    n = min(args.flows, len(ids_all))
    cpu = {s: [] for s in specs}
    lat = {(s, b): [] for s in specs for b in (1, 64)}
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for s in specs:
            run(s, ids_all[:1024])
        for _ in range(args.rounds):
            for s in specs:
                c0 = time.process_time()
                for i in range(0, n, 1024):
                    run(s, ids_all[i:i + 1024])
                cpu[s].append(time.process_time() - c0)
        for b in (1, 64):
            for _ in range(args.latency_iters):
                i = int(rng.integers(0, len(ids_all) - b))
                for s in specs:
                    # CPU time of this thread (torch runs on it alone with one thread): wall time
                    # on a loaded machine is mostly waiting for a core, in ~10 ms scheduler slices
                    t = time.thread_time()
                    run(s, ids_all[i:i + b])
                    lat[(s, b)].append((time.thread_time() - t) * 1e3)
    ref = specs[0]
    rate = {s: n / min(cpu[s]) for s in specs}
    p50 = {k: float(np.percentile(v, 50)) for k, v in lat.items()}
    lines = [f"one process, {args.rounds} interleaved rounds of {n:,} flows (best kept), latency over "
             f"{args.latency_iters} random slices timed on every model in turn; ratios against {names[ref]}",
             "",
             "| model | params (total / active per token) | flows per CPU-s @1024 | ratio | p50 / p99 CPU ms @1 | "
             "ratio | p50 / p99 CPU ms @64 | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for s in specs:
        enc = built[s][0]
        lines.append(f"| {names[s]} | {enc.n_params:,} / {enc.n_active_params:,} | {rate[s]:,.0f} | "
                     f"{rate[s] / rate[ref]:.2f}x | {p50[(s, 1)]:.2f} / {np.percentile(lat[(s, 1)], 99):.2f} | "
                     f"{p50[(s, 1)] / p50[(ref, 1)]:.2f}x | {p50[(s, 64)]:.2f} / "
                     f"{np.percentile(lat[(s, 64)], 99):.2f} | {p50[(s, 64)] / p50[(ref, 64)]:.2f}x |")
    return lines


def e2e_worker(args) -> None:
    """The detector end to end, as ``zeekml score`` runs it: the model dir's ``TokenDetector``
    fitted on the earliest 30% of the log (tokens, encoder, kNN reference) and scoring every conn
    (tokens, encoder, kNN distance); wall and CPU seconds of the two together."""
    import torch

    from zeekml.scoring.detectors.token import TokenKind
    from zeekml.train.data import load_conns
    from zeekml.train.moe import LoadedTokenModel

    torch.set_num_threads(args.threads)
    table = load_conns(args.log)
    kind = LoadedTokenModel.from_dir(args.e2e).kind
    det = TokenKind(kind).detector(args.e2e, args.device)
    order = np.argsort(table.column("ts").to_numpy(zero_copy_only=False), kind="stable")
    baseline = table.take(np.sort(order[: int(0.3 * table.num_rows)]))
    t0, c0 = time.perf_counter(), time.process_time()
    det.fit(baseline)
    scores = det.score(table)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"model": args.e2e, "e2e_flows": table.num_rows + baseline.num_rows,
                      "e2e_flows_per_s": (table.num_rows + baseline.num_rows) / wall,
                      "e2e_flows_per_cpu_s": (table.num_rows + baseline.num_rows) / cpu,
                      "e2e_score_mean": float(np.mean(scores))}))


def ffn_variant(spec: str) -> str:
    """``ffn=W:DIR`` / ``ffn-alt=W:DIR``: a copy of the dense token model ``DIR`` (in a temporary
    directory) whose feed-forward blocks keep only their first ``W`` units, in every block
    (``ffn``) or at the MoE positions 1, 3, ... (``ffn-alt``). A speed bound, not a model: with
    ``W = 1`` the blocks cost next to nothing, so its detector's speed-up over ``DIR``'s is the
    most any feed-forward design (sparse experts included) could give; its scores mean nothing."""
    import torch

    from zeekml.scoring.detectors.base import read_config
    from zeekml.train.artifact import save_model_dir

    what, rest = spec.split("=", 1)
    width, src = rest.split(":", 1)
    width = int(width)
    cfg = dict(read_config(src))
    if cfg.get("kind") != "dense":
        sys.exit(f"{spec}: {src} is not a dense token model")
    state = torch.load(os.path.join(src, "weights.pt"), weights_only=True)
    enc = dict(cfg["encoder"])
    for i in range(enc["n_layers"]):
        if what == "ffn-alt" and i % 2 == 0:
            continue
        p = f"encoder.blocks.{i}.ff."
        state[p + "up.weight"] = state[p + "up.weight"][:width].clone()
        state[p + "up.bias"] = state[p + "up.bias"][:width].clone()
        state[p + "down.weight"] = state[p + "down.weight"][:, :width].clone()
    enc["d_ff_alt"] = width
    if what == "ffn":
        enc["d_ff"] = width
    cfg["encoder"] = enc
    kind = cfg.pop("kind")
    out = tempfile.mkdtemp(prefix="moe_ffn_variant_")
    save_model_dir(out, kind, cfg, state, [f"timing variant of {src}: {spec}"])
    return out


def detector_speed(args) -> dict:
    """``--detector-speed``: the token detectors of ``--models`` (model dirs, full or
    ``causal_window`` attention) on the same conns, in this one process, interleaved: per log,
    each detector fitted on the earliest 30%% of the log by ts (the kNN reference), then, each
    round and model in turn, the conns' embeddings (``TokenDetector._reference_input``: tokens,
    encoder, pooling) and their kNN distances timed apart; best round kept per model, ratios
    against the first model. Also checks the scores are finite and one per conn."""
    import glob

    from zeekml.flows.select import earliest_rows, ts_sort_key
    from zeekml.scoring.registry import get_kind
    from zeekml.scoring.detectors.base import read_config
    from zeekml.train.data import load_conns

    import pyarrow as pa

    logs = {}
    for spec in args.detector_speed:
        if spec.startswith("score-speed:"):
            # the ~100k-conn log of bench/score_speed.py (copies of three real captures)
            sys.path.insert(0, os.path.join(ROOT, "bench"))
            from score_speed import build_log

            d = tempfile.mkdtemp(prefix="moe_speed_")
            n = build_log(d, int(spec.split(":", 1)[1]))
            logs[f"score_speed ({n:,} conns)"] = sorted(glob.glob(os.path.join(d, "*.log")))
        else:
            logs[spec] = [spec]            # a file or a directory of rotated logs
    dirs = {m: ffn_variant(m) if m.startswith(("ffn=", "ffn-alt=")) else m for m in args.models}
    dets = {m: get_kind(read_config(d)["kind"]).detector(d) for m, d in dirs.items()}
    out: dict = {"rounds": args.rounds, "threads": args.threads, "logs": {}}
    for name, files in logs.items():
        table = load_conns(files)
        base = table.take(pa.array(earliest_rows(ts_sort_key(table), 0.3)))
        for det in dets.values():
            det.fit(base)
        best: dict = {m: {"embed": float("inf"), "knn": float("inf")} for m in dets}
        for _ in range(args.rounds):
            for m, det in dets.items():
                t0 = time.process_time()
                e = det._reference_input(table)
                t1 = time.process_time()
                sc = det.reference.score(e)
                t2 = time.process_time()
                assert len(sc) == table.num_rows and np.isfinite(sc).all()
                best[m]["embed"] = min(best[m]["embed"], t1 - t0)
                best[m]["knn"] = min(best[m]["knn"], t2 - t1)
        first = next(iter(dets))
        rows = {}
        print(f"\n{name}: {table.num_rows:,} conns, fitted on {base.num_rows:,}; CPU seconds, best of {args.rounds}")
        print(f"  {'model':28s} {'embed s':>8s} {'kNN s':>7s} {'total s':>8s} {'conns/CPU-s':>12s} {'speed-up':>9s}")
        for m, b in best.items():
            tot = b["embed"] + b["knn"]
            ref = best[first]["embed"] + best[first]["knn"]
            rows[m] = {**b, "total": tot, "conns_per_cpu_s": table.num_rows / tot,
                       "speedup_total": ref / tot, "speedup_embed": best[first]["embed"] / b["embed"]}
            embed_x = best[first]["embed"] / b["embed"]
            label = m if m.startswith("ffn") else os.path.basename(m.rstrip('/'))
            print(f"  {label:28s} {b['embed']:8.2f} {b['knn']:7.2f} {tot:8.2f} "
                  f"{table.num_rows / tot:12,.0f} {ref / tot:8.2f}x (embedding {embed_x:.2f}x)")
        out["logs"][name] = {"conns": table.num_rows, "baseline": base.num_rows, "models": rows}
    return out


def val_losses(args) -> dict:
    """``--val-loss LOG...``: the validation masked-token loss of each of ``--models`` on the
    conns its pretraining held out (``zeekml.train.moe.pretrain_loop``: the same seed's
    permutation of the same corpus, so pass the corpus of the models' README), with the masks of
    the final validation pass (seed + 1): ``all`` over every masked position of the conns'
    windows (the number a base's README states) and ``last`` over the conn's own position alone,
    the state the detector reads; a ``causal_window`` model sees only the past there, a full one
    the whole window either way."""
    import torch

    from zeekml.train.data import load_conns
    from zeekml.train.moe import PretrainConfig, mask_tokens, masked_loss
    from zeekml.scoring.detectors.token import LoadedTokenModel

    table = load_conns(args.val_loss)
    out: dict = {"corpus": args.val_loss, "conns": table.num_rows, "models": {}}
    for m in args.models:
        L = LoadedTokenModel.from_dir(m)
        seed = int(L.config.get("seed", 0))
        cfg = PretrainConfig(**{k: v for k, v in L.config["pretrain"].items()
                                if k in PretrainConfig.__dataclass_fields__})
        n = table.num_rows
        val = np.random.default_rng(seed).permutation(n)[:min(int(n * cfg.val_share), 5000)]
        x = torch.as_tensor(L.tokens(table, rows=val))
        bases = torch.as_tensor(L.tokenizer.bases)
        vg = torch.Generator().manual_seed(seed + 1)
        tot = last = 0.0
        with torch.inference_mode():
            for s in range(0, len(val), 1024):
                ids, reach = L.split(x[s:s + 1024])
                inp, tgt = mask_tokens(ids, bases, cfg, vg, L.tokenizer.service_fields(), None)
                logits = L.mlm(L.states(inp, reach)[1])
                tot += float(masked_loss(logits, tgt)) * len(ids)
                only = torch.full_like(tgt, -100)
                only[:, -1] = tgt[:, -1]
                last += float(masked_loss(logits, only)) * len(ids)
        row = {"val_conns": int(len(val)), "all": round(tot / len(val), 4), "last": round(last / len(val), 4),
               "attention": L.encoder.config.attention}
        out["models"][m] = row
        print(f"{os.path.basename(m.rstrip('/')):24s} {row['attention']:14s} val loss all {row['all']:.4f}  "
              f"own position {row['last']:.4f}  ({len(val):,} conns)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", default=DEFAULT_LOG)
    ap.add_argument("--moe", default=os.path.join(ROOT, "models", "moe-base"))
    ap.add_argument("--dense", default=os.path.join(ROOT, "models", "dense-base"))
    ap.add_argument("--models", nargs="+", default=None,
                    help="model dirs (or dense-wide:DIR) to time instead of --dense, --moe and "
                         "dense-wide:--moe; ratios against the first")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every model this many times, interleaved; keep each one's best run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--min-seconds", type=float, default=10.0)
    ap.add_argument("--latency-iters", type=int, default=300)
    ap.add_argument("--json", default=None)
    ap.add_argument("--allocators", nargs="+", default=["glibc", "tcmalloc"], choices=list(ALLOCATORS),
                    help="malloc settings to run every model under (default: glibc, tcmalloc)")
    ap.add_argument("--one-process", action="store_true",
                    help="time every model in this one process, interleaved (throughput and latency "
                         "ratios only: no memory figures, no allocator runs)")
    ap.add_argument("--flows", type=int, default=8192, help="flows per model per round (--one-process)")
    ap.add_argument("--end-to-end", action="store_true",
                    help="also time each model dir's detector end to end: fit on the earliest 30%% "
                         "of the log and score every conn (tokens, encoder, kNN), in its own process")
    ap.add_argument("--detector-speed", nargs="+", default=None, metavar="LOG",
                    help="time the detectors of --models (dirs) on these logs in this process "
                         "(embedding and kNN, interleaved rounds, CPU time); 'score-speed:N' = the "
                         "N-conn log of bench/score_speed.py")
    ap.add_argument("--val-loss", nargs="+", default=None, metavar="LOG",
                    help="validation masked-token loss of --models on the conns their pretraining "
                         "held out of this corpus (all masked positions, and the conn's own)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--e2e", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ids", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.e2e:
        e2e_worker(args)
        return
    if args.val_loss:
        res = val_losses(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        return
    if args.detector_speed:
        import torch

        torch.set_num_threads(args.threads)
        res = detector_speed(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        return

    from zeekml.train.data import load_conns
    from zeekml.train.moe import LoadedTokenModel

    table = load_conns(args.log)
    if args.models:
        specs = list(args.models)
        names = {s: (f"dense-wide of {os.path.basename(s.split(':', 1)[1].rstrip('/'))}"
                     if s.startswith("dense-wide:") else os.path.basename(s.rstrip("/"))) for s in specs}
    else:
        specs = [args.dense, args.moe, f"dense-wide:{args.moe}"]
        names = {args.dense: "dense twin", args.moe: "moe", f"dense-wide:{args.moe}": "dense-wide"}
    for sp in specs:
        if sp.startswith("arch:"):
            names[sp] = sp.split(":", 1)[1]
    dirs = [s.split(":", 1)[1] if s.startswith("dense-wide:") else s for s in specs
            if not s.startswith("arch:")] or [args.moe]
    tok = LoadedTokenModel.from_dir(dirs[0]).tokenizer
    for d in dirs[1:]:
        if LoadedTokenModel.from_dir(d).tokenizer.to_dict() != tok.to_dict():
            sys.exit(f"{d}: another tokenizer than {dirs[0]}'s: the models would not see the same tokens")
    t0 = time.perf_counter()
    ids = tok.transform(table)
    tok_rate = table.num_rows / (time.perf_counter() - t0)
    if args.one_process:
        lines = one_process(args, specs, names, ids)
        print("\n".join(lines))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"log": os.path.basename(args.log), "flows": table.num_rows,
                           "shape": list(ids.shape), "models": specs, "table": lines}, f, indent=2)
        return
    best: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ids.npy")
        np.save(path, ids)
        for _ in range(args.rounds):
            for alloc in [a for a in args.allocators if _available(a)]:
                for spec in specs:
                    cmd = [sys.executable, os.path.abspath(__file__), "--worker", spec, "--ids", path,
                           "--threads", str(args.threads), "--device", args.device,
                           "--min-seconds", str(args.min_seconds), "--latency-iters", str(args.latency_iters)]
                    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), **ALLOCATORS[alloc])
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                    r = dict(json.loads(out.stdout.strip().splitlines()[-1]), allocator=alloc, model=spec)
                    print(f"{alloc} {spec}: {r}", file=sys.stderr)
                    if args.end_to_end and not spec.startswith(("dense-wide:", "arch:")):
                        cmd = [sys.executable, os.path.abspath(__file__), "--e2e", spec, "--log", args.log,
                               "--threads", str(args.threads), "--device", args.device]
                        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                        r.update(json.loads(out.stdout.strip().splitlines()[-1]))
                        r["model"] = spec
                    prev = best.get((alloc, spec))
                    if prev is None:
                        best[(alloc, spec)] = dict(r, runs=[r])
                        continue
                    prev["runs"].append(r)
                    # each figure its best run: throughput highest, latency and memory lowest
                    for key, v in r.items():
                        if key.startswith("throughput") or key.startswith("e2e_flows_per"):
                            prev[key] = max(prev[key], v)
                        elif key.startswith("latency") or key.endswith("_mb"):
                            prev[key] = min(prev[key], v)
    results = list(best.values())
    cuda = args.device == "cuda"
    lines = [f"inputs: {os.path.basename(args.log)}, {table.num_rows} flows x {ids.shape[1]} tokens x "
             f"{ids.shape[2]} fields ({tok.source} tokens); tokenizer {tok_rate:,.0f} flows/s; "
             f"torch threads {args.threads}; device {args.device}",
             "",
             f"ratios against {names[specs[0]]}" + (f"; best of {args.rounds} interleaved runs each"
                                                     if args.rounds > 1 else ""),
             "",
             "| malloc | model | params (total / active per token) | flows/s @1024 | ratio | "
             "flows per CPU-s | ratio | "
             "p50 / p99 ms @1 | ratio | p50 / p99 ms @64 | peak RSS MB | model + activations MB | ratio |"
             + (" CUDA max alloc MB |" if cuda else "")
             + (" detector end to end, flows per CPU-s | ratio |" if args.end_to_end else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cuda else "")
             + ("---|---|" if args.end_to_end else "")]
    for r in results:
        base = next(b for b in results if b["allocator"] == r["allocator"] and b["model"] == specs[0])
        lines.append(
            f"| {r['allocator']} | {names[r['model']]} | {r['n_params']:,} / {r['n_params_active']:,} | "
            f"{r['throughput_flows_per_s']:,.0f} | "
            f"{r['throughput_flows_per_s'] / base['throughput_flows_per_s']:.2f}x | "
            f"{r['throughput_flows_per_cpu_s']:,.0f} | "
            f"{r['throughput_flows_per_cpu_s'] / base['throughput_flows_per_cpu_s']:.2f}x | "
            f"{r['latency_ms_b1_p50']:.2f} / {r['latency_ms_b1_p99']:.2f} | "
            f"{r['latency_ms_b1_p50'] / base['latency_ms_b1_p50']:.2f}x | "
            f"{r['latency_ms_b64_p50']:.2f} / {r['latency_ms_b64_p99']:.2f} | {r['peak_current_rss_mb']:.0f} | "
            f"{r['model_rss_mb']:.0f} | {r['model_rss_mb'] / max(base['model_rss_mb'], 1):.2f}x |"
            + (f" {r['cuda_max_memory_allocated_mb']:.1f} |" if cuda else "")
            + ((f" {r['e2e_flows_per_cpu_s']:,.0f} | {r['e2e_flows_per_cpu_s'] / base['e2e_flows_per_cpu_s']:.2f}x |"
                if "e2e_flows_per_cpu_s" in r and "e2e_flows_per_cpu_s" in base else " | |")
               if args.end_to_end else ""))
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"log": os.path.basename(args.log), "flows": table.num_rows, "shape": list(ids.shape),
                       "tokenizer_flows_per_s": tok_rate, "results": results, "table": lines}, f, indent=2)


if __name__ == "__main__":
    main()
