"""The operator's routes (API.md "Admin"): users and their keys, deposits and withdrawals, pairs, actors.
Admin role only.

Money moves through the running engine's wallet (:meth:`ActorSystem.deposit` / ``withdraw``), never
straight into the database: the answer comes after the transfer is committed. Pairs are added, halted,
resumed, re-priced (fees) and restarted through the :class:`ActorSystem`, which keeps the ``pairs``
table and the pair actors in step.

Decisions where API.md is silent:

- a transfer's user must exist (404 ``NOT_FOUND`` otherwise, the fee account included as a user) and
  its asset must be one a pair trades, as base or quote (400 ``VALIDATION_ERROR`` on ``asset``
  otherwise), so a typo cannot strand funds in an asset nothing can spend; amounts have at most 8
  decimal places (the balance precision);
- a new pair's sizes, limits and fees have at most 8 decimal places (the table's precision: more would
  be rounded silently), ``max_quantity`` is required, ``min_quantity`` defaults to ``lot_size`` and
  ``min_notional`` to 0; a pair can be added HALTED;
- ``PATCH`` takes a new status and/or new fees; a fee change restarts the pair's actor (its book is
  rebuilt from the database) and is answered once the new incarnation runs;
- users are listed in id order (``GET /admin/users``, pages of ``limit`` with ``next_cursor``, or one by
  ``name``), the fee account included (role ``system``); a user may hold several API keys:
  ``GET /admin/users/{id}/keys`` lists them (prefix, created, revoked; never the key), ``POST`` issues
  another (shown once: rotate a key by issuing the new one, then revoking the old),
  ``DELETE /admin/users/{id}/keys/{key_id}`` revokes one at once (this process forgets every key it
  remembered; a key revoked already answers as it is, and is not audited again); the last key of the
  last admin is kept (409 ``LAST_ADMIN_KEY``); the fee account holds no keys (409 ``SYSTEM_ACCOUNT``);
- restart and ``GET /admin/pairs`` show each pair with its actor; ``open_orders`` is asked of a running
  actor and null when it does not answer (restarting, stopped or failed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

import falcon
import falcon.asgi
from psycopg_pool import ConnectionPool

from tradeengine.actors.ledger import AssetBalance
from tradeengine.actors.supervision import ChildStatus
from tradeengine.actors.system import ActorSystem, pair_child_name
from tradeengine.engine.errors import UnknownSymbol, ValidationError
from tradeengine.engine.units import ATOM, ATOM_PLACES, format_atoms, to_atoms
from tradeengine.storage import pairs as stored_pairs
from tradeengine.storage import users as stored_users
from tradeengine.storage.pairs import PairRecord, PairRepository
from tradeengine.storage.users import UserRepository

from . import render
from .account import balances_of
from .api import Operation, Resource, read_body, read_query, respond
from .auth import ADMIN, key_forgetter
from .blocking import NoAnswerInTime, blocking
from .errors import not_found
from .market import known_format, pair
from .models import (
    Actor,
    ActorFailure,
    Actors,
    ActorState,
    AdminPair,
    AdminPairs,
    ApiKey,
    ApiKeys,
    Balances,
    CreatedUser,
    IssuedKey,
    NewPair,
    NewUser,
    Pair,
    PairChange,
    Transfer,
    User,
    UserBalance,
    UserPage,
    UserQuery,
)
from .orders import user_of

SUPERVISOR = "supervisor"
PAIR_VALUE_LIMIT = Decimal(10) ** 15


def _not_found(what: str, value: str) -> falcon.HTTPNotFound:
    return falcon.HTTPNotFound(title="Not found", code="NOT_FOUND", description=not_found(what, value))


def _id(text: str) -> int | None:
    """A path's or cursor's id: digits that fit a bigint, else None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def _user_of(users: UserRepository, user_id: str) -> stored_users.User:
    """The user a path names (404 when there is none)."""
    uid = _id(user_id)
    user = None if uid is None else users.get(uid)
    if user is None:
        raise _not_found("user", user_id)
    return user


