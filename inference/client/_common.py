"""What both clients share: exceptions, timeouts, request building."""

from __future__ import annotations

from inference import protocol as P

DEFAULT_TIMEOUT = 10.0  # seconds for connect and for health/stats/tokenize/shutdown replies
DEFAULT_STALL_TIMEOUT = 30.0  # seconds without any event before a stream probes the server


class EngineUnavailable(ConnectionError):
    """No engine server answers on the socket, or the connection to it was lost."""


class UntrustedPeer(EngineUnavailable):
    """The socket, its folder or the process listening there is not this user's: nothing was sent."""


class EngineError(RuntimeError):
    """The server answered a request with an error event."""

    def __init__(self, message: str, code: str = P.ENGINE_ERROR):
        super().__init__(message)
        self.message = message
        self.code = code


def _unavailable(path: str, err: BaseException | str) -> EngineUnavailable:
    return EngineUnavailable(
        f"no engine server answers on {path} ({err}); start one with `qwen-chat serve --model M`, "
        "or let the app start it"
    )


def _lost(path: str) -> str:
    return (f"lost the connection to the engine server at {path} (it stopped or crashed); "
            "see its log file next to the socket")


def _generate_request(rid, messages, prompt_ids, session, sampling: dict, history: str | None = None) -> dict:
    req = P.request("generate", id=rid, messages=messages, prompt_ids=prompt_ids, session=session, history=history,
                    **{k: v for k, v in sampling.items() if v is not None})
    P.parse_request(req)  # a bad argument raises ProtocolError (a ValueError) here, not on the server
    return req


def _raise_if_error(ev: dict) -> dict:
    if ev.get("event") == "error":
        raise EngineError(ev.get("message", "unknown error"), ev.get("code", P.ENGINE_ERROR))
    return ev.get("result", {})
