"""Users and their API keys.

A key is random (256 bits), shown once when it is issued, and stored only as its SHA-256 digest with a
short prefix for display. Authentication hashes the presented key and looks the digest up; a revoked
key, or a key of a system account, authenticates nobody. A user may hold several keys (to rotate one:
issue the new key, move the client to it, revoke the old one); a revoked key stays listed, with the
time it was revoked, and is never valid again.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import args_row, class_row
from psycopg_pool import ConnectionPool

from tradeengine.engine.errors import DomainError, ValidationError

from .database import storage_errors
from .history import utc

KEY_PREFIX = "te_"
ROLES = ("trader", "admin")
# Serialises "create the first admin" between processes starting at the same time.
_BOOTSTRAP_LOCK = 0x7E_AD_01
# Serialises revocations, so that two at once cannot both take what each thinks is not the last admin key.
_ADMIN_KEYS_LOCK = 0x7E_AD_02


class UserExists(DomainError):
    """A user with that name exists already."""

    code = "USER_EXISTS"


class LastAdminKey(DomainError):
    """The last API key of the last admin is kept: without it nobody could use the admin API."""

    code = "LAST_ADMIN_KEY"


class SystemAccount(DomainError):
    """The exchange's own accounts (the fee account) hold no API keys."""

    code = "SYSTEM_ACCOUNT"


@dataclass(frozen=True, slots=True)
class User:
    """One row of ``users``."""

    id: int
    name: str
    role: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One row of ``api_keys``, without its digest: ``prefix`` is the key's first characters."""

    id: int
    user_id: int
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


_USER_COLUMNS = "id, name, role::text AS role, created_at"
_KEY_COLUMNS = "id, user_id, key_prefix AS prefix, created_at, revoked_at"


# Times in UTC whatever the session's time zone (psycopg gives that zone's).
def _user_row(id: int, name: str, role: str, created_at: datetime) -> User:
    return User(id, name, role, utc(created_at))


def _key_row(id: int, user_id: int, prefix: str, created_at: datetime,
             revoked_at: datetime | None) -> ApiKey:
    return ApiKey(id, user_id, prefix, utc(created_at), None if revoked_at is None else utc(revoked_at))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: the key's user and role."""

    user_id: int
    name: str
    role: str