def _user(user: stored_users.User) -> User:
    return User(id=str(user.id), name=user.name, role=user.role,  # type: ignore[arg-type]
                created_at=render.timestamp(user.created_at))


def _key(key: stored_users.ApiKey) -> ApiKey:
    return ApiKey(id=str(key.id), user_id=str(key.user_id), prefix=key.prefix,
                  created_at=render.timestamp(key.created_at),
                  revoked_at=None if key.revoked_at is None else render.timestamp(key.revoked_at))


def pair_value(text: str, field: str) -> Decimal:
    """A size, limit or fee of a new pair: at most 8 decimal places (the table's precision: more would
    be rounded silently), below 10^15 (so the engine's unit conversions stay exact)."""
    _, _, fraction = text.partition(".")
    if len(fraction.rstrip("0")) > ATOM_PLACES:
        raise ValidationError(f"{field} {text} has more than {ATOM_PLACES} decimal places", field=field)
    value = Decimal(text)
    if value >= PAIR_VALUE_LIMIT:
        raise ValidationError(f"{field} {text} is too large (at most {PAIR_VALUE_LIMIT - ATOM})", field=field)
    return value


def _failure(status: ChildStatus) -> ActorFailure | None:
    failure = status.last_failure
    if failure is None:
        return None
    return ActorFailure(type=failure.type, message=failure.message,
                        at=render.timestamp(datetime.fromtimestamp(failure.at, UTC)),
                        incarnation=failure.incarnation)


_AUDIT = logging.getLogger("tradeengine.http.audit")
R = TypeVar("R")


async def audited(req: falcon.asgi.Request, change: Callable[[], R], said: Callable[[R], str | None]) -> R:
    """Make an admin's change through `blocking` and log it: one INFO line naming the admin and the
    change as ``said(result)`` words it (None: nothing changed, no line); the access log names only the
    route.

    The line is written by the thread that made the change, when it is made: a change that outlasts the
    blocking limit is answered 504 (its outcome unknown) and still logged once its thread has made it,
    marked as late, after a WARNING that names the request.
    """
    admin = user_of(req)
    answered = threading.Event()  # set once the request was answered 504 without the change

    def change_and_log() -> R:
        result = change()
        what = said(result)
        if what is not None:
            late = " (after its request was answered 504)" if answered.is_set() else ""
            _AUDIT.info("admin %s %s%s", admin, what, late)
        return result

    try:
        return await blocking(change_and_log)
    except NoAnswerInTime:
        answered.set()
        _AUDIT.warning("admin %s: %s %s answered 504 before its change was made; it may still be made "
                       "(a line follows if it is)", admin, req.method, req.path)
        raise


class _Pairs:
    """The pairs and their actors, as the admin routes show them."""

    def __init__(self, system: ActorSystem, pool: ConnectionPool) -> None:
        self.system = system
        self.repository = PairRepository(pool)

    def record(self, symbol: str) -> PairRecord:
        record = self.repository.get(known_format(symbol))
        if record is None:
            raise UnknownSymbol(f"unknown symbol {symbol}", field="symbol")
        return record

    def listed(self, records: list[PairRecord]) -> list[AdminPair]:
        """The pairs with their actors' states (their open orders asked of all at once)."""
        statuses = [self.system.pair_actor(record.symbol) for record in records]
        counts = self.system.open_orders([record.symbol for record in records])
        return [self.with_actor(record, status, counts[record.symbol])
                for record, status in zip(records, statuses, strict=True)]

    @staticmethod
    def with_actor(record: PairRecord, status: ChildStatus, open_orders: int | None) -> AdminPair:
        """The pair with its actor's state; ``open_orders`` from a running actor that answered, or None."""
        return AdminPair(symbol=record.symbol, status=record.status,  # type: ignore[arg-type]
                         actor=ActorState(state=status.state.value,
                                          incarnation=status.incarnation, restarts=status.restarts,
                                          mailbox=status.mailbox, last_failure=_failure(status),
                                          open_orders=open_orders))


