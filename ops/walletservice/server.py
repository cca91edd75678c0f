"""``trade-engine wallet-service``: the reference wallet service under gunicorn (one gthread worker).

Master process:
  1. finds its database: ``--database-url``, or else an embedded PostgreSQL of its own in
     ``DATA_DIR/wallet-service`` (database ``wallet_service``), a folder apart from the engine's
     ``DATA_DIR/postgres`` so the two never share a server, a lock or a shutdown; the folder has one
     owner at a time (``DataDirLock``);
  2. creates the ``wallet_service`` schema if missing (:func:`ensure_schema`);
  3. runs gunicorn, prints ``wallet service listening on http://HOST:PORT`` once bound, and on
     SIGTERM/SIGINT stops it and then the embedded PostgreSQL.

Worker process: ``load()`` opens the pool and builds the app (:func:`create_app`); ``worker_exit``
closes the pool. The start-up signal handling is the engine's own (:mod:`tradeengine.ops.server`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from tradeengine.storage.database import create_pool
from tradeengine.storage.errors import StorageError

from ..database import DataDirInUse, DataDirLock, StartupError, prepared_database, redact
from ..gunicorn_conf import single_worker_options
from ..server import run_server
from ..settings import Settings
from .app import create_app
from .errors import WalletServiceError
from .store import ensure_schema

_log = logging.getLogger(__name__)

#: The embedded server's folder under the engine's data folder, and its database.
DATA_FOLDER = "wallet-service"
DATABASE = "wallet_service"


@dataclass(frozen=True, slots=True)
class WalletServiceOptions:
    """The command line's choices."""

    host: str = "127.0.0.1"
    port: int = 8090
    database_url: str | None = None
    faults: bool = False
    threads: int = 8


def serve_wallet_service(options: WalletServiceOptions, settings: Settings) -> int:
    """Run the wallet service until SIGTERM or SIGINT; return the exit status."""
    lock = DataDirLock(settings.data_dir / DATA_FOLDER)
    return run_server(
        settings,
        database=lambda shield: wallet_database(options.database_url, settings.data_dir, lock=lock,
                                                shield=shield),
        application=lambda url: WalletServiceApplication(options, settings, url, lock),
        name="wallet service")


@contextmanager
def wallet_database(url: str | None, data_dir: Path, *, lock: DataDirLock,
                    shield: Callable[[], AbstractContextManager[object]] = nullcontext) -> Iterator[str]:
    """The service's database URL with the schema in place; an embedded server is stopped at the end."""
    try:
        with prepared_database(url, lock=lock, prepare=_ensure_schema, database=DATABASE, shield=shield,
                               what="PostgreSQL for the wallet service") as ready:
            yield ready
    except DataDirInUse as exc:
        raise StartupError(f"the wallet service folder {lock.path.parent} is in use by pid "
                           f"{lock.holder()}; stop that wallet service first or pass --database-url") from exc


def _ensure_schema(url: str) -> None:
    try:
        ensure_schema(url)
    except (StorageError, WalletServiceError) as exc:
        raise StartupError(f"could not create the wallet service schema on {redact(url)}: {exc}") from exc


def _announce(server: Any) -> None:
    """gunicorn's ``when_ready`` (master, sockets bound): print where the service listens."""
    for listener in server.LISTENERS:
        host, port = listener.sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"wallet service listening on http://{shown}:{port}", flush=True)


def gunicorn_options(options: WalletServiceOptions, settings: Settings) -> dict[str, Any]:
    """The gunicorn settings: one gthread worker (a WSGI app; ``serve`` runs the engine's ASGI worker) with
    the same hooks and limits; the URL printed when bound."""
    return {
        **single_worker_options(host=options.host, port=options.port, threads=options.threads,
                                log_level=settings.log_level, proc_name="trade-engine-wallet-service"),
        "when_ready": _announce,
    }


class WalletServiceApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn's application object for the wallet service; the pool and app are built in the worker."""

    def __init__(self, options: WalletServiceOptions, settings: Settings, url: str,
                 lock: DataDirLock | None = None) -> None:
        self._options = options
        self._settings = settings
        self._url = url
        self._lock = lock
        self._pool: Any = None
        super().__init__(prog="trade-engine wallet-service")

    def load_config(self) -> None:
        """Apply :func:`gunicorn_options` (called by gunicorn in the master)."""
        for key, value in gunicorn_options(self._options, self._settings).items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Open the pool and return the WSGI app (called by gunicorn in the worker)."""
        self._pool = create_pool(self._url, min_size=1, max_size=self._options.threads + 1,
                                 name="wallet-service", application_name="trade-engine-wallet-service")
        _log.info("wallet service worker ready (faults %s)", "on" if self._options.faults else "off")
        return create_app(self._pool, faults=self._options.faults, logger=logging.getLogger(__name__))

    def after_fork_in_worker(self) -> None:
        """The worker must not keep the data folder locked once the master is gone."""
        if self._lock is not None:
            self._lock.forget_in_child()

    def close_worker(self) -> None:
        """Close the worker's pool (gunicorn's ``worker_exit``)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
