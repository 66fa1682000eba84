"""The bulk lane: parameter payloads over a mutual-TLS socket beside gRPC.

gRPC moves a model-sized payload at about 60 % of a TLS socket's throughput on this
kind of machine (HTTP/2 framing, a copy and a thread hop per message), and payloads are
nearly all of a round's bytes. So the server opens a second port for them; everything
else (joins, instruction and result headers, heartbeats, the ledger) stays on gRPC, and
the lane reuses gRPC's messages and error texts. A node that cannot reach the lane
falls back to gRPC chunks (``client.py``), so a closed port costs speed, not the run.

Wire, after a mutual-TLS handshake (the node's id is its certificate's common name, as
on gRPC); a connection carries any number of requests, one after the other::

    request = "PLB1" op:1 header_len:u32 header                 (integers big-endian)
    reply   = status:1 body_len:u64 body
      op "G": header = PayloadRequest → status 0 and the pulled instruction's payload
      op "P": header = ResultHeader → status 2 (go ahead, empty body); the node sends
              params_size bytes of payload → status 0 and one byte: 1 if it was a repeat
      status 1: the error as gRPC's details carry it ("Kind: message", status.py)

A push is checked (session, identity, instruction, size) before its payload moves, and
its payload as on gRPC: the BLAKE3 digest on arrival. Every step has a deadline, so a
slow or silent peer cannot hold a connection's thread.

Modules: ``wire`` (the framing and TLS contexts both ends share), ``server`` (the
listener), ``client`` (a node's connection).
"""

from potluck.transport.bulk.client import BulkClient
from potluck.transport.bulk.server import BulkHandler, BulkOptions, BulkServer
from potluck.transport.bulk.wire import MIN_BULK_BYTES

__all__ = ["MIN_BULK_BYTES", "BulkClient", "BulkHandler", "BulkOptions", "BulkServer"]
