"""Human-readable numbers shared by the terminal views and the HTML report."""

from __future__ import annotations

from datetime import UTC, datetime


def utc(t: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """Epoch seconds as a UTC time string ('–' for None)."""
    return "–" if t is None else datetime.fromtimestamp(t, UTC).strftime(fmt)


def human_bytes(n: float | None, compact: bool = False) -> str:
    """1536 -> '1.5 KB' (compact: '1.5K'); '–' for None."""
    if n is None:
        return "–"
    n, unit = float(n), "B"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            break
        n /= 1024
    sep, suffix = ("", unit) if compact else (" ", unit if unit == "B" else unit + "B")
    digits = 0 if unit == "B" or abs(n) >= 100 else 1
    return f"{n:.{digits}f}{sep}{suffix}"


def duration(s: float | None) -> str:
    """Seconds as '42s', '3m 05s' or '2h 10m'; '–' for None."""
    if s is None:
        return "–"
    s = max(0, int(round(s)))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"
