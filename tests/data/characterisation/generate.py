"""Regenerate the characterisation goldens (see README.md here: only for an intended behaviour change).

Usage (from anywhere):

    python tests/data/characterisation/generate.py [CHECKOUT]

CHECKOUT is the checkout whose behaviour is the reference (default: the one holding this file;
for issue 13 a worktree of c5f0233): its code runs, on its ``examples/`` with its ``models/``. The goldens are
written beside this file, normalised exactly as
``tests/golden/test_characterisation.py`` normalises the current outputs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "golden"))

from test_characterisation import (CONN_NOTICES, DASK_DIFFERS, PINNED_ENV,  # noqa: E402
                                   normalise_log, normalise_summary, run_zeekml, write_gz)


def run_cli(checkout: str, args: list[str]) -> None:
    """The test's own ``run_zeekml`` (``PINNED_ENV``), on CHECKOUT's code and files, with
    ``--conn-notices`` (the goldens hold the per-conn notices: see ``CONN_NOTICES``)."""
    args = [*args, CONN_NOTICES]
    env = dict(os.environ, PYTHONPATH=checkout, **PINNED_ENV)
    # Which zeekml runs matters: the goldens must come from CHECKOUT, not an installed copy.
    where = subprocess.run([sys.executable, "-c", "import zeekml; print(zeekml.__file__)"], env=env,
                           cwd=checkout, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(os.path.abspath(checkout) + os.sep), where
    run_zeekml(args, {"PYTHONPATH": checkout}, cwd=checkout)


def store(out: str, name: str, feedback: str | None = None) -> None:
    dest = os.path.join(HERE, name)
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(out, "verdicts.jsonl"), "rb") as f:
        write_gz(os.path.join(dest, "verdicts.jsonl.gz"), f.read())
    with open(os.path.join(out, "zeekml_notice.log"), "rb") as f:
        notices = normalise_log(f.read())
    with open(os.path.join(dest, "zeekml_notice.log"), "wb") as f:
        f.write(notices)
    with open(os.path.join(out, "quarantine.jsonl"), "rb") as f, \
            open(os.path.join(dest, "quarantine.jsonl"), "wb") as g:
        g.write(f.read())
    with open(os.path.join(out, "summary.json")) as f:
        summary = normalise_summary(json.load(f))
    with open(os.path.join(dest, "summary.json"), "w") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if feedback:
        with open(feedback, "rb") as f, open(os.path.join(dest, "zeekml_verdicts.log"), "wb") as g:
            g.write(normalise_log(f.read()))


def main() -> None:
    checkout = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", ".."))
    with tempfile.TemporaryDirectory() as tmp:
        def out(name: str) -> str:
            return os.path.join(tmp, name)

        run_cli(checkout, ["score", "examples/", "--out", out("score"), "--no-progress"])
        run_cli(checkout, ["score", "examples/", "--out", out("feedback"), "--no-progress",
                           "--zeek-feedback", out("zeekml_verdicts.log")])
        with open(out("score") + "/verdicts.jsonl", "rb") as f, \
                open(out("feedback") + "/verdicts.jsonl", "rb") as g:
            assert f.read() == g.read(), "--zeek-feedback changed verdicts.jsonl"
        store(out("score"), "score", feedback=out("zeekml_verdicts.log"))
        run_cli(checkout, ["score", "examples/", "--out", out("nomodels"), "--no-models", "--no-progress"])
        store(out("nomodels"), "score-no-models")
        run_cli(checkout, ["score", "examples/", "--out", out("base"), "--baseline", "examples/",
                           "--no-progress"])
        store(out("base"), "score-baseline-examples")
        # --dask: store only the verdict lines that differ from the single-process run (see
        # DASK_DIFFERS in the test for why there are any); everything else must be equal.
        run_cli(checkout, ["score", "examples/", "--out", out("dask"), "--dask", "local:1",
                           "--no-progress"])
        with open(out("score") + "/verdicts.jsonl", "rb") as f:
            single = f.read().splitlines(keepends=True)
        with open(out("dask") + "/verdicts.jsonl", "rb") as f:
            dask = f.read().splitlines(keepends=True)
        assert len(single) == len(dask)
        differs = [d for s, d in zip(single, dask) if s != d]
        assert all(json.loads(s)["uid"] == json.loads(d)["uid"] for s, d in zip(single, dask))
        with open(os.path.join(HERE, DASK_DIFFERS), "wb") as f:
            f.write(b"".join(differs))
    print(f"goldens written under {HERE}")


if __name__ == "__main__":
    main()
