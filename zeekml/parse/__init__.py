"""Parsers: Zeek TSV, Zeek JSON lines, Zeek CSV conversions and Suricata eve.json into Arrow batches.

``read_log(path)`` detects the format per file and yields ``LogBatch``es; ``read_table(paths)``
concatenates them. Malformed records go to a ``Quarantine`` with file, line, offset and reason.
"""
from zeekml.parse.batch import LogBatch
from zeekml.parse.reader import detect_format, read_log, read_table
from zeekml.parse.reject import Quarantine, RejectedRecord

__all__ = ["LogBatch", "Quarantine", "RejectedRecord", "detect_format", "read_log", "read_table"]
