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


def quadratic_fit(chat_ids, messages, limit, max_new_tokens):
    """The definition: drop the oldest turns one chunk at a time, re-rendering the rest each time."""
    ids = chat_ids(messages)
    if len(ids) + min(max_new_tokens, limit // 4) <= limit:
        return ids, 0
    head = messages[:1] if messages[0]["role"] == "system" else []
    body, dropped = messages[len(head):], 0
    while len(body) > 1 and len(ids) > int(TRIM_FILL * limit):
        n = 2 if len(body) > 2 and body[0]["role"] == "user" and body[1]["role"] == "assistant" else 1
        body, dropped = body[n:], dropped + n
        ids = chat_ids(head + body)
    return ids, dropped


def test_same_result_as_the_definition_on_mixed_chats():
    words = ["hi", "a longer message with some words", "", "ok\n", "x" * 40]
    for seed in range(12):
        chat = [{"role": "system", "content": "S"}] if seed % 2 else []
        for i in range(20 + seed):
            role = ["user", "assistant", "user"][(i * (seed + 1)) % 3]  # pairs and lone messages
            chat.append({"role": role, "content": words[(i + seed) % len(words)]} if i % 4
                        else msg(role, 1 + i % 7, 300 + i))
        for limit in (40, 90, 150):
            assert fit_messages(TOK.chat_ids, chat, limit, 16) == quadratic_fit(TOK.chat_ids, chat, limit, 16)


def test_trimming_a_huge_conversation_renders_each_message_a_bounded_number_of_times():
    rendered = []

    def chat_ids(messages):
        rendered.append(len(messages))
        return TOK.chat_ids(messages)

    chat = [{"role": ["user", "assistant"][i % 2], "content": f"message {i}"} for i in range(10_001)]
    ids, dropped = fit_messages(chat_ids, chat, 1024, 256)
    assert dropped > 9000 and len(ids) <= TRIM_FILL * 1024
    assert ids == TOK.chat_ids(chat[dropped:])
    # re-rendering the rest after each dropped pair took 45 s (25 million messages rendered)
    assert sum(rendered) <= 3 * len(chat), sum(rendered)
