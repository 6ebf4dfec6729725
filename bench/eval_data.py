"""The labeled real logs of ../shared/data and the three tasks of docs/models.md, as the few-shot
benches of the autoencoder and the mixture-of-experts use them (one definition, so their tables
are comparable)."""
from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("ZEEKML_DATA", os.path.normpath(os.path.join(ROOT, "..", "shared", "data")))

FILES = {
    "ctu-34-1": "iot23-ctu-34-1/conn.log.labeled",
    "ctu-21-1": "iot23-csv-aucad/iot-23/CTU-Malware-Capture-21-1-labeled.csv",
    "ctu-8-1": "iot23-csv-aucad/iot-23/CTU-Malware-Capture-8-1-labeled.csv",
    "strato-008": "stratosphere-security-datasets-for-testing/008-zeek-mixed/data/conn.log.labeled",
    "strato-010": "stratosphere-security-datasets-for-testing/010-zeek-mixed/data/conn.log.labeled",
    "zat": "zat/data/conn.log",
}
TASKS = {
    # task -> (label field, files)
    "service": ("service", ["ctu-34-1", "ctu-21-1", "ctu-8-1", "strato-008", "strato-010", "zat"]),
    "botnet": ("detailedlabel", ["ctu-34-1", "ctu-21-1", "ctu-8-1"]),
    "malicious": ("label", ["ctu-34-1", "ctu-21-1", "ctu-8-1", "strato-008", "strato-010"]),
}


def load_all(root: str = DATA) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """One table of every file, the file index of each row, and train/test rows (per file, the
    earliest 70% by time and the rest)."""
    from zeekml.train.data import load_conns, temporal_split

    tables, file_of, train, test = [], [], [], []
    off = 0
    for i, (name, rel) in enumerate(FILES.items()):
        t = load_conns(os.path.join(root, rel))
        tr, te = temporal_split(t)
        tables.append(t)
        file_of.append(np.full(t.num_rows, i))
        train.append(tr + off)
        test.append(te + off)
        off += t.num_rows
        logging.getLogger("eval_data").info("%s: %d conns", name, t.num_rows)
    return (pa.concat_tables(tables), np.concatenate(file_of), np.concatenate(train),
            np.concatenate(test))
