##! zeekml verdict feedback: zeekml's incidents and verdicts, raised as Zeek notices.
##!
##! zeekml (``zeekml watch/score --zeek-feedback PATH``) keeps two Zeek-format TSV files that
##! this script reads the same way: the incident file (by default ``PATH`` with ``.log``
##! replaced by ``.incidents.log``), one line per incident keyed by ``incident_id``, each
##! raised as one ``ZeekML::Suspicious_Host`` notice; and the verdict file ``PATH``, one line
##! per alerting connection, which zeekml fills only with ``--conn-notices``. The verdict file
##! is described below; the incident file follows the same rules.
##!
##! zeekml keeps a Zeek-format TSV file of its recent verdicts, one line per verdict keyed by ``verdict_id``, and replaces the whole file
##! by an atomic rename each time it changes. This script reads that file with the Input
##! framework as a table in ``REREAD`` mode: Zeek re-reads the file when its inode or mtime
##! changes and raises ``Input::EVENT_NEW`` only for verdict ids it has not seen, so a re-read
##! raises nothing twice. Each new verdict becomes a ``NOTICE`` with the connection's uid and
##! id, a message naming the score and the model, the top contributing features as ``sub``,
##! and an ``identifier`` so that Zeek's notice suppression applies.
##!
##! This script does no per-packet work.

@load base/frameworks/input
@load base/frameworks/notice
@load base/frameworks/cluster
@load base/misc/version
@load ./main

module ZeekML;

export {
	## The verdict file zeekml writes (``--zeek-feedback PATH``). Empty: no verdicts are
	## read. Read once at startup: to change it, restart Zeek. The file may be missing at
	## startup; Zeek then warns and keeps looking for it.
	option verdict_file: string = "";

	## Name of the Input framework stream that reads :zeek:see:`ZeekML::verdict_file`.
	const verdict_stream = "zeekml_verdicts" &redef;

	## How long Zeek suppresses a repeat of the same note with the same identifier
	## (the pair of hosts, the responder port and the model).
	option verdict_suppress_for: interval = 1 hr;

	## The index column of the verdict file.
	type VerdictIdx: record {
		## zeekml's stable id of one model's verdict on one connection.
		verdict_id: string;
	};

	## The connection 4-tuple as the verdict file carries it (columns ``id.orig_h`` ...).
	## Not :zeek:type:`conn_id` itself, so that fields newer Zeek versions add to
	## ``conn_id`` never become required columns of the file.
	type VerdictConnId: record {
		orig_h: addr;
		orig_p: port;
		resp_h: addr;
		resp_p: port;
	};

	## The other columns of the verdict file. They must equal ``VERDICT_FIELDS`` in
	## ``zeekml/sinks/zeek_input.py`` (after ``verdict_id``); a test in zeekml's Python
	## suite parses this record and compares.
	type Verdict: record {
		## Start of the connection the verdict is about (as ``ts`` in conn.log).
		ts: time;
		## The connection's uid.
		uid: string;
		## The connection's 4-tuple. Ports are read without a protocol; the protocol
		## comes from ``proto``.
		id: VerdictConnId;
		## The transport protocol.
		proto: transport_proto;
		## The note name, e.g. ``ZeekML::Intrusion`` (see :zeek:see:`ZeekML::note_names`).
		note: string;
		## zeekml's combined calibrated score (1.0 = at the alert threshold).
		score: double;
		## The model (or ensemble) that produced the verdict.
		model: string;
		## A short description of the verdict.
		msg: string &optional;
		## The top contributing features as ``name=value`` text.
		sub: string &optional;
	};

	## The verdicts currently in the verdict file, by ``verdict_id``.
	global verdicts: table[string] of Verdict = table();

	## A hook to veto or change the notice built for a verdict before it is raised. Break
	## out of it to drop the verdict.
	global verdict_policy: hook(verdict_id: string, v: Verdict, n: Notice::Info);

	## The incident file zeekml writes beside the verdict file. Empty (the default): the
	## verdict file's name with a trailing ``.log`` replaced by ``.incidents.log`` (or
	## ``.incidents.log`` added), where ``--zeek-feedback`` writes it. Read once at startup.
	option incident_file: string = "";

	## Name of the Input framework stream that reads the incident file.
	const incident_stream = "zeekml_incidents" &redef;

	## How long Zeek suppresses a repeat of the same incident notice (same identifier: the
	## incident id).
	option incident_suppress_for: interval = 1 hr;

	## The index column of the incident file.
	type IncidentIdx: record {
		## zeekml's stable id of the incident.
		incident_id: string;
	};

	## The other columns of the incident file. They must equal ``INCIDENT_FIELDS`` in
	## ``zeekml/sinks/zeek_input.py`` (after ``incident_id``); a test in zeekml's Python
	## suite parses this record and compares.
	type Incident: record {
		## The incident's first alert.
		ts: time;
		## The incident's last alert.
		last_ts: time;
		## The host the incident is about.
		host: addr;
		## ``orig``: the host started the connections; ``resp``: it received them.
		role: string;
		## The uid of the incident's top connection.
		uid: string &optional;
		## The responder port with the most alerts. Read without a protocol; the protocol
		## comes from ``proto``.
		p: port &optional;
		## The transport protocol of ``p``.
		proto: transport_proto &optional;
		## The host's connections in this role from ``ts`` to ``last_ts``.
		conns: count;
		## The alerting connections among them.
		alerts: count;
		## Distinct peers of the alerting connections.
		peers: count;
		## zeekml's rank of the incident (its strongest calibrated score, raised by its
		## densest burst of alerts).
		score: double;
		## The detectors that alerted, most alerts first, comma-separated.
		model: string;
		## What happened, in one line (e.g. "scanned 18 hosts on 445/tcp in 40 s").
		msg: string &optional;
		## The incident id, counts, role and end, as zeekml_incident.log has them.
		sub: string &optional;
	};

	## The incidents currently in the incident file, by ``incident_id``.
	global incidents: table[string] of Incident = table();

	## A hook to veto or change the notice built for an incident before it is raised (for
	## example ``n$identifier = cat(inc$host, "|", inc$role);`` to suppress a host's later
	## incidents for :zeek:see:`ZeekML::incident_suppress_for`). Break out of it to drop the
	## incident.
	global incident_policy: hook(incident_id: string, inc: Incident, n: Notice::Info);

	## The incident file that zeekml writes beside ``verdict_file`` (``--zeek-feedback``).
	global incident_file_for: function(path: string): string;
}

