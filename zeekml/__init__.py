"""zeekml: machine-learning detection for the Zeek and Suricata logs you already have."""

__version__ = "0.1.0"
