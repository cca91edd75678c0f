"""pykka actors: pair, wallet, persistence writer and their supervisor; `ActorSystem` composes them.

Callers trade through the `Exchange` (``ActorSystem.exchange``); operators use the system's controls.
"""

from .exchange import Exchange, OrderRequest
from .ids import OrderIds
from .ledger import AssetBalance, Ledger
from .pair import CommandOutcome, Depth, PairActor, Top
from .supervision import ActorTimeout, ActorUnavailable, ChildSpec, ChildState, ChildStatus, GroupSpec
from .supervisor import Supervisor
from .system import ActorSystem
from .wallet import LedgerSlot, WalletActor, WalletBackend
from .writer import PersistenceActor

__all__ = [
    "ActorSystem",
    "ActorTimeout",
    "ActorUnavailable",
    "AssetBalance",
    "ChildSpec",
    "ChildState",
    "ChildStatus",
    "CommandOutcome",
    "Depth",
    "Exchange",
    "GroupSpec",
    "Ledger",
    "LedgerSlot",
    "OrderIds",
    "OrderRequest",
    "PairActor",
    "PersistenceActor",
    "Supervisor",
    "Top",
    "WalletActor",
    "WalletBackend",
]
