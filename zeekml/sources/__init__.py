"""Sources: batch archives (rotated, gzip), live Zeek log directories, pcap replay."""

CHECKPOINT_FILE = "checkpoint.json"
"""The name of ``zeekml watch``'s checkpoint (``sources.checkpoint.CheckpointStore``): in an output
directory, the mark of watch's outputs, which ``zeekml score`` looks for without loading the
follower and checkpoint code (``tests/unit/test_lazy_imports.py``)."""
