# @TEST-DOC: zeekml_flow.log for UDP broadcasts and for connections Zeek flips (the first packet
# comes from the server port, so the responder sent it: dirs starts with 1).
# Needs Zeek >= 6. Baseline derived from the trace and real Zeek's conn.log.
#
# @TEST-EXEC: zeek -b -r $TRACES/dhcp/dhcp.pcap $PACKAGE
# @TEST-EXEC: zeek-cut ts id.orig_h id.orig_p id.resp_h id.resp_p proto n_pkts dirs ip_lens iats tcp_flags < zeekml_flow.log | sort > flows.txt
# @TEST-EXEC: btest-diff flows.txt
