"""Wall time and peak memory of a command and every process it starts (Ray workers included).

    .venv/bin/python benchmarks/peak_memory.py [--interval 0.5] [--json OUT] [--trace CSV] -- seal knowledge evaluate ...

Samples the process tree every `--interval` seconds and prints one table row: wall seconds, the
command's own peak RSS (exact: ru_maxrss, the largest of the command's process and the descendants
it waited for, so not of processes that outlive it or that another process reaps, such as Ray's
workers), and the tree's peak (the largest sum
over the tree at one sample: RSS, and PSS, which splits pages shared between processes, such as the
model's memory-mapped checkpoint, among them; sampled, so it can miss a spike shorter than the
interval). A distributed run's memory is the tree's, since each worker holds its own model.
The anonymous column is RSS less its file-backed pages (the memory-mapped checkpoint, the code of
torch's libraries as it is first run): what the processes allocated themselves, which the system
cannot take back without swap; file-backed pages are clean and reclaimable.
`--trace` writes every sample (wall clock, seconds, RSS, PSS and anonymous RSS in MiB) to a CSV, to
line up with the timestamps of a run's progress.log and find the phase that peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import psutil


def tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def sample(root: psutil.Process) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, sum of anonymous RSS) over the tree now, in bytes."""
    rss = pss = anon = 0
    for p in tree(root):
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        # Linux: `shared` is the resident file-backed and shared-memory pages (statm)
        rss, pss, anon = rss + info.rss, pss + info.pss, anon + info.rss - getattr(info, "shared", 0)
    return rss, pss, anon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples of the tree")
    parser.add_argument("--json", help="also write the row to this file")
    parser.add_argument("--trace", help="write every sample to this CSV: time, seconds, rss_mib, pss_mib, anon_mib")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    start = time.perf_counter()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peak_rss = peak_pss = peak_anon = 0
    with open(args.trace or os.devnull, "w", buffering=1) as trace:  # line-buffered: a kill keeps the lines
        trace.write("time,seconds,rss_mib,pss_mib,anon_mib\n")
        while child.poll() is None:
            rss, pss, anon = sample(root)
            peak_rss, peak_pss, peak_anon = max(peak_rss, rss), max(peak_pss, pss), max(peak_anon, anon)
            trace.write(f"{time.strftime('%H:%M:%S')},{time.perf_counter() - start:.1f},"
                        f"{rss / 2**20:.0f},{pss / 2**20:.0f},{anon / 2**20:.0f}\n")
            time.sleep(args.interval)
    wall = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: kB
    row = dict(command=" ".join(command), rc=child.returncode, wall_s=round(wall, 1),
               own_peak_rss_gib=round(own / 2**30, 2), tree_peak_rss_gib=round(peak_rss / 2**30, 2),
               tree_peak_pss_gib=round(peak_pss / 2**30, 2), tree_peak_anon_gib=round(peak_anon / 2**30, 2))
    print("| command | exit | wall | own peak RSS GiB | tree peak RSS GiB | tree peak PSS GiB | tree peak anonymous GiB |")
    print("|---|---|---|---|---|---|---|")
    minutes, seconds = divmod(round(wall), 60)
    print(f"| `{row['command']}` | {row['rc']} | {minutes} min {seconds} s | {row['own_peak_rss_gib']} | "
          f"{row['tree_peak_rss_gib']} | {row['tree_peak_pss_gib']} | {row['tree_peak_anon_gib']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)
    sys.exit(child.returncode)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
