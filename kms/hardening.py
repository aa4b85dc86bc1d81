"""Process hardening done once at start-up, before any key is loaded: no core dump may hold a seed.

A core dump is a copy of the process's memory on disk: a crash of a process started with core dumps on (outside
the systemd unit, which sets LimitCORE=0) would write the consensus seed next to the working directory. Both
switches are set, because each covers a case the other misses: RLIMIT_CORE 0 stops the kernel writing a core
file, but not a core_pattern pipe (systemd-coredump, apport), which ignores the limit; PR_SET_DUMPABLE 0 stops
both, and also stops other processes of the same user from attaching with ptrace or reading /proc/PID/mem.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys

__all__ = ["make_undumpable"]

#: <linux/prctl.h>
PR_SET_DUMPABLE = 4


def make_undumpable() -> None:
    """RLIMIT_CORE 0 (the soft limit, the one the kernel applies) and, on Linux, PR_SET_DUMPABLE 0.

    Raises OSError if either cannot be set: a signer that cannot protect its keys should not start.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")
