# @TEST-DOC: zeekml replaces the verdict file by an atomic rename with old and new verdicts;
# Zeek's REREAD raises a notice only for the new verdict ids. Needs Zeek >= 6.
#
# @TEST-EXEC: cp $FILES/verdicts.log .
# @TEST-EXEC: btest-bg-run zeek zeek -b $PACKAGE/verdicts.zeek %INPUT
# @TEST-EXEC: btest-bg-wait 30
# @TEST-EXEC: zeek-cut uid < zeek/notice.log | sort > uids.txt
# @TEST-EXEC: btest-diff uids.txt

redef exit_only_after_terminate = T;
redef ZeekML::verdict_file = "../verdicts.log";

global reads = 0;

event Input::end_of_data(name: string, source: string)
	{
	if ( name != ZeekML::verdict_stream )
		return;

	++reads;
	if ( reads == 1 )
		# The same verdicts plus one new one, written to a temp file and renamed into
		# place (a new inode), as zeekml's VerdictFeedbackWriter does.
		system("grep -v '^#close' ../verdicts.log > ../verdicts.tmp && printf 'Vnew0000000000001\\t1700000009.000000\\tCZkml9\\t10.9.9.9\\t999\\t10.8.8.8\\t443\\ttcp\\tZeekML::Intrusion\\t5.000000\\tgnn-v1\\tlate verdict\\t(empty)\\n' >> ../verdicts.tmp && mv ../verdicts.tmp ../verdicts.log");
	else
		terminate();
	}
