"""What a new user hit trying every command (issue 16 item 5): one test or more per paper cut."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from zeekml.cli import main

EXAMPLES = Path(__file__).parent.parent.parent / "examples"
CONN = EXAMPLES / "zeek" / "conn.log"


def _zeekml(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zeekml", *args], **kw)


def test_cat_reads_stdin_plain_and_gzip():
    want = CliRunner().invoke(main, ["cat", str(CONN), "-f", "ts,uid"]).stdout
    for data in (CONN.read_bytes(), gzip.compress(CONN.read_bytes())):
        r = CliRunner().invoke(main, ["cat", "-", "-f", "ts,uid"], input=data)
        assert r.exit_code == 0, r.output
        assert r.stdout == want and len(want.splitlines()) == 360


def test_cat_stdin_unknown_format_is_one_line_error():
    r = CliRunner().invoke(main, ["cat", "-"], input=b"hello\nworld\n")
    assert r.exit_code == 3
    assert r.stderr.strip().splitlines() == [
        "zeekml: error: <stdin>: not a Zeek TSV/JSON/CSV log or a Suricata eve.json file"]


def test_cat_into_closed_pipe_exits_0_quietly():
    # 2000 conns of JSON are far more than a pipe buffer, so the writer meets a closed pipe
    p = _zeekml("cat", str(EXAMPLES / "iot23" / "conn.log.labeled"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert json.loads(first)["uid"] and err == b""

DNS_LOG = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
           b"#path\tdns\n#fields\tts\tuid\tquery\n#types\ttime\tstring\tstring\n"
           b"1.0\tCabc\texample.com\n")


def _score(*args: str):
    return CliRunner().invoke(main, ["score", *args, "--no-models", "--no-progress"])


def test_score_non_conn_file_is_named_and_alone_is_exit_2(tmp_path, caplog):
    dns = tmp_path / "dns.log"
    dns.write_bytes(DNS_LOG)
    r = _score(str(dns), "--out", str(tmp_path / "a"))
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "zeekml: error: no conn records in any input (Zeek conn.log or Suricata eve.json "
        "flows): nothing to score")
    assert f"{dns}: no conn records (#path dns)" in caplog.text
    caplog.clear()
    r = _score(str(dns), str(CONN), "--out", str(tmp_path / "b"))
    assert r.exit_code == 0, r.output
    assert f"{dns}: no conn records (#path dns)" in caplog.text
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["scored"] == 360


def test_score_empty_directory_is_missing_input_exit_2(tmp_path):
    (tmp_path / "logs").mkdir()
    r = _score(str(tmp_path / "logs"), "--out", str(tmp_path / "out"))
    assert r.exit_code == 2
    assert r.stderr.strip() == f"zeekml: error: no conn or eve logs found in {tmp_path / 'logs'}"


TRACES = Path(__file__).parent.parent / "data" / "zeek-btest" / "Traces"


def test_score_capture_suggests_replay(tmp_path, caplog):
    for trace in (TRACES / "dhcp" / "dhcp.pcap", TRACES / "pcapng-multi-interface.pcapng"):
        r = _score(str(trace), "--out", str(tmp_path / trace.suffix.lstrip(".")))
        assert r.exit_code == 3          # unknown format: not a log zeekml score reads
        assert r.stderr.strip().splitlines()[-1] == (
            f"zeekml: error: no input file could be read: {trace}: looks like a capture: "
            "use zeekml replay")
    caplog.clear()
    r = _score(str(TRACES / "dhcp" / "dhcp.pcap"), str(CONN), "--out", str(tmp_path / "both"))
    assert r.exit_code == 7
    assert "dhcp.pcap: looks like a capture: use zeekml replay" in r.stderr


def test_score_notices_are_in_ts_order(tmp_path):
    from zeekml.parse import read_table

    # examples/ lists iot23 (2018) before zeek (2013): input order is not time order
    r = _score(str(EXAMPLES), "--out", str(tmp_path / "out"), "--fpr", "0.01", "--conn-notices")
    assert r.exit_code == 0, r.output
    notices = read_table(str(tmp_path / "out" / "zeekml_notice.log")).to_pylist()
    ts = [n["ts"] for n in notices]
    assert len(ts) > 5 and ts == sorted(ts)
    verdicts = [json.loads(x) for x in (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()]
    alerts = [v for v in verdicts if v["alert"]]
    assert sorted(n["uid"].decode() for n in notices) == sorted(v["uid"] for v in alerts)
    assert [v["ts"] for v in alerts] != sorted(v["ts"] for v in alerts)  # the order did change


MODELS = Path(__file__).parent.parent.parent / "models"


def test_watch_calibration_records_the_detectors_that_ran(tmp_path):
    if not (MODELS / "gnn-base" / "config.json").exists():
        pytest.skip("models/ not shipped")
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(CONN, logs / "conn.log")
    out = tmp_path / "w"
    args = ["watch", str(logs), "--out", str(out), "--once", "--baseline", str(CONN), "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    cal = json.loads((out / "calibration.json").read_text())
    assert len(cal["models"]) >= 2 and "iforest" in cal["models"]
    assert cal["options"]["detectors"] == cal["models"]
    # a calibration.json written before the list was recorded right still matches
    cal["options"]["detectors"] = ["iforest"]
    (out / "calibration.json").write_text(json.dumps(cal, indent=2) + "\n")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "calibration.json").read_text())["options"]["detectors"] == cal["models"]


def _all_commands():
    import click

    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            sub = click.Context(cmd, parent=ctx)
            yield from ((f"{name} {s}", cmd.get_command(sub, s)) for s in cmd.list_commands(sub))
        else:
            yield name, cmd


def test_every_out_option_has_short_o(tmp_path):
    with_out = [name for name, cmd in _all_commands()
                if any("--out" in p.opts and "-o" in p.opts for p in cmd.params)]
    without = [name for name, cmd in _all_commands()
               if any("--out" in p.opts and "-o" not in p.opts for p in cmd.params)]
    assert without == [] and {"score", "watch", "replay", "embed", "pretrain"} <= set(with_out)
    r = _score(str(CONN), "-o", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "verdicts.jsonl").exists()


def test_named_options_have_help_and_readme_gives_model_right():
    import click

    asked = {"--baseline-fraction", "--seed", "--shots", "--fraction", "--model"}
    seen = set()
    for name, cmd in _all_commands():
        for p in cmd.params:
            hit = asked & set(p.opts)
            if hit:
                seen |= hit
                assert isinstance(p, click.Option) and p.help, (name, p.opts)
    assert seen == asked
    models = dict(_all_commands())
    kinds = [n for n in ("pretrain", "finetune", "predict", "eval")
             if isinstance(next(p for p in models[n].params if p.name == "model" or
                                "--model" in getattr(p, "opts", ())).type, click.Choice)]
    assert kinds == ["pretrain", "finetune"]
    readme = (Path(__file__).parent.parent.parent / "README.md").read_text()
    assert "`zeekml pretrain/finetune --model {gnn,moe,dense,mae}" in readme
    assert "`zeekml predict/eval --model DIR" in readme


def test_models_list_shows_size_and_headline_metrics(tmp_path):
    d = tmp_path / "models" / "tiny-gnn"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"kind": "gnn", "n_params": 1234}))
    (d / "weights.pt").write_bytes(b"\0" * 2_500_000)
    (d / "manifest.json").write_text(json.dumps({"kind": "gnn", "metrics": {
        "pretrain_loss": [0.6, 0.3], "link_auroc": 0.97571, "val_loss": 0.31234,
        "train_loss": 0.4, "conns": 52214}}))
    r = CliRunner().invoke(main, ["models", "list", "--dir", str(tmp_path / "models")])
    assert r.exit_code == 0, r.output
    line = r.stdout.strip()
    assert line.split() == ["tiny-gnn", "gnn", "1,234", "params", "2.5", "MB", "pretrained",
                            "link_auroc", "0.976,", "val_loss", "0.312,", "52,214", "conns"]
    (d / "manifest.json").write_text("{")
    r = CliRunner().invoke(main, ["models", "list", "--dir", str(tmp_path / "models")])
    assert r.exit_code == 5 and "manifest.json: unreadable manifest" in r.stderr


def test_watch_status_while_collecting_the_baseline_counts_baseline_conns():
    from zeekml.pipeline import status_line
    from zeekml.pipeline.live.options import WatchStats

    d = WatchStats(state="calibrating", files_open=1, files_tracked=2).to_dict()
    d["calibration"] = {"collected": 5000, "wanted": 10000}
    assert status_line(d) == "calibrating: baseline 5,000/10,000 conns, 1/2 files"
    d["calibration"] = {"collected": 5000, "wanted": None}     # a baseline period
    assert status_line(d) == "calibrating: baseline 5,000 conns, 1/2 files"
    d["state"], d["calibration"] = "running", {"records": 10000}
    assert status_line(d).startswith("running: 0 records/s")


def test_score_progress_goes_on_through_fitting_and_scoring(tmp_path):
    import os
    import re

    env = dict(os.environ, FORCE_COLOR="1", OMP_NUM_THREADS="1")  # rich draws as on a terminal
    p = _zeekml("score", str(CONN), "-o", str(tmp_path / "out"), "--no-models", "--progress",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err.decode())
    steps = ["reading conn.log", "fitting iforest on", "scoring iforest: 360 conns",
             "explaining", "writing 360 verdicts", "grouping alerts into incidents"]
    at = [text.find(s) for s in steps]
    assert -1 not in at and at == sorted(at), (at, text[-2000:])
    quiet = _zeekml("score", str(CONN), "-o", str(tmp_path / "q"), "--no-models",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, err = quiet.communicate(timeout=300)
    assert quiet.returncode == 0 and "fitting" not in err.decode()   # stderr is no terminal


def test_ctrl_c_on_score_is_one_line_and_exit_130(tmp_path):
    import os
    import signal

    fifo = tmp_path / "conn.log"
    os.mkfifo(fifo)
    p = _zeekml("score", str(fifo), "-o", str(tmp_path / "out"), "--no-models", "--no-progress",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # opening the writing end returns once score opened the reading end: it is now blocked
    # reading, a moment with no timing in it
    with open(fifo, "wb") as w:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        w.close()
    assert p.returncode == 130
    assert err.decode() == "zeekml: interrupted\n"


def test_after_ctrl_c_a_second_one_is_ignored_during_shutdown():
    import signal

    import click

    @click.command("boom")
    def boom() -> None:
        raise KeyboardInterrupt

    main.add_command(boom)
    old = signal.getsignal(signal.SIGINT)
    try:
        r = CliRunner().invoke(main, ["boom"])
        assert r.exit_code == 130 and r.stderr == "zeekml: interrupted\n"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)
        main.commands.pop("boom")
