from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InstructionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTRUCTION_KIND_UNSPECIFIED: _ClassVar[InstructionKind]
    FIT: _ClassVar[InstructionKind]
    EVALUATE: _ClassVar[InstructionKind]
    EXCHANGE: _ClassVar[InstructionKind]
INSTRUCTION_KIND_UNSPECIFIED: InstructionKind
FIT: InstructionKind
EVALUATE: InstructionKind
EXCHANGE: InstructionKind

class Resources(_message.Message):
    __slots__ = ("cpus", "memory_bytes", "gpus")
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    cpus: int
    memory_bytes: int
    gpus: int
    def __init__(self, cpus: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpus: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("node_id", "task_name", "task_version", "schema_digest", "num_examples", "resources", "protocol", "signing_key")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    task_name: str
    task_version: str
    schema_digest: str
    num_examples: int
    resources: Resources
    protocol: str
    signing_key: bytes
    def __init__(self, node_id: _Optional[str] = ..., task_name: _Optional[str] = ..., task_version: _Optional[str] = ..., schema_digest: _Optional[str] = ..., num_examples: _Optional[int] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., protocol: _Optional[str] = ..., signing_key: _Optional[bytes] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("run_id", "model_id", "schema_digest", "current_round", "session", "heartbeat_seconds", "data_info_json", "bulk_port")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DATA_INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    BULK_PORT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    model_id: str
    schema_digest: str
    current_round: int
    session: str
    heartbeat_seconds: float
    data_info_json: bytes
    bulk_port: int
    def __init__(self, run_id: _Optional[str] = ..., model_id: _Optional[str] = ..., schema_digest: _Optional[str] = ..., current_round: _Optional[int] = ..., session: _Optional[str] = ..., heartbeat_seconds: _Optional[float] = ..., data_info_json: _Optional[bytes] = ..., bulk_port: _Optional[int] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("session", "wait_seconds", "bulk")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BULK_FIELD_NUMBER: _ClassVar[int]
    session: str
    wait_seconds: float
    bulk: bool
    def __init__(self, session: _Optional[str] = ..., wait_seconds: _Optional[float] = ..., bulk: _Optional[bool] = ...) -> None: ...

class Scalar(_message.Message):
    __slots__ = ("bool_value", "int_value", "float_value", "string_value")
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    bool_value: bool
    int_value: int
    float_value: float
    string_value: str
    def __init__(self, bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., string_value: _Optional[str] = ...) -> None: ...

class InstructionHeader(_message.Message):
    __slots__ = ("instruction_id", "run_id", "round", "kind", "config", "seed", "params_size", "params_blake3", "ledger_head", "ledger_round", "params_via_bulk")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
    INSTRUCTION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SIZE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_BLAKE3_FIELD_NUMBER: _ClassVar[int]
    LEDGER_HEAD_FIELD_NUMBER: _ClassVar[int]
    LEDGER_ROUND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_VIA_BULK_FIELD_NUMBER: _ClassVar[int]
    instruction_id: str
    run_id: str
    round: int
    kind: InstructionKind
    config: _containers.MessageMap[str, Scalar]
    seed: int
    params_size: int
    params_blake3: str
    ledger_head: str
    ledger_round: int
    params_via_bulk: bool
    def __init__(self, instruction_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[_Union[InstructionKind, str]] = ..., config: _Optional[_Mapping[str, Scalar]] = ..., seed: _Optional[int] = ..., params_size: _Optional[int] = ..., params_blake3: _Optional[str] = ..., ledger_head: _Optional[str] = ..., ledger_round: _Optional[int] = ..., params_via_bulk: _Optional[bool] = ...) -> None: ...

class PayloadRequest(_message.Message):
    __slots__ = ("session", "instruction_id")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_ID_FIELD_NUMBER: _ClassVar[int]
    session: str
    instruction_id: str
    def __init__(self, session: _Optional[str] = ..., instruction_id: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class InstructionPart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: InstructionHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[InstructionHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("session", "instruction_id", "round", "num_examples", "loss", "metrics", "params_size", "params_blake3", "run_id", "signature")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SESSION_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SIZE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_BLAKE3_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session: str
    instruction_id: str
    round: int
    num_examples: int
    loss: float
    metrics: _containers.ScalarMap[str, float]
    params_size: int
    params_blake3: str
    run_id: str
    signature: bytes
    def __init__(self, session: _Optional[str] = ..., instruction_id: _Optional[str] = ..., round: _Optional[int] = ..., num_examples: _Optional[int] = ..., loss: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., params_size: _Optional[int] = ..., params_blake3: _Optional[str] = ..., run_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ResultPart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ResultHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[ResultHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("accepted", "duplicate")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session", "ledger_head")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    LEDGER_HEAD_FIELD_NUMBER: _ClassVar[int]
    session: str
    ledger_head: str
    def __init__(self, session: _Optional[str] = ..., ledger_head: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("current_round", "run_finished", "ledger_head", "ledger_round")
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    RUN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    LEDGER_HEAD_FIELD_NUMBER: _ClassVar[int]
    LEDGER_ROUND_FIELD_NUMBER: _ClassVar[int]
    current_round: int
    run_finished: bool
    ledger_head: str
    ledger_round: int
    def __init__(self, current_round: _Optional[int] = ..., run_finished: _Optional[bool] = ..., ledger_head: _Optional[str] = ..., ledger_round: _Optional[int] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("session", "reason")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session: str
    reason: str
    def __init__(self, session: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LedgerSinceRequest(_message.Message):
    __slots__ = ("session", "head", "max_entries")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    session: str
    head: str
    max_entries: int
    def __init__(self, session: _Optional[str] = ..., head: _Optional[str] = ..., max_entries: _Optional[int] = ...) -> None: ...

class LedgerSinceReply(_message.Message):
    __slots__ = ("headers", "more")
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    headers: _containers.RepeatedScalarFieldContainer[bytes]
    more: bool
    def __init__(self, headers: _Optional[_Iterable[bytes]] = ..., more: _Optional[bool] = ...) -> None: ...

class InclusionProofRequest(_message.Message):
    __slots__ = ("session", "round")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    session: str
    round: int
    def __init__(self, session: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class InclusionProofReply(_message.Message):
    __slots__ = ("included", "contribution", "index", "tree_size", "path")
    INCLUDED_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    included: bool
    contribution: bytes
    index: int
    tree_size: int
    path: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, included: _Optional[bool] = ..., contribution: _Optional[bytes] = ..., index: _Optional[int] = ..., tree_size: _Optional[int] = ..., path: _Optional[_Iterable[bytes]] = ...) -> None: ...
