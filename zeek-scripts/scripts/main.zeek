##! zeekml: shared declarations of the ZeekML module.
##!
##! Declares the notice types that zeekml's verdicts are raised as, and the table that maps
##! the note names zeekml writes into its verdict file (``ZeekML::Intrusion``, ...) to those
##! enum values. The names here must equal ``NOTE_TYPES`` in ``zeekml/scoring/verdict.py``;
##! a test in zeekml's Python suite parses this file and compares the two lists.

@load base/frameworks/notice

module ZeekML;

export {
	redef enum Notice::Type += {
		## An unsupervised zeekml detector's calibrated score for a connection is over
		## its alert threshold.
		Anomalous_Flow,
		## A supervised zeekml head classifies a connection as malicious.
		Intrusion,
		## A zeekml botnet-family head names a botnet family for a connection.
		Botnet_Activity,
		## zeekml grouped a host's alerting connections into an incident (a scan, a
		## beacon, an exfiltration, an inbound attack); ``msg`` says what happened.
		Suspicious_Host
	};

	## The note names zeekml writes in the ``note`` column of its verdict file, mapped to
	## the notice types above. A name not in this table is raised as
	## :zeek:see:`ZeekML::Anomalous_Flow` (and counted in
	## :zeek:see:`ZeekML::unknown_note_count`), so a newer zeekml never makes Zeek drop a
	## verdict line.
	const note_names: table[string] of Notice::Type = {
		["ZeekML::Anomalous_Flow"] = Anomalous_Flow,
		["ZeekML::Intrusion"] = Intrusion,
		["ZeekML::Botnet_Activity"] = Botnet_Activity,
		["ZeekML::Suspicious_Host"] = Suspicious_Host
	} &redef;

	## How many verdicts named a note missing from :zeek:see:`ZeekML::note_names`.
	global unknown_note_count: count = 0;
}
