"""The Zeek package parses, and its declarations equal the Python side's (no Zeek needed)."""
from __future__ import annotations

import pathlib
import re
import socket

import pytest

import zeek_script_tree as zt
from zeekml.flows.flow_log_schema import FLOW_FEATURES_FIELDS, FLOW_LOG_PATH
from zeekml.scoring.verdict import NOTE_TYPES
from zeekml.sinks.zeek_input import TRANSPORT_PROTOS, VERDICT_FIELDS, VERDICT_LOG_PATH

PKG = zt.REPO / "zeek-scripts"
ZEEK_FILES = sorted(PKG.rglob("*.zeek"))


def _read(name: str) -> str:
    return (zt.SCRIPTS / name).read_text()


def test_package_layout():
    for name in ("zkg.meta", "README.md", "scripts/__load__.zeek", "scripts/main.zeek",
                 "scripts/flow-features.zeek", "scripts/verdicts.zeek", "testing/btest.cfg"):
        assert (PKG / name).is_file(), name
    meta = (PKG / "zkg.meta").read_text()
    assert re.search(r"^script_dir = scripts$", meta, re.M)
    assert re.search(r"^test_command = cd testing && btest -c btest.cfg$", meta, re.M)
    assert re.search(r"zeek >=6", meta)


def test_scripts_found():
    assert len(ZEEK_FILES) >= 4
    assert {p.name for p in ZEEK_FILES} >= {"__load__.zeek", "main.zeek", "flow-features.zeek",
                                              "verdicts.zeek"}


