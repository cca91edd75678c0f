"""The trade engine's error tree: one root, domain rules on one branch, infrastructure on the other.

```
TradeEngineError                       root of everything the project raises on purpose
├── DomainError                        a rule was broken; nothing changed (HTTP 4xx)
│   ├── ValidationError                VALIDATION_ERROR (malformed or contradictory command fields)
│   ├── InvalidTickSize                INVALID_TICK_SIZE      field=price | stop_price
│   ├── InvalidLotSize                 INVALID_LOT_SIZE       field=quantity
│   ├── QuantityTooSmall               QUANTITY_TOO_SMALL     field=quantity
│   ├── QuantityTooLarge               QUANTITY_TOO_LARGE     field=quantity
│   ├── NotionalTooSmall               NOTIONAL_TOO_SMALL     field=quantity | quote_quantity
│   ├── PriceRequired                  PRICE_REQUIRED         field=price
│   ├── PriceNotAllowed                PRICE_NOT_ALLOWED      field=price
│   ├── StopPriceRequired              STOP_PRICE_REQUIRED    field=stop_price
│   ├── InsufficientBalance            INSUFFICIENT_BALANCE   (the funds gate refused a lock)
│   ├── PostOnlyWouldTake              POST_ONLY_WOULD_TAKE   (an amend of a post-only order would cross)
│   ├── DuplicateOrderId               DUPLICATE_ORDER_ID     (the order id is already live on the pair)
│   ├── DuplicateClientOrderId         DUPLICATE_CLIENT_ORDER_ID (carries the existing order_id)
│   ├── UnknownSymbol                  UNKNOWN_SYMBOL         field=symbol
│   ├── PairNotTrading                 PAIR_NOT_TRADING       (the pair is halted or delisted)
│   ├── PairExists                     PAIR_EXISTS            (a pair with that symbol exists)
│   ├── OrderNotFound                  NOT_FOUND              (unknown id, or another user's order)
│   ├── OrderNotCancellable            ORDER_NOT_CANCELLABLE  (the order is already final)
│   ├── OrderNotAmendable              ORDER_NOT_AMENDABLE    (final, or a pending stop)
│   ├── IllegalStatusTransition        ILLEGAL_STATUS_TRANSITION (a lifecycle bug, never a client error)
│   └── InvalidPairSpec                INVALID_PAIR_SPEC      (pair specification rejected)
├── InvariantViolation                 the book's consistency is broken (a bug; from check_invariants)
└── InfrastructureError                something outside the domain failed (HTTP 5xx); raised by other layers
    ├── StorageUnavailable             UNAVAILABLE     (database down)
    ├── EngineUnavailable              UNAVAILABLE     (actor restarting, breaker open)
    │   └── WalletServiceUnavailable   UNAVAILABLE     (the remote wallet service cannot be used)
    └── EngineTimeout                  ENGINE_TIMEOUT  (outcome unknown)
```

Every error carries a stable UPPER_SNAKE `code` (class attribute) and an optional `field` naming the one
command field at fault. The HTTP layer maps by base class; codes never change once published.
"""

from __future__ import annotations


class TradeEngineError(Exception):
    """Root of every error the trade engine raises on purpose."""

    code: str = "INTERNAL_ERROR"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, field={self.field!r})"


class DomainError(TradeEngineError):
    """A trading rule was broken; the command changed nothing."""

    code = "DOMAIN_ERROR"


class ValidationError(DomainError):
    """A command field is malformed or contradicts another."""

    code = "VALIDATION_ERROR"


class InvalidTickSize(DomainError):
    """A price is not a positive multiple of the pair's tick size."""

    code = "INVALID_TICK_SIZE"


class InvalidLotSize(DomainError):
    """A quantity is not a positive multiple of the pair's lot size."""

    code = "INVALID_LOT_SIZE"


class QuantityTooSmall(DomainError):
    """A quantity is below the pair's minimum (or, on amend, not above the filled quantity)."""

    code = "QUANTITY_TOO_SMALL"


