"""How long this process has run, from the operating system's record of its start.

`mrc train` records in summary.json the seconds from the start of its process to the first
training step (`first_step_s`): the start-up a command pays, Python's own included, which a
clock read inside mrc would miss. Linux keeps each process's start in /proc/self/stat (in clock
ticks since boot, so to 10 ms); elsewhere there is no such record, and the age is None.
"""

from __future__ import annotations

import os
import time


def process_age() -> float | None:
    """Seconds since this process started (to the OS clock's tick), or None without /proc."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # field 22 (starttime); the command name, field 2, is in parentheses and may hold spaces
    started = int(stat[stat.rindex(b")") + 2:].split()[19]) / os.sysconf("SC_CLK_TCK")
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
