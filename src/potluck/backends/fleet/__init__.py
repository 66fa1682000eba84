"""Real nodes over gRPC: the server-side NodePool, and the handler nodes call into.

Nodes join, then long-poll for instructions; ``fit``/``evaluate`` put one instruction in
each sampled node's inbox and yield results as nodes push them. A node is *live* while
it has called in within ``node_ttl`` seconds; one that goes silent mid-round is
reported as ``NodeFailed`` as soon as that is noticed, not only at the deadline.

:class:`FleetPool` (``pool.py``) composes small parts that share its lock:

- ``registry.py``: the allow-list, joins and sessions, which nodes are live;
- ``dispatch.py``: inboxes, long polls, dispatches and their deadlines;
- ``admission.py``: whether a result counts (identity, round, replay, schema, NaN/Inf,
  signature);
- ``ledger_service.py``: the ledger head, headers and inclusion proofs nodes ask for;
- ``instructions.py``: open, answered and closed instructions;
- ``bounded.py``: the size limits of what the server keeps for the whole run.
"""

from potluck.backends.fleet.pool import FleetPool

__all__ = ["FleetPool"]