# -- users and money ----------------------------------------------------------------------------------


class UsersResource(Resource):
    """``/api/v1/admin/users``: list users; create a user and its first API key."""

    auth = ADMIN
    operations: ClassVar = {
        "GET": Operation("List users in id order, or find one by name", UserPage, query=UserQuery,
                         description="The exchange's own accounts are listed too (role system, ids below "
                                     "1000). With `name`, the one user of that name (or none)."),
        "POST": Operation("Create a user and its API key (shown only in this answer)", CreatedUser, 201,
                          body=NewUser, errors=(409,),
                          description="A name taken already answers 409 USER_EXISTS."),
    }

    def __init__(self, pool: ConnectionPool) -> None:
        self._users = UserRepository(pool)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Create a user."""
        new = await read_body(req, NewUser)
        user, key = await audited(
            req, lambda: self._users.create(new.name, new.role),
            lambda made: f"created user {made[0].name} ({made[0].role}, id {made[0].id})")
        respond(resp, CreatedUser(user=_user(user), api_key=key), 201)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List users."""
        respond(resp, await blocking(self._page, read_query(req, UserQuery)))

    def _page(self, query: UserQuery) -> UserPage:
        if query.name is not None and query.cursor is not None:
            raise ValidationError("cursor pages through every user; it is not taken with name",
                                  field="cursor")
        if query.name is not None:
            named = self._users.named(query.name)
            return UserPage(users=[] if named is None else [_user(named)], next_cursor=None)
        after = 0 if query.cursor is None else _id(query.cursor)
        if after is None:
            raise ValidationError("cursor is not valid: pass back a next_cursor unchanged", field="cursor")
        users = self._users.page(after=after, limit=query.limit + 1)  # one more: is there a next page?
        shown = users[:query.limit]
        return UserPage(users=[_user(user) for user in shown],
                        next_cursor=str(shown[-1].id) if len(users) > query.limit else None)


class KeysResource(Resource):
    """``/api/v1/admin/users/{user_id}/keys``: a user's API keys; issue another."""

    auth = ADMIN
    operations: ClassVar = {
        "GET": Operation("List a user's API keys, revoked ones included (never the keys themselves)", ApiKeys,
                         errors=(404,)),
        "POST": Operation("Issue another API key for a user (shown only in this answer)", IssuedKey, 201,
                          errors=(404, 409),
                          description="To rotate a key: issue the new one, move the client to it, then "
                                      "revoke the old one. The fee account holds no keys: 409 "
                                      "SYSTEM_ACCOUNT."),
    }

    def __init__(self, pool: ConnectionPool) -> None:
        self._users = UserRepository(pool)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str) -> None:
        """List a user's keys."""
        keys = await blocking(lambda: self._users.keys(_user_of(self._users, user_id).id))
        respond(resp, ApiKeys(keys=[_key(key) for key in keys]))

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str) -> None:
        """Issue a key."""
        issued, key = await audited(
            req, lambda: self._users.issue_key(_user_of(self._users, user_id)),
            lambda made: f"issued API key {made[0].prefix} (id {made[0].id}) for user {made[0].user_id}")
        respond(resp, IssuedKey(key=_key(issued), api_key=key), 201)


class UserBalancesResource(Resource):
    """``/api/v1/admin/users/{user_id}/balances``: a user's balances; the fee account's are the fees
    collected."""

    auth = ADMIN
    operations: ClassVar = {
        "GET": Operation("A user's balances: available, and locked by open orders", Balances, errors=(404,),
                         engine=True,
                         description="What `GET /api/v1/balances` shows the user, as the running wallet "
                                     "holds it now; the fee account's (user 1) are the fees collected."),
    }

    def __init__(self, system: ActorSystem, pool: ConnectionPool) -> None:
        self._exchange = system.exchange
        self._users = UserRepository(pool)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str) -> None:
        """List a user's balances."""
        held = await blocking(lambda: self._exchange.balances(_user_of(self._users, user_id).id))
        respond(resp, balances_of(held))


