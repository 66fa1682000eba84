"""The one exception tree of potluck.

Every error potluck raises on purpose derives from :class:`PotluckError`, so a caller
can catch the project's own failures without swallowing programming errors. Classes
defined beside the code that raises them are drawn here too, with their module::

    PotluckError
    ├── ConfigError            an option, a TOML value, an address or a name (strategy,
    │                          task) is invalid
    ├── DataError              a data file is missing, malformed or cannot be partitioned
    ├── TaskError              user Task code failed or a Task spec cannot be resolved
    ├── ParamsError            parameters or a message's content cannot be decoded or do
    │   │                      not fit
    │   ├── SchemaMismatch     names, shapes or dtypes differ from the expected schema
    │   ├── NonFiniteError     an array holds NaN or Inf
    │   ├── WireError          (transport.convert) a well-formed message whose content the
    │   │                      wire cannot carry or that makes no sense
    │   └── PayloadError       (transport.chunks) a payload stream is oversized, truncated,
    │                          overrun, out of order or fails its digest
    ├── StrategyError          an aggregation rule was misused (e.g. nothing to aggregate)
    ├── NodeError              a node did not deliver a result for an instruction
    │   ├── NodeFailed         it broke: raised, crashed, or sent something unusable
    │   │   └── NodeResultInvalid  its result arrived and its content was refused
    │   │                      (unsigned or badly signed, undecodable, wrong schema,
    │   │                      NaN/Inf): counted ``rejected``, not ``failed``
    │   ├── NodeTimedOut       it missed the round deadline
    │   └── NodeLeft           it left on purpose (a clean shutdown): not a fault, unlike
    │                          NodeFailed, which means it broke
    ├── RoundFailed            a round could not commit (quorum not met after retries)
    ├── BudgetExhausted        the next round would exceed a budget (e.g. privacy ε), or
    │                          the run reached its --stop-at target: a clean end
    ├── RunDirError            a run directory is missing, inconsistent or not writable
    ├── AccessDenied           a peer is not allowed: certificate identity, allow-list
    │   ├── CertificateRevoked (transport.revocation) its certificate is on the project
    │   │                      CA's revocation list (``potluck certs revoke``)
    │   └── StaleCertificate   (ledger.signing) a new signing key came with a certificate
    │                          no newer than the one the registered key came with
    ├── CertificateError       (transport.tls_files) TLS material is missing, unreadable, would
    │                          be overwritten, or does not verify
    ├── UnknownId              a run, session or instruction id is unknown (or expired)
    ├── UnexpectedResult       a result the server does not wait for: another round,
    │                          another node's instruction, or after the deadline (its
    │                          content is never looked at; the node skips it, goes on)
    ├── PeerRefused            a peer refused a request of the group all-reduce: not a
    │                          member, malformed, too early (peer mode)
    ├── RecordError            (peer.records) a DHT record was ignored: unknown key,
    │                          expired, from the future, another run or CA
    ├── SignatureError         a signature does not verify, is missing, or was made with
    │                          another key than the one registered for its signer
    ├── LedgerError            a ledger entry does not verify (broken chain, signature,
    │   │                      Merkle root, checkpoint digest)
    │   └── LedgerMismatch     (ledger.watch) the server's ledger was forked or rewritten
    │                          under a node that checks it
    └── TransportError         the other side cannot be reached, the connection broke, or
                               an address cannot be bound

Messages name the file, option or node concerned, because they are shown to people
as the one-line reason a command failed. How each class travels over gRPC (its status
code, and back) is decided in one place: ``potluck.transport.status``.
"""

from __future__ import annotations


class PotluckError(Exception):
    """Base class of every error potluck raises on purpose."""


class ConfigError(PotluckError):
    """An option, a configuration file value or a named component is invalid."""


class DataError(PotluckError):
    """A data source is missing, malformed, or cannot be split as asked."""


class TaskError(PotluckError):
    """A Task cannot be resolved, or user Task code failed."""


class ParamsError(PotluckError):
    """Parameters cannot be decoded, or they do not fit where they are used."""


class SchemaMismatch(ParamsError):
    """Parameter names, shapes or dtypes differ from the expected schema."""


class NonFiniteError(ParamsError):
    """An array holds NaN or Inf values."""


class StrategyError(PotluckError):
    """An aggregation rule or strategy was used in a way it does not support."""


class NodeError(PotluckError):
    """A node did not deliver a usable result for an instruction."""

    def __init__(self, node_id: str, reason: str) -> None:
        super().__init__(f"node {node_id}: {reason}")
        self.node_id = node_id
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        # Crosses process boundaries (process pool); rebuild from the two fields.
        return (type(self), (self.node_id, self.reason))


class NodeFailed(NodeError):
    """The node broke: its code raised, its process died, or its result was unusable."""


class NodeResultInvalid(NodeFailed):
    """The node's result arrived but its content was refused: unsigned or badly signed,
    undecodable, of the wrong schema, or holding NaN/Inf. Counted as ``rejected``, not
    ``failed``. Contrast :class:`UnexpectedResult`, refused for when or where it came."""


class NodeTimedOut(NodeError):
    """The node did not answer before the round deadline."""


class NodeLeft(NodeError):
    """The node left the run on purpose (a clean shutdown); not counted as a fault.
    Deliberately not a :class:`NodeFailed`: leaving is not breaking."""


class RoundFailed(PotluckError):
    """A round could not be committed, for example because the quorum was not met."""


class BudgetExhausted(PotluckError):
    """Running the next round would exceed a configured budget (e.g. the privacy ε), or
    the run already reached its target (``--stop-at``): the run stops cleanly after its
    last committed round."""


class RunDirError(PotluckError):
    """A run directory is missing, inconsistent with the requested run, or not writable."""


class AccessDenied(PotluckError):
    """A peer is not allowed: its certificate identity or the allow-list says no."""


class UnknownId(PotluckError):
    """A run, session or instruction id is not known here, or no longer valid."""


class UnexpectedResult(PotluckError):
    """A result the server is not waiting for: for another round, another node's
    instruction, or after its deadline. Its content is not looked at; the node drops
    it and goes on. Contrast :class:`NodeResultInvalid`, refused for its content."""


class SignatureError(PotluckError):
    """A signature does not verify, is missing, or its key is not the one registered
    for the node or server that supposedly made it."""


class LedgerError(PotluckError):
    """A provenance ledger does not verify, or the history a server shows now does not
    extend the history it showed before (a fork or a rewrite)."""


class TransportError(PotluckError):
    """The other side cannot be reached, the connection broke mid-call, or an address
    cannot be bound. A node answers it by backing off and rejoining."""


class PeerRefused(PotluckError):
    """A peer refused a request of the group all-reduce (peer mode): the caller is not a
    member of the group, or sent a malformed or premature request."""
