"""Sources: batch archives (rotated, gzip), live Zeek log directories, pcap replay."""
