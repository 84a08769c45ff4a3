"""Running a search on a dask.distributed cluster, through joblib's dask backend.

The only module that imports dask or distributed, and only when the backend is "dask",
so the extra stays optional. It does two things:

* :func:`check_backend`, called before a run folder is created or a run is resumed:
  the extra is installed, the scheduler answers within :data:`CONNECT_TIMEOUT`, it has
  workers, and every worker reads a probe file written where the run folder will be
  (tasks carry only the path of the prepared arrays, see :mod:`agereg.launcher`), with
  the same agereg version as this process;
* :func:`dask_backend`, the ``parallel_config`` under which
  :func:`agereg.launcher.launch` runs: a client connected to the scheduler, and the
  cluster's failures turned into one-line :class:`~agereg.errors.RunError` messages.

A worker that dies mid-task is not an error here: the scheduler runs its tasks again on
other workers, up to ``distributed.scheduler.allowed-failures`` times per task.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agereg import __version__
from agereg.config import ExecutionConfig
from agereg.errors import ConfigError, RunError

if TYPE_CHECKING:
    from distributed import Client

EXTRA_HINT = ("the dask backend (--backend dask or execution.backend: dask) needs the dask "
              "extra: pip install 'agereg[dask]'")
CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler
WORKERS_TIMEOUT = 10.0  # seconds to wait for a first worker
RESUME_HINT = "the finished trials are saved; continue with `agereg search --resume{run}`"


def _distributed() -> Any:
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError:
        raise ConfigError(EXTRA_HINT) from None
    return distributed


@contextmanager
def connect(address: str) -> Iterator[Client]:
    """A client of the scheduler at ``address``, closed on exit."""
    distributed = _distributed()
    with _quiet_logs():
        try:
            client = distributed.Client(address, timeout=CONNECT_TIMEOUT,
                                        set_as_default=False)
        except Exception as exc:  # OSError when it times out; ValueError for odd addresses
            if not isinstance(exc, OSError | ValueError):
                # the bytes of another protocol read as a dask message: a length in the
                # exabytes (MemoryError), or a frame that does not unpack
                raise ConfigError(
                    f"something answered at {address}, but not a dask scheduler (a web "
                    "server, or the dashboard's port, 8787 by default, instead of the "
                    "scheduler's, 8786?); fix --scheduler / execution.scheduler"
                ) from None
            why = "" if isinstance(exc, OSError) else f" ({' '.join(str(exc).split())})"
            raise ConfigError(
                f"cannot reach the dask scheduler at {address} within {CONNECT_TIMEOUT:g} s"
                f"{why}; start it with `dask scheduler` or fix --scheduler / "
                "execution.scheduler"
            ) from None
        try:
            yield client
        finally:
            client.close()


def check_backend(
    execution: ExecutionConfig, where: Path, log: Callable[[str], None] | None = None
) -> None:
    """Check, before anything is written, that the search can run where it is configured.

    ``where`` is the folder that will hold the run folder (``--runs-dir``) for a new
    search, or the run folder itself for a resume. Nothing to check for local backends.

    Raises
    ------
    ConfigError
        The dask extra is missing, the scheduler cannot be reached or has no workers.
    RunError
        A worker cannot see ``where`` at the same path, or runs another agereg version.
    """
    if execution.backend != "dask":
        return
    address = str(execution.scheduler)
    with connect(address) as client:
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT)
        except Exception:  # TimeoutError
            raise ConfigError(
                f"the dask scheduler at {address} has no workers (waited "
                f"{WORKERS_TIMEOUT:g} s); start some with `dask worker {address}`"
            ) from None
        _check_workers(client, Path(os.path.abspath(where)), log)


def _check_workers(client: Client, where: Path, log: Callable[[str], None] | None) -> None:
    """Every worker reads a fresh random token at ``where``, so the folder is shared (not
    merely a same-named local folder) and the tasks' array paths will resolve."""
    created = not where.exists()
    token = secrets.token_hex(16)
    probe = where / f".agereg-probe-{token}"
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    except OSError as exc:
        raise RunError(f"{where}: cannot write there ({exc.strerror or exc}); choose "
                       "another place with --runs-dir") from None
    try:
        seen = client.run(_probe, str(probe), on_error="return")
    finally:
        probe.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                where.rmdir()  # leave no trace; start_search creates it again
    failed = {w: r for w, r in seen.items() if isinstance(r, BaseException)}
    if failed:
        worker, problem = next(iter(failed.items()))
        raise RunError(
            f"dask worker {worker} cannot run agereg ({type(problem).__name__}: "
            f"{' '.join(str(problem).split())}); install agereg[dask] {__version__} in the "
            "workers' environment"
        )
    blind = sorted(w for w, (text, _, _) in seen.items() if text != token)
    if blind:
        more = f" and {len(blind) - 1} more" if len(blind) > 1 else ""
        raise RunError(
            f"dask worker {blind[0]}{more} cannot see {where}; the run folder must be "
            "visible to every worker at the same path: put --runs-dir on a shared "
            "filesystem mounted at the same path on every host"
        )
    other = sorted({v for _, v, _ in seen.values() if v != __version__})
    if other:
        raise RunError(f"dask workers run agereg {', '.join(other)} but this is agereg "
                       f"{__version__}; install the same version everywhere")
    numpys = sorted({n for _, _, n in seen.values() if n != np.__version__})
    if numpys and log is not None:
        log(f"warning: dask workers have numpy {', '.join(numpys)}, this process "
            f"{np.__version__}; results may differ in the last digits from a local run")


