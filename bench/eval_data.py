"""The labeled real logs of ../shared/data and the three tasks of MODELS.md, as the few-shot
benches of the autoencoder and the mixture-of-experts use them (one definition, so their tables
are comparable)."""
from __future__ import annotations

import os

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
