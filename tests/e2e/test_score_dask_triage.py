"""`zeekml score --dask` writes the triage outputs (incidents.jsonl, zeekml_incident.log,
baseline.json) from the alerting verdicts its tasks send back, the same as a run without it."""
import json
from pathlib import Path

from click.testing import CliRunner

from zeekml.cli import main

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def _score(out: Path, *extra: str) -> dict:
    r = CliRunner().invoke(main, ["score", str(EXAMPLES), "--out", str(out), "--no-models",
                                  "--fpr", "0.01", "--no-progress", *extra])
    assert r.exit_code == 0, r.output
    return json.loads((out / "summary.json").read_text())


def _records(path: Path) -> list[bytes]:
    return [x for x in path.read_bytes().splitlines() if not x.startswith((b"#open", b"#close"))]


def test_dask_local_1_writes_the_incidents_of_a_single_process_run(tmp_path):
    """examples/ is three files, so three tasks: each sends back its alerting rows and its conns'
    hosts and times, and the driver builds the incidents of all of them."""
    single, dask = tmp_path / "single", tmp_path / "dask"
    _score(single)
    summary = _score(dask, "--dask", "local:1")
    assert summary["alerts"] > 0
    assert {"incidents", "incident_notices", "baseline"} <= set(summary["outputs"])
    want = (single / "incidents.jsonl").read_bytes()
    assert want.count(b"\n") > 0
    assert (dask / "incidents.jsonl").read_bytes() == want
    assert _records(dask / "zeekml_incident.log") == _records(single / "zeekml_incident.log")
    assert json.loads((dask / "baseline.json").read_text()) == \
        json.loads((single / "baseline.json").read_text())
