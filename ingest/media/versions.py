"""API versions a connector supports, with their release and sunset dates and where each date
comes from. Each connector module holds its own table (``VERSIONS``); this module checks a
configured version against it when the config is loaded:

* past its sunset (or never supported) → a config error, exit 2, naming the sunset date;
* within ``WARN_DAYS`` of its sunset → a warning at every start, so a pin is moved in time.

Platforms retire versions on a schedule: an expired version either fails (Meta error #2635,
Google HTTP 400 INVALID_ARGUMENT with ``requestError: UNSUPPORTED_VERSION``, Yahoo an error
envelope) or is silently upgraded, which changes the numbers. Both are worse than refusing to start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

#: warn this many days before a pinned version's sunset
WARN_DAYS = 60


@dataclass(frozen=True, slots=True)
class ApiVersion:
    name: str
    released: date | None
    #: the day it stops working; None = not announced yet
    sunset: date | None
    source: str
    #: False for versions listed only so that a stale pin gets a precise message
    supported: bool = True


@dataclass(frozen=True, slots=True)
class VersionCheck:
    version: str
    error: str | None = None
    warning: str | None = None


def check_version(table: tuple[ApiVersion, ...], version: str, today: date, platform: str) -> VersionCheck:
    """Is ``version`` usable today according to ``table``? Error and warning texts name dates."""
    supported = [v.name for v in table if v.supported and (v.sunset is None or v.sunset > today)]
    known = {v.name: v for v in table}
    entry = known.get(version)
    hint = f"use {supported[-1]}" + (f" (supported: {', '.join(supported)})" if len(supported) > 1 else "")
    if entry is None:
        return VersionCheck(version, error=f"{platform} version {version!r} is not supported by this connector; {hint}")
    if entry.sunset is not None and entry.sunset <= today:
        return VersionCheck(version, error=f"{platform} version {version} was sunset on {entry.sunset.isoformat()} "
                                           f"(source: {entry.source}); {hint}")
    if not entry.supported:
        return VersionCheck(version, error=f"{platform} version {version} is not supported by this connector; {hint}")
    if entry.sunset is not None and (entry.sunset - today).days <= WARN_DAYS:
        days = (entry.sunset - today).days
        return VersionCheck(version, warning=f"{platform} version {version} sunsets on {entry.sunset.isoformat()}, "
                                             f"in {days} days (source: {entry.source}); {hint}")
    return VersionCheck(version)
