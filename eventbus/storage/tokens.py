"""Every SQL statement of access tokens (``schema/007_tokens.sql``).

Invariant: a token's secret never reaches the database, only its SHA-256
digest; every creation and revocation sends ``pg_notify('eventbus_tokens',
name)`` in its own transaction, so every process's token cache hears of it
after the commit (see :mod:`eventbus.storage.notify`).

Layer rule: storage; SQL and nothing else.
"""

from __future__ import annotations

from eventbus.errors import Conflict
from eventbus.model import TokenRecord
from eventbus.storage.database import Cursor, Database, select_list
from eventbus.storage.notify import tokens_notify_sql

_COLUMNS = select_list(
    TokenRecord,
    name="name",
    digest="digest",
    scopes="scopes",
    issuers="issuers",
    created="extract(epoch FROM created)::float8",
    expires="extract(epoch FROM expires)::float8",
    last_used="extract(epoch FROM last_used)::float8",
)


def _record(row: tuple) -> TokenRecord:
    name, digest, scopes, issuers, created, expires, last_used = row
    return TokenRecord(
        name=name,
        digest=digest,
        scopes=tuple(scopes),
        issuers=None if issuers is None else tuple(issuers),
        created=created,
        expires=expires,
        last_used=last_used,
    )


class TokenStore:
    """The ``tokens`` table."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(
        self,
        name: str,
        digest: str,
        scopes: tuple[str, ...],
        issuers: tuple[str, ...] | None,
        expires_in: float | None,
    ) -> TokenRecord:
        """Store a new token; :class:`Conflict` if the name is taken."""

        async def work(cur: Cursor) -> TokenRecord:
            await cur.execute(
                "INSERT INTO tokens (name, digest, scopes, issuers, expires)"
                " VALUES (%(name)s, %(digest)s, %(scopes)s, %(issuers)s,"
                "  clock_timestamp() + make_interval(secs => %(expires_in)s))"
                f" ON CONFLICT (name) DO NOTHING RETURNING {_COLUMNS}",
                {
                    "name": name,
                    "digest": digest,
                    "scopes": list(scopes),
                    "issuers": None if issuers is None else list(issuers),
                    "expires_in": expires_in,
                },
            )
            row = cur.fetchone()
            if row is None:
                raise Conflict(f"a token named {name!r} exists already")
            await cur.execute(f"SELECT {tokens_notify_sql('%s')}", (name,))
            return _record(row)

        return await self.database.transaction(work)

    async def all(self) -> list[TokenRecord]:
        rows = await self.database.query(f"SELECT {_COLUMNS} FROM tokens ORDER BY name")
        return [_record(r) for r in rows]

    async def by_name(self, name: str) -> TokenRecord | None:
        rows = await self.database.query(f"SELECT {_COLUMNS} FROM tokens WHERE name = %s", (name,))
        return _record(rows[0]) if rows else None

    async def by_digest(self, digest: str) -> TokenRecord | None:
        rows = await self.database.query(f"SELECT {_COLUMNS} FROM tokens WHERE digest = %s", (digest,))
        return _record(rows[0]) if rows else None

    async def revoke(self, name: str) -> bool:
        """Delete the token; False if there was none of that name."""

        async def work(cur: Cursor) -> bool:
            await cur.execute("DELETE FROM tokens WHERE name = %s RETURNING name", (name,))
            if cur.fetchone() is None:
                return False
            await cur.execute(f"SELECT {tokens_notify_sql('%s')}", (name,))
            return True

        return await self.database.transaction(work)

    async def touch(self, used: dict[str, float]) -> None:
        """Record when tokens (by digest) were last used (unix seconds)."""
        if not used:
            return
        digests, times = zip(*sorted(used.items()), strict=True)
        await self.database.query(
            "UPDATE tokens t SET last_used = greatest(t.last_used, to_timestamp(u.at))"
            " FROM unnest(%s::text[], %s::float8[]) AS u (digest, at) WHERE t.digest = u.digest"
            " RETURNING t.name",
            (list(digests), list(times)),
        )
