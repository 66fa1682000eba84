"""The provenance ledger: Ed25519-signed updates, a hash-chained round log, RFC 6962
Merkle trees and proofs, the node-side watch, and the audit of a run directory.

Works on bytes and plain values; the run directory commits entries (``runtime``), and
``apps`` wires keys and watches into servers and nodes.
"""
