##! zeekml flow features: the first packets of every connection, as ``zeekml_flow.log``.
##!
##! For each connection, the first :zeek:see:`ZeekML::flow_packets` packets are recorded as
##! parallel vectors (direction, IP length, inter-arrival time, TCP flags) and logged once,
##! when the connection is removed. zeekml's built-in flow meter writes the same log with the
##! same fields and types, so zeekml reads either one the same way.
##!
##! Cost: this uses :zeek:see:`new_packet`, the only script-level event that sees every
##! packet's IP and TCP header. Zeek raises it for every packet of every connection as soon
##! as any handler exists, and builds a header record for it; the handler below returns after
##! one comparison once a connection has its N packets, but the event itself is not free.
##! Load ``zeekml/verdicts`` alone (not ``zeekml``) to avoid this cost entirely. See the
##! package README for the details.

@load ./main

module ZeekML;

export {
	redef enum Log::ID += { FLOW_LOG };

	## How many packets of each connection to record (the first N, both directions
	## together). Packets after the N-th cost one comparison each and are not recorded.
	option flow_packets: count = 32;

	## The columns of ``zeekml_flow.log``. They must equal ``FLOW_FEATURES_FIELDS`` in
	## ``zeekml/flows/flow_log_schema.py``; a test in zeekml's Python suite parses this
	## record and compares.
	type FlowInfo: record {
		## Connection start, as ``ts`` in conn.log.
		ts: time &log;
		## The connection's unique id, as in conn.log.
		uid: string &log;
		## The connection's 4-tuple.
		id: conn_id &log;
		## The transport protocol (from the responder port, as conn.log does).
		proto: transport_proto &log;
		## Number of packets recorded (at most :zeek:see:`ZeekML::flow_packets`).
		n_pkts: count &log;
		## Per packet: 0 = sent by the originator, 1 = sent by the responder.
		dirs: vector of count &log;
		## Per packet: IP total length (IPv6: payload length + 40).
		ip_lens: vector of count &log;
		## Per packet: time since the previous packet of this connection (0 for the first).
		iats: vector of interval &log;
		## Per packet: the TCP flags byte (0 for UDP, ICMP and other protocols).
		tcp_flags: vector of count &log;
	};

	## Raised for each record before it is written to ``zeekml_flow.log``.
	global log_zeekml_flow: event(rec: FlowInfo);

	## A hook to veto or change records of ``zeekml_flow.log``.
	global log_policy_flow: Log::PolicyHook;
}

# Per-connection state, kept in the connection record itself so that Zeek frees it with the
# connection: no global table to clean up, no lookup per packet.
#
# Directions are recorded relative to the sender of the connection's first packet ("a") and
# turned into originator/responder only when the record is written. Zeek may swap originator
# and responder in the middle of a connection (when it learns it guessed them wrong); by then
# the packets already recorded need no fixing, and the event order around a flip does not
# matter.
type FlowState: record {
	n: count &default=0;
	last: time &optional;
	a_h: addr;
	a_p: port &optional;
	from_b: vector of count;
	ip_lens: vector of count;
	iats: vector of interval;
	tcp_flags: vector of count;
};

redef record connection += {
	zeekml_flow: FlowState &optional;
};

event zeek_init() &priority=5
	{
	Log::create_stream(ZeekML::FLOW_LOG, [$columns=FlowInfo, $ev=log_zeekml_flow,
	    $path="zeekml_flow", $policy=log_policy_flow]);
	}

event new_packet(c: connection, p: pkt_hdr)
	{
	# Hot path: every packet of every connection comes through here. Once a connection has
	# its N packets, this first test is all the work done for it.
	if ( c?$zeekml_flow )
		{
		if ( c$zeekml_flow$n >= flow_packets )
			return;
		}
	else if ( flow_packets == 0 )
		return;

	local src: addr;
	local len: count;

	if ( p?$ip )
		{
		src = p$ip$src;
		len = p$ip$len;
		}
	else if ( p?$ip6 )
		{
		src = p$ip6$src;
		len = p$ip6$len + 40;
		}
	else
		return;

	local flags: count = 0;
	local sport = 0/unknown;
	local has_port = F;

	if ( p?$tcp )
		{
		flags = p$tcp$flags;
		sport = p$tcp$sport;
		has_port = T;
		}
	else if ( p?$udp )
		{
		sport = p$udp$sport;
		has_port = T;
		}

	local now = network_time();

	if ( ! c?$zeekml_flow )
		{
		c$zeekml_flow = FlowState($a_h=src, $from_b=vector(), $ip_lens=vector(),
		    $iats=vector(), $tcp_flags=vector());
		if ( has_port )
			c$zeekml_flow$a_p = sport;
		}

	local s = c$zeekml_flow;
	local i = s$n;
	local from_a = src == s$a_h && ( ! s?$a_p || sport == s$a_p );

	s$from_b[i] = from_a ? 0 : 1;
	s$ip_lens[i] = len;
	s$iats[i] = s?$last ? now - s$last : 0 secs;
	s$tcp_flags[i] = flags;
	s$last = now;
	s$n = i + 1;
	}

# Whether the first recorded packet ("a") was sent by the connection's originator, with the
# roles as Zeek has them now.
function a_is_orig(c: connection, s: FlowState): bool
	{
	if ( s$a_h != c$id$orig_h )
		return F;

	if ( c$id$orig_h != c$id$resp_h || ! s?$a_p )
		return T;

	return s$a_p == c$id$orig_p;
	}

event connection_state_remove(c: connection) &priority=-5
	{
	if ( ! c?$zeekml_flow )
		return;

	local s = c$zeekml_flow;
	local dirs: vector of count = vector();

	if ( a_is_orig(c, s) )
		dirs = s$from_b;
	else
		for ( i in s$from_b )
			dirs[i] = s$from_b[i] == 0 ? 1 : 0;

	Log::write(ZeekML::FLOW_LOG, FlowInfo($ts=c$start_time, $uid=c$uid, $id=c$id,
	    $proto=get_port_transport_proto(c$id$resp_p), $n_pkts=s$n, $dirs=dirs,
	    $ip_lens=s$ip_lens, $iats=s$iats, $tcp_flags=s$tcp_flags));
	}
