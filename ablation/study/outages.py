"""Outage or bug? The one place that decides whether a failure means a service is away for a while.

A worker waits out a tracking-server outage (nothing is dropped) and stops with one line when the Optuna
database goes away; any other exception is a bug and keeps its traceback. The decision is made on exception
TYPES, never on message text: a message may mention "connection" for any reason.

The type that says "outage" is rarely the one caught. MLflow raises `MlflowException` while handling the
requests error (`__context__`), Optuna raises `StorageInternalError from` the SQLAlchemy error, SQLAlchemy
keeps the driver's error: so the whole chain (`__cause__` and `__context__`) is searched.

Only ablation.study.tracking.client imports mlflow; it passes the MLflow-specific test in as `unavailable`.
"""

from __future__ import annotations

import errno
import re
import sqlite3
from collections.abc import Callable, Iterator

import psycopg2
import requests.exceptions
import sqlalchemy.exc
import urllib3.exceptions

# The database is unreachable, locked, or dropped the connection (Optuna storage, or an MLflow SQL store).
DATABASE_OUTAGES: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,  # connection refused or lost, server shutting down, "database is locked"
    sqlalchemy.exc.InterfaceError,  # the driver's connection object is closed
    sqlalchemy.exc.DisconnectionError,  # pool pre-ping found the connection dead
    sqlalchemy.exc.TimeoutError,  # no pooled connection came free in time
    sqlite3.OperationalError,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
)

# The tracking server did not answer, or the connection broke mid-answer.
NETWORK_OUTAGES: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.TimeoutError,  # NewConnectionError (refused, no route) is one
    urllib3.exceptions.ProtocolError,  # connection reset or aborted
    ConnectionError,  # the OS's: refused, reset, aborted, broken pipe
)
# A certificate the client rejects is a setting to fix, not a server that is away: requests files it under
# ConnectionError, so it is excluded by name here (its chain holds nothing else that counts).
NOT_OUTAGES: tuple[type[BaseException], ...] = (requests.exceptions.SSLError,)

# HTTP answers that mean "busy or away, ask again": a gateway without a server behind it (502, 504), a server
# that is unavailable (503, MLflow's TEMPORARILY_UNAVAILABLE), a timeout (408) or a rate limit (429).
TRANSIENT_HTTP_STATUS = frozenset({408, 429, 502, 503, 504})
# urllib3 gives up on a status MLflow retries with ResponseError, whose only record of the status is its
# message, written from this urllib3 template: read it back with the same template.
_TOO_MANY = re.compile(re.escape(urllib3.exceptions.ResponseError.SPECIFIC_ERROR)
                       .replace(re.escape("{status_code}"), r"(?P<status>\d{3})"))


def chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it was raised from or while handling, outermost first, each once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:  # a cause is usually also the context; cycles are possible too
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def database_outage(exc: BaseException) -> BaseException | None:
    """The database error behind `exc` when the database could not be reached or used, else None.

    Optuna wraps driver errors in StorageInternalError, and an error while it records a failed trial can
    surface as an unrelated exception whose context holds the database error: the whole chain counts.
    """
    return next((e for e in chain(exc) if isinstance(e, DATABASE_OUTAGES)), None)


def transient_http_status(exc: BaseException) -> int | None:
    """The HTTP status urllib3 gave up retrying on, when it is one of TRANSIENT_HTTP_STATUS."""
    if not isinstance(exc, urllib3.exceptions.ResponseError):
        return None
    found = _TOO_MANY.search(str(exc))
    status = int(found["status"]) if found else None
    return status if status in TRANSIENT_HTTP_STATUS else None


def tracking_outage(exc: BaseException, unavailable: Callable[[BaseException], bool] | None = None
                    ) -> BaseException | None:
    """The error behind `exc` when the tracking server (or its SQL store) is away or busy, else None.

    `unavailable` recognises the tracking client's own "try again later" exceptions (an MLflow error code);
    a server answering 500 is not an outage: that is a failing request, and retrying it would hide it.
    """
    for error in chain(exc):
        if isinstance(error, NOT_OUTAGES):
            return None
        if (isinstance(error, NETWORK_OUTAGES + DATABASE_OUTAGES) or transient_http_status(error) is not None
                or (unavailable is not None and unavailable(error))):
            return error
    return None


# OS errors that say the machine or a mount cannot go on, whatever trial runs there: a full disk or quota, a
# failing or read-only disk, an NFS mount gone stale or away. Not a trial's fault: retrying it elsewhere helps.
INFRASTRUCTURE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ESTALE,
                                   errno.ENOTCONN, errno.EHOSTDOWN, errno.ENODEV, errno.ENOMEM})


def _out_of_memory_types() -> tuple[type[BaseException], ...]:
    import torch  # only asked once a trial failed: torch is loaded by then

    accelerator = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError  # torch < 2.5: cuda's
    return (accelerator, MemoryError)


def infrastructure_error(exc: BaseException, unavailable: Callable[[BaseException], bool] | None = None
                         ) -> BaseException | None:
    """The error behind a trial's failure when the machine or a service failed, not the trial: a disk full or
    failing, an unreachable mount, out of GPU (or host) memory, the tracking server or a database away for
    longer than anything waits. None for anything else, which is the trial's own failure (a bug, a config).

    Decided on types and errnos, like the outages above; `unavailable` as in `tracking_outage`."""
    memory = _out_of_memory_types()
    for error in chain(exc):
        if isinstance(error, OSError) and error.errno in INFRASTRUCTURE_ERRNOS:
            return error
        if isinstance(error, memory):
            return error
    return database_outage(exc) or tracking_outage(exc, unavailable)


def one_line(error: BaseException) -> str:
    """`ENOSPC: No space left on device: '/data/x'`-style text of an error, on one line."""
    if isinstance(error, OSError) and error.errno and error.strerror:
        where = f": {error.filename}" if error.filename is not None else ""
        return f"{errno.errorcode.get(error.errno, 'OSError')}: {error.strerror}{where}"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def redact(url: str) -> str:
    """The storage URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url