@pytest.mark.parametrize("path", ZEEK_FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_every_zeek_file_parses(path: pathlib.Path):
    zt.parse(path)  # raises ZeekParseError with the line on a syntax error


@pytest.mark.parametrize("name", ["main.zeek", "flow-features.zeek", "verdicts.zeek"])
def test_zeek_script_cli_accepts_scripts(name):
    res = zt.zeek_script_cli_parse(zt.SCRIPTS / name)
    assert res.returncode == 0, res.stderr


BREAKAGES = [
    # (file, what to replace, replacement): each makes a syntax error
    ("verdicts.zeek", "\tNOTICE(n);\n", "\tNOTICE(n)\n\tlocal = 3;\n"),
    ("flow-features.zeek", "event new_packet(c: connection, p: pkt_hdr)\n\t{",
     "event new_packet(c: connection, p: pkt_hdr)\n\t{{"),
    ("main.zeek", "\t\tIntrusion,\n", "\t\tIntrusion,,\n"),
]


@pytest.mark.parametrize("name,old,new", BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_broken_copy_fails_the_same_check(tmp_path, name, old, new):
    src = _read(name)
    assert old in src
    broken = tmp_path / name
    broken.write_text(src.replace(old, new, 1))
    with pytest.raises(zt.ZeekParseError):
        zt.parse(broken)
    assert zt.zeek_script_cli_parse(broken).returncode != 0


def test_all_scripts_are_module_zeekml():
    for name in ("main.zeek", "flow-features.zeek", "verdicts.zeek"):
        assert zt.module_name(zt.parse(zt.SCRIPTS / name)) == "ZeekML", name


# ------------------------------------------------------------------------------------------
# notice types

def test_notice_types_equal_python_note_types():
    declared = zt.enum_redefs(zt.parse(zt.SCRIPTS / "main.zeek"), "Notice::Type")
    assert ["ZeekML::" + n for n in declared] == list(NOTE_TYPES)


def test_note_names_table_covers_every_note_type():
    src = _read("main.zeek")
    body = src[src.index("const note_names"):]
    body = body[:body.index("} &redef;")]
    pairs = re.findall(r'\["(ZeekML::\w+)"\]\s*=\s*(\w+)', body)
    assert [k for k, _ in pairs] == list(NOTE_TYPES)
    assert all(k == "ZeekML::" + v for k, v in pairs)


# ------------------------------------------------------------------------------------------
# record declarations vs the Python field lists

def _verdict_columns(script_path: pathlib.Path) -> list[tuple[str, str]]:
    records = zt.record_decls(zt.parse(script_path))
    return (zt.flatten("VerdictIdx", records, logged_only=False)
            + zt.flatten("Verdict", records, logged_only=False))


def _flow_columns(script_path: pathlib.Path) -> list[tuple[str, str]]:
    records = zt.record_decls(zt.parse(script_path))
    return zt.flatten("FlowInfo", records, logged_only=True)


def test_verdict_record_equals_verdict_fields():
    assert _verdict_columns(zt.SCRIPTS / "verdicts.zeek") == VERDICT_FIELDS


def test_flow_record_equals_flow_features_fields():
    assert _flow_columns(zt.SCRIPTS / "flow-features.zeek") == FLOW_FEATURES_FIELDS


def test_flow_features_fields_are_the_contract():
    assert FLOW_FEATURES_FIELDS == [
        ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
        ("id.resp_h", "addr"), ("id.resp_p", "port"), ("proto", "enum"), ("n_pkts", "count"),
        ("dirs", "vector[count]"), ("ip_lens", "vector[count]"), ("iats", "vector[interval]"),
        ("tcp_flags", "vector[count]")]


@pytest.mark.parametrize("old,new", [
    ("\t\tscore: double;\n", "\t\tscore: count;\n"),          # a type changes
    ("\t\tmodel: string;\n", "\t\tmodel_name: string;\n"),    # a name changes
    ("\t\tsub: string &optional;\n", ""),                     # a column goes
    ("\t\torig_p: port;\n\t\tresp_h: addr;\n", "\t\tresp_h: addr;\n\t\torig_p: port;\n"),  # order
])
def test_verdict_drift_is_caught(tmp_path, old, new):
    src = _read("verdicts.zeek")
    assert old in src
    copy = tmp_path / "verdicts.zeek"
    copy.write_text(src.replace(old, new, 1))
    zt.parse(copy)  # still valid Zeek ...
    assert _verdict_columns(copy) != VERDICT_FIELDS  # ... but no longer what Python writes


@pytest.mark.parametrize("old,new", [
    ("\t\tiats: vector of interval &log;\n", "\t\tiats: vector of double &log;\n"),
    ("\t\tn_pkts: count &log;\n", "\t\tn_pkts: count;\n"),   # not logged any more
    ("\t\tid: conn_id &log;\n", "\t\tid: conn_id;\n"),
])
def test_flow_drift_is_caught(tmp_path, old, new):
    src = _read("flow-features.zeek")
    assert old in src
    copy = tmp_path / "flow-features.zeek"
    copy.write_text(src.replace(old, new, 1))
    zt.parse(copy)
    assert _flow_columns(copy) != FLOW_FEATURES_FIELDS


# ------------------------------------------------------------------------------------------
# wiring that parsing alone can check

def test_flow_log_path_and_stream():
    src = _read("flow-features.zeek")
    assert f'$path="{FLOW_LOG_PATH}"' in src
    assert "Log::create_stream(ZeekML::FLOW_LOG, [$columns=FlowInfo" in src
    assert "option flow_packets: count = 32;" in src
    # written once per connection, at removal; no per-packet logging
    assert src.count("Log::write(") == 1
    handler = src[src.index("event connection_state_remove"):]
    assert "Log::write(ZeekML::FLOW_LOG" in handler
    per_packet = src[src.index("event new_packet"):src.index("function a_is_orig")]
    assert "Log::write" not in per_packet
    # the early return once N packets are recorded is the first thing the handler does
    body = per_packet[per_packet.index("{"):]
    code = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert code[1:4] == ["if ( c?$zeekml_flow )", "{", "if ( c$zeekml_flow$n >= flow_packets )"]
    # state lives in the connection record (freed with it), not in a global table
    assert "redef record connection += {" in src
    assert not re.search(r"^global \w+: table", src, re.M)


def test_verdict_input_stream_wiring():
    src = _read("verdicts.zeek")
    call = src[src.index("Input::add_table("):]
    call = call[:call.index(");") + 2]
    for part in ("$source=verdict_file", "$idx=VerdictIdx", "$val=Verdict",
                 "$destination=verdicts", "$mode=Input::REREAD", "$ev=verdict_entry",
                 "$want_record=T"):
        assert part in call, part
    assert 'const verdict_stream = "' + VERDICT_LOG_PATH + '"' in src
    assert re.search(r"event verdict_entry\(desc: Input::TableDescription, tpe: Input::Event,"
                     r"\s+left: VerdictIdx, right: Verdict\)", src)
    assert "if ( tpe != Input::EVENT_NEW )" in src
    notice = src[src.index("local n = Notice::Info("):src.index("NOTICE(n);")]
    for field in ("$note=", "$uid=", "$id=", "$msg=", "$identifier=", "n$sub", "n$conn"):
        assert field in notice, field
    assert "connection_exists(cid)" in notice and "lookup_connection(cid)" in notice


def test_load_file_loads_all_parts():
    src = (zt.SCRIPTS / "__load__.zeek").read_text()
    assert re.findall(r"^@load \./([\w-]+)$", src, re.M) == ["main", "flow-features", "verdicts"]


# ------------------------------------------------------------------------------------------
# conn_id$proto (Zeek >= 8). Under Zeek 8.2.2, without it, every verdict printed:
#   error in .../verdicts.zeek, line 119: invalid connection ID record encountered: the proto
#   field has the "unknown" 65535 value. Did you forget to set it? (connection_exists(ZeekML::cid))

def _function(src: str, name: str) -> str:
    start = src.index(f"function {name}(")
    end = src.index("\n\t}\n", start)
    return src[start:end + 3]


def verdict_ip_proto_cases(src: str) -> dict[str, str]:
    """The ``case <transport_proto>: return <expr>;`` arms of verdicts.zeek's verdict_ip_proto."""
    body = _function(src, "verdict_ip_proto")
    return dict(re.findall(r"case (\w+):\s*return ([^;]+);", body))


def test_ip_proto_mapping_covers_every_verdict_proto():
    src = _read("verdicts.zeek")
    cases = verdict_ip_proto_cases(src)
    # every transport_proto the writer can put in the file, except the one without a number
    assert set(cases) == set(TRANSPORT_PROTOS) - {"unknown_transport"}
    assert cases["tcp"] == str(socket.IPPROTO_TCP) == "6"
    assert cases["udp"] == str(socket.IPPROTO_UDP) == "17"
    # transport_proto has one "icmp" for both families; the address family picks the number
    assert cases["icmp"] == "is_v6_addr(v$id$orig_h) ? 58 : 1"
    assert (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6) == (1, 58)
    body = _function(src, "verdict_ip_proto")
    assert re.search(r"default:\s*return unknown_ip_proto;", body)
    assert "const unknown_ip_proto = 65535;" in src


def test_conn_id_proto_is_set_on_zeek_8_only():
    src = _read("verdicts.zeek")
    assert "@load base/misc/version" in src  # Version::at_least under `zeek -b`
    body = _function(src, "verdict_conn_id")
    guarded = re.search(r'@if \( Version::at_least\("8\.0"\) \)\n(.*?)@endif', body, re.S)
    assert guarded and "cid$proto = verdict_ip_proto(v);" in guarded.group(1)
    # outside the guard nothing names $proto, so Zeek 6 and 7 (no conn_id$proto) still parse
    rest = body.replace(guarded.group(0), "")
    assert "cid$proto" not in rest and "$proto=" not in rest
    # a conn_id whose proto is unknown is never handed to connection_exists on Zeek >= 8
    look = _function(src, "can_look_up")
    assert re.search(r'@if \( Version::at_least\("8\.0"\) \)\s*return cid\$proto != unknown_ip_proto;'
                     r'\s*@else\s*return T;\s*@endif', look)
    assert "if ( can_look_up(cid) && connection_exists(cid) )" in src


def test_removing_the_proto_arm_is_caught():
    src = _read("verdicts.zeek").replace("\t\tcase udp:\n\t\t\treturn 17;\n", "")
    assert set(verdict_ip_proto_cases(src)) != set(TRANSPORT_PROTOS) - {"unknown_transport"}
