"""The columns of ``zeekml_flow.log``: the first packets of each connection.

Two writers produce this log and must agree column for column: the Zeek package
(``zeek-scripts/scripts/flow-features.zeek``, record ``ZeekML::FlowInfo``) and zeekml's built-in
flow meter (``zeekml.sources.flowmeter``). A test parses the Zeek record and compares it to
``FLOW_FEATURES_FIELDS``.

Per connection, for the first N packets (Zeek option ``ZeekML::flow_packets``, default 32),
in both directions together:

- ``dirs``: 0 = sent by the originator, 1 = sent by the responder;
- ``ip_lens``: the IP total length (IPv6: payload length + 40);
- ``iats``: seconds since the previous packet of the same connection (0.0 for the first);
- ``tcp_flags``: the TCP flags byte (0 for non-TCP);
- ``n_pkts``: how many packets were recorded (at most N).

``ts`` is the connection start, as in conn.log. One record per connection, written when the
connection is removed.
"""
from __future__ import annotations

FLOW_LOG_PATH = "zeekml_flow"
"""The ``#path`` of the log (and the stem of its file name)."""

DEFAULT_FLOW_PACKETS = 32
"""Default number of packets recorded per connection (Zeek option ``ZeekML::flow_packets``)."""

FLOW_FEATURES_FIELDS: list[tuple[str, str]] = [
    ("ts", "time"),
    ("uid", "string"),
    ("id.orig_h", "addr"),
    ("id.orig_p", "port"),
    ("id.resp_h", "addr"),
    ("id.resp_p", "port"),
    ("proto", "enum"),
    ("n_pkts", "count"),
    ("dirs", "vector[count]"),
    ("ip_lens", "vector[count]"),
    ("iats", "vector[interval]"),
    ("tcp_flags", "vector[count]"),
]
"""``(name, Zeek type)`` in column order, as ``#fields`` / ``#types`` print them."""

DIR_ORIG = 0
DIR_RESP = 1
