"""The reference wallet service of CONTRACT.md (``trade-engine wallet-service``): a Falcon app with its
balances in PostgreSQL, every mutating call applied once per idempotency key, and fault injection
for tests. The contract ships with the package (``CONTRACT.md``)."""

from __future__ import annotations

from .app import create_app
from .errors import WalletServiceError
from .faults import Faults, FaultSet
from .store import WalletStore, ensure_schema

__all__ = ["FaultSet", "Faults", "WalletServiceError", "WalletStore", "create_app", "ensure_schema"]
