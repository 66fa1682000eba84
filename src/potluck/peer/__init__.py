"""Peer mode: serverless DiLoCo training (``potluck peer``).

Modules, lowest first: ``identity`` (certificate + Ed25519 key), ``records`` (signed,
short-lived DHT records), ``dht`` (membership and matchmaking over ``kademlia``),
``allreduce`` (the transport-free butterfly all-reduce), ``lane`` (mutual-TLS frames),
``exchange`` (the all-reduce of one group over the lane), ``diloco`` (the outer step),
``rundir`` (a peer's run directory), ``runner`` (one peer's loop). See docs/peer.md.
"""