class KeyResource(Resource):
    """``/api/v1/admin/users/{user_id}/keys/{key_id}``: revoke a key."""

    auth = ADMIN
    operations: ClassVar = {
        "DELETE": Operation("Revoke one of a user's API keys", ApiKey, errors=(404, 409),
                            description="The key authenticates nobody from this answer on; revoking a key "
                                        "revoked already answers it as it is. The last key of the last "
                                        "admin is kept: 409 LAST_ADMIN_KEY."),
    }

    def __init__(self, pool: ConnectionPool) -> None:
        self._users = UserRepository(pool)

    async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str,
                        key_id: str) -> None:
        """Revoke a key."""
        forget = key_forgetter(req)
        key, _ = await audited(
            req, lambda: self._revoke(user_id, key_id, forget),
            lambda made: f"revoked API key {made[0].prefix} (id {made[0].id}) of user {made[0].user_id}"
            if made[1] else None)  # revoked already: not again
        respond(resp, _key(key))

    def _revoke(self, user_id: str, key_id: str,
                forget: Callable[[], None]) -> tuple[stored_users.ApiKey, bool]:
        """Revoke the key; this process forgets the keys it remembered as soon as it is (also when the
        request was answered 504 meanwhile)."""
        user = _user_of(self._users, user_id)
        kid = _id(key_id)
        revoked = None if kid is None else self._users.revoke_key(user.id, kid)
        if revoked is None:
            raise _not_found("API key", key_id)
        if revoked[1]:
            forget()
        return revoked


class _TransferResource(Resource):
    """A deposit or a withdrawal through the running wallet."""

    auth = ADMIN
    verb: ClassVar[str]
    # Whether the exchange's own accounts (the fee account) take this movement: fees are collected by
    # withdrawing them, but a deposit would mix outside money into what the engine earned.
    system_accounts: ClassVar[bool]

    def __init__(self, system: ActorSystem, pool: ConnectionPool) -> None:
        self._system = system
        self._users = UserRepository(pool)
        self._pairs = PairRepository(pool)

    async def _respond(self, move: Callable[[int, str, int], AssetBalance], req: falcon.asgi.Request,
                       resp: falcon.asgi.Response, user_id: str) -> None:
        transfer = await read_body(req, Transfer)
        balance = await audited(
            req, lambda: self._move(move, user_id, transfer),
            lambda moved: f"{self.verb} {transfer.amount} {transfer.asset} for user {moved.user_id} "
                          f"(available now {moved.available})")
        respond(resp, balance, 201)

    def _move(self, move: Callable[[int, str, int], AssetBalance], user_id: str,
              transfer: Transfer) -> UserBalance:
        user = _user_of(self._users, user_id)
        if user.role not in stored_users.ROLES and not self.system_accounts:
            raise stored_users.SystemAccount(
                f"user {user.id} ({user.name}) is an account of the exchange itself: it holds the fees the "
                f"engine collects and takes no deposits")
        uid = user.id
        atoms = to_atoms(Decimal(transfer.amount), field="amount")
        traded = {asset for record in self._pairs.list() for asset in (record.base_asset, record.quote_asset)}
        if transfer.asset not in traded:
            raise ValidationError(f"no pair trades {transfer.asset}", field="asset")
        balance = move(uid, transfer.asset, atoms)
        return UserBalance(user_id=str(uid), asset=balance.asset, available=format_atoms(balance.available),
                           locked=format_atoms(balance.locked))


