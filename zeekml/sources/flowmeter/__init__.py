"""A built-in flow meter whose conn.log follows Zeek's connection semantics.

Used by ``zeekml replay`` when Zeek is not installed. It groups packets into connections the way
Zeek's session manager does and fills conn.log's columns as Zeek's analyzers do:

- 5-tuple connections for TCP, UDP and ICMP (ICMP type as ``orig_p``; the counterpart type, or the
  code for one-way messages, as ``resp_p``, so an echo request and its reply are one connection),
  ``unknown_transport`` connections (ports 0) for other IP protocols;
- originator chosen from the first packet, flipped like Zeek for SYN-ACKs/mid-stream packets from
  a likely server port (history ``^``);
- TCP: Zeek's endpoint state machine (INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED,
  CLOSED, RESET), payload sizes from sequence and acknowledgement numbers (``Size()``: the larger
  of last sequence and peer's ack, minus the SYN and FIN octets), history letters (``ShADadFfRr``,
  ``TtWwGgIiQq`` with Zeek's 1/10/100 scaling), ``missed_bytes`` from acknowledged-but-unseen data;
- ``conn_state`` from Zeek's ``Conn::conn_state`` rules; ``duration`` and the byte columns only when
  the duration is positive (as Zeek's ``set_conn``);
- lifetimes: inactivity (TCP 5 min once past the handshake, 1 min before it; UDP and ICMP 1 min),
  SYN attempts expire after 5 s unanswered, closed/reset connections 5 s after the close, and a new
  SYN on a closed connection starts a new one (``IsReuse``);
- tunnels: IP-in-IP, GRE (incl. ERSPAN I/II/III, PPTP), VXLAN, Teredo, AYIYA and GTP-U are
  decapsulated; the inner connection's ``tunnel_parents`` names the outer connection's uid (or the
  IP tunnel's uid for GRE/IP-in-IP, which has no conn.log row, as in Zeek);
- IPv4 fragments and IPv6 fragment headers are reassembled;
- checksums are validated as Zeek does by default (``ignore_checksums=True`` is ``zeek -C``);
- ``service`` as Zeek's analyzers confirm it (e.g. ``ssh`` only once the key exchange completes),
  and Zeek's DNS analyzer and its session timer on the DNS ports.

The meter never raises on packet content: a frame it cannot decode is counted in ``stats`` and
skipped.

Modules: ``meter`` (``FlowMeter``: packets to connections, IP, fragments, UDP/ICMP, tunnels),
``tcp`` (TCP endpoint state machine, history, reassembly bookkeeping), ``conn`` (a connection and
its records), ``decode`` (link layers and tunnel headers), ``sniff`` (payload service sniffing).
"""
from zeekml.sources.flowmeter.conn import (CONN_FIELDS, LIKELY_SERVER_PORTS_TCP,
                                           LIKELY_SERVER_PORTS_UDP, Conn, UidGenerator, addr_str,
                                           is_private)
from zeekml.sources.flowmeter.meter import FlowMeter, MeterStats
from zeekml.sources.flowmeter.tcp import TcpEndpoint

__all__ = ["CONN_FIELDS", "LIKELY_SERVER_PORTS_TCP", "LIKELY_SERVER_PORTS_UDP", "Conn", "FlowMeter",
           "MeterStats", "TcpEndpoint", "UidGenerator", "addr_str", "is_private"]
