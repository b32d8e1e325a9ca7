"""Where a study lives: its Optuna storage (SQLite in the study folder, or a shared database URL).

:func:`open_storage` opens an Optuna RDB storage with trial heartbeats and retries of trials whose
process died; :func:`redacted_url` is what files and messages show of a URL (no password);
:func:`dashboard_command` is the shell command that opens a study in optuna-dashboard.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pcamlab.errors import ConfigError, RunError

__all__ = ["check_heartbeat", "dashboard_command", "local_storage_url", "open_storage", "redacted_url", "sqlite_url"]



def local_storage_url(out_dir: str | Path) -> str:
    """The embedded SQLite storage of a study folder."""
    return sqlite_url(Path(out_dir).resolve() / "study.db")


def sqlite_url(path: str | Path) -> str:
    """``sqlite:///PATH`` with PATH percent-encoded (``#``, ``?``, ``%``, spaces), as SQLAlchemy decodes it.

    A relative PATH stays relative (to the working directory of whoever opens the URL).
    """
    from urllib.parse import quote

    return "sqlite:///" + quote(str(path), safe="/")


def dashboard_command(storage: str | Path) -> str:
    """The shell command that opens a study in optuna-dashboard, quoted for a POSIX shell.

    Args:
        storage: a database URL (with ``://``; shown as given, e.g. already without its password) or
            the path of a study's SQLite file.

    Example:
        >>> dashboard_command("/tmp/st #1/study.db")
        'optuna-dashboard sqlite:////tmp/st%20%231/study.db'
        >>> dashboard_command("postgresql://pcam:***@db:5432/studies")  # shell-quoted where the shell needs it
        "optuna-dashboard 'postgresql://pcam:***@db:5432/studies'"
    """
    import shlex

    url = str(storage) if "://" in str(storage) else sqlite_url(storage)
    return f"optuna-dashboard {shlex.quote(url)}"


def redacted_url(url: str) -> str:
    """The URL without its password (what study.json and messages show)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is reported by open_storage
        return url.split("@")[-1]


def _sqlalchemy_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (psycopg2 is not a dependency)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def check_heartbeat(heartbeat_seconds: Any) -> None:
    if isinstance(heartbeat_seconds, bool) or not isinstance(heartbeat_seconds, int) or heartbeat_seconds < 1:
        raise ConfigError(f"heartbeat_seconds must be an integer >= 1; got {heartbeat_seconds!r}")


def open_storage(url: str, heartbeat_seconds: int = 10):
    """An Optuna RDB storage with heartbeats and retries of trials whose process died.

    Args:
        url: ``sqlite:///PATH`` or ``postgresql://USER:PASSWORD@HOST:PORT/DB`` (any SQLAlchemy URL).
        heartbeat_seconds: how often a running trial records that it is alive; a trial silent for
            3x that long is failed and re-queued (at most twice).

    Raises:
        ConfigError: the URL is not a database URL.
        RunError: the database cannot be reached (one line, with the URL minus its password).
    """
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if "://" not in url:
        raise ConfigError(f"storage must be a database URL such as postgresql://user:password@host:5432/db or sqlite:///study.db; got {url!r}")
    check_heartbeat(heartbeat_seconds)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    # ERROR: a trial stopped by Ctrl-C would otherwise log Optuna's warning with a KeyboardInterrupt
    # traceback per worker; pcamlab prints its own line for every trial.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import warnings

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    _sqlalchemy_url(url), engine_kwargs=engine, heartbeat_interval=heartbeat_seconds,
                    grace_period=3 * heartbeat_seconds,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                )
        except Exception as error:  # noqa: BLE001 - SQLAlchemy/driver errors have many types
            # Workers that start together on an empty database all create Optuna's tables; on PostgreSQL the
            # losers of that race get a unique violation (pg_type). The tables exist then: open again.
            if attempt < 4 and ("UniqueViolation" in str(error) or "duplicate key" in str(error)):
                time.sleep(0.5 * (attempt + 1))
                continue
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            from sqlalchemy.exc import ArgumentError, NoSuchModuleError

            if isinstance(error, (ArgumentError, NoSuchModuleError)):  # not a database URL SQLAlchemy knows
                raise ConfigError(f"storage {redacted_url(url)!r} is not a database URL pcamlab can open ({first}); "
                                  "use postgresql://user:password@host:5432/db or sqlite:///PATH") from None
            raise RunError(f"cannot open study storage {redacted_url(url)!r}: {first}; check the URL and that the database server runs") from None