class DepositsResource(_TransferResource):
    """``/api/v1/admin/users/{user_id}/deposits``: credit a user's available balance."""

    verb = "deposited"
    system_accounts = False

    operations: ClassVar = {
        "POST": Operation("Deposit to a user: credit their available balance", UserBalance, 201,
                          body=Transfer, errors=(409,), engine=True,
                          description="Answered once committed, with the user's new balance of the asset. "
                                      "The asset must be one a pair trades; at most 8 decimal places. The "
                                      "fee account takes no deposits: 409 SYSTEM_ACCOUNT."),
    }

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str) -> None:
        """Deposit."""
        await self._respond(self._system.deposit, req, resp, user_id)


class WithdrawalsResource(_TransferResource):
    """``/api/v1/admin/users/{user_id}/withdrawals``: debit a user's available balance."""

    verb = "withdrew"
    system_accounts = True

    operations: ClassVar = {
        "POST": Operation("Withdraw from a user: debit their available balance", UserBalance, 201,
                          body=Transfer, errors=(422,), engine=True,
                          description="Answered once committed, with the user's new balance of the asset; "
                                      "more than is available (locked funds excluded) answers 422 "
                                      "INSUFFICIENT_BALANCE and moves nothing. The fees collected are "
                                      "withdrawn from the fee account (user 1)."),
    }

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: str) -> None:
        """Withdraw."""
        await self._respond(self._system.withdraw, req, resp, user_id)


# -- pairs and actors ---------------------------------------------------------------------------------


class AdminPairsResource(Resource):
    """``/api/v1/admin/pairs``: every pair with its actor; add a pair."""

    auth = ADMIN
    operations: ClassVar = {
        "GET": Operation("List the pairs with their actors' state", AdminPairs, engine=True),
        "POST": Operation(
            "Add a pair: it trades at once, no restart", Pair, 201, body=NewPair, errors=(409, 422),
            engine=True,
            description="A symbol in use answers 409 PAIR_EXISTS; inconsistent rules (symbol not "
                        "BASE-QUOTE, limits off the lot size, tick × lot finer than 1e-8, a fee of 1 or "
                        "more) 422 INVALID_PAIR_SPEC."),
    }

    def __init__(self, system: ActorSystem, pool: ConnectionPool) -> None:
        self._pairs = _Pairs(system, pool)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List pairs with actors."""
        respond(resp, AdminPairs(pairs=await blocking(self._list)))

    def _list(self) -> list[AdminPair]:
        return self._pairs.listed(self._pairs.repository.list())

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Add a pair."""
        new = await read_body(req, NewPair)
        lot_size = pair_value(new.lot_size, "lot_size")
        min_quantity = lot_size if new.min_quantity is None else pair_value(new.min_quantity, "min_quantity")
        min_notional = Decimal(0) if new.min_notional is None else pair_value(new.min_notional,
                                                                                  "min_notional")
        spec = stored_pairs.NewPair(
            symbol=new.symbol, base_asset=new.base_asset, quote_asset=new.quote_asset,
            tick_size=pair_value(new.tick_size, "tick_size"), lot_size=lot_size,
            min_quantity=min_quantity, max_quantity=pair_value(new.max_quantity, "max_quantity"),
            min_notional=min_notional,
            maker_fee=pair_value(new.maker_fee, "maker_fee"),
            taker_fee=pair_value(new.taker_fee, "taker_fee"), status=new.status,
        )
        record = await audited(req, lambda: self._pairs.system.add_pair(spec),
                               lambda added: f"added pair {added.symbol} ({added.status})")
        respond(resp, pair(record), 201)


