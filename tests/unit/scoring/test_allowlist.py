"""Allowlist rules: parsing errors name file and rule; matching returns the first rule per conn."""
import numpy as np
import pyarrow as pa
import pytest

from zeekml._core.errors import InputNotFound
from zeekml.flows.table import CONN_SCHEMA
from zeekml.scoring.allowlist import Allowlist, AllowlistError, append_rule

CONNS = [
    # orig_h,        resp_h,        resp_p, proto, service,    uid
    ("10.0.0.5",    "8.8.8.8",     53,   "udp", "dns",      "C1"),
    ("10.0.0.6",    "1.2.3.4",     443,  "tcp", "ssl,http", "C2"),
    ("192.168.1.9", "10.0.0.5",    22,   "tcp", None,       "C3"),
    ("2001:db8::1", "2001:db8::2", 80,   "tcp", "http",     "C4"),
    (None,          "1.2.3.4",     None, None,  None,       "C5"),
    ("bogus",       "1.2.3.4",     443,  "TCP", "ssl",      "C6"),
]


def conn_rows(rows=CONNS) -> pa.Table:
    cols = {"id.orig_h": [r[0] for r in rows], "id.resp_h": [r[1] for r in rows],
            "id.resp_p": [r[2] for r in rows], "proto": [r[3] for r in rows],
            "service": [r[4] for r in rows], "uid": [r[5] for r in rows]}
    n = len(rows)
    return pa.table({f.name: pa.array(cols.get(f.name, [None] * n), f.type) for f in CONN_SCHEMA})


def write(tmp_path, text):
    p = tmp_path / "allow.toml"
    p.write_text(text)
    return p


def test_match_first_rule_each_field(tmp_path):
    al = Allowlist.load(write(tmp_path, """
[[rule]]
host = "10.0.0.5"
reason = "resolver client"

[[rule]]
resp_h = "1.2.3.0/24"
resp_p = 443
proto = "tcp"
reason = "cdn"

[[rule]]
orig_h = "2001:db8::/32"
service = "http"
reason = "v6 lab"

[[rule]]
service = "http"
reason = "never reached for C2: rule 2 comes first"
"""))
    assert [r.index for r in al.rules] == [1, 2, 3, 4]
    # C1: orig 10.0.0.5 -> rule 0; C2: cdn -> 1; C3: resp is 10.0.0.5 (host = either side) -> 0;
    # C4: v6 -> 2; C5: nulls match no address rule; C6: "bogus" orig, but resp/port/proto match -> 1
    assert al.match(conn_rows()).tolist() == [0, 1, 0, 2, -1, 1]


def test_service_matches_one_of_zeeks_list_and_uid(tmp_path):
    al = Allowlist.from_dict({"rule": [{"service": "ssl", "reason": "tls"},
                                       {"uid": "C3", "reason": "one conn"}]})
    assert al.match(conn_rows()).tolist() == [-1, 0, 1, -1, -1, 0]


def test_verdict_id_needs_the_ids():
    al = Allowlist.from_dict({"rule": [{"verdict_id": "Vabc", "reason": "fp"}]})
    t = conn_rows()
    assert al.match(t).tolist() == [-1] * 6
    assert al.match(t, ["x", "Vabc", "y", "z", "w", "v"]).tolist() == [-1, 0, -1, -1, -1, -1]
    with pytest.raises(ValueError):
        al.match(t, ["x"])


def test_empty_allowlist_and_empty_table():
    assert Allowlist([]).match(conn_rows()).tolist() == [-1] * 6
    al = Allowlist.from_dict({"rule": [{"host": "1.2.3.4", "reason": "r"}]})
    assert al.match(CONN_SCHEMA.empty_table()).shape == (0,)


