"""A shared machine, reproducibly: load the CPU on and off (busy BUSY s, idle IDLE s) for
DURATION s, as another user's job would, while something else is measured.

    python -m accbench.benchmarks.onoff_load --busy 30 --idle 30 --duration 900 &
    accbench run ... ; kill %1

Each busy phase runs ``--procs`` spinning processes; the phase changes are printed with
their times, so a run's rows can be lined up with the load afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import signal
import sys
import time


def _spin(until: float) -> None:
    x = 0
    while time.time() < until:
        x += 1


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m accbench.benchmarks.onoff_load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busy", type=float, default=30.0, help="seconds of load per cycle")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds without load per cycle")
    ap.add_argument("--duration", type=float, default=600.0, help="total seconds, then exit")
    ap.add_argument("--procs", type=int, default=1, help="spinning processes while busy")
    a = ap.parse_args(argv)
    if a.busy <= 0 or a.idle < 0 or a.duration <= 0 or a.procs < 1:
        ap.error("--busy and --duration must be positive, --idle >= 0, --procs >= 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    end = time.time() + a.duration
    ctx = mp.get_context("fork")
    while time.time() < end:
        until = min(end, time.time() + a.busy)
        print(f"{time.strftime('%H:%M:%S')} busy ({a.procs} process(es)) for {until - time.time():.0f} s", flush=True)
        procs = [ctx.Process(target=_spin, args=(until,), daemon=True) for _ in range(a.procs)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if time.time() >= end:
            break
        print(f"{time.strftime('%H:%M:%S')} idle for {min(a.idle, end - time.time()):.0f} s", flush=True)
        time.sleep(max(0.0, min(a.idle, end - time.time())))


if __name__ == "__main__":
    main()
