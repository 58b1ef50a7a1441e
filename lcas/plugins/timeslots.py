"""lcas_timeslots.mod: admit jobs only during the time slots of a timeslots.db.

``pluginargs="<timeslots.db>"``. Each slot line has six fields::

    minute1-minute2 hour1-hour2 mday1-mday2 month1-month2 year1-year2 wday1-wday2
    30-0            8-18        1-15        7-1           2002-2003   1-5

A field is ``*`` (the whole range), ``v`` (just v), ``v-`` (v to the
maximum) or ``v1-v2``. Limits: minute 0-59, hour 0-24 (``24`` only as an end,
meaning midnight), mday 1-31, month 1-12, year 1970-9999, wday 0-6 with 0 =
Sunday. The wall clock matches a slot when, all inclusive,

* ``(hour1:minute1) <= (hour:minute) <= (hour2:minute2)`` -- if the start is
  after the end the slot wraps over midnight (``0-0 22-6`` = 22:00-06:00);
* ``(year1.month1.mday1) <= (year.month.mday) <= (year2.month2.mday2)``
  compared as dates (an end before the start is a parse error);
* ``wday1 <= wday <= wday2``, wrapping when wday1 > wday2 (``5-3`` = Fri-Wed).

Access is granted when at least one slot matches; a file with no slots
refuses everybody. ``#`` starts a comment (whole line or after the fields),
blank lines and CRLF endings are fine. The clock is the request's ``now``
in local time (an aware ``now`` is converted with ``astimezone()``, a naive
one is taken as local wall time). The file is re-read when it changes; a
file that cannot be read or parsed at decision time raises LcasUnavailable
(Indeterminate, never a deny).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from lcas.plugin_api import (
    CachedFile,
    LcasUnavailable,
    Plugin,
    PluginInitError,
    Request,
    Verdict,
    resolve_path,
)

# (name, lowest, highest value for '*' and 'v-', highest value accepted)
_FIELDS = (
    ("minute", 0, 59, 59),
    ("hour", 0, 23, 24),
    ("mday", 1, 31, 31),
    ("month", 1, 12, 12),
    ("year", 1970, 9999, 9999),
    ("wday", 0, 6, 6),
)


class TimeslotsError(Exception):
    """A malformed timeslots.db line; ``str()`` is ``file:line: reason``."""


@dataclass(frozen=True)
class Slot:
    lineno: int
    start_time: tuple[int, int]  # (hour, minute)
    end_time: tuple[int, int]
    start_date: tuple[int, int, int]  # (year, month, mday)
    end_date: tuple[int, int, int]
    wday: tuple[int, int]

    def matches(self, when: datetime) -> bool:
        hm = (when.hour, when.minute)
        if self.start_time <= self.end_time:
            time_ok = self.start_time <= hm <= self.end_time
        else:
            time_ok = hm >= self.start_time or hm <= self.end_time
        date_ok = self.start_date <= (when.year, when.month, when.day) <= self.end_date
        wday = (when.weekday() + 1) % 7  # Python: Monday=0; timeslots: Sunday=0
        lo, hi = self.wday
        wday_ok = lo <= wday <= hi if lo <= hi else (wday >= lo or wday <= hi)
        return time_ok and date_ok and wday_ok


def _number(text: str, field: str, lo: int, top: int) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{field}: '{text}' is not a number")
    value = int(text)
    if not lo <= value <= top:
        raise ValueError(f"{field}: {value} is outside {lo}-{top}")
    return value


def _range(text: str, field: str, lo: int, hi: int, top: int) -> tuple[int, int]:
    if text == "*":
        return lo, hi
    first, dash, last = text.partition("-")
    start = _number(first, field, lo, top)
    if not dash:
        end = start
    elif last == "":
        end = hi
    else:
        end = _number(last, field, lo, top)
    if field == "hour" and start == 24:
        raise ValueError("hour: 24 is only allowed as the end of a range")
    return start, end


def parse_timeslots(data: bytes, filename: str) -> tuple[Slot, ...]:
    """All slots of a timeslots.db; raises TimeslotsError on the first bad line."""
    slots = []
    text = data.decode("utf-8", "replace")
    for lineno, line in enumerate(text.split("\n"), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != len(_FIELDS):
            raise TimeslotsError(
                f"{filename}:{lineno}: expected 6 fields (minute hour mday month year "
                f"wday), found {len(fields)}")
        try:
            ranges = [_range(f, *spec) for f, spec in zip(fields, _FIELDS, strict=True)]
        except ValueError as exc:
            raise TimeslotsError(f"{filename}:{lineno}: {exc}") from None
        (m1, m2), (h1, h2), (d1, d2), (mo1, mo2), (y1, y2), wday = ranges
        if (y1, mo1, d1) > (y2, mo2, d2):
            raise TimeslotsError(f"{filename}:{lineno}: the date range ends before it starts")
        slots.append(Slot(lineno, (h1, m1), (h2, m2), (y1, mo1, d1), (y2, mo2, d2), wday))
    return tuple(slots)


class TimeSlots(Plugin):
    name = "timeslots"

    def __init__(self, argv: Sequence[str], *, db_dir: str = ".") -> None:
        super().__init__(argv, db_dir=db_dir)
        args = list(argv[1:])
        if len(args) != 1 or args[0].startswith("-"):
            raise PluginInitError(f"{self.name}: expects exactly one timeslots file")
        self.slots = CachedFile(resolve_path(args[0], db_dir), parse_timeslots)
        try:
            self.slots.get()
        except OSError as exc:
            raise PluginInitError(f"{self.name}: {self.slots.path}: {exc.strerror}") from None
        except TimeslotsError as exc:
            raise PluginInitError(f"{self.name}: {exc}") from None

    def authorize(self, request: Request) -> Verdict:
        try:
            slots = self.slots.get()
        except OSError as exc:
            raise LcasUnavailable(f"cannot read {self.slots.path}: {exc.strerror}") from None
        except TimeslotsError as exc:
            raise LcasUnavailable(str(exc)) from None
        now = request.now
        when = now.astimezone() if now.tzinfo is not None else now
        for slot in slots:
            if slot.matches(when):
                return Verdict.allow(f"time slot at {self.slots.path}:{slot.lineno}")
        return Verdict.deny(f"{when:%Y-%m-%d %H:%M} (weekday {(when.weekday() + 1) % 7}) "
                            f"is outside every time slot of {self.slots.path}")
