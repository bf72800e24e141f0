#!/usr/bin/env python3
"""Boots Linux under QEMU/KVM the way docs/linux-qemu-baseline.md describes and times it.

Usage: scripts/qemu-linux-baseline.py NAME --kernel FILE [--initrd FILE] [--cpu MODEL]
           [--append TEXT] [--perf stat|record|none] [--timeout SECS] [--out DIR]
           [-- EXTRA QEMU ARGS]

Runs `timeout SECS qemu-system-x86_64 -accel kvm -cpu MODEL -smp 2 -m 512M -nographic
-no-reboot ...`, under `perf stat` (KVM's userspace exits, PIO, MMIO and MSR events) or
`perf record -e kvm:kvm_pio` (ports), and stamps every line of the guest's console
(QEMU's stdout) and of QEMU's own messages (stderr) with the seconds since the start.
QEMU pauses instead of exiting on a KVM emulation failure; when it reports one, this
script waits a moment for the register dump and then ends that QEMU (by the pid QEMU
wrote with -pidfile), so a run takes as long as the guest does, not the timeout.

Writes to DIR (default target/qemu-linux): NAME.console (the console as printed),
NAME.log (both streams, time-stamped), NAME.perf (perf stat) or NAME.data and
NAME.ports (per-port counts from perf script), and prints a summary as JSON.
"""

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

PERF_EVENTS = "kvm:kvm_userspace_exit,kvm:kvm_pio,kvm:kvm_mmio,kvm:kvm_msr"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd")
    p.add_argument("--cpu", default="qemu64,-cx16")
    p.add_argument("--append", default="console=ttyS0 noxsave earlyprintk=ttyS0")
    p.add_argument("--perf", choices=["stat", "record", "none"], default="stat")
    p.add_argument("--timeout", type=int, default=120)
    p.add_argument("--out", default="target/qemu-linux")
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    args = p.parse_args(argv)
    args.extra = extra
    return args


def qemu_command(args, pidfile):
    cmd = ["timeout", str(args.timeout), "qemu-system-x86_64", "-accel", "kvm",
           "-cpu", args.cpu, "-smp", "2", "-m", "512M", "-nographic", "-no-reboot",
           "-kernel", args.kernel, "-append", args.append, "-pidfile", pidfile]
    if args.initrd:
        cmd += ["-initrd", args.initrd]
    return cmd + args.extra


def perf_wrap(args, cmd, base):
    if args.perf == "stat":
        return ["perf", "stat", "-e", PERF_EVENTS, "-o", base + ".perf", "--"] + cmd
    if args.perf == "record":
        return ["perf", "record", "-q", "-e", "kvm:kvm_pio,kvm:kvm_userspace_exit",
                "-o", base + ".data", "--"] + cmd
    return cmd


class Run:
    """Both output streams of one QEMU run, time-stamped as they arrive."""

    def __init__(self, start):
        self.start = start
        self.lock = threading.Lock()
        self.lines = []  # (seconds, stream, text)
        self.error_at = None

    def reader(self, stream, name):
        for raw in iter(stream.readline, b""):
            now = time.monotonic() - self.start
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self.lock:
                self.lines.append((now, name, text))
                if name == "qemu" and "KVM internal error" in text and self.error_at is None:
                    self.error_at = now


def stop_qemu(pidfile):
    try:
        with open(pidfile) as f:
            os.kill(int(f.read().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        pass


def count_ports(base):
    """Counts kvm_pio events per (direction, port) from perf script's text."""
    text = subprocess.run(["perf", "script", "-i", base + ".data", "-F", "event,trace"],
                          capture_output=True, text=True, check=False).stdout
    ports = collections.Counter()
    for line in text.splitlines():
        m = re.search(r"kvm_pio:\s+pio_(read|write) at (0x[0-9a-f]+) size (\d+) count (\d+)", line)
        if m:
            ports[(m.group(1), m.group(2), int(m.group(3)))] += 1
    with open(base + ".ports", "w") as f:
        for (direction, port, size), n in sorted(ports.items(), key=lambda kv: -kv[1]):
            f.write(f"{n:10d} {direction:5s} {port} size {size}\n")
    return {f"{d} {p} size {s}": n for (d, p, s), n in ports.most_common()}


def perf_stat_counts(base):
    counts = {}
    with open(base + ".perf") as f:
        for line in f:
            m = re.match(r"\s*([\d,.]+)\s+(kvm:\S+)", line)
            if m:
                counts[m.group(2)] = int(m.group(1).replace(",", "").replace(".", ""))
    return counts


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, args.name)
    pidfile = base + ".pid"
    if os.path.exists(pidfile):
        os.remove(pidfile)
    cmd = perf_wrap(args, qemu_command(args, pidfile), base)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    run = Run(start)
    threads = [threading.Thread(target=run.reader, args=(proc.stdout, "console")),
               threading.Thread(target=run.reader, args=(proc.stderr, "qemu"))]
    for t in threads:
        t.start()
    stopped_by_us = False
    while proc.poll() is None:
        time.sleep(0.2)
        with run.lock:
            error_at = run.error_at
        if error_at is not None and not stopped_by_us and time.monotonic() - start > error_at + 2:
            stop_qemu(pidfile)
            stopped_by_us = True
    for t in threads:
        t.join()
    wall = time.monotonic() - start

    console = [(t, text) for t, name, text in run.lines if name == "console"]
    with open(base + ".console", "w") as f:
        f.writelines(text + "\n" for _, text in console)
    with open(base + ".log", "w") as f:
        f.writelines(f"{t:9.3f} {name:7s} {text}\n" for t, name, text in run.lines)
    summary = {
        "name": args.name,
        "command": cmd,
        "exit_status": proc.returncode,
        "wall_s": round(wall, 3),
        "console_lines": len(console),
        "first_console_line_s": round(console[0][0], 3) if console else None,
        "last_console_line_s": round(console[-1][0], 3) if console else None,
        "kvm_internal_error_s": round(run.error_at, 3) if run.error_at is not None else None,
        "stopped_after_emulation_failure": stopped_by_us,
        "last_console_lines": [text for _, text in console[-6:]],
        "qemu_messages": [text for _, name, text in run.lines if name == "qemu"][:40],
    }
    if args.perf == "stat" and os.path.exists(base + ".perf"):
        summary["perf_stat"] = perf_stat_counts(base)
    if args.perf == "record" and os.path.exists(base + ".data"):
        summary["pio_by_port"] = count_ports(base)
    with open(base + ".json", "w") as f:
        json.dump(summary, f, indent=2)
    json.dump(summary, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