class QuantityTooLarge(DomainError):
    """A quantity is above the pair's maximum."""

    code = "QUANTITY_TOO_LARGE"


class NotionalTooSmall(DomainError):
    """Price × quantity (or a quote quantity) is below the pair's minimum notional."""

    code = "NOTIONAL_TOO_SMALL"


class PriceRequired(DomainError):
    """A LIMIT or STOP_LIMIT order came without a price."""

    code = "PRICE_REQUIRED"


class PriceNotAllowed(DomainError):
    """A MARKET or STOP_MARKET order came with a price."""

    code = "PRICE_NOT_ALLOWED"


class StopPriceRequired(DomainError):
    """A STOP_LIMIT or STOP_MARKET order came without a stop price."""

    code = "STOP_PRICE_REQUIRED"


class InsufficientBalance(DomainError):
    """The funds gate refused to lock what the order needs."""

    code = "INSUFFICIENT_BALANCE"


class PostOnlyWouldTake(DomainError):
    """An amend would make a post-only order take liquidity."""

    code = "POST_ONLY_WOULD_TAKE"


class DuplicateOrderId(DomainError):
    """The order id is already live on this pair."""

    code = "DUPLICATE_ORDER_ID"


class DuplicateClientOrderId(DomainError):
    """The user already has an order with this client_order_id; `order_id` names it when known."""

    code = "DUPLICATE_CLIENT_ORDER_ID"

    def __init__(self, message: str, *, field: str | None = None, order_id: str | None = None) -> None:
        super().__init__(message, field=field)
        self.order_id = order_id

    @property
    def details(self) -> dict[str, str | None]:
        """What the API's error body carries besides code and message: the existing order's id."""
        return {"order_id": self.order_id}


class UnknownSymbol(DomainError):
    """No trading pair has this symbol."""

    code = "UNKNOWN_SYMBOL"


class PairNotTrading(DomainError):
    """The pair exists but takes no new orders (halted or delisted); cancels still work."""

    code = "PAIR_NOT_TRADING"


class PairExists(DomainError):
    """A pair with this symbol already exists."""

    code = "PAIR_EXISTS"


class OrderNotFound(DomainError):
    """No live order with that id belongs to that user on this pair."""

    code = "NOT_FOUND"


class OrderNotCancellable(DomainError):
    """The order is already in a final status."""

    code = "ORDER_NOT_CANCELLABLE"


class OrderNotAmendable(DomainError):
    """The order is final or a pending stop, so it cannot be amended."""

    code = "ORDER_NOT_AMENDABLE"


class IllegalStatusTransition(DomainError):
    """The lifecycle table forbids this status change (always a bug in the caller of the table)."""

    code = "ILLEGAL_STATUS_TRANSITION"


class InvalidPairSpec(DomainError):
    """A pair specification is inconsistent (sizes, limits, fee rates)."""

    code = "INVALID_PAIR_SPEC"


class InvariantViolation(TradeEngineError):
    """The book's internal consistency is broken; raised by check_invariants()."""

    code = "INVARIANT_VIOLATION"


class InfrastructureError(TradeEngineError):
    """Something outside the domain failed; the outcome may be unknown."""

    code = "UNAVAILABLE"


class StorageUnavailable(InfrastructureError):
    """The database cannot be reached or refused the transaction."""

    code = "UNAVAILABLE"


class EngineUnavailable(InfrastructureError):
    """The pair actor is restarting, halted by a breaker, or otherwise not answering."""

    code = "UNAVAILABLE"


class WalletServiceUnavailable(EngineUnavailable):
    """The remote wallet service cannot be used (breaker open, not reconciled yet, no answer); nothing
    was changed by the refused command."""


class EngineTimeout(InfrastructureError):
    """The engine did not answer in time; the command may or may not have been applied."""

    code = "ENGINE_TIMEOUT"
