"""The wallet service's errors, each carrying the status and code it answers with (CONTRACT.md "Errors").

    WalletServiceError                 root; ``status`` and ``code`` say how it is answered
    ├── BadRequest                     400 VALIDATION_ERROR, with the ``field`` at fault
    ├── MalformedJson                  400 MALFORMED_JSON
    ├── NotFound                       404 NOT_FOUND
    ├── KeyReused                      422 IDEMPOTENCY_KEY_REUSED
    └── Unavailable                    503 UNAVAILABLE (the database does not answer; retry)

A refusal (409 INSUFFICIENT_FUNDS / INSUFFICIENT_LOCKED / NEGATIVE_BALANCE) is not an error here: it
is an answer, stored with the key like a success (see :mod:`.store`). psycopg errors are translated at
the store's boundary; whatever else is unexpected answers 500 INTERNAL_ERROR, from :mod:`.app`.
"""

from __future__ import annotations


class WalletServiceError(Exception):
    """Root of the wallet service's errors."""

    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, object]:
        """The contract's error body."""
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}


class BadRequest(WalletServiceError):
    """The request is not of the contract's shape."""

    status = 400
    code = "VALIDATION_ERROR"


class MalformedJson(WalletServiceError):
    """The body is empty or not JSON."""

    status = 400
    code = "MALFORMED_JSON"


class NotFound(WalletServiceError):
    """No such route or no such operation."""

    status = 404
    code = "NOT_FOUND"


class KeyReused(WalletServiceError):
    """The idempotency key was used before for a different request."""

    status = 422
    code = "IDEMPOTENCY_KEY_REUSED"


class Unavailable(WalletServiceError):
    """The database does not answer; retrying with the same key is safe."""

    status = 503
    code = "UNAVAILABLE"