def _probe(path: str) -> tuple[str | None, str, str]:
    """Run on each worker: the text at ``path`` (None if unreadable) and the versions."""
    try:
        text: str | None = Path(path).read_text()
    except OSError:
        text = None
    return text, __version__, np.__version__


@contextmanager
def dask_backend(address: str, run_dir: Path | None = None) -> Iterator[None]:
    """joblib's dask backend on the cluster at ``address``, for ``Parallel`` created
    inside. The cluster's own failures become one-line errors that say how to go on (to
    resume ``run_dir``, the run being searched)."""
    from joblib import parallel_config

    with connect(address) as client, parallel_config(
        backend=_dask_backend_class()(client=client, wait_for_workers_timeout=WORKERS_TIMEOUT)
    ), _cluster_errors(address, run_dir):
        yield


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """While agereg talks to the cluster, distributed's own log records (a reconnect
    traceback, "Couldn't gather keys" after Ctrl-C) stay out of the terminal: every
    failure that matters ends as one RunError line, and the details are in the
    scheduler's and workers' logs."""
    loggers = [logging.getLogger(n) for n in ("distributed", "distributed.client")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


@contextmanager
def _cluster_errors(address: str, run_dir: Path | None) -> Iterator[None]:
    distributed = _distributed()
    from distributed.comm import CommClosedError

    hint = RESUME_HINT.format(run="" if run_dir is None else f" {run_dir}")
    try:
        yield
    except distributed.KilledWorker as exc:
        tries = getattr(exc, "allowed_failures", None)
        last = getattr(exc, "last_worker", None)
        who = f" (last {getattr(last, 'address', last)})" if last is not None else ""
        raise RunError(
            f"dask gave up on a group of trials after "
            f"{'its workers' if tries is None else f'{tries + 1} workers'} died running "
            f"it{who}; check the workers' logs (out of memory?); {hint}"
        ) from None
    except (CancelledError, CommClosedError) as exc:
        raise RunError(
            f"lost the dask scheduler at {address} ({type(exc).__name__}); "
            f"{hint} once it is back"
        ) from None


@functools.cache
def _dask_backend_class() -> type:
    """joblib's dask backend, with one fix: a task that fails in dask itself (its worker
    died more than ``allowed-failures`` times: ``KilledWorker``) is reported to
    ``Parallel``, which otherwise waits for it forever (joblib 1.6 sets the error on a
    future nobody reads and never calls the completion callback)."""
    import asyncio

    from joblib._dask import DaskDistributedBackend

    class DaskBackend(DaskDistributedBackend):
        async def _collect(self) -> None:
            while self._continue:
                async for future, result in self.waiting_futures:
                    cf_future = self._results.pop(future)
                    callback = self._callbacks.pop(future)
                    if future.status == "error":
                        _, exc, _ = result
                        cf_future.set_exception(exc)
                        callback(exc)  # retrieve_result_callback raises it in Parallel
                    else:
                        cf_future.set_result(result)
                        callback(result)
                await asyncio.sleep(0.01)

    return DaskBackend