@pytest.mark.parametrize("text,message", [
    ('[[rule]]\nhots = "1.2.3.4"\nreason = "x"\n', "rule 1: unknown field 'hots'"),
    ('[[rule]]\nhost = "1.2.3.4"\nreason = "x"\n[[rule]]\nhost = "1.2.3"\nreason = "y"\n',
     "rule 2: host: '1.2.3' is not an IP address or CIDR"),
    ('[[rule]]\nresp_p = 70000\nreason = "x"\n', "rule 1: resp_p: expected a port number"),
    ('[[rule]]\nresp_p = "443"\nreason = "x"\n', "rule 1: resp_p: expected a port number"),
    ('[[rule]]\nhost = "1.2.3.4"\n', "rule 1: needs a non-empty reason"),
    ('[[rule]]\nreason = "everything"\n', "rule 1: matches everything"),
    ('[rule]\nhost = "1.2.3.4"\nreason = "x"\n', "write [[rule]], not [rule]"),
    ('host = "1.2.3.4"\n', "unknown top-level key 'host'"),
    ('[[rule]\nhost = 1', "not valid TOML"),
])
def test_bad_file_is_one_line_error_naming_file_and_rule(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(AllowlistError) as e:
        Allowlist.load(p)
    assert str(e.value).startswith(f"{p}: ")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputNotFound):
        Allowlist.load(tmp_path / "nope.toml")


def test_append_rule_round_trips_and_escapes(tmp_path):
    p = tmp_path / "allow.toml"
    r1 = append_rule(p, {"host": "10.0.0.5", "reason": 'ticket "42"\nsecond line'})
    r2 = append_rule(p, {"resp_h": "1.2.3.0/24", "resp_p": 443, "reason": "cdn"})
    assert (r1.index, r2.index) == (1, 2)
    al = Allowlist.load(p)
    assert al.rules[0].reason == 'ticket "42"\nsecond line'
    assert str(al.rules[0].host) == "10.0.0.5/32"
    assert al.rules[1].to_toml_fields() == {"resp_h": "1.2.3.0/24", "resp_p": 443, "reason": "cdn"}
    assert al.match(conn_rows()).tolist() == [0, 1, 0, -1, -1, 1]   # C5: unset resp_p
    with pytest.raises(ValueError):
        append_rule(p, {"host": "nope", "reason": "x"})
    assert len(Allowlist.load(p)) == 2
    assert al.rules[1].label() == "allowlist rule 2: cdn"


def scored_batch():
    from zeekml.scoring.verdict import VerdictBatch
    t = conn_rows()
    t = t.set_column(t.schema.get_field_index("ts"), "ts", pa.array([float(i) for i in range(6)]))
    score = np.array([2.0, 0.5, 1.5, 3.0, 1.2, 0.1])
    return VerdictBatch(t, ["iforest"], ["ZeekML::Anomalous_Flow"], {"iforest": score}, score,
                        np.zeros(6, dtype=np.int64), score >= 1.0,
                        {0: "m0", 2: "m2", 3: "m3", 4: "m4"}, {0: "s0", 2: "s2", 3: "s3", 4: "s4"})


def test_suppress_a_scored_batch():
    from zeekml.scoring.allowlist import suppress
    batch = scored_batch()
    vid3 = batch.ids()[3]
    al = Allowlist.from_dict({"rule": [{"host": "10.0.0.5", "reason": "resolver client"},
                                       {"verdict_id": vid3, "reason": "fp"}]}, "a.toml")
    labels = suppress(batch, al)
    # C1 (alerting) and C3 (alerting) match rule 1, C2 does not, C4 matches rule 2 by verdict id
    assert labels == {0: "allowlist rule 1: resolver client", 2: "allowlist rule 1: resolver client",
                      3: "allowlist rule 2: fp"}
    assert batch.alert.tolist() == [False, False, False, False, True, False]
    assert batch.score.tolist() == [2.0, 0.5, 1.5, 3.0, 1.2, 0.1]     # still scored
    assert batch.msg == {4: "m4"} and batch.sub == {4: "s4"}
