# @TEST-DOC: zeekml_flow.log for UDP broadcasts and for connections Zeek flips (the first packet
# comes from the server port, so the responder sent it: dirs starts with 1).
# Needs Zeek >= 6. Baseline derived from the trace and real Zeek's conn.log.
# Bare mode (-b) loads no protocol scripts: without base/protocols/dhcp Zeek does not flip the
# server-side conns (Zeek 8.2.2 wrote "128.2.6.152 67 128.2.6.97 68 ... 1 0"), with it the
# output equals the baseline.
#
# @TEST-EXEC: zeek -b -r $TRACES/dhcp/dhcp.pcap base/protocols/dhcp $PACKAGE
# @TEST-EXEC: zeek-cut ts id.orig_h id.orig_p id.resp_h id.resp_p proto n_pkts dirs ip_lens iats tcp_flags < zeekml_flow.log | sort > flows.txt
# @TEST-EXEC: btest-diff flows.txt
