# @TEST-DOC: ZeekML::flow_packets bounds what is recorded; conn.log still counts every packet.
#
# @TEST-EXEC: zeek -b -r $TRACES/wikipedia.pcap base/protocols/conn $PACKAGE %INPUT
# @TEST-EXEC: awk -v N=4 -f $SCRIPTS/check-flow-vs-conn.awk conn.log zeekml_flow.log > check.txt
# @TEST-EXEC: btest-diff check.txt

redef ZeekML::flow_packets = 4;
