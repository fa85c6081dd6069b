"""Servers in child processes: each started in a process group of its own and stopped as one.

The gcloud emulator wrappers are a Python launcher, a shell script and a JVM; killing
the launcher alone leaves Java serving. So every server leads its own process group
(`start_new_session`), which also keeps Ctrl-C on the terminal from reaching it before
the parent has decided to stop it, and `stop()` ends the whole group, and only it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
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
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


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


@dataclass
class ServerProcess:
    """A server we started, leading its own process group; `stop` ends all of it (and only it).

    `log` receives the server's stdout and stderr; None leaves them on ours (the terminal).
    """

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path | None
    launched_at: float = 0.0
    startup_seconds: float = 0.0

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
        return cls(name, process, port, log, launched_at=time.monotonic())

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

    def stop(self, grace: float = 5.0) -> None:
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        # The launcher may be gone while its Java child still runs: end the group regardless.
        _signal_group(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(grace)

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
