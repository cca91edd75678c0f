"""The ``trade-engine`` command line.

Each sub-command builds the settings once from the environment (a bad value ends the command with
one line naming the variable, exit status 2) and then does its work. Heavy imports happen inside the
commands so ``--help`` and ``version`` stay instant.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING

from .admin_cli import (
    add_admin_options,
    amount,
    cmd_actors,
    cmd_balances,
    cmd_pairs_add,
    cmd_pairs_change,
    cmd_transfer,
    decimal,
    print_table,
)
from .settings import Settings, SettingsError

if TYPE_CHECKING:
    from tradeengine.storage.users import ApiKey, User, UserRepository


def engine_version() -> str:
    """The installed version of trade-engine."""
    try:
        return package_version("trade-engine")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0+unknown"


#: The pointer every command but ``serve`` shows instead of the whole settings list.
SETTINGS_POINTER = "settings: TRADE_ENGINE_* variables, see `trade-engine serve --help`"
#: What the one-shot database commands read.
DATABASE_SETTINGS = ("TRADE_ENGINE_DATABASE_URL", "TRADE_ENGINE_DATA_DIR", "TRADE_ENGINE_DATABASE_PREPARE")
#: What the commands through the running engine's admin API read.
ADMIN_SETTINGS = ("TRADE_ENGINE_HTTP_HOST", "TRADE_ENGINE_HTTP_PORT", "TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY")


def _settings_epilog(names: Sequence[str] | None = None) -> str:
    """Every setting with its default and meaning (`names` None), or only `names` and the pointer to
    the full list (``serve --help``); no names: the pointer alone."""
    if names is not None and not names:
        return SETTINGS_POINTER
    lines = ["settings (environment variables):" if names is None else "settings this command reads:"]
    for name, default, doc in Settings.documentation():
        if names is not None and name not in names:
            continue
        shown = f" [default: {default}]" if default else ""
        lines.append(f"  {name}{shown}\n      {doc}")
    if names is not None:
        lines.append(f"other {SETTINGS_POINTER}")
    return "\n".join(lines)


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .server import serve

    status: int = serve(settings)
    return status


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from .database import open_database

    with open_database(settings, require_migrated=False) as database:
        applied = database.migrate()
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def _cmd_pairs_list(args: argparse.Namespace, settings: Settings) -> int:
    from tradeengine.engine.units import format_decimal

    from .database import open_database

    with open_database(settings) as database:  # refuses a database `migrate` has not brought up to date
        pairs = database.pairs().list()
    if args.json:  # as GET /api/v1/pairs answers
        from tradeengine.http.market import pair
        from tradeengine.http.models import Pairs, encode

        print(encode(Pairs(pairs=[pair(record) for record in pairs])).decode())
        return 0
    header = ("SYMBOL", "STATUS", "TICK", "LOT", "MIN QTY", "MAX QTY", "MIN NOTIONAL", "MAKER", "TAKER")
    rows = [
        (p.symbol, p.status, *map(format_decimal, (p.tick_size, p.lot_size, p.min_quantity, p.max_quantity,
                                                   p.min_notional, p.maker_fee, p.taker_fee)))
        for p in pairs
    ]
    print_table(header, rows)
    return 0


def _cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from .database import open_database

    with open_database(settings) as database:  # refuses a database `migrate` has not brought up to date
        user, key = database.users().create(args.name, args.role)
    if args.json:
        print(json.dumps({"user": _user_json(user), "api_key": key}))
    else:
        print(f"created {user.role} {user.name} (id {user.id})")
        _print_new_key(key)
    return 0


def _print_new_key(key: str) -> None:
    print(f"api key (shown once, keep it safe): {key}")


def _user_json(user: User) -> dict[str, str]:
    from tradeengine.storage.rows import rfc3339

    return {"id": str(user.id), "name": user.name, "role": user.role, "created_at": rfc3339(user.created_at)}


def _key_json(key: ApiKey) -> dict[str, str | None]:
    from tradeengine.storage.rows import rfc3339

    return {"id": str(key.id), "user_id": str(key.user_id), "prefix": key.prefix,
            "created_at": rfc3339(key.created_at),
            "revoked_at": None if key.revoked_at is None else rfc3339(key.revoked_at)}


def _named(users: UserRepository, name: str) -> User:
    from tradeengine.engine.errors import TradeEngineError

    user = users.named(name)
    if user is None:
        raise TradeEngineError(f"no user is named {name} (`trade-engine users list` lists them)")
    return user


def _cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from .database import open_database

    listed: list[User] = []
    with open_database(settings) as database:
        users = database.users()
        while page := users.page(after=listed[-1].id if listed else 0, limit=1000):
            listed.extend(page)
        active = users.active_keys()
    shown = [(_user_json(user), active.get(user.id, 0)) for user in listed]
    if args.json:
        print(json.dumps({"users": [{**user, "active_keys": keys} for user, keys in shown]}))
    else:
        print_table(("ID", "NAME", "ROLE", "CREATED", "ACTIVE KEYS"),
                    [(*user.values(), str(keys)) for user, keys in shown])
    return 0


def _cmd_users_keys(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from .database import open_database

    with open_database(settings) as database:
        users = database.users()
        keys = users.keys(_named(users, args.name).id)
    if args.json:
        print(json.dumps({"keys": [_key_json(key) for key in keys]}))
    else:
        print_table(("ID", "PREFIX", "CREATED", "REVOKED"),
                    [(k["id"] or "", k["prefix"] or "", k["created_at"] or "", k["revoked_at"] or "-")
                     for k in map(_key_json, keys)])
    return 0


def _cmd_users_issue_key(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from .database import open_database

    with open_database(settings) as database:
        users = database.users()
        user = _named(users, args.name)
        issued, key = users.issue_key(user)
    if args.json:
        print(json.dumps({"key": _key_json(issued), "api_key": key}))
    else:
        print(f"issued key {issued.id} ({issued.prefix}…) for {user.role} {user.name} (id {user.id})")
        _print_new_key(key)
    return 0


def _cmd_users_revoke_key(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from tradeengine.engine.errors import TradeEngineError
    from tradeengine.http.auth import KEY_CACHE_SECONDS

    from .database import open_database

    with open_database(settings) as database:
        users = database.users()
        user = _named(users, args.name)
        revoked = users.revoke_key(user.id, args.key_id)
    if revoked is None:
        raise TradeEngineError(f"{user.name} holds no key {args.key_id} "
                               f"(`trade-engine users keys {user.name}` lists theirs)")
    key, revoked_now = revoked
    if args.json:
        print(json.dumps(_key_json(key)))
    elif revoked_now:
        print(f"revoked key {key.id} ({key.prefix}…) of {user.name}: a running engine refuses it within "
              f"{KEY_CACHE_SECONDS:g} s")
    else:
        print(f"key {key.id} ({key.prefix}…) of {user.name} was revoked already, at "
              f"{_key_json(key)['revoked_at']}")
    return 0


def _cmd_events_tail(args: argparse.Namespace, settings: Settings) -> int:
    """``events tail``: a throw-away queue bound to the engine's exchange; print each event until Ctrl-C."""
    import json

    from tradeengine.storage.publisher import BrokerUnavailable, binding_keys, follow_events

    if settings.broker_url.startswith("memory://"):
        print("trade-engine: TRADE_ENGINE_BROKER_URL is memory://: events never leave the engine process; "
              "set it to the engine's amqp:// broker", file=sys.stderr)
        return 2
    if args.symbol is not None:
        refused = _check_pair(args.symbol, settings)
        if refused is not None:
            print(f"trade-engine: {refused}", file=sys.stderr)
            return 1
    keys = binding_keys(args.symbol, args.type or ())

    def listening(where: str) -> None:
        print(f"listening on exchange {settings.broker_exchange!r} at {where} ({', '.join(keys)}); "
              "Ctrl-C stops", file=sys.stderr, flush=True)

    def created() -> None:
        print(f"trade-engine: warning: the broker had no exchange {settings.broker_exchange!r} (no engine "
              "has published there yet); declared it. Is TRADE_ENGINE_BROKER_EXCHANGE the engine's?",
              file=sys.stderr, flush=True)

    shown = 0
    events = follow_events(settings.broker_url, settings.broker_exchange, keys, on_ready=listening,
                           on_created=created)
    try:
        _stop_on_interrupt_or_term()
        for body in events:
            if args.limit is not None and shown >= args.limit:
                break
            event = json.loads(body)
            if args.symbol is not None and event.get("symbol") != args.symbol:
                continue  # a balance event of another pair (balances are routed by asset)
            print(body.decode() if args.json else _event_line(event), flush=True)
            shown += 1
            if args.limit is not None and shown >= args.limit:
                break
    except KeyboardInterrupt:
        return 0
    except BrokerUnavailable as exc:
        print(f"trade-engine: {exc}", file=sys.stderr)
        return 1
    finally:
        events.close()
    return 0


