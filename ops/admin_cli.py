"""The operator commands that go through the running engine's admin API (`http.admin`): ``deposit`` and
``withdraw`` (its wallet moves the money), ``balances`` (what it holds for a user), ``pairs
add|halt|resume|delist|fees|restart`` (its supervisor acts at once, no restart of the engine) and
``actors`` (the supervision tree).

Each takes ``--url`` (default: the engine's own address from TRADE_ENGINE_HTTP_HOST/PORT) and ``--key``
(default: TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY), and ``--json`` to print the API's answer as it is. A refusal
ends with one line giving the status, the API's code and message (exit status 1); no engine answering,
or no key, likewise (1, 2). Standard library only (urllib, imported when a command calls): the command
line's ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from decimal import Decimal
from typing import Any

from .settings import Settings

__all__ = ["add_admin_options", "amount", "cmd_actors", "cmd_balances", "cmd_pairs_add", "cmd_pairs_change",
           "cmd_transfer", "decimal", "print_table"]


def add_admin_options(parser: argparse.ArgumentParser, answer: str) -> None:
    """The options every admin command takes; `answer` says what ``--json`` prints."""
    parser.add_argument("--url", type=_base_url,
                        help="the engine's base URL [default: http://HTTP_HOST:HTTP_PORT]")
    parser.add_argument("--key", help="an admin's API key [default: TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY]")
    parser.add_argument("--json", action="store_true", help=f"print {answer} as one JSON object")


def _base_url(text: str) -> str:
    """argparse type: an http:// or https:// URL with a host."""
    scheme, _, rest = text.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL "
                                         "(e.g. http://127.0.0.1:8080)")
    return text


