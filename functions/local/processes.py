"""Servers in child processes: each started in a process group of its own and stopped as one.

The gcloud emulator wrappers are a Python launcher, a shell script and a JVM; killing
the launcher alone leaves Java serving. So every server leads its own process group
(`start_new_session`), which also keeps Ctrl-C on the terminal from reaching it before
the parent has decided to stop it, and `stop()` ends the whole group, and only it.

A parent killed outright (SIGKILL, an out-of-memory kill) stops nothing, and groups of
their own outlive it: an `OrphanGuard` is a small watchdog process that ends the groups
still registered with it once its parent has gone (its stdin pipe closes).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from functions.local.emulated_aws import HOST, PortInUse

LOG_TAIL_CHARS = 3000  # how much of a server's log a start-up failure quotes


class ServerDidNotStart(RuntimeError):
    pass


def free_port() -> int:
    """A port nothing listens on right now (the server binds it itself, a moment later)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` different ports nothing listens on right now: each probe stays bound until
    all are chosen, so two servers about to start are never handed the same port."""
    with contextlib.ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket())
            probe.bind((HOST, 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def port_or_free(port: int) -> int:
    """`port` if nothing listens there (else `PortInUse`); any free port for 0."""
    if port == 0:
        return free_port()
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUse(port) from None
            raise
    return port


def how_it_ended(code: int) -> str:
    """A Popen return code in words: `exited with code 1`, `was killed by SIGKILL`."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


# The watchdog: "+PGID" / "-PGID" lines register and forget groups, "dPATH" a directory
# to remove; at end of input (the parent closed the pipe, or died) it ends each group
# still registered, politely first, then removes the directories.
_GUARD_CODE = """
import os, shutil, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups, directories = set(), set()
for line in sys.stdin:
    kind, value = line[:1], line[1:].rstrip("\\n")
    if kind == "d":
        directories.add(value)
    else:
        (groups.add if kind == "+" else groups.discard)(int(value))
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    if groups and sig == signal.SIGTERM:
        time.sleep(2)
for directory in directories:
    shutil.rmtree(directory, ignore_errors=True)
"""


class OrphanGuard:
    """Ends the process groups `watch`ed and not `forget`-ten if this process dies first, and
    removes the directories given to `remove_at_exit` (their logs) when it ends."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self) -> OrphanGuard:
        self._process = subprocess.Popen(
            [sys.executable, "-P", "-c", _GUARD_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C or a kill of our group does not reach it
        )
        return self

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def remove_at_exit(self, directory: Path) -> None:
        self._send(f"d{directory}")

    def stop(self) -> None:
        """Close the pipe: with nothing left registered, the watchdog simply exits."""
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _send(self, line: str) -> None:
        with self._lock:
            if self._process is None or self._process.stdin is None:
                return
            with contextlib.suppress(OSError):  # the watchdog gone: nothing more to guard
                self._process.stdin.write(f"{line}\n".encode())
                self._process.stdin.flush()


@dataclass
class ServerProcess:
    """A server we started, leading its own process group; `stop` ends all of it (and only it).

    `log` receives the server's stdout and stderr; None leaves them on ours (the terminal).
    With a `guard`, the group is also ended should this process die without stopping it.
    """

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path | None
    launched_at: float = 0.0
    startup_seconds: float = 0.0
    guard: OrphanGuard | None = None

    @classmethod
    def launch(
        cls,
        name: str,
        command: Sequence[str],
        port: int,
        log: Path | None,
        env: Mapping[str, str] | None = None,
        *,
        cwd: Path | None = None,
        guard: OrphanGuard | None = None,
    ) -> ServerProcess:
        """Start without waiting, so slow starters (two JVMs) boot side by side."""
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(log.open("wb")) if log is not None else None
            process = subprocess.Popen(
                list(command),
                stdout=sink,
                stderr=subprocess.STDOUT if sink is not None else None,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        if guard is not None:
            guard.watch(process.pid)  # the group's id is its leader's pid
        return cls(name, process, port, log, launched_at=time.monotonic(), guard=guard)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        """Return once the port accepts connections; else stop the group and raise
        `ServerDidNotStart` quoting the end of the server's log."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise ServerDidNotStart(f"{self.name} {how_it_ended(code)}{self._log_tail()}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() >= deadline:
                    self.stop()
                    raise ServerDidNotStart(
                        f"{self.name} was not listening on {HOST}:{self.port} after "
                        f"{timeout:.0f} s{self._log_tail()}"
                    ) from None
                time.sleep(0.1)
        self.startup_seconds = time.monotonic() - self.launched_at
        return self

    def exit_code(self) -> int | None:
        """None while the group's leader runs; then its return code (it is reaped)."""
        return self.process.poll()

    def terminate(self) -> None:
        """Ask the group to end (SIGTERM) without waiting: `stop()` then waits for it."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)

    def stop(self, grace: float = 5.0) -> None:
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        # The launcher may be gone while its Java child still runs: end the group regardless.
        _signal_group(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(grace)
        if self.guard is not None:
            self.guard.forget(self.process.pid)

    def _log_tail(self) -> str:
        if self.log is None:
            return ""
        try:
            text = self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
        except OSError:
            return ""
        return f":\n{text}" if text else ""


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
