"""Usage and rate limits in agent output: is the run limited, and when does it reset.

The presets ask this of the text a CLI printed; the reset time becomes the task's
``not_before`` and the agent type's cool-down.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Texts the CLIs print when a rate or usage limit stops them. Claude Code:
# "Claude AI usage limit reached|1750708800" (older), "You've hit your limit ·
# resets 3pm (Asia/Tokyo)", "5-hour limit reached ∙ resets 3pm". Codex:
# "You've hit your usage limit ... try again at 8:06 PM." Gemini CLI:
# "TerminalQuotaError: You have exhausted your daily quota", RESOURCE_EXHAUSTED.
# Aider (litellm): "litellm.RateLimitError", "The API provider has rate limited you".
_LIMIT_TEXT = re.compile(
    r"usage limit reached|hit your (?:usage |session |weekly )?limit|limit reached\s*[∙·•]"
    r"|rate[ _-]?limit(?:ed|_error|error| exceeded| reached)|RateLimitError|rate limited you"
    r"|RESOURCE_EXHAUSTED|exhausted your (?:daily )?quota|TerminalQuotaError|\b429 Too Many Requests"
    r"|(?:status|error|code)[\"']?\s*[:=]?\s*429\b|\(429\)",
    re.IGNORECASE,
)
_EPOCH = re.compile(r"limit reached\|(\d{10})")
_RESETS_AT = re.compile(
    r"(?:resets?|try again)(?: at)?\s+"
    # a date when the reset is not today: 'Nov 22', 'Nov 22nd', 'Nov 22nd, 2026' (Codex)
    r"(?:(?P<month>[A-Z][a-z]{2}) (?P<day>\d{1,2})(?:st|nd|rd|th)?(?:,? (?P<year>\d{4}))?,? (?:at )?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>[ap]\.?m\.?)"
    r"(?:\s*\((?P<tz>[A-Za-z_]+(?:/[A-Za-z_+-]+)*)\))?",
    re.IGNORECASE,
)
_RETRY_IN = re.compile(
    r"(?:retry|try again|resets?)\s+in\s+"
    r"(?P<dur>(?:\d+(?:\.\d+)?\s*(?:days?|d|hours?|h|minutes?|mins?|m|seconds?|secs?|s|ms)(?![a-z])[\s,]*(?:and\s+)?)+)",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _duration_seconds(text: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text.lower()):
        key = "ms" if unit == "ms" else unit[0]
        total += float(number) * _UNIT_SECONDS.get(key, 0.0)
    return total


def _clock_time(match: re.Match[str], now: float) -> float | None:
    """The next instant at that wall-clock time, in the zone named, else local time."""
    hour = int(match["hour"]) % 12 + (12 if match["ampm"].lower().startswith("p") else 0)
    minute = int(match["minute"] or 0)
    tz: dt.tzinfo | None = None
    if match["tz"]:
        try:
            tz = ZoneInfo(match["tz"])
        except (ZoneInfoNotFoundError, ValueError):
            tz = None
    base = dt.datetime.fromtimestamp(now, tz) if tz else dt.datetime.fromtimestamp(now).astimezone()
    if match["month"]:
        year = int(match["year"]) if match["year"] else base.year
        try:
            day = dt.datetime.strptime(f"{match['month']} {match['day']} {year}", "%b %d %Y")
        except ValueError:
            return None
        candidate = base.replace(
            year=year, month=day.month, day=day.day, hour=hour, minute=minute, second=0,
            microsecond=0,
        )  # fmt: skip
        if not match["year"] and candidate.timestamp() < now - 86400:
            candidate = candidate.replace(year=base.year + 1)
        return candidate.timestamp()
    candidate = base.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if candidate.timestamp() <= now:
        candidate += dt.timedelta(days=1)
    return candidate.timestamp()


def limit_reset(text: str, now: float | None = None) -> float | None:
    """Epoch seconds at which a limit message says the limit resets, if it says."""
    now = time.time() if now is None else now
    if epoch := _EPOCH.search(text):
        return float(epoch.group(1))
    found: list[float] = []
    for match in _RETRY_IN.finditer(text):
        seconds = _duration_seconds(match["dur"])
        if seconds > 0:
            found.append(now + seconds)
    for clock in _RESETS_AT.finditer(text):
        at = _clock_time(clock, now)
        if at is not None:
            found.append(at)
    # the latest announced reset is the one that lets the next attempt through
    return max(found) if found else None


def limit_in(text: str) -> bool:
    return _LIMIT_TEXT.search(text) is not None
