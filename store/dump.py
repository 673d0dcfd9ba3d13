"""Backups: `export_dump` writes a directory any driftrec database can be rebuilt from;
`import_dump` loads one into an empty, migrated database (SQLite or PostgreSQL).

Layout: one ``<table>.jsonl`` per table (binary columns base64, timestamps ISO 8601), item vectors
in ``item_vectors.npy`` (float32, one row per item that has one, referenced by row number), the
index and model files under ``files/``, and ``manifest.json`` with the schema revision, row counts
and the sha256 of every file. Export reads one consistent snapshot and writes to a temporary
directory renamed at the end; import checks every checksum before it writes anything, then
inserts all rows, ids included, in one transaction. API keys travel as their hashes.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.orm import Session
from sqlalchemy.types import Float, LargeBinary

from store.db import Database, is_sqlite
from store.dialect import insert_unnest
from store.errors import StoreError
from store.files import file_sha256
from store.migrate import current_revision
from store.models import Base
from store.types import UTCDateTime

FORMAT = "driftrec-dump/1"
MANIFEST = "manifest.json"
VECTORS = "item_vectors.npy"
#: Parents before children, so foreign keys hold while importing.
TABLES = (
    "counters",
    "items",
    "users",
    "events",
    "profiles",
    "stale_profiles",
    "pending_events",
    "model_versions",
    "index_versions",
    "api_keys",
    "recommendation_sessions",
)
FILE_TABLES = {"index_versions": "indexes", "model_versions": "models"}


class DumpError(StoreError, ValueError):
    """A dump that cannot be written or loaded: the message says why."""


@dataclass
class DumpSummary:
    rows: dict[str, int]
    files: int


def _table(name: str) -> Table:
    return Base.metadata.tables[name]


def _encode(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for column in table.columns:
        value = row[column.name]
        if value is None:
            out[column.name] = None
        elif isinstance(column.type, LargeBinary):
            out[column.name] = base64.b64encode(value).decode("ascii")
        elif isinstance(value, datetime):
            out[column.name] = value.astimezone(UTC).isoformat()
        elif isinstance(value, float) and not math.isfinite(value):  # JSON has no inf/NaN
            out[column.name] = str(value)
        else:
            out[column.name] = value
    return out


def _decode(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for column in table.columns:
        value = row.get(column.name)
        if value is not None:
            if isinstance(column.type, LargeBinary):
                value = base64.b64decode(value)
            elif isinstance(column.type, UTCDateTime):
                value = datetime.fromisoformat(value)
            elif isinstance(column.type, Float) and isinstance(value, str):
                value = float(value)
        out[column.name] = value
    return out


def export_dump(db: Database, target: Path, data_dir: Path) -> DumpSummary:
    """Write the whole database and its artefact files to ``target`` (which must not exist)."""
    if target.exists():
        raise DumpError(f"{target} already exists: export into a new directory")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "files").mkdir(parents=True)
    rows: dict[str, int] = {}
    files: dict[str, str] = {}
    with db.snapshot() as session:  # one snapshot for every table
        revision = current_revision_of(session)
        vectors: list[np.ndarray] = []
        for name in TABLES:
            table = _table(name)
            count = 0
            with open(staging / f"{name}.jsonl", "w", encoding="utf-8") as out:
                result = session.execute(select(table).order_by(*table.primary_key.columns))
                for mapping in result.mappings():
                    row = _encode(table, dict(mapping))
                    if name == "items" and mapping["vector"] is not None:
                        row["vector"] = {"npy_row": len(vectors)}
                        vectors.append(np.frombuffer(mapping["vector"], dtype=np.float32))
                    if name in FILE_TABLES:
                        row["path"] = _export_file(
                            Path(mapping["path"]), staging, FILE_TABLES[name], mapping["id"]
                        )
                    out.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
                    count += 1
            rows[name] = count
    _save_vectors(staging / VECTORS, vectors)
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            files[path.relative_to(staging).as_posix()] = file_sha256(path)
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "schema_revision": revision,
        "source_dialect": db.dialect,
        "rows": rows,
        "files": files,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    staging.rename(target)
    return DumpSummary(rows, len(files))


def current_revision_of(session) -> str | None:  # type: ignore[no-untyped-def]
    return session.execute(text("SELECT version_num FROM alembic_version")).scalar()  # type: ignore[no-any-return]


def _export_file(path: Path, staging: Path, kind: str, row_id: int) -> str:
    if not path.is_file():
        raise DumpError(f"artefact {path} (in the database) is missing: cannot back it up")
    relative = f"files/{kind}/{row_id}-{path.name}"
    (staging / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, staging / relative)
    return relative


def _save_vectors(path: Path, vectors: list[np.ndarray]) -> None:
    dims = {len(v) for v in vectors}
    if len(dims) > 1:  # vectors of several models: keep them in one flat array with offsets
        raise DumpError(f"items hold vectors of several dimensions {sorted(dims)}: reindex first")
    array = np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
    np.save(path, array.astype(np.float32, copy=False), allow_pickle=False)


def read_manifest(source: Path) -> dict[str, Any]:
    """The manifest, after checking that every file it lists is present and intact."""
    try:
        manifest = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DumpError(f"{source}: no readable {MANIFEST} ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise DumpError(f"{source}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for relative, expected in manifest["files"].items():
        path = source / relative
        if not path.is_file():
            raise DumpError(f"{source}: {relative} is missing")
        if file_sha256(path) != expected:
            raise DumpError(f"{source}: {relative} does not match its checksum (corrupt dump)")
    return manifest


def import_dump(db: Database, source: Path, data_dir: Path) -> DumpSummary:
    """Load a dump into an empty database migrated to the dump's schema revision."""
    manifest = read_manifest(source)
    revision = current_revision(db.engine)
    if revision != manifest["schema_revision"]:
        raise DumpError(
            f"the dump is at schema revision {manifest['schema_revision']}, the database at "
            f"{revision}: migrate both to the same revision (`driftrec db upgrade`)"
        )
    vectors = np.load(source / VECTORS, allow_pickle=False)
    copied: list[Path] = []

    def work(session) -> dict[str, int]:  # type: ignore[no-untyped-def]
        for name in TABLES:
            if session.scalar(select(func.count()).select_from(_table(name))):
                raise DumpError(f"table {name} is not empty: import into a new database")
        counts = {}
        for name in TABLES:
            table = _table(name)
            batch: list[dict[str, Any]] = []
            counts[name] = 0
            with open(source / f"{name}.jsonl", encoding="utf-8") as handle:
                for line in handle:
                    raw = json.loads(line)
                    vector = raw.pop("vector", None) if name == "items" else None
                    row = _decode(table, raw)
                    if vector is not None:
                        row["vector"] = vectors[vector["npy_row"]].tobytes()
                    if name in FILE_TABLES:
                        row["path"] = str(_import_file(source, row, FILE_TABLES[name], data_dir))
                        copied.append(Path(row["path"]))
                    batch.append(row)
                    if len(batch) >= 1000:
                        _insert_batch(session, table, batch)
                        batch = []
                    counts[name] += 1
            if batch:
                _insert_batch(session, table, batch)
            if counts[name] != manifest["rows"][name]:
                raise DumpError(
                    f"{name}: {counts[name]} rows, manifest says {manifest['rows'][name]}"
                )
        if not is_sqlite(db.engine):
            _reset_sequences(session)
        return counts

    try:
        with db.write() as session:
            counts = work(session)
    except BaseException:
        for path in copied:
            path.unlink(missing_ok=True)
        raise
    return DumpSummary(counts, len(manifest["files"]))


