"""Read the committed balances back into the core's units: what a starting wallet loads.

Balances are NUMERIC(38,8) in the database and whole atoms (1e-8) in memory. The conversion is exact or
it fails loudly (`CorruptStoredAmount`): a stored amount that is negative or not a whole number of atoms
means the database was written by something other than this engine, and the wallet must not start on it.

Ids follow `storage.facts`: ``users.id`` 1 (the fee account) is the core's `FEE_ACCOUNT`, every other
user is ``str(users.id)``. Complexity: one query, O(balances) time and memory.
"""

from __future__ import annotations

from decimal import Decimal, localcontext

from psycopg_pool import ConnectionPool

from tradeengine.engine import ATOMS_PER_UNIT

from .database import storage_errors
from .errors import StorageError
from .facts import core_user_id

__all__ = ["CorruptStoredAmount", "decimal_to_units", "load_balances", "user_exists"]


class CorruptStoredAmount(StorageError):
    """A stored amount cannot be converted exactly to the core's integer units."""


def load_balances(pool: ConnectionPool) -> dict[tuple[str, str], tuple[int, int]]:
    """Return every balance: (core user id, asset) → (available atoms, locked atoms)."""
    with storage_errors("loading balances"), pool.connection() as conn:
        rows = conn.execute("SELECT user_id, asset, available, locked FROM balances").fetchall()
    atom = Decimal(1) / ATOMS_PER_UNIT
    balances: dict[tuple[str, str], tuple[int, int]] = {}
    for user_id, asset, available, locked in rows:
        where = f"balances of user {user_id} {asset}"
        balances[(core_user_id(user_id), asset)] = (
            decimal_to_units(available, atom, f"{where}: available"),
            decimal_to_units(locked, atom, f"{where}: locked"),
        )
    return balances


def user_exists(pool: ConnectionPool, user_id: int) -> bool:
    """Tell whether ``users`` has a row with this id."""
    with storage_errors("looking up a user"), pool.connection() as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM users WHERE id = %s)", (user_id,)).fetchone()
    return bool(row and row[0])


def decimal_to_units(value: Decimal, unit: Decimal, what: str) -> int:
    """Return value / unit as an int ≥ 0, or raise CorruptStoredAmount if it is not exactly that."""
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise CorruptStoredAmount(f"{what} is {value!r}, not an amount ≥ 0")
    with localcontext(prec=100):  # NUMERIC(38,8) over the smallest unit fits; the default 28 digits do not
        units, remainder = divmod(value, unit)
    if remainder != 0:
        raise CorruptStoredAmount(f"{what} {value} is not a whole number of {unit}")
    return int(units)
