"""The engine server's wire protocol: newline-delimited JSON over a Unix socket (docs/protocol.md).

`messages.py` names what travels (limits, ops, error codes, request types, the events the server sends),
`parse.py` checks a request line into one of those types, `json_values.py` holds the JSON value checks
that the OpenAI schema (server/openai_schema.py) shares. Server and clients import the protocol as one
module, `from inference import protocol as P`. No torch here: the Textual app and the client import it.
"""

from inference.protocol.messages import (
    BAD_JSON,
    BAD_REQUEST,
    COMMON_FIELDS,
    DISCONNECTED,
    DUPLICATE_ID,
    ENGINE_ERROR,
    FINISH_REASONS,
    HISTORY_MODES,
    INTERNAL_ERROR,
    LINE_TOO_LONG,
    MAX_ID_CHARS,
    MAX_INT,
    MAX_LINE_BYTES,
    MAX_MESSAGES,
    MAX_SEED,
    NOT_READY,
    OP_FIELDS,
    OPS,
    OVERLOADED,
    PROMPT_TOO_LONG,
    PROTOCOL_VERSION,
    ROLES,
    SAMPLING_FIELDS,
    SHUTTING_DOWN,
    UNKNOWN_OP,
    UNSUPPORTED_PROTOCOL,
    CancelRequest,
    GenerateRequest,
    ProtocolError,
    Request,
    SimpleRequest,
    TokenizeRequest,
    done_event,
    encode,
    error_event,
    request,
    result_event,
    token_event,
)
from inference.protocol.parse import check_vocab, decode_line, parse_request

__all__ = ["BAD_JSON", "BAD_REQUEST", "COMMON_FIELDS", "CancelRequest", "DISCONNECTED", "DUPLICATE_ID", "ENGINE_ERROR",
           "FINISH_REASONS", "GenerateRequest", "HISTORY_MODES", "INTERNAL_ERROR", "LINE_TOO_LONG", "MAX_ID_CHARS",
           "MAX_INT", "MAX_LINE_BYTES", "MAX_MESSAGES", "MAX_SEED", "NOT_READY", "OPS", "OP_FIELDS", "OVERLOADED",
           "PROMPT_TOO_LONG", "PROTOCOL_VERSION", "ProtocolError", "ROLES", "Request", "SAMPLING_FIELDS",
           "SHUTTING_DOWN", "SimpleRequest", "TokenizeRequest", "UNKNOWN_OP", "UNSUPPORTED_PROTOCOL", "check_vocab",
           "decode_line", "done_event", "encode", "error_event", "parse_request", "request", "result_event",
           "token_event"]
