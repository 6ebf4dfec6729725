# @TEST-DOC: zeekml_flow.log for three HTTP connections: every stable column of every record.
# Needs Zeek >= 6. Baseline derived from the trace and checked against real Zeek's conn.log
# (packet and IP byte counts per direction); regenerate with `btest -U` if your Zeek differs.
#
# @TEST-EXEC: zeek -b -r $TRACES/http/concurrent-range-requests.pcap $PACKAGE
# @TEST-EXEC: zeek-cut ts id.orig_h id.orig_p id.resp_h id.resp_p proto n_pkts dirs ip_lens iats tcp_flags < zeekml_flow.log | sort > flows.txt
# @TEST-EXEC: btest-diff flows.txt
