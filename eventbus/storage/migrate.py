"""The schema, as numbered SQL files, brought up to date at start-up.

Invariant: ``eventbus_schema`` lists every migration applied, each exactly
once, in number order; migrations run in one transaction under an advisory
lock, so several server processes starting at once against one database
apply each of them once and none sees a half-migrated schema.

A migration is a file ``schema/NNN_what.sql``; a new one gets the next
number and is never edited once released (databases out there recorded it).

Layer rule: storage; SQL and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from twisted.logger import Logger

from eventbus.storage.database import Cursor, Database

log = Logger()

#: ``pg_advisory_xact_lock`` key of the migrations ("eventbus" in ASCII).
MIGRATION_LOCK = 0x6576656E74627573
#: Migrations may take a while on a large database.
MIGRATION_TIMEOUT_S = 120.0

_FILE = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql\Z")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped in the package, in version order (1, 2, ... N)."""
    found = []
    for entry in resources.files("eventbus.storage").joinpath("schema").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"schema files are not numbered 1..N: {[m.version for m in found]}")
    return found


async def migrate(database: Database) -> int:
    """Apply what is missing; return the schema version now in place."""

    async def work(cur: Cursor) -> int:
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await cur.execute("CREATE TABLE IF NOT EXISTS eventbus_schema (version int NOT NULL)")
        await cur.execute("SELECT max(version) FROM eventbus_schema")
        current = cur.fetchone()[0] or 0
        known = migrations()
        for migration in known:
            if migration.version > current:
                log.info(
                    "applying schema migration {version} ({name})",
                    version=migration.version,
                    name=migration.name,
                )
                await cur.execute(migration.sql)
                await cur.execute("INSERT INTO eventbus_schema VALUES (%s)", (migration.version,))
        return max(current, len(known))

    return await database.transaction(work, timeout=MIGRATION_TIMEOUT_S)