def _key_id(text: str) -> int:
    """argparse type: an API key's id (digits)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise argparse.ArgumentTypeError(f"{text!r} is not a key id (digits, as `users keys NAME` lists "
                                         "them)")
    return int(text)


def _symbol(text: str) -> str:
    """argparse type: a pair symbol of the API's shape, BASE-QUOTE, each of 2 to 12 capital letters and
    digits."""
    import re

    from tradeengine.http.models import SYMBOL_PATTERN  # imported when used: --help stays instant

    if re.match(SYMBOL_PATTERN, text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pair symbol BASE-QUOTE, each of 2 to 12 capital "
                                         "letters and digits, e.g. BTC-USDT")
    return text


def _check_pair(symbol: str, settings: Settings) -> str | None:
    """Why `symbol` is refused (the running engine has no such pair), or None to go on.

    Asks the running engine (``GET /api/v1/pairs``, public, at HTTP_HOST:HTTP_PORT), the one source this
    command can reach cheaply (it opens no database). No engine answering there (the tail may well
    run elsewhere, or before the engine) is not a refusal: one warning line, and the tail goes on.
    """
    import json
    import urllib.request

    from .admin_cli import engine_url

    base = engine_url(settings)
    try:
        with urllib.request.urlopen(f"{base}/api/v1/pairs", timeout=3) as response:
            known = [pair["symbol"] for pair in json.load(response)["pairs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"trade-engine: warning: {symbol} not checked: no engine answers GET /api/v1/pairs at {base} "
              f"({reason}); waiting for its events anyway", file=sys.stderr, flush=True)
        return None
    if symbol in known:
        return None
    return f"the engine at {base} has no pair {symbol} (its pairs: {', '.join(known) or 'none'})"


def _stop_on_interrupt_or_term() -> None:
    """Make Ctrl-C (SIGINT) and SIGTERM raise KeyboardInterrupt, the tail's quiet way out.

    Set explicitly: a process started with SIGINT ignored (a background job of a shell without job
    control) inherits that, and Python then installs no KeyboardInterrupt handler, so Ctrl-C, the
    stop this command promises, would do nothing. Only in the main thread, where handlers can be set.
    """
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def _event_line(event: dict[str, object]) -> str:
    """One event for a terminal: when, type, pair, sequence and the payload's JSON."""
    import json

    payload = json.dumps(event["payload"], separators=(",", ":"))
    return f"{event['occurred_at']}  {event['event_type']!s:<16} {event['symbol'] or '-'!s:<10} " \
           f"seq {event['sequence']}  {payload}"


