"""What both trigger stand-ins (Lambda's async invoke, Eventarc) are built on: a small pool
of worker threads that run until stopped, and a log that says an outage once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from time import monotonic

# After a failed round, a worker waits this long, then longer while it keeps failing.
BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0)


class CallFailed(Exception):
    """A call of the worker loop failed; `call` says which, in words for the log."""

    def __init__(self, call: str, error: Exception) -> None:
        super().__init__(call)
        self.call = call
        self.error = error


class WorkerPool:
    """`workers` threads repeating `_work_once` until `stop()`, which lets them finish.

    A worker never dies: a failed call (`CallFailed`, from `_call`) is logged once per
    outage and a bug of ours once with its traceback; either way the worker backs off
    briefly and goes on. `round_name` names one round in those lines.
    """

    def __init__(self, name: str, workers: int, log: logging.Logger, round_name: str) -> None:
        self._stopping = threading.Event()
        self._failures = RepeatedFailureLog(log)
        self._round = round_name
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True)
            for n in range(workers)
        ]

    def _work_once(self, session: object) -> None:
        """One round of work: take what is waiting, handle it."""
        raise NotImplementedError

    def _session(self) -> object:
        """What one worker keeps from round to round (an HTTP session, say); closed at the end."""
        return None

    def _run(self) -> None:
        session = self._session()
        failures_in_a_row = 0
        try:
            while not self._stopping.is_set():
                started = monotonic()
                try:
                    self._work_once(session)
                    self._failures.succeeded(self._round, started)
                    failures_in_a_row = 0
                    continue
                except CallFailed as failure:
                    if not self._stopping.is_set():
                        self._failures.failed(failure.call, failure.error)
                except Exception as error:  # noqa: BLE001 - a bug of ours must not end the worker
                    self._failures.failed(self._round, error, with_traceback=True)
                failures_in_a_row += 1
                self._stopping.wait(
                    BACKOFF_SECONDS[min(failures_in_a_row, len(BACKOFF_SECONDS)) - 1]
                )
        finally:
            close = getattr(session, "close", None)
            if close is not None:
                close()

    def _call(self, call: str, method: object, *arguments: object, **keywords: object) -> object:
        """One call to the outside; a failure is raised as `CallFailed(call)`, and a success
        ends that call's outage in the log."""
        started = monotonic()
        try:
            result = method(*arguments, **keywords)  # type: ignore[operator]
        except Exception as error:  # any failure of the call, named for the log
            raise CallFailed(call, error) from error
        self._failures.succeeded(call, started)
        return result

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Finish the work in hand, then stop; what was not taken yet stays queued."""
        self._stopping.set()
        deadline = monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - monotonic()))

    @property
    def workers_alive(self) -> int:
        """How many worker threads run: all of them from `start()` to `stop()`."""
        return sum(thread.is_alive() for thread in self._threads)


class RepeatedFailureLog:
    """One line when a call starts failing, silence while it fails the same way, one line when
    it works again: a run of identical failures (same call, same error type) is one outage."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._lock = threading.Lock()
        self._failing: dict[tuple[str, str], _FailureRun] = {}

    def failed(self, call: str, error: BaseException, *, with_traceback: bool = False) -> None:
        signature = (call, type(error).__name__)
        with self._lock:
            run = self._failing.get(signature)
            if run is not None:
                run.count += 1
                return
            self._failing[signature] = _FailureRun()
        self._log.error(
            "%s failed (%s: %s); not logged again until it works",
            call,
            type(error).__name__,
            _first_line(error),
            exc_info=error if with_traceback else None,
            stacklevel=2,  # the line names the worker's call site, not this class
        )

    def succeeded(self, call: str, started: float) -> None:
        """`call`, begun at `started` (monotonic), worked: that ends the runs of failures it
        began after. One begun earlier proves nothing: a long poll in flight when the emulator
        stopped answering can still come back fine."""
        if not self._failing:  # the usual case, decided without the lock
            return
        with self._lock:
            ended = [
                (sig, run)
                for sig, run in self._failing.items()
                if sig[0] == call and run.since <= started
            ]
            for signature, _ in ended:
                del self._failing[signature]
        for (_, kind), run in ended:
            self._log.warning(
                "%s works again, after %d failure%s (%s) in %.1f s",
                call,
                run.count,
                "" if run.count == 1 else "s",
                kind,
                monotonic() - run.since,
                stacklevel=2,
            )


@dataclass
class _FailureRun:
    since: float = field(default_factory=monotonic)
    count: int = 1


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = str(error).strip().splitlines()
    return text[0][:limit] if text else ""


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = str(error).strip().splitlines()
    return text[0][:limit] if text else ""