# The port `p` with the protocol `proto` (the Input framework reads a bare port number as a
# port of unknown protocol).
function with_proto(p: port, proto: transport_proto): port
	{
	return count_to_port(port_to_count(p), proto);
	}

# Zeek's value for an IP protocol it does not know (conn_id's ``proto`` default in Zeek >= 8).
const unknown_ip_proto = 65535;

# The IP protocol number of a verdict's connection: the verdict names the transport
# (``transport_proto``, where ICMPv6 is also ``icmp``), the address family tells ICMP from
# ICMPv6. ``unknown_transport`` has no number in the verdict.
function verdict_ip_proto(v: Verdict): count
	{
	switch ( v$proto )
		{
		case tcp:
			return 6;
		case udp:
			return 17;
		case icmp:
			return is_v6_addr(v$id$orig_h) ? 58 : 1;
		default:
			return unknown_ip_proto;
		}
	}

function verdict_conn_id(v: Verdict): conn_id
	{
	local cid = conn_id($orig_h=v$id$orig_h, $orig_p=with_proto(v$id$orig_p, v$proto),
	    $resp_h=v$id$resp_h, $resp_p=with_proto(v$id$resp_p, v$proto));
@if ( Version::at_least("8.0") )
	# Zeek 8 added ``proto`` to conn_id; connection_exists() rejects a conn_id whose proto
	# is left at its "unknown" default ("invalid connection ID record encountered").
	cid$proto = verdict_ip_proto(v);
@endif
	return cid;
	}

# Whether Zeek can look the connection up by ``cid`` (Zeek >= 8 cannot without a known
# IP protocol, and says so as an error on every call).
function can_look_up(cid: conn_id): bool
	{
@if ( Version::at_least("8.0") )
	return cid$proto != unknown_ip_proto;
@else
	return T;
@endif
	}

