"""Small helpers shared by every step: errors, Zeek format escaping, device choice."""
