"""A validated request's prompt token ids: vocabulary check, ChatML rendering, trimming, length check.

Pure functions of the tokenizer and the request; the server runs them in a worker thread
(`asyncio.to_thread`), so rendering a long conversation never stalls other connections.
"""

from __future__ import annotations

from inference import protocol as P
from inference.errors import UserError
from inference.server.history import fit_messages


def chat_ids(tokenizer, messages: list[dict], vocab_size: int, rid) -> list[int]:
    try:
        return tokenizer.chat_ids(messages, vocab_size=vocab_size)
    except UserError as e:
        raise P.ProtocolError(str(e), P.BAD_REQUEST, rid) from e


def generate_prompt(tokenizer, req: P.GenerateRequest, vocab_size: int, max_model_len: int) -> tuple[list[int], int]:
    """(prompt ids, messages dropped by "history": "trim"); raises ProtocolError."""
    P.check_vocab(req, vocab_size)
    dropped = 0
    if req.prompt_ids is not None:
        ids = list(req.prompt_ids)
    elif req.history == "trim":
        ids, dropped = fit_messages(lambda m: chat_ids(tokenizer, m, vocab_size, req.id), req.messages,
                                    max_model_len, req.sampling_params().max_new_tokens)
    else:
        ids = chat_ids(tokenizer, req.messages, vocab_size, req.id)
    if len(ids) >= max_model_len:
        what = "with every earlier turn left out, the prompt" if req.history == "trim" else "the prompt"
        raise P.ProtocolError(f"{what} has {len(ids)} tokens; this engine holds at most "
                              f"{max_model_len} per sequence: shorten it", P.PROMPT_TOO_LONG, req.id)
    return ids, dropped


def tokenize_ids(tokenizer, req: P.TokenizeRequest, vocab_size: int) -> list[int]:
    if req.text is not None:
        return tokenizer.encode(req.text)
    P.check_vocab(req, vocab_size)
    return chat_ids(tokenizer, req.messages, vocab_size, req.id)
