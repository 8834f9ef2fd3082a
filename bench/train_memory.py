"""bench/train.py's peak memory: run_train over 100 vs 1000 questions, each in a fresh process started
as `bench/train.py --rss-child ...`, sampled from outside over its whole process tree (/proc).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLL_S, PSS_EVERY = 0.02, 25  # process-tree sampling: VmRSS every 20 ms, PSS every 0.5 s
SCRIPT = Path(__file__).with_name("train.py")  # the child runs its --rss-child mode


def descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc/PID/task/TID/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in children.read_text().split())
    return found


def proc_value(pid, name: str, field: str) -> int:
    """The number on the "Field:  N [kB]" line of /proc/PID/<name>; 0 once the process has ended."""
    with contextlib.suppress(OSError, StopIteration):
        lines = Path(f"/proc/{pid}/{name}").read_text().splitlines()
        return int(next(line.split()[1] for line in lines if line.startswith(field + ":")))
    return 0


class TreePeaks:
    """Peaks over a process and its descendants, sampled from outside it.

    VmRSS (/proc/PID/status, microseconds to read) every sample; PSS only every PSS_EVERY-th:
    smaps_rollup walks the page tables, ~8 ms per torch process, which would steal a core."""

    def __init__(self, root_pid: int):
        self.root, self.samples = root_pid, 0
        self.rss_sum = self.pss_sum = self.child_rss = self.processes = 0  # KiB, KiB, KiB, count

    def sample(self) -> None:
        tree = descendants(self.root)
        rss = {pid: proc_value(pid, "status", "VmRSS") for pid in tree}
        self.rss_sum = max(self.rss_sum, sum(rss.values()))
        self.child_rss = max([self.child_rss] + [kib for pid, kib in rss.items() if pid != self.root])
        self.processes = max(self.processes, len(tree))
        if self.samples % PSS_EVERY == 0:
            self.pss_sum = max(self.pss_sum, sum(proc_value(pid, "smaps_rollup", "Pss") for pid in tree))
        self.samples += 1


def measure_rss(root: Path, cache: Path, model: Path, questions: dict[int, Path], args) -> dict:
    """Peak memory of run_train over 100 vs 1000 questions, each in a fresh subprocess."""
    peaks = {}
    for count, qa_path in questions.items():
        out = root / f"rss-{count}"
        command = [sys.executable, str(SCRIPT), "--rss-child", str(qa_path), str(cache), str(model), str(out),
                   "--batch", str(args.batch), "--workers", str(args.workers), "--threads", str(args.threads),
                   "--rss-steps", str(args.rss_steps)]
        log = root / f"rss-{count}.log"
        with open(log, "w") as stderr, tempfile.TemporaryFile("w+") as stdout:
            child = subprocess.Popen(command, stdout=stdout, stderr=stderr)
            peaks_seen = TreePeaks(child.pid)
            while child.poll() is None:
                peaks_seen.sample()
                time.sleep(POLL_S)
            stdout.seek(0)
            lines = stdout.read().strip().splitlines()
        if child.returncode != 0 or not lines:
            raise RuntimeError(f"rss child over {count} questions failed ({child.returncode}); see {log}:\n"
                               + log.read_text()[-2000:])
        peaks[count] = dict(json.loads(lines[-1]), tree_rss_mib=peaks_seen.rss_sum / 1024,
                            tree_pss_mib=peaks_seen.pss_sum / 1024, sampled_worker_mib=peaks_seen.child_rss / 1024,
                            max_processes=peaks_seen.processes, samples=peaks_seen.samples)
    return peaks


def own_peak_mib() -> float:
    """This process's peak RSS since exec. Not getrusage(RUSAGE_SELF).ru_maxrss: Linux folds the
    RSS of the image exec replaced (here: the benchmark that spawned us) into it."""
    return proc_value("self", "status", "VmHWM") / 1024
