#!/usr/bin/env python3
"""Runs a shell command N times; prints the median wall time and the largest
peak RSS of the command's process tree (from wait4's rusage).

  measure.py ROUNDS SETUP_CMD CMD     (SETUP_CMD runs before each round, untimed)
"""
import os
import statistics
import subprocess
import sys
import time


def main():
    rounds, setup, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    times, rss = [], 0
    for _ in range(rounds):
        subprocess.run(["bash", "-c", setup], check=True)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.execvp("bash", ["bash", "-c", cmd])
        _, status, usage = os.wait4(pid, 0)
        times.append(time.monotonic() - start)
        if status != 0:
            sys.exit(f"command failed ({status}): {cmd}")
        # ru_maxrss of the waited-for child covers its largest descendant too.
        rss = max(rss, usage.ru_maxrss)
    print(f"{statistics.median(times):.3f} {rss // 1024} {' '.join(f'{t:.3f}' for t in times)}")


main()
