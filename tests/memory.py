"""Peak memory of a command and of every process it starts, measured from outside.

``ru_maxrss`` cannot be used for this: a child inherits its parent's high-water mark through
fork and exec (Linux keeps the old mapping's peak), so a command started from a large test
process reports that process's peak. ``VmHWM`` in /proc counts only the process's own mapping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time


def vm_hwm_kib(pid: int | str) -> int:
    """The peak resident memory of ``pid`` (or ``"self"``) in KiB; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                # The command name (field 2) may hold spaces: the parent id follows its ')'.
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def run_measured(args, *, cwd, timeout: float = 600, interval: float = 0.05):
    """Runs ``python *args``, polling the high-water mark of each process in its tree.

    Returns:
        The completed process (text stdout and stderr) and a dict with ``largest_mib`` (the
        largest single process) and ``total_mib`` (the sum of every process's peak: an upper
        bound on the tree's peak, as the peaks need not coincide).
    """
    peaks: dict[int, int] = {}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            for pid in process_tree(proc.pid):
                peaks[pid] = max(peaks.get(pid, 0), vm_hwm_kib(pid))
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(args, timeout)
            time.sleep(interval)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read())
    return result, {
        "largest_mib": max(peaks.values(), default=0) / 1024,
        "total_mib": sum(peaks.values()) / 1024,
        "processes": len(peaks),
    }
