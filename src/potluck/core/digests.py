"""Digests, one scheme each: what identifies a payload, an update and the settings it
was trained under.

- payload: the hex BLAKE3 of the bytes that travel (checked end to end on top of TLS).
- update: the payload digest of the update's canonical encoding as a DELTA, so the
  digest a node signs is the transport digest: one fast hash on each side.
- settings: the SHA-256 of an instruction's configuration as sorted, compact JSON.
- statement: what a node signs for an update, as compact JSON
  ``["potluck.update.v1", run id, round, update digest, examples, settings digest]``.
"""

from __future__ import annotations

import hashlib
import json

import blake3

from potluck.core.messages import ConfigDict
from potluck.core.params import Params, ParamsKind

PARALLEL_HASH_BYTES = 8 * 2**20  # above this, BLAKE3 hashes on every core
STATEMENT_TAG = "potluck.update.v1"


def payload_digest(data: bytes | memoryview) -> str:
    """Hex BLAKE3 of a payload: faster than SHA-256 here, which matters when every byte
    is hashed on both sides. A model-sized payload is hashed on all cores (BLAKE3's tree
    allows it; the digest is the same)."""
    threads = blake3.blake3.AUTO if len(data) >= PARALLEL_HASH_BYTES else 1
    return blake3.blake3(data, max_threads=threads).hexdigest()


def update_digest(update: Params) -> str:
    """The digest a node signs: BLAKE3 of the update's canonical encoding as a DELTA."""
    delta = update if update.kind is ParamsKind.DELTA else update.with_kind(ParamsKind.DELTA)
    return payload_digest(delta.encode())  # no copy when the update was decoded from those bytes


def settings_digest(config: ConfigDict) -> str:
    """SHA-256 of the instruction's configuration as sorted, compact JSON."""
    text = json.dumps(dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def update_statement(run_id: str, rnd: int, digest: str, num_examples: int, settings: str) -> bytes:
    """The bytes a node signs for one update (see the module docstring)."""
    return json.dumps([STATEMENT_TAG, run_id, rnd, digest, num_examples, settings], separators=(",", ":")).encode()
