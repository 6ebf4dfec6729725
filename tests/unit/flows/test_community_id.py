"""Community ID v1 against the spec's published test vectors.

Vectors: zeek/zeek testing/btest/bifs/community_id/ (the spec's baseline flows, seeds 0 and 1) and
the RSVP (portless) example of Vector's VRL ``community_id`` function documentation.
"""
import pyarrow as pa
import pytest

from zeekml.flows.community_id import community_id_v1, community_ids
from zeekml.flows.table import CONN_SCHEMA

V6A = "fe80:0001:0203:0405:0607:0809:0A0B:0C0D"
V6B = "fe80:1011:1213:1415:1617:1819:1A1B:1C1D"


@pytest.mark.parametrize("saddr,daddr,proto,sport,dport,seed,expected", [
    ("1.2.3.4", "5.6.7.8", "tcp", 1122, 3344, 0, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
    ("1.2.3.4", "5.6.7.8", "udp", 1122, 3344, 0, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
    ("1.2.3.4", "5.6.7.8", "icmp", 8, 0, 0, "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="),
    (V6A, V6B, "icmp", 128, 129, 0, "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="),
    ("1.2.3.4", "5.6.7.8", "tcp", 1122, 3344, 1, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
    ("1.2.3.4", "5.6.7.8", "udp", 1122, 3344, 1, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
    ("1.2.3.4", "5.6.7.8", "icmp", 8, 0, 1, "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="),
    (V6A, V6B, "icmp", 128, 129, 1, "1:IO27GQzPuCtNnwFvjWALMHu5tJE="),
    ("1.2.3.4", "5.6.7.8", 46, None, None, 0, "1:ikv3kmf89luf73WPz1jOs49S768="),
])
def test_spec_vectors(saddr, daddr, proto, sport, dport, seed, expected):
    assert community_id_v1(saddr, daddr, proto, sport, dport, seed) == expected


def test_both_directions_and_icmp_reply_match():
    assert community_id_v1("5.6.7.8", "1.2.3.4", 6, 3344, 1122) == "1:wCb3OG7yAFWelaUydu0D+125CLM="
    # echo reply (type 0) from the responder maps onto the request's id
    assert community_id_v1("5.6.7.8", "1.2.3.4", "icmp", 0, 0) == "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="


@pytest.mark.parametrize("args", [
    ("1.2.3.4", "::1", "tcp", 1, 2),
    ("1.2.3.4", "5.6.7.8", "tcp", None, 2),
    ("1.2.3.4", "5.6.7.8", "bogus", 1, 2),
    ("not-an-ip", "5.6.7.8", "tcp", 1, 2),
])
def test_bad_input_raises(args):
    with pytest.raises(ValueError):
        community_id_v1(*args)


def test_table_column_with_unusable_rows():
    rows = {"id.orig_h": ["1.2.3.4", "1.2.3.4", None], "id.orig_p": [1122, 0, 1],
            "id.resp_h": ["5.6.7.8", "5.6.7.8", "5.6.7.8"], "id.resp_p": [3344, 0, 2],
            "proto": ["tcp", "unknown_transport", "tcp"]}
    t = pa.table({f.name: pa.array(rows.get(f.name, [None] * 3), f.type) for f in CONN_SCHEMA})
    assert community_ids(t) == ["1:wCb3OG7yAFWelaUydu0D+125CLM=", None, None]
