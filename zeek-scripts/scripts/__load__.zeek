##! zeekml: ML detection companion for Zeek.
##!
##! Loading the package loads all three parts. To get incident and verdict notices without the
##! per-packet cost of the flow features, load ``zeekml/verdicts`` alone instead.

@load ./main
@load ./flow-features
@load ./verdicts
