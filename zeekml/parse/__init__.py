"""Parsers: Zeek TSV, Zeek JSON lines, Zeek CSV conversions and Suricata eve.json into Arrow batches.

``read_log(path)`` detects the format per file and yields ``LogBatch``es; ``read_table(paths)``
concatenates them; ``make_parser`` is the one format -> parser registry (also used by the live
tail and the Dask reader). Malformed records go to a ``Quarantine`` with file, line, offset and reason.
"""
from zeekml.parse.batch import LogBatch
from zeekml.parse.reader import FORMATS, detect_format, make_parser, read_log, read_table
from zeekml.parse.reject import Quarantine, RejectedRecord

__all__ = ["FORMATS", "LogBatch", "Quarantine", "RejectedRecord", "detect_format", "make_parser",
           "read_log", "read_table"]
