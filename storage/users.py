"""Users and their API keys.

A key is random (256 bits), shown once when it is issued, and stored only as its SHA-256 digest with a
short prefix for display. Authentication hashes the presented key and looks the digest up; a revoked
key, or a key of a system account, authenticates nobody.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from tradeengine.engine.errors import DomainError, ValidationError

from .database import storage_errors

KEY_PREFIX = "te_"
ROLES = ("trader", "admin")
# Serialises "create the first admin" between processes starting at the same time.
_BOOTSTRAP_LOCK = 0x7E_AD_01


class UserExists(DomainError):
    """A user with that name exists already."""

    code = "USER_EXISTS"


@dataclass(frozen=True, slots=True)
class User:
    """One row of ``users``."""

    id: int
    name: str
    role: str
    created_at: datetime


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

    def issue_key(self, user_id: int) -> str:
        """Issue another key for a user; return it (shown once)."""
        with storage_errors("issuing an API key"), self._pool.connection() as conn:
            return _insert_key(conn, user_id)

    def get(self, user_id: int) -> User | None:
        """Return a user by id, or None."""
        with storage_errors("reading a user"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(User))
            return cur.execute("SELECT id, name, role::text AS role, created_at FROM users WHERE id = %s",
                               (user_id,)).fetchone()

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
        """Create an admin holding `key` when no admin exists yet; return it, or None if one existed."""
        if not key.startswith(KEY_PREFIX) or len(key) < len(KEY_PREFIX) + 16:
            raise ValidationError(f"a bootstrap admin key must start with {KEY_PREFIX} and carry at least "
                                  "16 more characters (e.g. te_ and the output of `openssl rand -hex 24`)")
        with storage_errors("creating the bootstrap admin"), self._pool.connection() as conn, \
                conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_BOOTSTRAP_LOCK,))
            if conn.execute("SELECT 1 FROM users WHERE role = 'admin' LIMIT 1").fetchone():
                return None
            user, _ = self._create(conn, name, "admin", key=key)
            return user

    @staticmethod
    def _create(conn: psycopg.Connection[object], name: str, role: str, key: str | None = None
                ) -> tuple[User, str]:
        cur = conn.cursor(row_factory=class_row(User))
        try:
            with conn.transaction():
                user = cur.execute(
                    "INSERT INTO users (name, role) VALUES (%s, %s) "
                    "RETURNING id, name, role::text AS role, created_at", (name, role)).fetchone()
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
