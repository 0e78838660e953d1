"""The times the README promises: ``kdistill demo`` and the README's test command, measured here.

Each is run as a user runs it (a fresh process, from the repository root) and timed by the wall
clock; the load average before each run and the CPU count come with the times, since another
process on the cores stretches both (the README's figures are from a quiet 2-core machine).

Usage: python benchmarks/setup_times.py [--skip-tests] [--repeat N]

Prints one JSON object: ``demo_seconds`` (each run), ``tests_seconds`` (each run), ``tests_summary``
(pytest's last line), ``load_average_before``, ``cpu_count`` and the command lines timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = [sys.executable, "-m", "kdistill", "demo"]
TESTS = [sys.executable, "-m", "pytest", "-q", "-n", "auto", "tests"]


def timed(command: list[str]) -> tuple[float, str, float]:
    """``(wall seconds, last line of its output, 1-minute load average before it)`` of one run."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        output = done.stdout[-2000:] + done.stderr[-2000:]
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{output}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return seconds, lines[-1] if lines else "", load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-tests", action="store_true", help="time the demo only")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (default 1)")
    args = parser.parse_args()
    result: dict = {"cpu_count": os.cpu_count(), "demo_command": " ".join(DEMO[2:]), "load_average_before": {}}
    runs = [timed(DEMO) for _ in range(args.repeat)]
    result["demo_seconds"] = [round(seconds, 1) for seconds, _, _ in runs]
    result["load_average_before"]["demo"] = [round(load, 2) for _, _, load in runs]
    if not args.skip_tests:
        result["tests_command"] = "python " + " ".join(TESTS[1:])
        runs = [timed(TESTS) for _ in range(args.repeat)]
        result["tests_seconds"] = [round(seconds, 1) for seconds, _, _ in runs]
        result["tests_summary"] = runs[-1][1]
        result["load_average_before"]["tests"] = [round(load, 2) for _, _, load in runs]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