def decimal(text: str) -> str:
    """argparse type: a decimal as the API takes it ("0.001": digits, an optional point and digits)."""
    if not _is_decimal(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal of digits, e.g. 0.001")
    return text


def amount(text: str) -> str:
    """argparse type: a positive decimal as the API takes it (anything else is refused at once)."""
    if not _is_decimal(text) or Decimal(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive decimal of digits, e.g. 1000.5 (at "
                                         "most 30 digits before the point and 30 after)")
    return text


def _is_decimal(text: str) -> bool:
    from tradeengine.http.models import DECIMAL_PATTERN  # imported when used: --help stays instant

    return re.match(DECIMAL_PATTERN, text) is not None


def engine_url(settings: Settings) -> str:
    """The running engine's base URL, from the HTTP settings (a wildcard bind is reached on loopback)."""
    host = settings.http_host
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://[{host}]:{settings.http_port}" if ":" in host else f"http://{host}:{settings.http_port}"


def _run(args: argparse.Namespace, settings: Settings, what: str, method: str, path: str,
         body: dict[str, Any] | None = None) -> dict[str, Any] | int:
    """`method` `path` (under /api/v1/admin) on the running engine, as its admin: the answer's JSON
    (printed as it is with ``--json``), or the command's exit status once the line saying why it failed
    is printed."""
    import urllib.error
    import urllib.request

    key = args.key or settings.bootstrap_admin_key
    if not key:
        print("trade-engine: no admin key: pass --key or set TRADE_ENGINE_BOOTSTRAP_ADMIN_KEY",
              file=sys.stderr)
        return 2
    base = (args.url or engine_url(settings)).rstrip("/")
    request = urllib.request.Request(
        f"{base}/api/v1/admin/{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            error = json.load(exc)["error"]
            why = f"{exc.code} {error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            why = f"{exc.code} {exc.reason}"
        refused = "the admin key was refused" if exc.code in (401, 403) else f"{what} refused"
        print(f"trade-engine: {refused} by {base} ({why})", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        print(f"trade-engine: no engine answers at {base} ({reason}); is `trade-engine serve` running?",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer))
    return answer


def _quoted(text: str) -> str:
    import urllib.parse

    return urllib.parse.quote(text, safe="")


def cmd_transfer(args: argparse.Namespace, settings: Settings) -> int:
    """``deposit`` / ``withdraw``: the running engine's wallet moves the money; print the new balance."""
    kind = "deposits" if args.command == "deposit" else "withdrawals"
    balance = _run(args, settings, args.command, "POST", f"users/{_quoted(args.user_id)}/{kind}",
                   {"asset": args.asset, "amount": args.amount})
    if isinstance(balance, int):
        return balance
    if not args.json:
        done = "deposited" if args.command == "deposit" else "withdrew"
        print(f"{done} {args.amount} {args.asset} (user {balance['user_id']}): {balance['asset']} available "
              f"{balance['available']}, locked {balance['locked']}")
    return 0


def cmd_balances(args: argparse.Namespace, settings: Settings) -> int:
    """``balances USER_ID``: a user's balances as the running engine's wallet holds them (user 1, the fee
    account: the fees collected)."""
    held = _run(args, settings, "balances", "GET", f"users/{_quoted(args.user_id)}/balances")
    if isinstance(held, int):
        return held
    if not args.json:
        print_table(("ASSET", "AVAILABLE", "LOCKED"),
                    [(b["asset"], b["available"], b["locked"]) for b in held["balances"]])
    return 0


def cmd_pairs_add(args: argparse.Namespace, settings: Settings) -> int:
    """``pairs add``: the pair is stored and its actor started; it trades at once (unless --halted)."""
    base, _, quote = args.symbol.partition("-")
    body: dict[str, Any] = {"symbol": args.symbol, "base_asset": base, "quote_asset": quote,
                            "tick_size": args.tick_size, "lot_size": args.lot_size,
                            "max_quantity": args.max_quantity, "maker_fee": args.maker_fee,
                            "taker_fee": args.taker_fee, "status": "HALTED" if args.halted else "ACTIVE"}
    if args.min_quantity is not None:
        body["min_quantity"] = args.min_quantity
    if args.min_notional is not None:
        body["min_notional"] = args.min_notional
    pair = _run(args, settings, "pairs add", "POST", "pairs", body)
    if isinstance(pair, int):
        return pair
    if not args.json:
        print(f"added {pair['symbol']} ({pair['status']}): tick {pair['tick_size']}, lot {pair['lot_size']}, "
              f"quantity {pair['min_quantity']}–{pair['max_quantity']}, min notional {pair['min_notional']}, "
              f"fees maker {pair['maker_fee']} taker {pair['taker_fee']}")
    return 0


_STATUS_OF = {"halt": "HALTED", "resume": "ACTIVE", "delist": "DELISTED"}


def cmd_pairs_change(args: argparse.Namespace, settings: Settings) -> int:
    """``pairs halt|resume|delist|fees|restart SYMBOL``: halt or delist (new orders refused, cancels still
    taken), resume, change the fees, or restart the pair's actor (answered once the new incarnation has
    rebuilt its book)."""
    command = args.pairs_command
    if command == "restart":
        pair = _run(args, settings, "pairs restart", "POST", f"pairs/{_quoted(args.symbol)}/restart")
    else:
        if command == "fees":
            fees = (("maker_fee", args.maker_fee), ("taker_fee", args.taker_fee))
            body = {name: value for name, value in fees if value is not None}
            if not body:
                print("trade-engine pairs fees: give --maker-fee, --taker-fee or both", file=sys.stderr)
                return 2
        else:
            body = {"status": _STATUS_OF[command]}
        pair = _run(args, settings, f"pairs {command}", "PATCH", f"pairs/{_quoted(args.symbol)}", body)
    if isinstance(pair, int):
        return pair
    if not args.json:
        if command == "restart":
            actor = pair["actor"]
            print(f"restarted {pair['symbol']} ({pair['status']}): actor {actor['state']}, incarnation "
                  f"{actor['incarnation']}, {actor['open_orders']} open order(s) rebuilt")
        elif command == "fees":
            print(f"{pair['symbol']}: fees maker {pair['maker_fee']} taker {pair['taker_fee']}")
        else:
            print(f"{pair['symbol']}: {pair['status']}")
    return 0


def cmd_actors(args: argparse.Namespace, settings: Settings) -> int:
    """``actors``: every supervised actor with its state, incarnation, restarts, mailbox, open orders (a
    pair's) and last failure."""
    tree = _run(args, settings, "actors", "GET", "actors")
    if isinstance(tree, int):
        return tree
    if not args.json:
        print_table(("NAME", "STATE", "INCARNATION", "RESTARTS", "MAILBOX", "OPEN ORDERS", "LAST FAILURE"),
                    [(a["name"], a["state"], str(a["incarnation"]), str(a["restarts"]), str(a["mailbox"]),
                      "-" if a["open_orders"] is None else str(a["open_orders"]), _failure(a["last_failure"]))
                     for a in tree["actors"]])
    return 0


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Print `rows` under `header`, in columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _failure(failure: dict[str, Any] | None) -> str:
    if failure is None:
        return "-"
    return f"{failure['at']} #{failure['incarnation']} {failure['type']}: {failure['message']}"
