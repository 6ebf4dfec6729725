# Checks zeekml_flow.log against conn.log from the same run, joined by uid:
#   n_pkts == min(N, orig_pkts + resp_pkts);
#   when no packet was cut off: the count of dirs == 0 is orig_pkts, the sum of ip_lens is
#   orig_ip_bytes + resp_ip_bytes, and the ip_lens of dirs == 0 sum to orig_ip_bytes;
#   |dirs| == |ip_lens| == |iats| == |tcp_flags| == n_pkts, and the first iat is 0.
# Usage: awk -v N=32 -f check-flow-vs-conn.awk conn.log zeekml_flow.log
BEGIN { FS = "\t"; bad = 0; checked = 0 }
/^#fields/ { delete col; for ( i = 2; i <= NF; ++i ) col[$i] = i - 1; next }
/^#/ { next }
FNR == NR {
	u = $col["uid"]
	pk[u] = $col["orig_pkts"] + $col["resp_pkts"]; op[u] = $col["orig_pkts"]
	ob[u] = $col["orig_ip_bytes"]; by[u] = $col["orig_ip_bytes"] + $col["resp_ip_bytes"]
	next
}
{
	u = $col["uid"]; n = $col["n_pkts"]; ++checked
	if ( ! (u in pk) ) { print "no conn.log record for " u; ++bad; next }
	seen[u] = 1
	want = pk[u] < N ? pk[u] : N
	if ( n != want ) { print u ": n_pkts " n " != " want; ++bad }
	nd = split($col["dirs"], d, ","); nl = split($col["ip_lens"], l, ",")
	ni = split($col["iats"], t, ","); nf = split($col["tcp_flags"], f, ",")
	if ( nd != n || nl != n || ni != n || nf != n ) { print u ": vector lengths"; ++bad }
	if ( t[1] != "0.000000" ) { print u ": first iat " t[1]; ++bad }
	if ( pk[u] <= N ) {
		o = 0; s = 0; so = 0
		for ( i = 1; i <= n; ++i ) { s += l[i]; if ( d[i] == 0 ) { ++o; so += l[i] } }
		if ( o != op[u] ) { print u ": " o " packets from orig, conn.log says " op[u]; ++bad }
		if ( s != by[u] ) { print u ": ip bytes " s ", conn.log says " by[u]; ++bad }
		if ( so != ob[u] ) { print u ": orig ip bytes " so ", conn.log says " ob[u]; ++bad }
	}
}
END {
	for ( u in pk ) if ( ! (u in seen) && pk[u] > 0 ) { print "no zeekml_flow record for " u; ++bad }
	print (checked > 0 ? "checked connections: yes" : "checked connections: NONE")
	print "mismatches: " bad
}
