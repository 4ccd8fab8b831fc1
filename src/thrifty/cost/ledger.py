"""The ledger: every metered run in one SQLite file.

Default location: ``ledger.sqlite`` under ``platformdirs.user_data_dir("thrifty")``; the
``THRIFTY_LEDGER`` environment variable or ``--ledger`` names another file (``off`` turns
recording off). The schema version lives in ``PRAGMA user_version`` and ``MIGRATIONS`` moves an
older file forward. Several runs may write at once: WAL journalling, a busy timeout, and every
write in one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from thrifty.errors import ThriftyError

# MIGRATIONS[i] takes a ledger from version i to version i + 1.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            uid TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT NOT NULL,
            host TEXT,
            command TEXT,
            run_dir TEXT,
            usage TEXT NOT NULL,
            prices TEXT NOT NULL,
            info TEXT NOT NULL
        )""",
        "CREATE INDEX runs_started ON runs (started_at)",
        """CREATE TABLE points (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
    ],
]
VERSION = len(MIGRATIONS)
_JSON = ("usage", "prices", "info")


def default_path() -> Path | None:
    value = os.environ.get("THRIFTY_LEDGER")
    if value == "off":
        return None
    if value:
        return Path(value)
    import platformdirs

    return Path(platformdirs.user_data_dir("thrifty")) / "ledger.sqlite"


def default() -> Ledger | None:
    path = default_path()
    return Ledger(path) if path is not None else None


def open_ledger(path: str | Path | None) -> Ledger:
    """An existing ledger to read: the one named by ``--ledger``, or the default one."""
    path = Path(path) if path else default_path()
    if path is None:
        raise ThriftyError("the ledger is off (THRIFTY_LEDGER=off); name one with --ledger FILE")
    if not path.is_file():
        raise ThriftyError(f"no ledger at {path}: nothing has been recorded there yet")
    return Ledger(path)


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA busy_timeout = 60000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise ThriftyError(f"ledger {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > VERSION:
            raise ThriftyError(f"ledger {self.path} has schema version {version}; this thrifty "
                               f"knows up to {VERSION}: upgrade thrifty")
        if version == VERSION:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]  # another may have won
            for target in range(version, VERSION):
                for statement in MIGRATIONS[target]:
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {target + 1}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    @property
    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def record(self, entry: dict) -> int:
        """Store one run and its time series; returns its id."""
        row = {k: entry.get(k) for k in ("uid", "kind", "name", "status", "started_at", "ended_at",
                                          "host", "command", "run_dir")}
        for key in _JSON:
            row[key] = json.dumps(entry.get(key) or {})
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cur = self.db.execute(
                f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
            run_id = cur.lastrowid
            self.db.executemany(
                "INSERT INTO points (run_id, seq, data) VALUES (?, ?, ?)",
                [(run_id, i, json.dumps(p)) for i, p in enumerate(entry.get("points") or [])],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return run_id

    def _rows(self, where: str = "", args: tuple = ()) -> list[dict]:
        cur = self.db.execute(f"SELECT * FROM runs {where} ORDER BY id", args)
        names = [d[0] for d in cur.description]
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values, strict=True))
            for key in _JSON:
                row[key] = json.loads(row[key])
            out.append(row)
        return out

    def runs(self, kind: str | None = None) -> list[dict]:
        return self._rows("WHERE kind = ?", (kind,)) if kind else self._rows()

    def get(self, ref: str | int) -> dict:
        """A run by id, by a unique prefix of its uid, or by its run directory. A number is an id
        first: a uid prefix of digits alone is looked up only when no run has that id."""
        ref = str(ref)
        is_id = ref.isdigit() and int(ref) < 2**63  # SQLite's INTEGER is 64 bits
        rows = self._rows("WHERE id = ?", (int(ref),)) if is_id else []
        if not rows:
            rows = self._rows("WHERE uid LIKE ? OR run_dir = ? OR run_dir = ?",
                              (ref + "%", ref, str(Path(ref).resolve())))
            if len(rows) > 1 and not all(r["run_dir"] == rows[0]["run_dir"] for r in rows):
                raise ThriftyError(f"run {ref!r} is ambiguous: {', '.join(str(r['id']) for r in rows)}")
        if not rows:
            raise ThriftyError(f"no run {ref!r} in the ledger {self.path}")
        return rows[-1]

    def points(self, run_id: int) -> list[dict]:
        cur = self.db.execute("SELECT data FROM points WHERE run_id = ? ORDER BY seq", (run_id,))
        return [json.loads(d) for (d,) in cur.fetchall()]