## Builds the notice for one verdict and raises it.
function raise_verdict(verdict_id: string, v: Verdict)
	{
	local note = Anomalous_Flow;
	if ( v$note in note_names )
		note = note_names[v$note];
	else
		++unknown_note_count;

	local cid = verdict_conn_id(v);
	local what = v?$msg && v$msg != "" ? v$msg : v$note;

	local n = Notice::Info($note=note, $uid=v$uid, $id=cid,
	    $msg=fmt("%s: score %.3f model %s", what, v$score, v$model),
	    $identifier=cat(v$model, "|", cid$orig_h, "|", cid$resp_h, "|", cid$resp_p),
	    $suppress_for=verdict_suppress_for);

	if ( v?$sub && v$sub != "" )
		n$sub = v$sub;

	# Attach the live connection when Zeek still tracks it and it is the same one (same
	# uid): the notice then carries everything Zeek knows about it. Otherwise the 4-tuple
	# comes from the verdict.
	if ( can_look_up(cid) && connection_exists(cid) )
		{
		local c = lookup_connection(cid);
		if ( c$uid == v$uid )
			{
			n$conn = c;
			n$id = c$id;
			}
		}

	if ( ! hook verdict_policy(verdict_id, v, n) )
		return;

	NOTICE(n);
	}

event verdict_entry(desc: Input::TableDescription, tpe: Input::Event,
    left: VerdictIdx, right: Verdict)
	{
	# A verdict id already in the table is a re-read of the same verdict: nothing to do.
	if ( tpe != Input::EVENT_NEW )
		return;

	raise_verdict(left$verdict_id, right);
	}

function incident_file_for(path: string): string
	{
	if ( path == "" )
		return "";

	return cat(sub(path, /\.log$/, ""), ".incidents.log");
	}

## Builds the notice for one incident and raises it: the host as ``src`` (or as ``dst`` when
## it received the connections), the description as ``msg``, the incident id and counts as
## ``sub``, its alerts as ``n``, and the incident id as ``identifier``.
function raise_incident(incident_id: string, inc: Incident)
	{
	local n = Notice::Info($note=Suspicious_Host, $n=inc$alerts,
	    $msg=inc?$msg && inc$msg != "" ? inc$msg : fmt("%s: %d alerts", inc$host, inc$alerts),
	    $identifier=incident_id, $suppress_for=incident_suppress_for);

	if ( inc$role == "resp" )
		n$dst = inc$host;
	else
		n$src = inc$host;

	if ( inc?$sub && inc$sub != "" )
		n$sub = inc$sub;

	if ( inc?$uid && inc$uid != "" )
		n$uid = inc$uid;

	if ( inc?$p )
		{
		if ( inc?$proto )
			n$p = with_proto(inc$p, inc$proto);
		else
			n$p = inc$p;
		}

	if ( ! hook incident_policy(incident_id, inc, n) )
		return;

	NOTICE(n);
	}

event incident_entry(desc: Input::TableDescription, tpe: Input::Event,
    left: IncidentIdx, right: Incident)
	{
	# An incident id already in the table is a re-read of the same incident: nothing to do.
	if ( tpe != Input::EVENT_NEW )
		return;

	raise_incident(left$incident_id, right);
	}

# In a cluster, only the manager reads the files, so each verdict and incident is raised
# once. The manager does not track connections, so there the notice's 4-tuple always comes
# from the verdict.
@if ( ! Cluster::is_enabled() || Cluster::local_node_type() == Cluster::MANAGER )
event zeek_init() &priority=-5
	{
	if ( verdict_file != "" )
		Input::add_table([$source=verdict_file, $name=verdict_stream, $idx=VerdictIdx,
		    $val=Verdict, $destination=verdicts, $mode=Input::REREAD,
		    $ev=verdict_entry, $want_record=T]);

	local incidents_from = incident_file != "" ? incident_file : incident_file_for(verdict_file);
	if ( incidents_from != "" )
		Input::add_table([$source=incidents_from, $name=incident_stream, $idx=IncidentIdx,
		    $val=Incident, $destination=incidents, $mode=Input::REREAD,
		    $ev=incident_entry, $want_record=T]);
	}
@endif
