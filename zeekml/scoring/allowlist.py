"""Allowlists: conns an analyst has declared benign still get scored but never alert.

A TOML file of ``[[rule]]`` tables; each rule matches when ALL its fields match::

    [[rule]]
    host = "10.0.0.0/8"          # either side (address or CIDR, IPv4 or IPv6)
    resp_p = 53
    proto = "udp"
    reason = "internal resolvers"

Fields: ``host``, ``orig_h``, ``resp_h`` (address or CIDR), ``resp_p`` (0-65535), ``proto``,
``service`` (matches one of Zeek's comma-separated services), ``uid``, ``verdict_id``, and the
required ``reason``. A conn is suppressed by the FIRST rule it matches, so the verdict can name it.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml._core.errors import InputNotFound, UnreadableInput, ZeekmlError
from zeekml._core.outfile import OutputFile

log = logging.getLogger(__name__)

ADDRESS_FIELDS = ("host", "orig_h", "resp_h")
TEXT_FIELDS = ("proto", "service", "uid", "verdict_id")
MATCH_FIELDS = ADDRESS_FIELDS + ("resp_p",) + TEXT_FIELDS
KNOWN_FIELDS = MATCH_FIELDS + ("reason",)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowlistError(ZeekmlError):
    """A malformed allowlist file: names the file and the rule."""


@dataclass(frozen=True)
class Rule:
    """One ``[[rule]]`` table; ``index`` counts from 1 in file order, as the errors and the
    verdicts name it. Unset fields match anything."""

    index: int
    reason: str
    host: Network | None = None
    orig_h: Network | None = None
    resp_h: Network | None = None
    resp_p: int | None = None
    proto: str | None = None
    service: str | None = None
    uid: str | None = None
    verdict_id: str | None = None

    def label(self) -> str:
        """How a verdict names the rule that suppressed it: ``allowlist rule 2: lab scanner``."""
        return f"allowlist rule {self.index}: {self.reason}"

    def to_toml_fields(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {}
        for name in MATCH_FIELDS:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                v = str(v.network_address) if v.num_addresses == 1 else str(v)
            out[name] = v
        out["reason"] = self.reason
        return out


def _network(value: object, where: str) -> Network:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected an address or CIDR string, got {value!r}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not an IP address or CIDR") from None


def parse_rule(table: object, index: int) -> Rule:
    """One rule from its TOML table; ``ValueError`` with a message naming the bad field."""
    if not isinstance(table, dict):
        raise ValueError("is not a table")
    unknown = sorted(set(table) - set(KNOWN_FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(KNOWN_FIELDS)})")
    if not any(k in table for k in MATCH_FIELDS):
        raise ValueError(f"matches everything: give at least one of {', '.join(MATCH_FIELDS)}")
    reason = table.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("needs a non-empty reason = \"...\" (verdicts show it)")
    kw: dict[str, object] = {}
    for name in ADDRESS_FIELDS:
        if name in table:
            kw[name] = _network(table[name], name)
    if "resp_p" in table:
        p = table["resp_p"]
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 65535:
            raise ValueError(f"resp_p: expected a port number 0-65535, got {p!r}")
        kw["resp_p"] = p
    for name in TEXT_FIELDS:
        if name in table:
            v = table[name]
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"{name}: expected a non-empty string, got {v!r}")
            kw[name] = v.strip().lower() if name in ("proto", "service") else v.strip()
    return Rule(index=index, reason=reason.strip(), **kw)


@dataclass
class Allowlist:
    """Rules in file order. ``match`` gives, per conn, the index into ``rules`` of the first rule
    it matches, or -1."""

    rules: list[Rule] = field(default_factory=list)
    path: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Allowlist":
        import tomllib  # here, not at the top: only a run given --allowlist reads TOML

        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise InputNotFound("allowlist file not found", path) from None
        except OSError as e:
            raise UnreadableInput(f"cannot read allowlist: {e.strerror}", path) from None
        except tomllib.TOMLDecodeError as e:
            raise AllowlistError(f"not valid TOML: {e}", path) from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict, path: str | None = None) -> "Allowlist":
        extra = sorted(set(data) - {"rule"})
        if extra:
            raise AllowlistError(f"unknown top-level key {extra[0]!r}: write rules as [[rule]] tables",
                                 path)
        tables = data.get("rule", [])
        if not isinstance(tables, list):
            raise AllowlistError("'rule' must be an array of tables: write [[rule]], not [rule]", path)
        rules = []
        for i, t in enumerate(tables, 1):
            try:
                rules.append(parse_rule(t, i))
            except ValueError as e:
                raise AllowlistError(f"rule {i}: {e}", path) from None
        return cls(rules, path)

    def __len__(self) -> int:
        return len(self.rules)

    def match(self, table: pa.Table, verdict_ids: Sequence[str] | None = None) -> np.ndarray:
        """Index of the first matching rule for each conn of a ``CONN_SCHEMA`` table, -1 if none.

        ``verdict_ids`` (one per row) is needed only by rules with ``verdict_id``; without it such
        rules match nothing. Shapes: ``[n_conns]`` int64.
        """
        n = table.num_rows
        out = np.full(n, -1, dtype=np.int64)
        if n == 0 or not self.rules:
            return out
        cache: dict[tuple[str, object], np.ndarray] = {}
        vids = np.asarray(verdict_ids, dtype=object) if verdict_ids is not None else None
        if vids is not None and len(vids) != n:
            raise ValueError(f"{len(vids)} verdict ids for {n} conns")
        for r_i, rule in enumerate(self.rules):
            mask = np.ones(n, dtype=bool)
            if rule.host is not None:
                mask &= (_in_network(table, "id.orig_h", rule.host, cache)
                         | _in_network(table, "id.resp_h", rule.host, cache))
            if rule.orig_h is not None:
                mask &= _in_network(table, "id.orig_h", rule.orig_h, cache)
            if rule.resp_h is not None:
                mask &= _in_network(table, "id.resp_h", rule.resp_h, cache)
            if rule.resp_p is not None:
                mask &= _fill(pc.equal(table.column("id.resp_p"), pa.scalar(rule.resp_p, pa.uint16())))
            if rule.proto is not None:
                mask &= _fill(pc.equal(pc.utf8_lower(table.column("proto")), rule.proto))
            if rule.service is not None:
                mask &= _per_unique(table.column("service"),
                                    lambda s, want=rule.service: want in s.lower().split(","))
            if rule.uid is not None:
                mask &= _fill(pc.equal(table.column("uid"), rule.uid))
            if rule.verdict_id is not None:
                mask &= (vids == rule.verdict_id) if vids is not None else False
            out[(out == -1) & mask] = r_i
        return out


def _fill(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(bool)


def _per_unique(col: pa.ChunkedArray, test) -> np.ndarray:
    """Apply ``test`` once per distinct non-null string of ``col`` (addresses repeat a lot)."""
    enc = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    hits = np.fromiter((bool(test(v)) for v in enc.dictionary.to_pylist()), dtype=bool,
                       count=len(enc.dictionary))
    idx = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False)
    return np.where(idx >= 0, hits[np.maximum(idx, 0)] if len(hits) else False, False)


def _in_network(table: pa.Table, column: str, net: Network,
                cache: dict[tuple[str, object], np.ndarray]) -> np.ndarray:
    key = (column, net)
    if key not in cache:
        def test(addr: str) -> bool:
            try:
                return ipaddress.ip_address(addr.strip()) in net
            except ValueError:
                return False   # not an address (a hostile log): matches no network
        cache[key] = _per_unique(table.column(column), test)
    return cache[key]


def _toml_value(v: str | int) -> str:
    # json's string escapes (\", \\, \n, \uXXXX) are valid TOML basic-string escapes.
    return str(v) if isinstance(v, int) else json.dumps(v)


def append_rule(path: str | os.PathLike, fields: dict[str, str | int]) -> Rule:
    """Validate ``fields`` as a rule and append it to the allowlist at ``path`` (created if
    missing). The whole file is re-read afterwards so a rule that breaks it is never left there."""
    path = os.fspath(path)
    existing = Allowlist.load(path) if os.path.exists(path) else Allowlist([], path)
    rule = parse_rule(fields, len(existing) + 1)
    lines = ["", "[[rule]]"] + [f"{k} = {_toml_value(v)}" for k, v in rule.to_toml_fields().items()]
    # no symlinks, mode 0640; failures are OutputError naming the file
    with OutputFile(path, truncate=False, append=True, what="allowlist") as f:
        f.write(("\n".join(lines) + "\n").encode())
    reread = Allowlist.load(path)
    if len(reread) != len(existing) + 1:
        raise AllowlistError(f"appended rule {rule.index} but the file now has {len(reread)} rules",
                             path)
    return reread.rules[-1]


def suppress(batch, allowlist: Allowlist) -> dict[int, str]:
    """Apply ``allowlist`` to a scored ``VerdictBatch`` in place: matching conns keep their
    scores but never alert (``alert`` false, no ``msg``/``sub``). Returns row -> the label of the
    rule that matched (``allowlist rule 2: lab scanner``), for every matching row, alerting or not.
    """
    match = allowlist.match(batch.table, batch.ids() if any(r.verdict_id for r in allowlist.rules)
                            else None)
    rows = np.flatnonzero(match >= 0)
    labels = {int(r): allowlist.rules[int(match[r])].label() for r in rows}
    if len(rows):
        batch.alert[rows] = False
        for r in labels:
            batch.msg.pop(r, None)
            batch.sub.pop(r, None)
    if labels:
        log.info("allowlist %s: %d conns matched, %d rules", allowlist.path, len(labels),
                 len({allowlist.rules[int(match[r])].index for r in rows}))
    return labels
