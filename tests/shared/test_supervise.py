"""The supervisor restarts a crashed child with back-off, leaves one-shot children alone, and
stops every child (with its own children) on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from festa.shared.supervise import Child, Supervisor


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive
    return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_crashing_child_is_restarted_with_growing_backoff(tmp_path: Path) -> None:
    crash = Child("crash", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "crash.log")
    once = Child("once", [sys.executable, "-c", "pass"], tmp_path / "once.log", restart=False)
    sup = Supervisor([crash, once], backoff_s=0.2, max_backoff_s=0.8, stable_s=60)
    sup.start()
    try:
        deadline = time.monotonic() + 30
        while crash.restarts < 4 and time.monotonic() < deadline:
            sup.poll()
            time.sleep(0.05)
    finally:
        sup.stop()
    assert crash.restarts >= 4 and set(crash.exit_codes) == {3}
    assert crash.backoff_s == 0.8  # doubled from 0.2 and capped
    assert once.exit_codes == [0] and once.restarts == 0 and sup.done("once")
    assert (tmp_path / "crash.log").read_text().count("festa: starting crash") == len(
        crash.exit_codes
    )


def test_sigterm_stops_every_child_and_its_children(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from festa.shared.supervise import Child, Supervisor
        grandchild = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"
        children = [Child(f"c{{i}}", [sys.executable, "-c", grandchild], Path({str(tmp_path)!r}) / f"c{{i}}.log") for i in range(2)]
        Supervisor(children).start().run()
        """
    )
    sup = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("*.pgid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # let each child start its grandchild
        pgids = [int(p.read_text()) for p in tmp_path.glob("*.pgid")]
        members = [
            int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _pgid(int(pid)) in pgids
        ]
        assert len(members) >= 4, members  # two children, two grandchildren
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=30) == 0
        time.sleep(0.2)
        assert not [pid for pid in members if _alive(pid)]
    finally:
        sup.kill()
        for p in tmp_path.glob("*.pgid"):
            try:
                os.killpg(int(p.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
