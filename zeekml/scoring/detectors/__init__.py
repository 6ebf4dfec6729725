"""The inference half of every model kind, one module each (``iforest``, ``gnn``, ``token``,
``mae``); a learned kind registers itself with ``zeekml.scoring.registry.register_kind``.
``base`` holds what they share (reading a model directory back)."""
