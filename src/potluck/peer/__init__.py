"""Peer mode: serverless DiLoCo training (``potluck peer``). See docs/peer.md.

Modules, lowest first: ``identity`` (certificate + Ed25519 key), ``records`` (signed,
short-lived DHT records), ``dht`` (membership over ``kademlia``), ``allreduce`` (the
transport-free butterfly all-reduce), ``diloco`` (pseudo-gradients, the outer step),
``lane`` (mutual-TLS frames), ``exchange`` (one group's all-reduce over the lane),
``matchmaking`` (who averages with whom, deadlines), ``rundir`` (a peer's run
directory), ``runner`` (one peer's loop), ``simulation`` (many virtual peers in one
process, through the same functions).
"""
