"""Zeek type names -> Arrow types, and the types of well-known fields for headerless formats.

JSON and CSV logs carry no ``#types`` line; the fields below (conn.log, notice.log and the
common ``id`` fields) get their Zeek type from here, anything else is inferred.
"""
from __future__ import annotations

import pyarrow as pa

from zeekml._core.zeek_format import container_element_type

_SCALAR = {
    "time": pa.float64(),
    "interval": pa.float64(),
    "double": pa.float64(),
    "count": pa.uint64(),
    "counter": pa.uint64(),
    "int": pa.int64(),
    "port": pa.uint16(),
    "bool": pa.bool_(),
    "addr": pa.string(),
    "subnet": pa.string(),
    "enum": pa.string(),
}


def arrow_type(zeek_type: str) -> pa.DataType:
    """Arrow type for a Zeek type name; Zeek ``string`` and unknown types are exact bytes."""
    elem = container_element_type(zeek_type)
    if elem is not None:
        return pa.list_(arrow_type(elem))
    return _SCALAR.get(zeek_type.strip(), pa.binary())


KNOWN_FIELD_TYPES: dict[str, str] = {
    # conn.log (Zeek 9, incl. older and labeled variants)
    "ts": "time", "uid": "string",
    "id.orig_h": "addr", "id.orig_p": "port", "id.resp_h": "addr", "id.resp_p": "port",
    "proto": "enum", "service": "string", "duration": "interval",
    "orig_bytes": "count", "resp_bytes": "count", "conn_state": "string",
    "local_orig": "bool", "local_resp": "bool", "missed_bytes": "count", "history": "string",
    "orig_pkts": "count", "orig_ip_bytes": "count", "resp_pkts": "count",
    "resp_ip_bytes": "count", "tunnel_parents": "set[string]", "ip_proto": "count",
    "orig_l2_addr": "string", "resp_l2_addr": "string", "vlan": "int", "inner_vlan": "int",
    "community_id": "string",
    # conn column spellings of Zeek's field-name-map test (flows.table.ALIASES)
    "src_port": "port", "dst_port": "port",
    "label": "string", "detailedlabel": "string", "detailed-label": "string",
    # notice.log
    "fuid": "string", "file_mime_type": "string", "file_desc": "string", "note": "enum",
    "msg": "string", "sub": "string", "src": "addr", "dst": "addr", "p": "port", "n": "count",
    "peer_descr": "string", "actions": "set[enum]", "email_dest": "set[string]",
    "suppress_for": "interval",
    # json-streaming-logs
    "_path": "string", "_write_ts": "time",
}
