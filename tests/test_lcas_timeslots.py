"""timeslots: the timeslots.db format, boundaries, wrap-around, injectable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from lcas.plugin_api import LcasUnavailable, PluginInitError, Request
from lcas.plugins.timeslots import TimeSlots

ALICE = "/DC=org/DC=example/O=Users/CN=Alice Smith"


def slots(tmp: Path, text: str | bytes) -> TimeSlots:
    path = tmp / "timeslots.db"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return TimeSlots(("lcas_timeslots.mod", str(path)))


def ok(plugin: TimeSlots, when: datetime) -> bool:
    return plugin.authorize(Request(ALICE, now=when)).allowed


# 2024-05-06 is a Monday (wday 1); 2024-05-05 a Sunday (wday 0).
MON = datetime(2024, 5, 6)


def test_timeslots_always_open_line_from_shipped_example(tmp_path: Path) -> None:
    plugin = slots(tmp_path, "# always open\n*  *  *  *  *  *\n")
    assert ok(plugin, datetime(1999, 12, 31, 23, 59))
    assert ok(plugin, MON)


def test_timeslots_working_hours_boundaries(tmp_path: Path) -> None:
    # 08:30-18:00, Monday to Friday, 1 July 2002 .. 15 January 2003 (the example in the .in)
    plugin = slots(tmp_path, "30-0 8-18 1-15 7-1 2002-2003 1-5\n")
    day = datetime(2002, 7, 1)  # a Monday
    assert not ok(plugin, day.replace(hour=8, minute=29))
    assert ok(plugin, day.replace(hour=8, minute=30))
    assert ok(plugin, day.replace(hour=18, minute=0))
    assert not ok(plugin, day.replace(hour=18, minute=1))
    assert not ok(plugin, datetime(2002, 6, 28, 12))  # Friday before the start date
    assert ok(plugin, datetime(2003, 1, 15, 12))  # Wednesday, last day
    assert not ok(plugin, datetime(2003, 1, 16, 12))  # Thursday after the end date
    assert not ok(plugin, datetime(2002, 7, 6, 12))  # Saturday
    assert not ok(plugin, datetime(2002, 7, 7, 12))  # Sunday


def test_timeslots_evening_until_24(tmp_path: Path) -> None:
    plugin = slots(tmp_path, "0-0 18-24 * * * *\n")
    assert not ok(plugin, MON.replace(hour=17, minute=59))
    assert ok(plugin, MON.replace(hour=18))
    assert ok(plugin, MON.replace(hour=23, minute=59))
    assert not ok(plugin, MON.replace(hour=0))


def test_timeslots_two_slots_cover_the_night(tmp_path: Path) -> None:
    plugin = slots(tmp_path, "0-0 18-24 * * * *\n0-0 0-7 * * * *\n")
    assert ok(plugin, MON.replace(hour=3))
    assert ok(plugin, MON.replace(hour=7, minute=0))
    assert not ok(plugin, MON.replace(hour=7, minute=1))
    assert not ok(plugin, MON.replace(hour=12))


def test_timeslots_time_range_wraps_over_midnight(tmp_path: Path) -> None:
    plugin = slots(tmp_path, "0-0 22-6 * * * *\n")
    assert ok(plugin, MON.replace(hour=22))
    assert ok(plugin, MON.replace(hour=0, minute=0))
    assert ok(plugin, MON.replace(hour=6, minute=0))
    assert not ok(plugin, MON.replace(hour=6, minute=1))
    assert not ok(plugin, MON.replace(hour=21, minute=59))


def test_timeslots_weekday_wraps_friday_to_wednesday(tmp_path: Path) -> None:
    plugin = slots(tmp_path, "* * * * * 5-3\n")
    expected = {0: True, 1: True, 2: True, 3: True, 4: False, 5: True, 6: True}
    for offset in range(7):  # MON + offset
        day = MON + timedelta(days=offset)
        wday = (day.weekday() + 1) % 7
        assert ok(plugin, day.replace(hour=12)) is expected[wday], wday


def test_timeslots_sunday_is_zero(tmp_path: Path) -> None:
    plugin = slots(tmp_path, "* * * * * 0\n")
    assert ok(plugin, datetime(2024, 5, 5, 12))
    assert not ok(plugin, MON)


def test_timeslots_value_dash_means_to_maximum(tmp_path: Path) -> None:
    plugin = slots(tmp_path, "* * 25- * 2024- *\n")
    assert ok(plugin, datetime(2024, 5, 25))
    assert ok(plugin, datetime(2030, 1, 31, 23, 59))
    assert not ok(plugin, datetime(2023, 12, 31))
    # the date range is one interval (year1.month1.mday1 .. year2.month2.mday2):
    assert ok(plugin, datetime(2024, 6, 1))


def test_timeslots_single_values(tmp_path: Path) -> None:
    plugin = slots(tmp_path, "15 9 * * * *\n")
    assert ok(plugin, MON.replace(hour=9, minute=15))
    assert not ok(plugin, MON.replace(hour=9, minute=16))


def test_timeslots_comments_blank_lines_crlf(tmp_path: Path) -> None:
    plugin = slots(tmp_path, b"# c\r\n\r\n   \t\r\n0-0 9-10 * * * *   # morning\r\n")
    assert ok(plugin, MON.replace(hour=9, minute=30))
    assert not ok(plugin, MON.replace(hour=11))


def test_timeslots_empty_file_refuses_with_reason(tmp_path: Path) -> None:
    verdict = slots(tmp_path, "# closed\n").authorize(Request(ALICE, now=MON))
    assert not verdict.allowed
    assert "2024-05-06 00:00 (weekday 1) is outside every time slot" in verdict.reason


def test_timeslots_aware_clock_is_converted_to_local_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        plugin = slots(tmp_path, "0-59 12 * * * *\n")
        assert ok(plugin, datetime(2024, 5, 6, 12, 30, tzinfo=UTC))
        cest = timezone(timedelta(hours=2))
        assert ok(plugin, datetime(2024, 5, 6, 14, 30, tzinfo=cest))
        assert not ok(plugin, datetime(2024, 5, 6, 12, 30, tzinfo=cest))
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("* * * * *", "expected 6 fields"),
        ("* * * * * * *", "expected 6 fields"),
        ("60 * * * * *", "minute: 60 is outside 0-59"),
        ("* 25 * * * *", "hour: 25 is outside 0-24"),
        ("* 24-3 * * * *", "hour: 24 is only allowed as the end"),
        ("* * 0 * * *", "mday: 0 is outside 1-31"),
        ("* * * 13 * *", "month: 13 is outside 1-12"),
        ("* * * * 1969 *", "year: 1969 is outside"),
        ("* * * * * 7", "wday: 7 is outside 0-6"),
        ("* * * * * x", "wday: 'x' is not a number"),
        ("* * * * * -3", "wday: '' is not a number"),
        ("* * * * 2003-2002 *", "date range ends before it starts"),
    ],
)
def test_timeslots_malformed_line_refuses_init(tmp_path: Path, line: str, reason: str) -> None:
    with pytest.raises(PluginInitError, match=rf"timeslots\.db:2: .*{reason}"):
        slots(tmp_path, f"* * * * * *\n{line}\n")


def test_timeslots_file_changed_to_broken_is_unavailable(tmp_path: Path) -> None:
    plugin = slots(tmp_path, "* * * * * *\n")
    (tmp_path / "timeslots.db").write_text("* * *\n")
    with pytest.raises(LcasUnavailable, match=r"timeslots\.db:1: expected 6 fields"):
        plugin.authorize(Request(ALICE, now=MON))


def test_timeslots_file_removed_is_unavailable(tmp_path: Path) -> None:
    plugin = slots(tmp_path, "* * * * * *\n")
    (tmp_path / "timeslots.db").unlink()
    with pytest.raises(LcasUnavailable, match=r"cannot read .*timeslots\.db: No such file"):
        plugin.authorize(Request(ALICE, now=MON))


def test_timeslots_empty_file_is_a_deny_not_a_fault(tmp_path: Path) -> None:
    plugin = slots(tmp_path, "* * * * * *\n")
    (tmp_path / "timeslots.db").write_text("# closed for maintenance\n")
    verdict = plugin.authorize(Request(ALICE, now=MON))
    assert not verdict.allowed and "outside every time slot" in verdict.reason


def test_timeslots_needs_exactly_one_file() -> None:
    with pytest.raises(PluginInitError, match="exactly one timeslots file"):
        TimeSlots(("lcas_timeslots.mod",))
