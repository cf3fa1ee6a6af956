"""`Database`: one SQLite connection to the sessions file, opened and migrated (schema.py), shared by the
threads of one process under a lock; every write is one `BEGIN IMMEDIATE` transaction (stdlib only)."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from sessions import schema
from sessions.records import SessionError
from sessions.schema import default_db_path


class Database:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        self._lock = threading.RLock()
        self._conn = schema.connect(self.path)
        try:
            schema.migrate(self._conn, source=str(self.path))
        except BaseException:
            self._conn.close()
            raise

    @contextmanager
    def _tx(self):
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:  # busy past the timeout, disk full, read-only file
                raise SessionError(f"sessions database {self.path}: {e}") from e

    def _read(self, sql: str, args=()) -> list:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
