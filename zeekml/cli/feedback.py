"""``zeekml feedback OUT``: mark a verdict, a host or an incident of a run as benign.

Two effects: a ``[[rule]]`` appended to the allowlist (so later runs with ``--allowlist`` never
alert on it) and a labeled record appended to the feedback file (``label = benign`` with the conns
of this run that the rule covers), which finetuning and the next calibration can use.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import time

import click
import numpy as np
import pyarrow as pa

from zeekml._core.errors import InputNotFound, ZeekmlError
from zeekml._core.outfile import OutputFile

CONN_FIELDS = ("verdict_id", "uid", "ts", "id.orig_h", "id.resp_h", "id.resp_p", "proto", "score",
               "model")


def rule_for_incident(inc: dict, reason: str) -> dict:
    """The narrowest rule that covers an incident: its host in its role, and its one responder
    port when it has only one (a benign backup job on 22/tcp should not hide the host's 445)."""
    role, host = inc.get("role"), inc.get("host")
    if role not in ("orig", "resp") or not isinstance(host, str):
        raise ZeekmlError(f"incident {inc.get('incident_id')} has no host/role to allowlist")
    rule: dict = {"orig_h" if role == "orig" else "resp_h": host}
    ports = inc.get("resp_ports") or []
    if len(ports) == 1 and "/" in str(ports[0]):
        port, proto = str(ports[0]).split("/", 1)
        if port.isdigit():
            rule["resp_p"] = int(port)
            rule["proto"] = proto
    rule["reason"] = reason
    return rule


def covered_conns(verdicts: pa.Table, rule_fields: dict) -> list[dict]:
    """The alerting conns of the run that a rule covers, as feedback records list them."""
    from zeekml.scoring.allowlist import Allowlist

    al = Allowlist.from_dict({"rule": [rule_fields]})
    vids = verdicts.column("verdict_id").to_pylist() if "verdict_id" in verdicts.column_names else None
    hit = al.match(verdicts, vids) == 0
    alert = np.asarray(verdicts.column("alert").to_pylist(), dtype=bool)
    rows = np.flatnonzero(hit & alert)
    cols = [c for c in CONN_FIELDS if c in verdicts.column_names]
    sub = verdicts.take(pa.array(rows, pa.int64())).select(cols)
    return sub.to_pylist()


@click.command("feedback")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--benign", "verdict_id", default=None, metavar="VERDICT_ID",
              help="A verdict of this run (its verdict_id) that is a false positive.")
@click.option("--host", default=None, metavar="IP", help="A host whose conns are benign (either side).")
@click.option("--incident", "incident_id", default=None, metavar="ID",
              help="An incident of this run (its incident_id) that is benign.")
@click.option("--reason", default=None, help="Why (kept in the rule and the feedback record).")
@click.option("--allowlist", "allowlist_path", default=None, type=click.Path(dir_okay=False),
              help="Allowlist TOML to append the rule to (default: OUT/allowlist.toml).")
@click.option("--feedback-file", default=None, type=click.Path(dir_okay=False),
              help="Labeled feedback JSON lines to append to (default: OUT/feedback.jsonl).")
def feedback(out_dir: str, verdict_id: str | None, host: str | None, incident_id: str | None,
             reason: str | None, allowlist_path: str | None, feedback_file: str | None) -> None:
    """Mark one verdict, host or incident of the run in OUT as benign.

    Appends an allowlist rule (use it with `zeekml score --allowlist FILE`) and a labeled
    record (label = benign, with the alerting conns of OUT it covers) to the feedback file.
    Exit codes: 0 ok, 1 a malformed allowlist or an incident without a host to allowlist,
    2 a usage error (none or several of --benign/--host/--incident, a --host that is not an IP
    or CIDR) or OUT or the verdict/incident not found, 4 OUT's outputs or the allowlist
    unreadable, 6 a file cannot be written.
    """
    from zeekml.scoring.allowlist import append_rule
    from zeekml.sinks.report import load_run

    given = [x for x in (verdict_id, host, incident_id) if x is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --benign VERDICT_ID, --host IP, --incident ID")
    if host is not None:
        # a malformed request is refused before OUT is read, whatever OUT holds
        try:
            ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise click.BadParameter(f"{host!r} is not an IP address or CIDR",
                                     param_hint="--host") from None
    run = load_run(out_dir)
    if verdict_id is not None:
        ids = run.verdicts.column("verdict_id").to_pylist() if "verdict_id" in run.verdicts.column_names else []
        if verdict_id not in ids:
            raise InputNotFound(f"no verdict {verdict_id} in verdicts.jsonl", out_dir)
        target = {"verdict_id": verdict_id}
        fields = {"verdict_id": verdict_id, "reason": reason or f"false positive {verdict_id}"}
    elif host is not None:
        target = {"host": host}
        fields = {"host": host, "reason": reason or f"benign host {host}"}
    else:
        match = [i for i in run.incidents if i.get("incident_id") == incident_id]
        if not match:
            raise InputNotFound(f"no incident {incident_id} in this run ({run.incidents_source})", out_dir)
        inc = match[0]
        target = {"incident_id": incident_id}
        fields = rule_for_incident(
            inc, reason or f"benign incident {incident_id}: {inc.get('description', '')}")

    conns = covered_conns(run.verdicts, fields)
    allowlist_path = allowlist_path or os.path.join(out_dir, "allowlist.toml")
    rule = append_rule(allowlist_path, fields)
    given_at = time.time()
    record = {
        "feedback_id": "F" + hashlib.sha1(f"{given_at}|{json.dumps(target)}".encode()).hexdigest()[:16],
        "given_at": given_at, "label": "benign", "target": target, "reason": rule.reason,
        "allowlist": os.path.abspath(allowlist_path), "rule": rule.index, "rule_fields": fields,
        "run": os.path.abspath(out_dir), "conns": conns,
    }
    feedback_file = feedback_file or os.path.join(out_dir, "feedback.jsonl")
    # no symlinks, mode 0640; failures are OutputError naming the file
    with OutputFile(feedback_file, truncate=False, append=True, what="feedback") as f:
        f.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
    click.echo(f"allowlist: {allowlist_path}: added rule {rule.index} ({rule.reason})")
    click.echo(f"feedback: {feedback_file}: label benign for {len(conns):,} alerting conn(s) of this run")


COMMANDS = [feedback]
