"""Search a live process's memory for key material, in every form tests/secret_forms.py knows.

For the test "the front's memory holds no key": it reads each readable mapping listed in /proc/PID/maps through
/proc/PID/mem (needs root, or the same user and a dumpable process) and hands the regions to
``secret_forms.scan``. Regions that cannot be read (guard pages, [vvar]) are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tests.secret_forms import scan

__all__ = ["MemoryScan", "regions", "scan_process"]

#: Mappings larger than this are read in chunks (overlapping by a needle's longest text form).
CHUNK = 16 << 20
OVERLAP = 64


@dataclass
class MemoryScan:
    hits: list[str]
    bytes_read: int
    regions_read: int
    regions_skipped: int


def regions(pid: int) -> Iterator[tuple[int, int, str]]:
    """(start, end, name) of each readable mapping of ``pid``."""
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if fields[1][0] == "r" and fields[-1] != "[vvar]":
                yield start, end, fields[-1] if len(fields) > 5 else "[anon]"


def scan_process(pid: int, seeds: Iterable[bytes]) -> MemoryScan:
    """Every form of every seed found in ``pid``'s memory (``hits`` empty means clean)."""
    seeds = list(seeds)
    result = MemoryScan([], 0, 0, 0)
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end, name in list(regions(pid)):
            pos = start
            try:
                while pos < end:
                    mem.seek(pos)
                    chunk = mem.read(min(CHUNK, end - pos))
                    result.bytes_read += len(chunk)
                    result.hits += scan(seeds, [(f"{name}@{pos:#x}", chunk)])
                    pos += max(len(chunk) - OVERLAP, 1) if pos + len(chunk) < end else len(chunk)
                result.regions_read += 1
            except OSError:
                result.regions_skipped += 1
    return result