def _import_file(source: Path, row: dict[str, Any], kind: str, data_dir: Path) -> Path:
    relative = Path(row["path"])
    target = data_dir / kind / relative.name
    if target.exists() and file_sha256(target) != row["checksum"]:
        raise DumpError(f"{target} exists with other content: import into a fresh data directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source / relative, tmp)
    tmp.replace(target)
    if file_sha256(target) != row["checksum"]:
        raise DumpError(f"{relative}: content does not match the checksum its row records")
    return target.resolve()


#: Tables whose checks PostgreSQL runs once per statement (migration 0014's trigger on the
#: events' references): their rows go in one statement a batch, not one statement a row.
SET_BASED_TABLES = frozenset({"events"})


def _insert_batch(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (all with the same columns): executemany, which on PostgreSQL sends one
    statement a row; for `SET_BASED_TABLES` there one statement (`store.dialect.insert_unnest`)."""
    if is_sqlite(session.get_bind()) or table.name not in SET_BASED_TABLES:
        session.execute(insert(table), rows)
        return
    insert_unnest(session, table, rows)


def _reset_sequences(session) -> None:  # type: ignore[no-untyped-def]
    """After inserting explicit ids, move each id sequence past the largest id."""
    for name in TABLES:
        table = _table(name)
        if "id" not in table.columns or not table.columns["id"].primary_key:
            continue
        session.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {name}), 0) + 1, false)"
            )
        )
