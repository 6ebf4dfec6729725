#!/usr/bin/env bash
# GPU check: the learned detectors on CPU and on CUDA, same data, one run.
#
#   bash bench/gpu_check.sh [CONNS] [OUT_DIR]          (defaults: 100000, a temporary directory)
#
# Measures, on the same generated conn log (bench/score_speed.py's copies of the shared labeled
# logs when $ZEEKML_DATA holds them, else of examples/iot23 and examples/zeek):
#   1. per shipped learned detector: fit on the earliest 30% (the baseline), then score every conn
#      with the detector on the CPU and on the GPU: flows/s of each and the largest score
#      difference relative to the CPU scores' spread (must be <= GPU_RTOL, default 1e-3);
#   2. end to end: `zeekml score LOG --device cpu` and `--device cuda`: flows/s of each, and the
#      verdicts compared conn by conn (same alert on every conn, scores within GPU_RTOL).
# Prints a table and writes OUT_DIR/gpu_check.json. Exit 0 = GPU scores equal CPU scores within
# tolerance; 1 = they differ (what differs is printed); 2 = no CUDA device (nothing measured).
#
# GPU_CHECK_DEVICE=cpu runs the whole script with the CPU standing in for the GPU (a check of the
# script itself on a machine without one; the numbers mean nothing then). Never part of CI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONNS="${1:-100000}"
OUT="${2:-$(mktemp -d -t zeekml-gpu-check-XXXXXX)}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"

if [ "$DEVICE" = "cuda" ]; then
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        info="$("$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}")' 2>&1 | tail -1)"
        echo "gpu_check: no CUDA device visible to torch ($info): nothing measured" >&2
        exit 2
    fi
fi

cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" - "$CONNS" "$OUT" "$DEVICE" <<'PYEOF'
import glob, json, os, subprocess, sys, time

import numpy as np

sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
from score_speed import DATA, SOURCES, build_log  # noqa: E402

conns, out, gpu = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rtol = float(os.environ.get("GPU_RTOL", "1e-3"))
sources = [p for p in SOURCES if os.path.exists(p)] or ["examples/iot23/conn.log.labeled",
                                                        "examples/zeek/conn.log"]
log_dir = os.path.join(out, "logs")
os.makedirs(log_dir, exist_ok=True)
for old in glob.glob(os.path.join(log_dir, "*.log")):
    os.remove(old)
n = build_log(log_dir, conns, sources)
import torch  # noqa: E402

from zeekml.parse import Quarantine  # noqa: E402
from zeekml.pipeline import ScoreSummary, load_conns  # noqa: E402
from zeekml.pipeline.batch import baseline_rows  # noqa: E402
from zeekml.scoring.registry import load_model_detectors  # noqa: E402

name = torch.cuda.get_device_name(0) if gpu == "cuda" else "CPU standing in for the GPU"
print(f"gpu_check: {n} conns from {', '.join(os.path.relpath(s, DATA) if s.startswith(DATA) else s for s in sources)}; "
      f"GPU: {name}; torch {torch.__version__}; tolerance {rtol:g} of the CPU scores' spread", flush=True)
table = load_conns(sorted(glob.glob(os.path.join(log_dir, "*.log"))), Quarantine(), ScoreSummary())
import pyarrow as pa  # noqa: E402

baseline = table.take(pa.array(baseline_rows(table, 0.3)))
result = {"conns": n, "gpu": name, "rtol": rtol, "models": {}, "end_to_end": {}}
failures = []


def timed_scores(device):
    dets = load_model_detectors("", device)
    res = {}
    for d in dets:
        d.fit(baseline)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        s = np.asarray(d.score(table), dtype=np.float64)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        res[d.name] = (s, len(s) / (time.perf_counter() - t0))
    return res


cpu, dev = timed_scores("cpu"), timed_scores(gpu)
print(f"\n{'model':8s} {'CPU flows/s':>12s} {'GPU flows/s':>12s} {'GPU/CPU':>8s} {'max|diff|/spread':>17s}")
for model, (s_cpu, r_cpu) in cpu.items():
    s_dev, r_dev = dev[model]
    spread = float(s_cpu.max() - s_cpu.min()) or 1.0
    rel = float(np.abs(s_dev - s_cpu).max()) / spread
    result["models"][model] = {"cpu_flows_per_s": r_cpu, "gpu_flows_per_s": r_dev, "rel_diff": rel}
    print(f"{model:8s} {r_cpu:12,.0f} {r_dev:12,.0f} {r_dev / r_cpu:7.2f}x {rel:17.3g}")
    if not rel <= rtol:
        failures.append(f"{model}: GPU scores differ from CPU scores by {rel:.3g} of their spread (> {rtol:g})")


def score_run(device):
    o = os.path.join(out, f"score-{device}")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "zeekml", "score", log_dir, "--out", o, "--device", device,
                    "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    with open(os.path.join(o, "verdicts.jsonl")) as f:
        verdicts = [json.loads(line) for line in f]
    return verdicts, n / dt


v_cpu, e_cpu = score_run("cpu")
v_dev, e_dev = score_run(gpu)
alerts_differ = sum(a["alert"] != b["alert"] for a, b in zip(v_cpu, v_dev))
s_cpu = np.array([v["score"] for v in v_cpu])
s_dev = np.array([v["score"] for v in v_dev])
rel = float(np.abs(s_dev - s_cpu).max()) / (float(s_cpu.max() - s_cpu.min()) or 1.0)
result["end_to_end"] = {"cpu_flows_per_s": e_cpu, "gpu_flows_per_s": e_dev, "rel_diff": rel,
                        "alerts_differ": alerts_differ, "verdicts": [len(v_cpu), len(v_dev)]}
print(f"\nend to end (zeekml score): CPU {e_cpu:,.0f} flows/s, GPU {e_dev:,.0f} flows/s "
      f"({e_dev / e_cpu:.2f}x); combined scores max|diff|/spread {rel:.3g}; conns alerting "
      f"differently: {alerts_differ}")
if len(v_cpu) != len(v_dev) or [v["uid"] for v in v_cpu] != [v["uid"] for v in v_dev]:
    failures.append("end to end: the two runs' verdicts are not for the same conns in the same order")
if alerts_differ:
    failures.append(f"end to end: {alerts_differ} conns alert on one device and not the other")
if not rel <= rtol:
    failures.append(f"end to end: combined scores differ by {rel:.3g} of their spread (> {rtol:g})")
result["failures"] = failures
with open(os.path.join(out, "gpu_check.json"), "w") as f:
    json.dump(result, f, indent=1)
print(f"\nwritten: {os.path.join(out, 'gpu_check.json')}")
for msg in failures:
    print(f"gpu_check: FAIL: {msg}", file=sys.stderr)
sys.exit(1 if failures else 0)
PYEOF
