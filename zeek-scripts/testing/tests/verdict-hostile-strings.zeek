# @TEST-DOC: strings with tabs, newlines, "-", "(empty)", a literal \x41, backslashes, a leading
# "#" and commas reach Zeek through its Input framework exactly as zeekml had them.
# Needs Zeek >= 6.
#
# @TEST-EXEC: cp $FILES/verdicts-hostile.log .
# @TEST-EXEC: zeek -b $PACKAGE/verdicts.zeek %INPUT > out
# @TEST-EXEC: sort out > sorted.txt
# @TEST-EXEC: btest-diff sorted.txt

redef exit_only_after_terminate = T;
redef ZeekML::verdict_file = "verdicts-hostile.log";

const expected: table[string] of string = {
	["CH0"] = "tab\there",
	["CH1"] = "new\nline",
	["CH2"] = "-",
	["CH3"] = "(empty)",
	["CH4"] = "\\x41",
	["CH5"] = "back\\slash",
	["CH6"] = "#leading hash",
	["CH7"] = "comma,inside"
};

hook ZeekML::verdict_policy(verdict_id: string, v: ZeekML::Verdict, n: Notice::Info)
	{
	print fmt("%s msg %s sub %s", v$uid, v$msg == expected[v$uid] ? "same" : "DIFFERENT",
	    v$sub == expected[v$uid] ? "same" : "DIFFERENT");
	}

event Input::end_of_data(name: string, source: string)
	{
	if ( name == ZeekML::verdict_stream )
		terminate();
	}
