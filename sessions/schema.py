"""The sessions database schema, versioned with `PRAGMA user_version`.

`MIGRATIONS[i]` brings a database from version i to version i + 1. `migrate` applies the pending
ones in order, each inside its own transaction together with the version bump, so a failure leaves
the database at the last complete version (SQLite DDL is transactional).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sessions.private import secure_db_files
from sessions.records import SessionError

# A reply's columns, the same in messages (the kept reply) and alternatives (another engine's reply).
REPLY_COLUMNS = """content TEXT NOT NULL DEFAULT '',
        token_ids BLOB NOT NULL DEFAULT x'',
        status TEXT NOT NULL DEFAULT 'complete'
            CHECK (status IN ('complete', 'streaming', 'interrupted', 'error')),
        stats TEXT NOT NULL DEFAULT '{}',"""

MIGRATION_1 = (
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        model TEXT NOT NULL DEFAULT '',
        system_prompt TEXT NOT NULL DEFAULT '',
        settings TEXT NOT NULL DEFAULT '{}',
        parent_id TEXT REFERENCES sessions(id) ON DELETE SET NULL,
        forked_at INTEGER,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    "CREATE INDEX sessions_by_updated ON sessions(updated_at)",
    f"""
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        {REPLY_COLUMNS}
        writer TEXT,
        created_at REAL NOT NULL,
        UNIQUE (session_id, idx)
    )
    """,
    "CREATE INDEX messages_streaming ON messages(status) WHERE status = 'streaming'",
)
# token_ids: packed little-endian int32. writer: "host:pid" of the process streaming the reply.

MIGRATION_2 = (
    f"""
    CREATE TABLE alternatives (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        engine TEXT NOT NULL DEFAULT '',
        chosen_engine TEXT NOT NULL DEFAULT '',
        {REPLY_COLUMNS}
        first_diff INTEGER,
        agreement REAL,
        writer TEXT,
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX alternatives_by_message ON alternatives(message_id)",
    "CREATE INDEX alternatives_streaming ON alternatives(status) WHERE status = 'streaming'",
)
# alternatives: another engine's reply to the same prompt, kept beside messages(message_id), the reply the
# chat goes on from (compare view). engine / chosen_engine: what wrote this reply / the kept one;
# first_diff (NULL: identical) and agreement compare the two replies' token ids.

MIGRATIONS: list[tuple[str, ...]] = [MIGRATION_1, MIGRATION_2]
SCHEMA_VERSION = len(MIGRATIONS)


def default_db_path() -> Path:
    """$QWEN_CHAT_SESSIONS_DB, else $XDG_DATA_HOME/qwen-chat/sessions.db (XDG default ~/.local/share)."""
    env = os.environ.get("QWEN_CHAT_SESSIONS_DB")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser() / "qwen-chat" / "sessions.db"


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating) the database: autocommit mode (transactions are explicit), WAL, foreign keys on.
    The folder is 0700 and the files 0600 (`sessions.private`)."""
    path = Path(path)
    secure_db_files(path)
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
    except sqlite3.Error as e:
        raise SessionError(f"cannot open the sessions database {path}: {e}; pass another --db path") from e
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 10000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        # WAL + NORMAL: a killed process never loses a committed transaction; fsync at checkpoints.
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.OperationalError as e:  # locked, read-only, no space
        conn.close()
        raise SessionError(f"cannot open the sessions database {path} ({e}): check the file's permissions "
                           "and free space, or pass another --db path") from e
    except sqlite3.DatabaseError as e:  # "file is not a database"
        conn.close()
        raise SessionError(
            f"{path} is not a qwen-chat sessions database ({e}); pass another --db path "
            "or move the file away"
        ) from e
    if str(mode).lower() != "wal" and str(path) != ":memory:":
        conn.close()
        raise SessionError(f"{path}: SQLite could not switch to WAL mode (got {mode!r}); use a local disk")
    return conn


def user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection, migrations=None, source: str = "database") -> int:
    """Apply the pending migrations in order; returns the final version."""
    migrations = MIGRATIONS if migrations is None else migrations
    current = user_version(conn)
    if current > len(migrations):
        raise SessionError(
            f"{source} has schema version {current}, newer than this qwen-chat knows "
            f"({len(migrations)}); upgrade qwen-chat or pass another --db path"
        )
    for version in range(current, len(migrations)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if user_version(conn) != version:  # another process migrated meanwhile
                conn.execute("ROLLBACK")
                continue
            for statement in migrations[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            conn.execute("ROLLBACK")
            raise SessionError(
                f"{source}: schema migration {version + 1} failed ({e}); the file was left at version "
                f"{version}. If it is not a qwen-chat sessions database, pass another --db path"
            ) from e
    return user_version(conn)
