#!/usr/bin/env python3
"""hushvm against its floor and QEMU on the same rtc guest file.

Each contestant boots guests/rtc (built by cargo) with iterations=N; the guest times its
own loop with rdtsc and prints tsc=T on COM1, so boot time and VMM setup drop out. Runs
are interleaved (A B C A B C ...) and the median of each is reported, with ratios to the
floor. QEMU comes from Debian's qemu-system-x86 package, installed if missing (as root).

Usage: bench/compare.py [--iterations N] [--runs R] [--no-qemu] [--json] [--before HUSHVM]
Run it from the repository root after `cargo build --release`. --before names another
hushvm binary (an older build, copied aside) that runs interleaved with the others, as
"before-coalesced", so a change is measured against its parent in the same run.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")


def ensure_qemu():
    if shutil.which("qemu-system-x86_64"):
        return True
    if os.geteuid() != 0:
        return False
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "qemu-system-x86"], check=False)
    return shutil.which("qemu-system-x86_64") is not None


def contestants(guest, iterations, with_qemu, before):
    cmdline = f"iterations={iterations}"
    hushvm = os.path.join(RELEASE, "hushvm")
    floor = os.path.join(RELEASE, "hushvm-floor")
    runs = {
        "floor-coalesced": [floor, "--multiboot", guest, "--cmdline", cmdline],
        "hushvm-coalesced": [hushvm, "run", "--multiboot", guest, "--cmdline", cmdline],
        # --timeout adds a watchdog thread; this shows what that costs.
        "hushvm-coalesced+timeout": [hushvm, "run", "--multiboot", guest, "--cmdline", cmdline, "--timeout", "300"],
        "hushvm-coalesced-nodrain": [hushvm, "run", "--multiboot", guest, "--cmdline", cmdline, "--posted-drain-us", "0"],
        "hushvm-coalesced-noseccomp": [hushvm, "run", "--multiboot", guest, "--cmdline", cmdline, "--seccomp", "off"],
        "floor-baseline": [floor, "--multiboot", guest, "--cmdline", cmdline, "--no-coalesce"],
        "hushvm-baseline": [hushvm, "run", "--multiboot", guest, "--cmdline", cmdline, "--no-coalesce"],
    }
    if before:
        runs["before-coalesced"] = [before, "run", "--multiboot", guest, "--cmdline", cmdline]
    if with_qemu:
        # -cpu host/max abort on this host (HOST.md); the default model is used.
        runs["qemu"] = ["timeout", "300", "qemu-system-x86_64", "-accel", "kvm", "-m", "64",
                        "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
                        "-kernel", guest, "-append", cmdline,
                        "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    return runs


def tsc_of(command):
    result = subprocess.run(command, capture_output=True, text=True)
    match = re.search(r"rtc: iterations=\d+ tsc=(\d+) errors=0+\b", result.stdout)
    if result.returncode != 1 or not match:
        sys.exit(f"run failed ({result.returncode}): {' '.join(command)}\n{result.stdout}{result.stderr}")
    return int(match.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-qemu", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--before", help="an older hushvm binary to interleave")
    args = parser.parse_args()

    with_qemu = not args.no_qemu and ensure_qemu()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([os.path.join(RELEASE, "hushvm"), "guests", "--out", tmp], check=True, capture_output=True)
        guest = os.path.join(tmp, "rtc.elf")
        runs = contestants(guest, args.iterations, with_qemu, args.before)
        samples = {name: [] for name in runs}
        for _ in range(args.runs):
            for name, command in runs.items():
                samples[name].append(tsc_of(command) / args.iterations)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    report = {
        "workload": "rtc",
        "iterations": args.iterations,
        "runs": args.runs,
        "guest_tsc_per_iteration_median": medians,
        "samples": samples,
        "ratios": {
            "hushvm/floor (coalesced)": medians["hushvm-coalesced"] / medians["floor-coalesced"],
            "hushvm/floor (baseline)": medians["hushvm-baseline"] / medians["floor-baseline"],
            "hushvm+timeout/floor (coalesced)": medians["hushvm-coalesced+timeout"] / medians["floor-coalesced"],
            "hushvm without the drain/floor (coalesced)": medians["hushvm-coalesced-nodrain"] / medians["floor-coalesced"],
            "hushvm without seccomp/floor (coalesced)": medians["hushvm-coalesced-noseccomp"] / medians["floor-coalesced"],
        },
    }
    if args.before:
        report["ratios"]["before/floor (coalesced)"] = medians["before-coalesced"] / medians["floor-coalesced"]
        report["ratios"]["hushvm/before (coalesced)"] = medians["hushvm-coalesced"] / medians["before-coalesced"]
    if with_qemu:
        report["ratios"]["qemu/floor (coalesced)"] = medians["qemu"] / medians["floor-coalesced"]
        report["ratios"]["hushvm/qemu (coalesced)"] = medians["hushvm-coalesced"] / medians["qemu"]
    minimums = {name: min(values) for name, values in samples.items()}
    report["min_ratios"] = {"hushvm/floor (coalesced)": minimums["hushvm-coalesced"] / minimums["floor-coalesced"]}
    if args.before:
        report["min_ratios"]["hushvm/before (coalesced)"] = minimums["hushvm-coalesced"] / minimums["before-coalesced"]
    if with_qemu:
        report["min_ratios"]["hushvm/qemu (coalesced)"] = minimums["hushvm-coalesced"] / minimums["qemu"]
    if args.json:
        print(json.dumps(report))
        return
    print(f"rtc guest, {args.iterations} iterations, median of {args.runs} interleaved runs (guest TSC ticks per iteration)")
    for name, value in medians.items():
        spread = f"{min(samples[name]):.0f}..{max(samples[name]):.0f}"
        print(f"  {name:<26} {value:10.0f}   (min {min(samples[name]):.0f}, range {spread})")
    for name, value in report["ratios"].items():
        print(f"  {name:<34} {value:.4f}")
    print("ratios of minimums")
    for name, value in report["min_ratios"].items():
        print(f"  {name:<34} {value:.4f}")


if __name__ == "__main__":
    main()
