"""A real PostgreSQL server run from the binaries of the ``pgserver`` wheel, in a local data folder.

Layout under ``data_dir``: ``postgres/`` (the cluster, PGDATA), ``postgres.log`` (server log),
``run/`` (the Unix socket, when that path is short enough; otherwise a per-folder directory under the
system temp dir), ``.embedded.lock`` (serialises start/stop between processes).

Behaviour:
- the server listens on a Unix socket only (``listen_addresses = ''``): no TCP port to collide on;
- ``initdb`` runs on first start (trust auth, UTF8, C locale, superuser ``postgres``);
- a server left running by a process that died without stopping it is found through
  ``postmaster.pid`` and reused; a stale ``postmaster.pid`` whose process is gone is cleared and the
  server started; orphaned backends of a killed postmaster are waited for (then killed);
- ``stop()`` runs ``pg_ctl stop -m fast`` and waits until no process of the cluster is left; calling it
  again, or on a server that is not running, does nothing;
- PostgreSQL refuses to run as root, so under root the server runs as the system user ``pgserver``
  (the wheel's own convention, created if missing).

``pgserver`` itself is never imported: its package import reads the XDG runtime dir at import time
(a ``RuntimeDirWarning`` when unset) and its ``get_server()`` keeps a per-pid handle list that goes
stale after ``kill -9``. Only its binaries are used, located without executing the package.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psutil
import psycopg
from psycopg import sql

from tradeengine.storage.database import one_line
from tradeengine.storage.errors import EmbeddedPostgresError, EmbeddedServerNotAnswering

_log = logging.getLogger(__name__)

#: System user the server runs as when this process is root (the pgserver wheel's convention).
ROOT_RUN_AS_USER = "pgserver"
SUPERUSER = "postgres"
PORT = 5432
#: Longest socket path Linux accepts (sun_path is 108 bytes including the terminating NUL).
_MAX_SOCKET_PATH = 107
_CONF_FILE = "tradeengine.conf"
#: Seconds to wait for a connection to the server (a running one answers at once).
CONNECT_TIMEOUT = 10
#: Seconds an immediate shutdown (after a fast one failed) may take before the processes are killed.
IMMEDIATE_STOP_SECONDS = 10.0


def pgserver_bin_dir() -> Path:
    """Return the ``bin`` folder of the PostgreSQL build shipped in the ``pgserver`` wheel."""
    spec = importlib.util.find_spec("pgserver")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the pgserver package is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


@dataclass(frozen=True, slots=True)
class _Postmaster:
    """What ``postmaster.pid`` says about a server: its pid, socket dir and status."""

    pid: int
    socket_dir: Path | None
    status: str

    @classmethod
    def read(cls, pgdata: Path) -> _Postmaster | None:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        if not lines or not lines[0].strip().isdigit():
            return None  # being written right now, or garbage: treat as absent
        socket_dir = lines[4].strip() if len(lines) > 4 else ""
        status = lines[7].strip() if len(lines) > 7 else ""
        return cls(int(lines[0]), Path(socket_dir) if socket_dir else None, status)

    def is_alive(self, pgdata: Path) -> bool:
        """True when the pid is a live (not zombie) ``postgres`` process serving ``pgdata``.

        Checking the working directory guards against the pid having been reused by another server.
        """
        try:
            process = psutil.Process(self.pid)
            return bool(
                process.status() != psutil.STATUS_ZOMBIE
                and process.name() == "postgres"
                and Path(process.cwd()) == pgdata.resolve()
            )
        except psutil.Error:
            return False


def cluster_processes(pgdata: Path) -> list[psutil.Process]:
    """Return the live PostgreSQL processes of the cluster in ``pgdata`` (postmaster and children).

    Every server process runs with the data directory as its working directory, which identifies
    the cluster without trusting ``postmaster.pid``.
    """
    target = pgdata.resolve()
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            if (
                process.info["name"] == "postgres"
                and process.status() != psutil.STATUS_ZOMBIE
                and Path(process.cwd()) == target
            ):
                found.append(process)
        except psutil.Error:
            continue
    return found


class EmbeddedPostgres:
    """Run PostgreSQL from the ``pgserver`` wheel with its data in ``data_dir``.

    ``start()`` returns the URL of ``database`` (created if missing); ``stop()`` stops the server.
    ``server_settings`` are written to the cluster's configuration at each start (e.g. ``fsync=off``
    for throw-away test clusters; never for real data).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str = "tradeengine",
        server_settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "postgres"
        self.database = database
        self._settings = dict(server_settings or {})
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._socket_dir: Path | None = None
        self._run_as = ROOT_RUN_AS_USER if os.geteuid() == 0 else None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def url(self, database: str | None = None) -> str:
        """Return the conninfo URL of ``database`` (default: the application database)."""
        if self._socket_dir is None:
            raise EmbeddedPostgresError("the embedded server is not started")
        host = quote(str(self._socket_dir), safe="/")
        return f"postgresql://{SUPERUSER}@/{quote(database or self.database)}?host={host}&port={PORT}"

    def start(self) -> str:
        """Start the server (or reuse the one already running on this data), return the database URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            self._prepare_run_as_user()
            if not (self.pgdata / "PG_VERSION").is_file():
                self._initdb()
            running = _Postmaster.read(self.pgdata)
            if running is not None and running.is_alive(self.pgdata):
                _log.info("reusing the PostgreSQL server already running on %s (pid %d)", self.pgdata,
                          running.pid)
                self._socket_dir = self._wait_until_ready(running.pid)
                self._create_database(reused=running.pid)
            else:
                self._clear_dead_server(running)
                self._socket_dir = self._choose_socket_dir()
                self._pg_ctl_start()
                self._wait_until_ready(None)
                self._create_database()
        return self.url()

    def is_running(self) -> bool:
        """Whether a server runs on this data now (its ``postmaster.pid`` names a live postmaster)."""
        running = _Postmaster.read(self.pgdata)
        return running is not None and running.is_alive(self.pgdata)

    def stop(self) -> None:
        """Stop the server with ``pg_ctl stop -m fast`` and wait until none of its processes is left.

        A server that does not stop within the stop timeout gets an immediate shutdown, and what is still
        there ``IMMEDIATE_STOP_SECONDS`` later is killed; a suspended one (SIGSTOP) is killed at once, as
        it can act on no request. Either way it recovers from its WAL at the next start: nothing
        committed is lost.
        """
        if not self.pgdata.is_dir():
            return
        with self._exclusive():
            running = _Postmaster.read(self.pgdata)
            leftovers_wait = self._stop_timeout
            if running is not None and running.is_alive(self.pgdata):
                _log.info("stopping the PostgreSQL server on %s (pid %d)", self.pgdata, running.pid)
                if _suspended(running.pid):
                    _log.warning("the PostgreSQL server on %s is suspended (SIGSTOP); killing it (it "
                                 "recovers from its WAL at the next start)", self.pgdata)
                    leftovers_wait = 0.0
                elif not self._pg_ctl_stop("fast", self._stop_timeout):
                    _log.warning("fast shutdown failed; trying an immediate shutdown")
                    stopped = self._pg_ctl_stop("immediate", IMMEDIATE_STOP_SECONDS)
                    leftovers_wait = IMMEDIATE_STOP_SECONDS if stopped else 0.0
            self._reap_leftovers(leftovers_wait)
            self._socket_dir = None

    def _pg_ctl_stop(self, mode: str, timeout: float) -> bool:
        """``pg_ctl stop -m MODE``, waiting at most `timeout` s; whether the server stopped."""
        try:
            self._pg_ctl("stop", "-m", mode, "-w", "-t", str(max(1, int(timeout))))
        except EmbeddedPostgresError as exc:
            _log.warning("pg_ctl stop -m %s: %s", mode, one_line(exc))
            return False
        return True

    # -- start, step by step -------------------------------------------------------------------------

    def _prepare_run_as_user(self) -> None:
        """Under root: make sure the ``pgserver`` user exists and can reach and own the data folder."""
        if self._run_as is None:
            return
        try:
            pwd.getpwnam(self._run_as)
        except KeyError:
            _log.info("creating system user %s to run PostgreSQL (it refuses to run as root)",
                      self._run_as)
            subprocess.run(["useradd", "--system", "--shell", "/usr/sbin/nologin", self._run_as],
                           check=True, capture_output=True)
        for folder in [self.data_dir, *self.data_dir.parents]:  # let the user traverse, nothing more
            mode = folder.stat().st_mode
            if not mode & 0o001:
                folder.chmod(mode | 0o001)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._give_to_run_as(self.pgdata)

    def _initdb(self) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._give_to_run_as(self.pgdata)
        if any(self.pgdata.iterdir()):
            raise EmbeddedPostgresError(
                f"{self.pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION); "
                "move it away or delete it"
            )
        _log.info("initialising a new PostgreSQL cluster in %s", self.pgdata)
        self._run(
            "initdb", "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
            "--locale=C", "--no-instructions", timeout=self._start_timeout,
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# trade-engine embedded server settings, rewritten at each start\n"
                       f"include_if_exists = '{_CONF_FILE}'\n")

    def _clear_dead_server(self, stale: _Postmaster | None) -> None:
        """Leave no trace of a dead server: orphaned backends gone, stale ``postmaster.pid`` removed."""
        self._reap_leftovers(timeout=10.0)
        if stale is None:
            return
        # PostgreSQL clears lock files of a dead pid itself, but takes an unreaped zombie for a live
        # postmaster; the pid is known dead here, so clear them ourselves.
        _log.info("removing the stale lock files of pid %d, which is not running", stale.pid)
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
        if stale.socket_dir is not None:
            lock = stale.socket_dir / f".s.PGSQL.{PORT}.lock"
            if _lock_file_pid(lock) == stale.pid:
                lock.unlink(missing_ok=True)

    def _choose_socket_dir(self) -> Path:
        """Use ``<data_dir>/run`` when its socket path fits the 107-byte limit, else a short temp dir."""
        candidate = self.data_dir / "run"
        if len(str(candidate / f".s.PGSQL.{PORT}.lock")) > _MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
            candidate = Path(tempfile.gettempdir()) / f"tradeengine-pg-{digest}"
        candidate.mkdir(mode=0o700, exist_ok=True)
        self._give_to_run_as(candidate)
        return candidate

    def _pg_ctl_start(self) -> None:
        assert self._socket_dir is not None
        settings = {
            "listen_addresses": "",
            "unix_socket_directories": str(self._socket_dir),
            "port": str(PORT),
            **self._settings,
        }
        conf = "".join(f"{key} = {_conf_quote(value)}\n" for key, value in settings.items())
        conf_path = self.pgdata / _CONF_FILE
        conf_path.write_text(conf)
        self._give_to_run_as(conf_path)
        log_path = self.data_dir / "postgres.log"
        log_path.touch()
        self._give_to_run_as(log_path)
        _log.info("starting PostgreSQL on %s (socket in %s)", self.pgdata, self._socket_dir)
        self._pg_ctl("start", "-w", "-t", str(int(self._start_timeout)), "-l", str(log_path))

    def _wait_until_ready(self, pid: int | None) -> Path:
        """Wait until ``postmaster.pid`` says ``ready`` (for ``pid`` if given); return the socket dir."""
        deadline = time.monotonic() + self._start_timeout
        while True:
            info = _Postmaster.read(self.pgdata)
            if (
                info is not None
                and (pid is None or info.pid == pid)
                and info.status == "ready"
                and info.socket_dir is not None
                and info.is_alive(self.pgdata)
            ):
                return info.socket_dir
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"the PostgreSQL server on {self.pgdata} is not ready after {self._start_timeout:g} s "
                    f"(postmaster.pid: {info}); see {self.data_dir / 'postgres.log'}"
                )
            time.sleep(0.05)

    def _create_database(self, reused: int | None = None) -> None:
        """Create the application database unless it exists. On a server left running by another
        process (`reused`: its postmaster's pid), a connection that fails is `EmbeddedServerNotAnswering`."""
        try:
            conn = psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.OperationalError as exc:
            if reused is None:
                raise EmbeddedPostgresError(f"could not connect to the new server: {one_line(exc)}") from exc
            raise EmbeddedServerNotAnswering(_not_answering(self.pgdata, reused, exc)) from exc
        try:
            with conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
                ).fetchone()
                if exists is None:
                    _log.info("creating database %s", self.database)
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        except psycopg.errors.DuplicateDatabase:
            pass  # created meanwhile by another process starting on the same data
        except psycopg.Error as exc:
            raise EmbeddedPostgresError(f"could not create database {self.database}: {exc}") from exc

    # -- stop ------------------------------------------------------------------------------------------

    def _reap_leftovers(self, timeout: float) -> None:
        """Wait for the cluster's processes to exit; kill what is still there after ``timeout``."""
        leftovers = cluster_processes(self.pgdata)
        if not leftovers:
            return
        _log.info("waiting for %d PostgreSQL process(es) of %s to exit", len(leftovers), self.pgdata)
        _, alive = psutil.wait_procs(leftovers, timeout=timeout)
        alive = [p for p in alive if _is_running(p)]
        if alive:
            _log.warning("killing %d PostgreSQL process(es) of %s that did not exit", len(alive),
                         self.pgdata)
            for process in alive:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    continue
            psutil.wait_procs(alive, timeout=5.0)

    # -- plumbing --------------------------------------------------------------------------------------

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold an exclusive file lock so two processes never start/stop this cluster at once."""
        with (self.data_dir / ".embedded.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _give_to_run_as(self, path: Path) -> None:
        if self._run_as is not None:
            shutil.chown(path, user=self._run_as, group=self._run_as)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), *args, timeout=max(self._start_timeout,
                                                                       self._stop_timeout) + 10)

    def _run(self, program: str, *args: str, timeout: float) -> None:
        command = [str(pgserver_bin_dir() / program), *args]
        _log.debug("running %s", " ".join(command))
        # Output goes to a temp file, not a pipe: pg_ctl start leaves the postmaster holding inherited
        # descriptors, and reading a pipe until EOF would then wait for the server to exit.
        with tempfile.TemporaryFile("w+") as output:
            try:
                subprocess.run(
                    command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                    check=True, timeout=timeout, cwd=self.pgdata, env={**os.environ, "LC_ALL": "C"},
                    # Drop root's groups too: a root-group folder with no group access would deny us.
                    user=self._run_as, group=self._run_as, extra_groups=[] if self._run_as else None,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
                output.seek(0)
                raise EmbeddedPostgresError(
                    f"{program} {' '.join(args)} failed: {exc}\n{output.read().strip()}"
                ) from exc


def _lock_file_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _not_answering(pgdata: Path, pid: int, exc: BaseException) -> str:
    """Why a server left running on `pgdata` cannot be used, and what the operator can do."""
    what = (f"it is suspended (kill -CONT {pid} resumes it)" if _suspended(pid)
            else f"wait until it answers, or stop it (kill {pid})")
    return (f"the PostgreSQL server already running on {pgdata} (pid {pid}) does not answer "
            f"({one_line(exc)}); it was left as it is: {what}, then start again")


def _conf_quote(value: str) -> str:
    """Quote a value for postgresql.conf."""
    escaped = value.replace("\\", "\\\\").replace("'", "''")
    return f"'{escaped}'"


def _suspended(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_STOPPED)
    except psutil.Error:
        return False


def _is_running(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
