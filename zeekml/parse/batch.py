"""The unit every parser yields."""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa


@dataclass
class LogBatch:
    """Records of one log kind from one file, with Zeek's field names as column names.

    Attributes:
        log_path: Zeek's ``#path`` (``conn``, ``dns``...; ``suricata_alert`` for eve alerts).
        batch: the records. Zeek types map to Arrow as: time/interval/double -> float64
            (epoch seconds), count -> uint64, int -> int64, port -> uint16, bool -> bool,
            addr/enum/subnet -> string, string and other text -> binary (exact bytes),
            containers -> list of the element type. Unset values are null.
        zeek_types: Zeek type name of every column.
        source: the file the records came from.
        first_line: 1-based line number of the first record (0 when unknown).
        end_offset: byte offset just past the last line consumed (uncompressed stream).
    """

    log_path: str
    batch: pa.RecordBatch
    zeek_types: dict[str, str] = field(default_factory=dict)
    source: str = ""
    first_line: int = 0
    end_offset: int = 0

    @property
    def num_rows(self) -> int:
        return self.batch.num_rows