def _cmd_wallet_service(args: argparse.Namespace, settings: Settings) -> int:
    from .walletservice.server import WalletServiceOptions, serve_wallet_service

    options = WalletServiceOptions(host=args.host, port=args.port, database_url=args.database_url,
                                   faults=args.faults, threads=args.threads)
    status: int = serve_wallet_service(options, settings)
    return status


def _at_least_one(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _cmd_version(args: argparse.Namespace, settings: Settings) -> int:
    print(f"trade-engine {engine_version()}")
    return 0


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    if args.suite == "core":
        from .bench.core import main as bench_main
    elif args.suite == "engine":
        from .bench.engine import main as bench_main
    elif args.suite == "http":
        from .bench.http import main as bench_main
    else:  # pragma: no cover - argparse restricts the choices
        raise SystemExit(f"unknown bench suite {args.suite}")
    status: int = bench_main(list(args.bench_args))
    return status


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(
        prog="trade-engine",
        description="A crypto-exchange trade engine.",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace, Settings], int], text: str,
            parent: argparse._SubParsersAction[argparse.ArgumentParser] = commands,
            reads: Sequence[str] | None = (),
            ) -> argparse.ArgumentParser:
        """A sub-command; its help ends with the settings it `reads` (None: all of them, for ``serve``)
        and a pointer to ``serve --help`` for the rest."""
        sub = parent.add_parser(name, help=text, description=text, epilog=_settings_epilog(reads),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler, reads_settings=reads != ())
        return sub

    add("serve", _cmd_serve,
        "Run the engine: HTTP on TRADE_ENGINE_HTTP_HOST:PORT (gunicorn, one uvicorn worker); "
        "without TRADE_ENGINE_DATABASE_URL an embedded PostgreSQL runs in DATA_DIR/postgres.", reads=None)
    add("migrate", _cmd_migrate, "Apply pending database migrations and exit (`serve` applies them too; "
        "the other commands refuse a database that is not migrated).", reads=DATABASE_SETTINGS)
    pairs = commands.add_parser("pairs", help="Trading pairs.", description="Trading pairs.",
                                epilog=SETTINGS_POINTER)
    pair_commands = pairs.add_subparsers(dest="pairs_command", metavar="SUBCOMMAND", required=True)
    pair_list = add("list", _cmd_pairs_list, "List the trading pairs with their rules and status (from the "
                    "database, which must be migrated).", pair_commands, reads=DATABASE_SETTINGS)
    pair_list.add_argument("--json", action="store_true", help="print one JSON object, as GET /api/v1/pairs")
    pair_add = add("add", cmd_pairs_add, "Add a pair to the running engine (its admin API): stored, its "
                   "actor started, trading at once; print it.", pair_commands, reads=ADMIN_SETTINGS)
    pair_add.add_argument("symbol", help="BASE-QUOTE, each 2-12 capital letters or digits, e.g. DOGE-BTC")
    for option, kind, needed, text in (
            ("--tick-size", amount, True, "the price step, e.g. 0.01 (required)"),
            ("--lot-size", amount, True, "the quantity step, e.g. 0.0001 (required)"),
            ("--max-quantity", amount, True, "the largest order quantity (required)"),
            ("--min-quantity", amount, False, "the smallest order quantity [default: the lot size]"),
            ("--min-notional", decimal, False, "the smallest price × quantity [default: 0]"),
            ("--maker-fee", decimal, False, "the resting side's fee rate, e.g. 0.001 [default: 0]"),
            ("--taker-fee", decimal, False, "the incoming side's fee rate, e.g. 0.002 [default: 0]")):
        pair_add.add_argument(option, type=kind, required=needed, help=text,
                              default="0" if option.endswith("-fee") else None)
    pair_add.add_argument("--halted", action="store_true", help="add it HALTED (no orders until resumed)")
    add_admin_options(pair_add, "the pair")
    for name, text in (("halt", "Halt a pair of the running engine: new orders are refused (409 "
                                "PAIR_NOT_TRADING); cancels and amends that reduce still work."),
                       ("resume", "Resume trading on a halted or delisted pair of the running engine."),
                       ("delist", "Delist a pair of the running engine: as halted (new orders refused, "
                                  "cancels still work), and listed as DELISTED; `resume` lists it again."),
                       ("fees", "Change a pair's fee rates in the running engine; its actor restarts "
                                "(the book is rebuilt) and the answer comes once it runs again."),
                       ("restart", "Restart a pair's actor in the running engine; answered once the new "
                                   "incarnation has rebuilt its book from the database.")):
        change = add(name, cmd_pairs_change, text, pair_commands, reads=ADMIN_SETTINGS)
        change.add_argument("symbol", help="the pair, e.g. BTC-USDT")
        if name == "fees":
            change.add_argument("--maker-fee", type=decimal, help="the resting side's new rate, e.g. 0.001")
            change.add_argument("--taker-fee", type=decimal, help="the incoming side's new rate, e.g. 0.002")
        add_admin_options(change, "the pair" + (" with its actor" if name == "restart" else ""))
    actors = add("actors", cmd_actors, "List the running engine's supervised actors: state, incarnation, "
                 "restarts, mailbox and last failure.", reads=ADMIN_SETTINGS)
    add_admin_options(actors, "the supervision tree")
    users = commands.add_parser("users", help="Users and their API keys.",
                                description="Users and their API keys.", epilog=SETTINGS_POINTER)
    user_commands = users.add_subparsers(dest="users_command", metavar="SUBCOMMAND", required=True)
    create = add("create", _cmd_users_create,
                 "Create a user and print their API key (shown once); the database must be migrated.",
                 user_commands, reads=DATABASE_SETTINGS)
    create.add_argument("name", help="1-64 letters, digits, '.', '_' or '-'")
    create.add_argument("--role", choices=["trader", "admin"], default="trader",
                        help="trader: places and cancels orders with the key; admin: may also call the "
                             "admin API (deposits, withdrawals, pairs, actors) [default: trader]")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    listing = add("list", _cmd_users_list, "List every user: id, name, role, creation time and how many "
                  "API keys they hold that are not revoked (the exchange's fee account included, role "
                  "system).", user_commands, reads=DATABASE_SETTINGS)
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    keys = add("keys", _cmd_users_keys, "List a user's API keys, revoked ones included: id, prefix (the "
               "key's first 10 characters), created, revoked. The keys themselves are never stored.",
               user_commands, reads=DATABASE_SETTINGS)
    keys.add_argument("name", help="the user's name")
    keys.add_argument("--json", action="store_true", help="print one JSON object")
    issue = add("issue-key", _cmd_users_issue_key, "Issue another API key for a user and print it (shown "
                "once). To rotate a key: issue the new one, move the client to it, revoke the old one.",
                user_commands, reads=DATABASE_SETTINGS)
    issue.add_argument("name", help="the user's name")
    issue.add_argument("--json", action="store_true", help="print one JSON object")
    revoke = add("revoke-key", _cmd_users_revoke_key, "Revoke one of a user's API keys: it authenticates "
                 "nobody again; a running engine refuses it within 5 s (at once when revoked through "
                 "DELETE /api/v1/admin/users/{id}/keys/{key_id}).", user_commands, reads=DATABASE_SETTINGS)
    revoke.add_argument("name", help="the user's name")
    revoke.add_argument("key_id", type=_key_id, help="the key's id, as `users keys NAME` lists it")
    revoke.add_argument("--json", action="store_true", help="print the revoked key as one JSON object")
    for name, text in (("deposit", "Credit a user's available balance"),
                       ("withdraw", "Debit a user's available balance")):
        transfer = add(name, cmd_transfer, f"{text} through the running engine's admin API (its wallet "
                       "moves the money) and print the new balance.", reads=ADMIN_SETTINGS)
        transfer.add_argument("user_id", help="the user's id")
        transfer.add_argument("asset", help="an asset some pair trades, e.g. USDT")
        transfer.add_argument("amount", type=amount, help="a decimal with at most 8 places, e.g. 1000.5")
        add_admin_options(transfer, "the balance")
    balances = add("balances", cmd_balances, "Print a user's balances as the running engine's wallet holds "
                   "them, through its admin API; user 1, the fee account, holds the fees collected (take "
                   "them out with `withdraw 1 ASSET AMOUNT`).", reads=ADMIN_SETTINGS)
    balances.add_argument("user_id", help="the user's id (1: the fee account)")
    add_admin_options(balances, "the balances")
    events = commands.add_parser("events", help="The engine's published events.",
                                 description="The engine's published events.", epilog=SETTINGS_POINTER)
    event_commands = events.add_subparsers(dest="events_command", metavar="SUBCOMMAND", required=True)
    tail = add("tail", _cmd_events_tail,
               "Print the engine's events as they are published to TRADE_ENGINE_BROKER_URL (exchange "
               "TRADE_ENGINE_BROKER_EXCHANGE), through a temporary queue of its own, until Ctrl-C or "
               "SIGTERM (either ends it quietly, exit status 0) or --limit.",
               event_commands, reads=("TRADE_ENGINE_BROKER_URL", "TRADE_ENGINE_BROKER_EXCHANGE",
                                      "TRADE_ENGINE_HTTP_HOST", "TRADE_ENGINE_HTTP_PORT"))
    tail.add_argument("--symbol", type=_symbol,
                      help="only this pair's events (e.g. BTC-USDT); refused when the running engine "
                           "(HTTP_HOST:HTTP_PORT, GET /api/v1/pairs) has no such pair; when no engine "
                           "answers there, a warning and the tail goes on")
    tail.add_argument("--type", action="append", choices=["order", "trade", "balance"],
                      help="only events of this kind (repeat for several) [default: all]")
    tail.add_argument("--json", action="store_true", help="print each event's JSON body, one per line")
    tail.add_argument("--limit", type=_at_least_one, metavar="N", help="stop after N events (N ≥ 1)")
    wallet = add("wallet-service", _cmd_wallet_service,
                 "Run the reference wallet service (ops/walletservice/CONTRACT.md) on HOST:PORT "
                 "(gunicorn, one gthread worker); without --database-url an embedded PostgreSQL of its "
                 "own runs in DATA_DIR/wallet-service.",
                 reads=("TRADE_ENGINE_DATA_DIR", "TRADE_ENGINE_LOG_LEVEL", "TRADE_ENGINE_LOG_FORMAT"))
    wallet.add_argument("--host", default="127.0.0.1", help="address to listen on [default: 127.0.0.1]")
    wallet.add_argument("--port", type=int, default=8090, help="port to listen on [default: 8090]")
    wallet.add_argument("--database-url", metavar="URL",
                        help="the service's PostgreSQL (its tables go to schema wallet_service) "
                             "[default: embedded, in DATA_DIR/wallet-service]")
    wallet.add_argument("--faults", action="store_true",
                        help="serve /_faults (latency, failures, dropped connections) for tests")
    wallet.add_argument("--threads", type=_at_least_one, default=8, metavar="N",
                        help="threads of the worker, i.e. calls answered at once [default: 8]")
    add("version", _cmd_version, "Print the version.")
    bench = add("bench", _cmd_bench,
                "Run a benchmark and print its figures (`bench core --help`, `bench engine --help`, "
                "`bench http --help`).")
    bench.add_argument("suite", choices=["core", "engine", "http"],
                       help="core: the matching engine in one thread; engine: the whole engine in process, "
                            "committing to PostgreSQL; http: load on a server over HTTP (its own by default)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of the suite")
    return parser


