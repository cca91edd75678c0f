"""Dry-run walks of the book: what an incoming order could fill, and what it would spend.

Used before anything changes, to decide a FOK (fill completely or not at all) and to compute the exact lock
of a MARKET BUY (by base quantity or by quote budget). The walk follows the same price-time order and the
same self-trade prevention as the real match, so the real match fills exactly what the walk found:
- own resting orders under EXPIRE_MAKER are skipped (the match will expire them);
- under EXPIRE_TAKER / EXPIRE_BOTH the walk stops at the first own resting order (the match expires the
  taker there);
- under NONE own orders count as liquidity.
A quote budget buys whole lots only; the walk stops at the first maker it cannot buy completely, since deeper
prices are never cheaper. Complexity: O(orders walked); beyond the best level, plus O(log L) and the parked
(empty) levels passed (see book: at most the live levels + PARKED_SLACK).
"""

from __future__ import annotations

from .book import OrderBook
from .order import BUY, EXPIRE_MAKER, SELL, STP_NONE, SelfTradePrevention, Side


def walk_liquidity(
    book: OrderBook,
    quote_atoms_per_tick_lot: int,
    side: Side,
    user_id: str,
    stp: SelfTradePrevention,
    limit: int | None,
    quantity: int | None,
    quote_budget: int | None = None,
) -> tuple[int, int]:
    """Return (lots, quote atoms) an incoming order would fill now; give quantity or quote_budget."""
    is_buy = side is BUY
    lots = spent = 0
    for level in book.live_levels(SELL if is_buy else BUY):
        price = level.price
        if limit is not None and (price > limit if is_buy else price < limit):
            break
        unit_cost = price * quote_atoms_per_tick_lot
        maker = level.head
        while maker is not None:
            if maker.user_id == user_id and stp is not STP_NONE:
                if stp is EXPIRE_MAKER:
                    maker = maker.next
                    continue
                return lots, spent
            available = maker.quantity - maker.filled
            if quantity is not None:
                take = min(available, quantity - lots)
            else:
                assert quote_budget is not None
                take = min(available, (quote_budget - spent) // unit_cost)
            lots += take
            spent += take * unit_cost
            if lots == quantity or (quantity is None and take < available):
                return lots, spent
            maker = maker.next
    return lots, spent