def new_api_key() -> str:
    """A fresh random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> bytes:
    """The stored form of a key: its SHA-256 digest."""
    return hashlib.sha256(key.encode()).digest()


class UserRepository:
    """Create users, issue their keys, and authenticate keys, through a connection pool."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def create(self, name: str, role: str) -> tuple[User, str]:
        """Create a user and issue their first key; return the user and the key (shown once)."""
        if role not in ROLES:
            raise ValidationError(f"role must be one of {', '.join(ROLES)}", field="role")
        with storage_errors(f"creating user {name}"), self._pool.connection() as conn:
            return self._create(conn, name, role)

    def get(self, user_id: int) -> User | None:
        """Return a user by id, or None."""
        with storage_errors("reading a user"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=args_row(_user_row))
            return cur.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = %s", (user_id,)).fetchone()

    def named(self, name: str) -> User | None:
        """Return a user by name, or None."""
        with storage_errors("reading a user"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=args_row(_user_row))
            return cur.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE name = %s", (name,)).fetchone()

    def page(self, *, after: int = 0, limit: int = 100) -> list[User]:
        """Users in id order, the first ``limit`` with an id above ``after`` (the exchange's own accounts
        included: their ids are below 1000)."""
        with storage_errors("listing users"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=args_row(_user_row))
            return cur.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id > %s ORDER BY id LIMIT %s",
                               (after, limit)).fetchall()

    def keys(self, user_id: int) -> list[ApiKey]:
        """A user's keys, revoked ones included, oldest first."""
        with storage_errors("listing API keys"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=args_row(_key_row))
            return cur.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE user_id = %s ORDER BY id",
                               (user_id,)).fetchall()

    def active_keys(self) -> dict[int, int]:
        """How many keys that are not revoked each user holds (users holding none are left out)."""
        with storage_errors("counting API keys"), self._pool.connection() as conn:
            rows = conn.execute("SELECT user_id, count(*) FROM api_keys WHERE revoked_at IS NULL "
                                "GROUP BY user_id").fetchall()
        return {user_id: count for user_id, count in rows}

    def issue_key(self, user: User) -> tuple[ApiKey, str]:
        """Issue another key for a trader or an admin; return it and the key itself (shown once)."""
        if user.role not in ROLES:
            raise SystemAccount(f"user {user.id} ({user.name}) is an account of the exchange itself: "
                                "it holds no API keys")
        with storage_errors("issuing an API key"), self._pool.connection() as conn:
            key = _insert_key(conn, user.id)
            cur = conn.cursor(row_factory=args_row(_key_row))
            issued = cur.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = %s",
                                 (key_digest(key),)).fetchone()
        assert issued is not None
        return issued, key

    def revoke_key(self, user_id: int, key_id: int) -> tuple[ApiKey, bool] | None:
        """Revoke one of a user's keys (from now on it authenticates nobody); return it and whether this
        call revoked it (a key revoked already keeps the time it was first revoked). None when the user
        holds no key with that id. The last key of the last admin is not revoked (:class:`LastAdminKey`):
        nobody could use the admin API any more."""
        with storage_errors("revoking an API key"), self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADMIN_KEYS_LOCK,))
            cur = conn.cursor(row_factory=args_row(_key_row))
            key = cur.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = %s AND user_id = %s FOR UPDATE",
                (key_id, user_id)).fetchone()
            if key is None or key.revoked_at is not None:
                return None if key is None else (key, False)
            last = conn.execute(  # is it an admin's key, and no other admin key is active?
                "SELECT u.role = 'admin' AND NOT EXISTS ("
                "  SELECT FROM api_keys k JOIN users a ON a.id = k.user_id"
                "  WHERE a.role = 'admin' AND k.revoked_at IS NULL AND k.id <> %s) "
                "FROM users u WHERE u.id = %s", (key_id, user_id)).fetchone()
            if last is not None and last[0]:
                raise LastAdminKey(f"key {key_id} is the last API key of any admin: revoking it would leave "
                                   "nobody able to use the admin API; issue another admin a key first")
            revoked = cur.execute(
                f"UPDATE api_keys SET revoked_at = greatest(now(), created_at) WHERE id = %s "
                f"RETURNING {_KEY_COLUMNS}", (key_id,)).fetchone()
            assert revoked is not None
            return revoked, True

    def authenticate(self, key: str) -> Principal | None:
        """Return who holds this key, or None for an unknown, revoked or system key."""
        if not key.startswith(KEY_PREFIX):
            return None
        with storage_errors("checking an API key"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Principal))
            return cur.execute(
                "SELECT u.id AS user_id, u.name, u.role::text AS role FROM api_keys k "
                "JOIN users u ON u.id = k.user_id "
                "WHERE k.key_hash = %s AND k.revoked_at IS NULL AND u.role IN ('trader', 'admin')",
                (key_digest(key),),
            ).fetchone()

    def ensure_admin(self, key: str, name: str = "admin") -> User | None:
        """Create an admin holding `key` when no admin exists yet; return it, or None if one existed.

        It is named `name`, or `name`-2, -3, ... when a user (a trader) holds that name already.
        """
        if not key.startswith(KEY_PREFIX) or len(key) < len(KEY_PREFIX) + 16:
            raise ValidationError(f"a bootstrap admin key must start with {KEY_PREFIX} and carry at least "
                                  "16 more characters (e.g. te_ and the output of `openssl rand -hex 24`)")
        with storage_errors("creating the bootstrap admin"), self._pool.connection() as conn, \
                conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_BOOTSTRAP_LOCK,))
            if conn.execute("SELECT 1 FROM users WHERE role = 'admin' LIMIT 1").fetchone():
                return None
            taken = {row[0] for row in conn.execute(
                "SELECT name FROM users WHERE name = %s OR name LIKE %s", (name, f"{name}-%"))}
            candidates = itertools.chain([name], (f"{name}-{n}" for n in itertools.count(2)))
            free = next(candidate for candidate in candidates if candidate not in taken)
            user, _ = self._create(conn, free, "admin", key=key)
            return user

    @staticmethod
    def _create(conn: psycopg.Connection[object], name: str, role: str, key: str | None = None
                ) -> tuple[User, str]:
        cur = conn.cursor(row_factory=args_row(_user_row))
        try:
            with conn.transaction():
                user = cur.execute(
                    f"INSERT INTO users (name, role) VALUES (%s, %s) RETURNING {_USER_COLUMNS}",
                    (name, role)).fetchone()
                assert user is not None
                return user, _insert_key(conn, user.id, key)
        except psycopg.errors.UniqueViolation:
            raise UserExists(f"a user named {name} exists already", field="name") from None
        except psycopg.errors.CheckViolation:
            raise ValidationError("a user name is 1 to 64 characters of letters, digits, '.', '_' or '-'",
                                  field="name") from None


def _insert_key(conn: psycopg.Connection[object], user_id: int, key: str | None = None) -> str:
    key = key or new_api_key()
    conn.execute("INSERT INTO api_keys (user_id, key_hash, key_prefix) VALUES (%s, %s, %s)",
                 (user_id, key_digest(key), key[:10]))
    return key
