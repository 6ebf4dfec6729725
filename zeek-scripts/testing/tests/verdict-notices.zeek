# @TEST-DOC: zeekml's verdict file (files/verdicts.log, written by zeekml's own writer) becomes
# one ZeekML::* notice per verdict, with uid, 4-tuple, proto, score and model in msg, and sub;
# a note name Zeek does not know is raised as ZeekML::Anomalous_Flow. Needs Zeek >= 6.
#
# @TEST-EXEC: cp $FILES/verdicts.log .
# @TEST-EXEC: zeek -b $PACKAGE/verdicts.zeek %INPUT > out
# @TEST-EXEC: zeek-cut note uid id.orig_h id.orig_p id.resp_h id.resp_p proto msg sub < notice.log | sort > notices.txt
# @TEST-EXEC: btest-diff notices.txt
# @TEST-EXEC: btest-diff out

redef exit_only_after_terminate = T;
redef ZeekML::verdict_file = "verdicts.log";

event Input::end_of_data(name: string, source: string)
	{
	if ( name != ZeekML::verdict_stream )
		return;

	print fmt("verdicts in table: %d, unknown notes: %d", |ZeekML::verdicts|,
	    ZeekML::unknown_note_count);
	terminate();
	}
