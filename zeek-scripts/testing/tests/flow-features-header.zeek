# @TEST-DOC: the #path, #fields and #types of zeekml_flow.log (zeekml's flow meter writes the same).
#
# @TEST-EXEC: zeek -b -r $TRACES/dhcp/dhcp.pcap $PACKAGE
# @TEST-EXEC: grep -E '^#(path|fields|types)' zeekml_flow.log > header.txt
# @TEST-EXEC: btest-diff header.txt
