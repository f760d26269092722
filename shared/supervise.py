"""A small process supervisor for `festa server start` and `festa client start`.

Each child runs in its own process group (so its own children - Flower's SuperExec and app
processes - stop with it), logs to its own file, and is restarted with exponential back-off
when it exits unexpectedly. SIGTERM/SIGINT to the supervisor stops every child: SIGTERM to
each group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("festa.supervise")


@dataclass
class Child:
    """One supervised command. `restart=False`: a one-shot task (its exit is recorded, not retried)."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    restart: bool = True
    proc: subprocess.Popen | None = field(default=None, repr=False)
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    backoff_s: float = 0.0
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Start children, restart crashed ones with back-off (`backoff_s` doubling to `max_backoff_s`,
    reset after `stable_s` of uptime), stop all on `stop()` or a signal."""

    def __init__(
        self,
        children: list[Child],
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        stable_s: float = 60.0,
        on_event: Callable[[str], None] | None = None,
    ):
        names = [c.name for c in children]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique, got {names}")
        self.children = children
        self.initial_backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.stopping = threading.Event()
        self._on_event = on_event or (lambda msg: log.warning("%s", msg))

    def _spawn(self, child: Child) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(child.log_path, "ab") as logf:
            logf.write(f"\n--- festa: starting {child.name}: {' '.join(child.argv)}\n".encode())
            logf.flush()
            child.proc = subprocess.Popen(
                child.argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(child.env or {})},
                cwd=child.cwd,
                start_new_session=True,
            )
        child.started_at = time.monotonic()
        # The group id on disk lets an operator (or a test's teardown) stop a child whose
        # supervisor was killed without a chance to clean up.
        child.log_path.with_suffix(".pgid").write_text(f"{child.proc.pid}\n")
        self._on_event(f"{child.name}: started (pid {child.proc.pid}, log {child.log_path})")

    def start(self) -> Supervisor:
        """Start every child."""
        for child in self.children:
            child.backoff_s = self.initial_backoff_s
            self._spawn(child)
        return self

    def add(self, child: Child) -> None:
        """Start one more child under supervision."""
        if child.name in {c.name for c in self.children}:
            raise ValueError(f"a child named {child.name!r} already exists")
        child.backoff_s = self.initial_backoff_s
        self.children.append(child)
        self._spawn(child)

    def poll(self) -> None:
        """Restart children that exited (after their back-off); call this periodically."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                if child.restart and now >= child.next_start and not self.stopping.is_set():
                    self._spawn(child)
                continue
            code = child.proc.poll()
            if code is None:
                continue
            child.exit_codes.append(code)
            child.proc = None
            if not child.restart:
                self._on_event(f"{child.name}: finished with exit code {code}")
                continue
            if now - child.started_at >= self.stable_s:
                child.backoff_s = self.initial_backoff_s
            child.next_start = now + child.backoff_s
            child.restarts += 1
            self._on_event(
                f"{child.name}: exited with code {code}; restart #{child.restarts} in {child.backoff_s:.1f} s"
            )
            child.backoff_s = min(child.backoff_s * 2, self.max_backoff_s)

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def done(self, name: str) -> bool:
        """True once a one-shot child has exited."""
        c = self.child(name)
        return c.proc is None and bool(c.exit_codes)

    def run(self, until: Callable[[], bool] | None = None, poll_s: float = 0.5) -> None:
        """Supervise until SIGTERM/SIGINT (or `until()` is true), then stop every child."""
        previous = {
            s: signal.signal(s, lambda *_: self.stopping.set())
            for s in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            while not self.stopping.wait(poll_s):
                self.poll()
                if until is not None and until():
                    break
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every child's process group, SIGKILL what is left after `grace_s`."""
        self.stopping.set()
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for c in running:
            _signal_group(c.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in running:
            try:
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._on_event(f"{c.name}: did not stop in {grace_s:.0f} s; killing")
            _signal_group(c.proc, signal.SIGKILL)  # also reaps grandchildren left in the group
            c.proc.wait()
            self._on_event(f"{c.name}: stopped")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
