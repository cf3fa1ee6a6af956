"""The engine server's wire protocol: newline-delimited JSON over a Unix socket (docs/protocol.md).

`messages.py` names what travels (limits, ops, error codes, request types, the events the server sends),
`parse.py` checks a request line into one of those types, `json_values.py` holds the JSON value checks
that the OpenAI schema (server/openai_schema.py) shares. Server and clients import the protocol as one
module, `from inference import protocol as P`. No torch here: the Textual app and the client import it.
"""

from inference.protocol import messages
from inference.protocol.messages import *  # noqa: F403 - the protocol is one module to its users
from inference.protocol.parse import check_vocab, decode_line, parse_request

__all__ = [*messages.__all__, "check_vocab", "decode_line", "parse_request"]
