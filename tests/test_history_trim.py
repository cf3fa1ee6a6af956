"""fit_messages: which turns a prompt that outgrew the context window loses (real tokenizer, no engine)."""

from __future__ import annotations

from inference.server.history import TRIM_FILL, fit_messages
from inference.tokenizer import QwenTokenizer

TOK = QwenTokenizer.bundled()


def msg(role, n, tag):
    return {"role": role, "content": "", "token_ids": [tag] * n}


def test_fits_untouched_and_trims_whole_pairs_keeping_system_and_newest():
    chat = [{"role": "system", "content": "Be brief."}]
    for t in range(8):
        chat += [msg("user", 50, 100 + t), msg("assistant", 50, 200 + t)]
    chat.append(msg("user", 30, 999))
    full = TOK.chat_ids(chat)
    assert fit_messages(TOK.chat_ids, chat, len(full) + 64, 16) == (full, 0)
    limit = len(full) - 10
    ids, dropped = fit_messages(TOK.chat_ids, chat, limit, 16)
    assert dropped % 2 == 0 and dropped > 0 and len(ids) <= TRIM_FILL * limit
    assert ids == TOK.chat_ids(chat[:1] + chat[1 + dropped:])  # system kept, oldest pairs gone
    assert ids[-40:] == full[-40:]  # the newest message is there
    # dropping one more pair than needed would not happen: one pair fewer does not fit the fill target
    assert len(TOK.chat_ids(chat[:1] + chat[1 + dropped - 2:])) > TRIM_FILL * limit


def test_reply_room_counts_and_the_newest_message_is_never_dropped():
    chat = [msg("user", 100, 1), msg("assistant", 100, 2), msg("user", 300, 3)]
    n = len(TOK.chat_ids(chat))
    assert fit_messages(TOK.chat_ids, chat, n + 5, 4)[1] == 0  # room for 4 new tokens: fits
    ids, dropped = fit_messages(TOK.chat_ids, chat, n + 5, 100)  # needs min(100, limit // 4) tokens
    assert dropped == 2 and ids == TOK.chat_ids(chat[2:])
    ids, dropped = fit_messages(TOK.chat_ids, chat, 200, 10)  # the newest alone is too long: kept anyway
    assert dropped == 2 and len(ids) > 200  # the server then answers prompt_too_long
