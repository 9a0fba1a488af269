"""Server-side measurements from /proc: CPU time and RSS of a process tree.

CPU comes from ``/proc/<pid>/stat`` (utime + stime, in clock ticks) so it stays
correct when the generator, not the server, is the bottleneck: we divide the server's
own CPU time by the messages it handled.
"""

from __future__ import annotations

import os

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read().decode()
    # comm may contain spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2:].split()


def children(pid: int) -> list[int]:
    """All descendants of pid (a server may fork workers)."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(_stat_fields(int(name))[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """utime + stime of pid (and its descendants), in seconds."""
    total = 0
    for p in [pid] + (children(pid) if tree else []):
        try:
            f = _stat_fields(p)
            total += int(f[11]) + int(f[12])  # fields 14, 15 of stat: utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total / TICK


def rss_bytes(pid: int, tree: bool = True) -> int:
    """Resident set size of pid (and its descendants), in bytes."""
    total = 0
    for p in [pid] + (children(pid) if tree else []):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


def cpu_busy_seconds(cpus: list[int]) -> dict[int, float]:
    """Busy (non-idle, non-iowait) seconds per CPU since boot, from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            n = int(name[3:])
            if n in cpus:
                v = [int(x) for x in vals]
                out[n] = (sum(v[:8]) - v[3] - v[4]) / TICK
    return out


def parse_cpus(spec: str | None) -> list[int]:
    """taskset-style list ("0", "1-3", "0,2") to CPU numbers; all CPUs when empty."""
    if not spec:
        return sorted(os.sched_getaffinity(0))
    cpus = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        cpus.extend(range(int(a), int(b) + 1) if b else [int(a)])
    return cpus
