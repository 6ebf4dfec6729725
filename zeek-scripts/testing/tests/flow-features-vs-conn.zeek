# @TEST-DOC: zeekml_flow.log agrees with Zeek's own conn.log on every connection of a mixed
# trace (TCP, UDP, ICMPv6, IPv6): packet counts, directions, IP bytes. Needs no hand-made
# baseline beyond "mismatches: 0".
#
# @TEST-EXEC: zeek -b -r $TRACES/wikipedia.pcap base/protocols/conn $PACKAGE
# @TEST-EXEC: awk -v N=32 -f $SCRIPTS/check-flow-vs-conn.awk conn.log zeekml_flow.log > check.txt
# @TEST-EXEC: btest-diff check.txt