#: The exit status when stdout is closed under us (`trade-engine actors | head -3`): 128 + SIGPIPE, what
#: the shell reports for a C tool (cat, seq) that the same pipe kills, so a `set -o pipefail` script sees
#: the same as with any other command, and a cut-off output is never reported as a complete success.
BROKEN_PIPE_STATUS = 141


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Run the command line; return the exit status (141, quietly, when stdout is closed under us; 130,
    quietly, for a Ctrl-C that came before a command took it over, e.g. while its modules load)."""
    try:
        status = _main(argv, environ)
        sys.stdout.flush()  # a closed pipe shows here rather than at exit, where it cannot be handled
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # Python flushes stdout once more at exit, which would fail again and print an error: point
        # the descriptor at /dev/null first (the recipe of Python's `signal` documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE_STATUS
    return status


def _main(argv: Sequence[str] | None, environ: dict[str, str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:  # a command that reads no setting (`version`) runs whatever the environment holds
        settings = Settings.from_env(os.environ if environ is None else environ) if args.reads_settings \
            else Settings()
    except SettingsError as exc:
        print(f"trade-engine: configuration error: {exc}", file=sys.stderr)
        return 2
    from tradeengine.engine.errors import TradeEngineError

    from .database import StartupError

    try:
        result: int = args.handler(args, settings)
    except (StartupError, TradeEngineError) as exc:
        print(f"trade-engine: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
