"""Human-readable numbers used by the terminal views and the report."""

from festa.server.console.formatting import duration, human_bytes, utc


def test_bytes_scale_by_1024():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KB"
    assert human_bytes(300 * 1024**2) == "300 MB"
    assert human_bytes(1536, compact=True) == "1.5K"
    assert human_bytes(None) == "–"


def test_durations_and_times():
    assert [duration(s) for s in (None, 0, 42.4, 185, 7800)] == [
        "–",
        "0s",
        "42s",
        "3m 05s",
        "2h 10m",
    ]
    assert utc(0) == "1970-01-01 00:00:00"
    assert utc(3661, "%H:%M:%S") == "01:01:01"
    assert utc(None) == "–"
