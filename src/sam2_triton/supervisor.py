"""Keep the embedded tritonserver serving: restart it when it, or one of its stubs, dies.

A single request can take Triton 2.51 down (SECURITY.md, "Requests that crash Triton 2.51"):
``tritonserver`` itself segfaults, or a python stub process dies while Triton goes on
reporting the model ready and answers every request to it with 500 "Stub process ... is not
healthy". Triton never restarts either. :class:`Supervisor` watches for both, and for models
that stop answering their health probe (:mod:`sam2_triton.health`), and then stops that
server (its stubs and shared-memory regions included, see :meth:`EmbeddedTriton.stop`) and
starts a new one, after a backoff that doubles with each restart in a row, up to a bound.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sam2_triton.health import probe_server
from sam2_triton.models import UserError
from sam2_triton.server import EmbeddedTriton

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """How often, and how soon, a failed server is started again.

    At most ``max_restarts`` restarts in a row (0: none; the failure ends serving). The
    first waits ``backoff_s``, each further one twice as long as the one before, up to
    ``max_backoff_s``. A server that has served for ``stable_after_s`` since its last
    (re)start has recovered: the count starts again from zero.
    """

    max_restarts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    stable_after_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.backoff_s < 0 or self.stable_after_s < 0:
            raise UserError("restart count, backoff and stable time must be ≥ 0")

    def delay(self, restart: int) -> float:
        """Seconds to wait before restart number ``restart`` (1-based) in a row."""
        return min(self.backoff_s * 2 ** (restart - 1), self.max_backoff_s)


def describe_exit(code: int) -> str:
    """``tritonserver exited with code -11 (SIGSEGV)``."""
    text = f"tritonserver exited with code {code}"
    if code < 0:
        with contextlib.suppress(ValueError):  # not a signal Python knows
            text += f" ({signal.Signals(-code).name})"
    return text


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a dead stub whose parent has not reaped it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class Supervisor:
    """Runs ``server`` until :meth:`stop`; restarts it by ``policy`` when it fails.

    A failure is: ``tritonserver`` exited, a python stub it started is gone, or a model that
    was READY failed its health probe (every ``probe_interval_s``; 0: never) ``probe_failures``
    times in a row. A probe that gets no answer within ``probe_timeout_s`` is logged but does
    not count: on a busy CPU a long queue looks the same, and dead stubs answer at once.
    """

    def __init__(
        self,
        server: EmbeddedTriton,
        policy: RestartPolicy | None = None,
        ready_timeout_s: float = 300,
        probe_interval_s: float = 10,
        probe_timeout_s: float = 30,
        probe_failures: int = 2,
        stdout=None,
        stderr=None,
    ) -> None:
        self.server = server
        self.policy = policy or RestartPolicy()
        self.ready_timeout_s = ready_timeout_s
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.probe_failures = probe_failures
        self.stdout, self.stderr = stdout, stderr
        self.restarts = 0  # in a row
        self._stopping = threading.Event()
        self._models: list[str] = []  # READY after the first start: what must keep answering
        self._stubs: dict[int, str] = {}

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Ask :meth:`run` to stop the server and return (safe in a signal handler)."""
        self._stopping.set()
        process = self.server.process
        if process is not None and process.poll() is None:
            process.terminate()

    def run(self, on_ready: Callable[[float], None] | None = None) -> None:
        """Start the server, call ``on_ready(seconds)`` once it serves, keep it serving.

        Returns after :meth:`stop`. Raises :class:`UserError` when the first start fails
        (a port in use, a missing model file, a server that exits at once) or when the
        restarts allowed in a row are used up.
        """
        try:
            seconds = self._start()
            if self.stopping:
                return
            states = self.server.model_states()
            self._models = sorted(m for m, (state, _) in states.items() if state == "READY")
            self._stubs = self.server.stub_processes()
            if on_ready is not None:
                on_ready(seconds)
            since = time.monotonic()
            while not self.stopping:
                reason = self._watch()
                if reason is None or self.stopping:
                    break
                if time.monotonic() - since >= self.policy.stable_after_s:
                    self.restarts = 0
                reason = self._restart(reason)
                while reason is not None and not self.stopping:  # did not come back
                    reason = self._restart(reason)
                since = time.monotonic()
        finally:
            self.server.stop()

    def _start(self) -> float:
        self.server.start(stdout=self.stdout, stderr=self.stderr)
        try:
            return self.server.wait_ready(self.ready_timeout_s, allow_unavailable=True)
        except UserError:
            if self.stopping:
                return 0.0
            raise

    def _restart(self, reason: str) -> str | None:
        """Stop the failed server, wait, start a new one; the reason it failed again, or
        None once it serves (or when asked to stop)."""
        self.restarts += 1
        if self.restarts > self.policy.max_restarts:
            if not self.policy.max_restarts:
                raise UserError(f"{reason} (not restarted: --max-restarts 0)")
            raise UserError(
                f"{reason}; giving up after {self.policy.max_restarts} restarts in a row "
                "(--max-restarts)"
            )
        delay = self.policy.delay(self.restarts)
        log.warning(
            "sam2-triton: %s; restarting tritonserver in %.1f s (restart %d of at most %d "
            "in a row)",
            reason,
            delay,
            self.restarts,
            self.policy.max_restarts,
        )
        self.server.stop()
        if self._stopping.wait(delay):
            return None
        t0 = time.monotonic()
        try:
            self._start()
        except UserError as e:
            return f"the restarted server did not come up: {e}"
        if self.stopping:
            return None
        states = self.server.model_states()
        lost = [m for m in self._models if states.get(m, ("",))[0] != "READY"]
        if lost:
            return f"model {lost[0]} did not load again ({states.get(lost[0], ('', ''))[1]})"
        self._stubs = self.server.stub_processes()
        log.warning("sam2-triton: serving again, %.1f s after the restart", time.monotonic() - t0)
        return None

    def _watch(self) -> str | None:
        """Block until the server fails (return why) or :meth:`stop` (return None)."""
        failures = 0
        next_probe = time.monotonic() + self.probe_interval_s
        while not self._stopping.wait(0.25):
            process = self.server.process
            code = process.poll() if process is not None else None
            if code is not None:
                return describe_exit(code)
            for pid, instance in self._stubs.items():
                if not _alive(pid):
                    return f"the python stub of model instance {instance} (pid {pid}) died"
            if self.probe_interval_s and time.monotonic() >= next_probe:
                failed = self._probe()
                failures = failures + 1 if failed else 0
                if failures >= self.probe_failures:
                    return f"health probe failed {failures} times in a row: {failed}"
                next_probe = time.monotonic() + self.probe_interval_s
        return None

    def _probe(self) -> str | None:
        """The first definite probe failure (a line), or None."""
        results = probe_server(
            self.server.http_url,
            self._models,
            self.probe_timeout_s,
            headers=self.server.repository_api_headers,
        )
        for r in results:
            if not r.healthy and r.timed_out:
                log.warning("sam2-triton: health probe timed out, not counted: %s", r.line())
        failed = [r for r in results if not r.healthy and not r.timed_out]
        return failed[0].line() if failed else None
