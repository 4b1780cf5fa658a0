"""CPU seconds of a process tree, from Linux ``/proc`` (what the benchmarks report besides wall time)."""

from __future__ import annotations

import os


def tree_cpu_seconds(pid: int, reaped: bool = True) -> float | None:
    """User + system CPU seconds of process ``pid`` and its live descendants (``None`` without ``/proc``).

    Args:
        pid: the root of the tree.
        reaped: also count the children each of them has already waited for (``cutime``/``cstime``).
    """
    try:
        pids = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return None
    last = 15 if reaped else 13
    procs: dict[int, tuple[int, int]] = {}  # pid -> (parent pid, CPU in clock ticks)
    for d in pids:
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
        procs[int(d)] = (int(fields[1]), sum(int(x) for x in fields[11:last]))
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo.extend(c for c, (parent, _) in procs.items() if parent == p and c not in tree)
    return sum(procs[p][1] for p in tree if p in procs) / os.sysconf("SC_CLK_TCK")
