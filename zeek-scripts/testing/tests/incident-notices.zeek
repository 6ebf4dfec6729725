# @TEST-DOC: zeekml's incident file (files/verdicts.incidents.log, written by zeekml's own writer
# beside files/verdicts.log, whose name it derives from) becomes one ZeekML::Suspicious_Host
# notice per incident: the host as src (dst when it received the conns), the top conn's uid,
# the most alerted port, the alerts as n, the description as msg and the counts as sub.
# Needs Zeek >= 6.
#
# @TEST-EXEC: cp $FILES/verdicts.log $FILES/verdicts.incidents.log .
# @TEST-EXEC: zeek -b $PACKAGE/verdicts.zeek %INPUT > out
# @TEST-EXEC: zeek-cut note uid src dst p n msg sub < notice.log | grep '^ZeekML::Suspicious_Host' | sort > incidents.txt
# @TEST-EXEC: btest-diff incidents.txt
# @TEST-EXEC: btest-diff out

redef exit_only_after_terminate = T;
# The incident file is not named: verdicts.zeek reads verdicts.incidents.log beside it.
redef ZeekML::verdict_file = "verdicts.log";

global streams_read = 0;

event Input::end_of_data(name: string, source: string)
	{
	if ( name != ZeekML::verdict_stream && name != ZeekML::incident_stream )
		return;

	++streams_read;
	if ( streams_read < 2 )
		return;

	print fmt("incidents in table: %d, verdicts in table: %d, incident file: %s",
	    |ZeekML::incidents|, |ZeekML::verdicts|,
	    ZeekML::incident_file_for(ZeekML::verdict_file));
	terminate();
	}
