"""Run every ``benchmarks/bench_*.py`` and write ``benchmarks/results.md``.

Each script runs in its own process, one after the other (so they do not compete for
the CPU), with the arguments given here passed on (``--device cuda``). A script may
report result rows by appending JSON lines to the file named by the environment
variable ``LOWRANK_BENCH_JSON``, each ``{"benchmark", "metric", "value", "unit",
"target", "ok"}``; those rows form the results table. Every script's own output is
kept below the table, verbatim, so scripts that print their own tables are reported too.

    python benchmarks/run_all.py [--device cuda] [--only trainer,layers] [--timeout 1200]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover(only: list[str] | None) -> list[Path]:
    """The benchmark scripts, by name; ``only`` filters by the part after ``bench_``."""
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in only]
    return scripts


def run_one(script: Path, extra: list[str], timeout: float) -> dict:
    """Run ``script``; its exit code, seconds, output and JSON rows."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as rows_file:
        env = {**os.environ, "LOWRANK_BENCH_JSON": rows_file.name}
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, str(script), *extra], capture_output=True, text=True,
                               env=env, timeout=timeout, cwd=HERE.parent)
            code, out = p.returncode, p.stdout + (f"\n[stderr]\n{p.stderr}" if p.stderr.strip() else "")
        except subprocess.TimeoutExpired as e:
            code, out = -1, f"{e.stdout or ''}\n[timed out after {timeout:.0f} s]"
            if isinstance(out, bytes):
                out = out.decode(errors="replace")
        seconds = time.perf_counter() - t0
        rows = [json.loads(line) for line in Path(rows_file.name).read_text().splitlines() if line.strip()]
    return {"script": script.name, "code": code, "seconds": seconds, "output": out.rstrip(), "rows": rows,
            "load": load}


def _value(r: dict) -> str:
    v = r.get("value")
    if isinstance(v, float):
        v = f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v} {r.get('unit') or ''}".strip()


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    import torch

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    dev = args.device
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev += f" ({torch.cuda.get_device_name(0)})"
    lines = ["# Benchmark results", "",
             f"{when}; `python benchmarks/run_all.py{' ' + ' '.join(args.passthrough) if args.passthrough else ''}`; "
             f"device {dev}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
             f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}.", "",
             "Ratios are measured within one run of each script (variants interleaved); on a shared "
             "CPU only ratios are meaningful, absolute times only on a GPU. The load average at the start "
             "of each script is given with its output: other work on the machine makes every figure noisier.", "",
             "| script | benchmark | metric | value | target | met |", "| --- | --- | --- | ---: | --- | --- |"]
    for res in results:
        status = "ok" if res["code"] == 0 else ("timed out" if res["code"] == -1 else f"exit {res['code']}")
        if not res["rows"]:
            lines.append(f"| {res['script']} | (see output below) | {status}, {res['seconds']:.0f} s | | | |")
        for r in res["rows"]:
            met = "" if r.get("ok") is None else ("yes" if r["ok"] else "**no**")
            lines.append(f"| {res['script']} | {r.get('benchmark', '')} | {r.get('metric', '')} | {_value(r)} | "
                         f"{r.get('target') or ''} | {met} |")
    for res in results:
        lines += ["", f"## {res['script']} ({res['seconds']:.0f} s, exit {res['code']}, "
                      f"1-minute load average at start {res['load']:.1f})", "", "```",
                  res["output"], "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="passed to every script (cpu, cuda ...)")
    ap.add_argument("--only", default=None, help="comma-separated names, e.g. trainer,layers")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per script (default 1800)")
    ap.add_argument("--out", default=str(HERE / "results.md"), help="Markdown file to write")
    args = ap.parse_args()
    args.passthrough = ["--device", args.device] if args.device != "cpu" else []
    scripts = discover(args.only.split(",") if args.only else None)
    if not scripts:
        print("no benchmark scripts found", file=sys.stderr)
        return 2
    results = []
    for s in scripts:
        print(f"running {s.name} ...", flush=True)
        res = run_one(s, args.passthrough, args.timeout)
        print(f"  exit {res['code']} in {res['seconds']:.0f} s, {len(res['rows'])} result rows", flush=True)
        results.append(res)
    Path(args.out).write_text(markdown(results, args))
    print(f"wrote {args.out}")
    return 0 if all(r["code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
