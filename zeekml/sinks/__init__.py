"""Where verdicts go: Zeek-format logs, the verdict file Zeek's Input framework reads, JSON lines."""
