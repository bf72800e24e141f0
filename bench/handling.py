#!/usr/bin/env python3
"""hushvm's own time per exit, from its profiler, for two or more builds interleaved.

On a loaded host the guest's TSC count of a whole loop (bench/compare.py) moves with
preemption by +-50%; hushvm's profiler times each exit from the return of KVM_RUN to
the next KVM_RUN, and the median of 20000 such exits hardly sees preemption. Each
binary boots guests/rtc with iterations=N and --profile-json; the hot key's (0x71:PIN)
median and minimum are collected, runs interleaved (A B A B ...), and the median over
runs of each is printed, with the ratio to the first binary.

Usage: bench/handling.py [--iterations N] [--runs R] BINARY [BINARY ...]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def hot_key(binary, guest, iterations, profile):
    command = [binary, "run", "--multiboot", guest, "--cmdline", f"iterations={iterations}",
               "--profile-json", profile]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 1:
        sys.exit(f"run failed ({result.returncode}): {' '.join(command)}\n{result.stderr}")
    with open(profile) as file:
        exits = json.load(file)["exits"]
    row = max(exits, key=lambda row: row["samples"])
    return row["median_ns"], row["min_ns"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("binaries", nargs="+")
    args = parser.parse_args()
    medians = {binary: [] for binary in args.binaries}
    minimums = {binary: [] for binary in args.binaries}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([args.binaries[0], "guests", "--out", tmp], check=True, capture_output=True)
        guest, profile = os.path.join(tmp, "rtc.elf"), os.path.join(tmp, "profile.json")
        for _ in range(args.runs):
            for binary in args.binaries:
                median, minimum = hot_key(binary, guest, args.iterations, profile)
                medians[binary].append(median)
                minimums[binary].append(minimum)
    first = statistics.median(medians[args.binaries[0]])
    print(f"rtc guest, hot key's handling time, ns: {args.runs} interleaved runs")
    for binary in args.binaries:
        median = statistics.median(medians[binary])
        print(f"  {binary}: median of medians {median:.0f} (range {min(medians[binary])}.."
              f"{max(medians[binary])}), median of minimums {statistics.median(minimums[binary]):.0f},"
              f" ratio {median / first:.3f}")


if __name__ == "__main__":
    main()