class AdminPairResource(Resource):
    """``/api/v1/admin/pairs/{symbol}``: halt, resume or delist a pair, or change its fees."""

    auth = ADMIN
    operations: ClassVar = {
        "PATCH": Operation(
            "Change a pair's status and/or fees", Pair, body=PairChange, errors=(422,), engine=True,
            description="HALTED or DELISTED: new orders answer 409 PAIR_NOT_TRADING, cancels still work; "
                        "ACTIVE resumes trading. A fee change restarts the pair's actor (the book is "
                        "rebuilt) and is answered once it runs again."),
    }

    def __init__(self, system: ActorSystem, pool: ConnectionPool) -> None:
        self._pairs = _Pairs(system, pool)

    async def on_patch(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        """Change a pair."""
        symbol = known_format(symbol)  # the engine's refusal of an unknown symbol repeats it whole
        change = await read_body(req, PairChange)
        if change.status is None and change.maker_fee is None and change.taker_fee is None:
            raise ValidationError("give status, maker_fee or taker_fee")
        maker_fee = None if change.maker_fee is None else pair_value(change.maker_fee, "maker_fee")
        taker_fee = None if change.taker_fee is None else pair_value(change.taker_fee, "taker_fee")
        system = self._pairs.system
        if maker_fee is not None or taker_fee is not None:
            current = system.exchange.spec(symbol)  # the engine checks the rates before anything is stored
            replace(current, maker_fee=current.maker_fee if maker_fee is None else maker_fee,
                    taker_fee=current.taker_fee if taker_fee is None else taker_fee)
        changes = ", ".join(f"{name} {value}" for name, value in (
            ("status", change.status), ("maker_fee", change.maker_fee), ("taker_fee", change.taker_fee))
            if value is not None)
        record = await audited(
            req, lambda: system.update_pair(symbol, status=change.status, maker_fee=maker_fee,
                                            taker_fee=taker_fee),
            lambda _: f"changed pair {symbol}: {changes}")
        respond(resp, pair(record))


class PairRestartResource(Resource):
    """``/api/v1/admin/pairs/{symbol}/restart``: replace the pair's actor with a new incarnation."""

    auth = ADMIN
    operations: ClassVar = {
        "POST": Operation(
            "Restart a pair's actor; answered once the new incarnation has rebuilt its book", AdminPair,
            engine=True,
            description="Also brings a failed actor back. Orders sent meanwhile wait for the new "
                        "incarnation (within the request timeout)."),
    }

    def __init__(self, system: ActorSystem, pool: ConnectionPool) -> None:
        self._pairs = _Pairs(system, pool)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        """Restart a pair."""
        restarted = await audited(
            req, lambda: self._restart(symbol),
            lambda made: f"restarted pair {made.symbol} (incarnation {made.actor.incarnation})")
        respond(resp, restarted)

    def _restart(self, symbol: str) -> AdminPair:
        record = self._pairs.record(symbol)
        status = self._pairs.system.restart_pair(symbol)
        return self._pairs.with_actor(record, status, self._pairs.system.open_orders([symbol])[symbol])


class ActorsResource(Resource):
    """``/api/v1/admin/actors``: the supervision tree."""

    auth = ADMIN
    operations: ClassVar = {
        "GET": Operation(
            "The supervision tree: every supervised actor with its state and restarts", Actors, errors=(503,),
            description="The supervisor's children in start order: the writer and the wallet, then one "
                        "actor per pair (`pair:SYMBOL`); `group` names the one-for-all group rebuilt "
                        "together after a failed commit."),
    }

    def __init__(self, system: ActorSystem) -> None:
        self._system = system

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List the actors."""
        respond(resp, Actors(supervisor=SUPERVISOR, actors=await blocking(self._list)))

    def _list(self) -> list[Actor]:
        statuses = self._system.actors()
        counts = {pair_child_name(symbol): count
                  for symbol, count in self._system.open_orders(self._system.symbols()).items()}
        return [_actor(status, counts.get(status.name)) for status in statuses]


def _actor(status: ChildStatus, open_orders: int | None) -> Actor:
    fields: dict[str, Any] = {"name": status.name, "group": status.group, "policy": status.policy.value,
                              "state": status.state.value, "incarnation": status.incarnation,
                              "restarts": status.restarts, "mailbox": status.mailbox,
                              "last_failure": _failure(status), "open_orders": open_orders}
    return Actor(**fields)
