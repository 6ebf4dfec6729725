"""CPU inference speed of the GNN, graph building and forward pass measured separately.

    python bench/gnn_speed.py --model models/gnn-base --log ../shared/data/iot23-ctu-34-1/conn.log.labeled

Prints flows/s (conn records per second) for: flow features, graph building (FlowGraphBuilder
over the whole log in pieces of segment_flows), the forward pass (inference_mode, whole log),
and, beside them, the IsolationForest baseline's featurise+score on the same rows. Median of
--repeat runs. On a shared machine the numbers move with the other load: run it twice.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    import torch

    from zeekml.scoring.detector import IsolationForestDetector
    from zeekml.train import gnn as G
    from zeekml.train.data import load_conns

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/gnn-base")
    ap.add_argument("--log", nargs="+", default=[os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                              "data", "iot23-ctu-34-1", "conn.log.labeled")])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=None, help="only the first N conns")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    table = load_conns(args.log)
    if args.rows:
        table = table.slice(0, args.rows)
    n = table.num_rows
    bundle, cfg = G.load_bundle(args.model)
    model = bundle.model.eval()
    builder = bundle.builder()

    t_feat, x = timed(lambda: bundle.features(table), args.repeat)
    t_build, graphs = timed(lambda: list(builder.iter_graphs(table, x)), args.repeat)

    def forward():
        with torch.inference_mode():
            for g in graphs:
                model(g.x_dict, g.edge_index_dict)
    forward()  # warm-up
    t_fwd, _ = timed(forward, args.repeat)
    flows = sum(g["flow"].num_nodes for g in graphs)
    edges = sum(int(g[et].edge_index.size(1)) for g in graphs for et in g.edge_types)

    iso = IsolationForestDetector(seed=0).fit(table)
    t_iso, _ = timed(lambda: iso.score(table), args.repeat)

    det = G.GNNDetector(bundle).fit(table)
    small = table.slice(0, min(400, n))
    t_det400, _ = timed(lambda: det.score(small), args.repeat)

    out = {
        "conns": n, "flow_nodes": flows, "edges": edges, "graphs": len(graphs),
        "n_params": cfg["n_params"], "threads": args.threads,
        "features_flows_per_s": round(n / t_feat), "graph_build_flows_per_s": round(n / t_build),
        "forward_flows_per_s": round(n / t_fwd),
        "gnn_total_flows_per_s": round(n / (t_feat + t_build + t_fwd)),
        "iforest_score_flows_per_s": round(n / t_iso),
        "ratio_gnn_total_vs_iforest": round((n / (t_feat + t_build + t_fwd)) / (n / t_iso), 3),
        "detector_score_400_conns_s": round(t_det400, 3),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
