"""Fixtures shared by the CLI tests."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from zeekml.cli import main

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A `score --no-models` run over the labeled IoT-23 example (alerts at --fpr 0.02, which
    test_feedback_cli.py scores again), one per module
    so a test that writes into it (feedback) never changes what another module reads."""
    out = tmp_path_factory.mktemp("run")
    r = CliRunner().invoke(main, ["score", str(EXAMPLES / "iot23" / "conn.log.labeled"), "--out",
                                  str(out), "--no-models", "--no-progress", "--fpr", "0.02"])
    assert r.exit_code == 0, r.output
    return out
