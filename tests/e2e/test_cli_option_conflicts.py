"""Options that contradict each other, or that would do nothing, are refused with one line naming
both (a usage error, exit 2, as "choose one of --baseline, --baseline-until"), before any work;
an option left at its default never counts as given."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from zeekml.cli import main

EXAMPLES = Path(__file__).parent.parent.parent / "examples"
CONN = EXAMPLES / "zeek" / "conn.log"
MODELS = Path(__file__).parent.parent.parent / "models"
WIKI = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "zeek-btest", "Traces",
                    "wikipedia.pcap")


def _refused(r, *names: str) -> None:
    """Exit 2, no traceback, nothing scored, and the one error line names every one of ``names``."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.output
    for name in names:
        assert name in errors[0], r.output


@pytest.mark.parametrize("command", ["score", "watch", "replay"])
def test_no_models_with_models_is_refused(tmp_path, command):
    src = {"score": CONN, "watch": CONN.parent, "replay": WIKI}[command]
    extra = ["--once", "--quiet"] if command == "watch" else []
    r = CliRunner().invoke(main, [command, str(src), "--out", str(tmp_path / "out"),
                                  "--no-models", "--models", str(MODELS), *extra])
    _refused(r, "--no-models", "--models")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", [["--fpr", "0.001"], ["--allowlist", "rules.toml"],
                                    ["--conn-notices"], ["--models", str(MODELS)],
                                    ["--no-models"], ["--device", "cpu"]])
def test_replay_no_score_with_a_scoring_option_is_refused(tmp_path, option):
    # --fpr 0.001 and --device cpu are the defaults: given explicitly, they are still refused
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(tmp_path / "out"),
                                  "--engine", "builtin", "--no-score", *option])
    _refused(r, "--no-score", option[0])
    assert not (tmp_path / "out").exists()


def test_replay_no_score_names_every_scoring_option_given(tmp_path):
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(tmp_path / "out"), "--no-score",
                                  "--fpr", "0.01", "--conn-notices"])
    _refused(r, "--no-score", "--fpr", "--conn-notices")


def test_replay_no_score_alone_still_runs(tmp_path):
    r = CliRunner().invoke(main, ["replay", WIKI, "--out", str(tmp_path / "out"),
                                  "--engine", "builtin", "--no-score", "--seed", "3"])
    assert r.exit_code == 0, r.output


def test_dask_split_bytes_without_dask_is_refused(tmp_path):
    r = CliRunner().invoke(main, ["score", str(CONN), "--out", str(tmp_path / "out"),
                                  "--no-models", "--no-progress", "--dask-split-bytes", "2048"])
    _refused(r, "--dask-split-bytes", "--dask")
    assert not (tmp_path / "out").exists()
    # its default value is not "given": a plain run is not refused
    r = CliRunner().invoke(main, ["score", str(CONN), "--out", str(tmp_path / "out"),
                                  "--no-models", "--no-progress"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("spec", ["bogus", "local:x", "local:", "host:port", "-"])
def test_dask_value_that_is_no_scheduler_says_what_dask_takes(tmp_path, spec):
    r = CliRunner().invoke(main, ["score", str(CONN), "--out", str(tmp_path / "out"),
                                  "--no-models", "--no-progress", "--dask", spec])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"zeekml: error: --dask {spec}: "), r.output
    assert "local, local:N" in lines[0] and "tls://HOST:PORT" in lines[0]
    assert "unauthenticated" not in lines[0]          # not the plain-tcp:// refusal
    assert not (tmp_path / "out").exists()


def test_dask_host_port_still_gets_the_plain_tcp_refusal(tmp_path):
    # a scheduler address without a scheme is Dask's tcp://: the security check answers it
    r = CliRunner().invoke(main, ["score", str(CONN), "--out", str(tmp_path / "out"),
                                  "--no-models", "--no-progress", "--dask", "10.1.2.3:8786"])
    assert r.exit_code == 1, r.output
    assert "plain tcp:// to another host is unauthenticated" in r.stderr
