"""Where the CPU goes while an endpoint is under load: CPU time per process, from /proc.

    .venv/bin/python -m benchmarks.cpu_split http://127.0.0.1:8000/tiny/v1
    .venv/bin/python -m benchmarks.cpu_split URL --concurrency 32 --num-prompts 256 --top 12

Reads every process's user + system CPU time (all its threads) before and after one
``nbserve bench`` run against ``URL`` and prints, per process, the share of one core it used
over the run's wall time, with the output tokens/s the run measured. The load generator runs in
this process and is listed as such. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbserve

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times() -> dict[int, tuple[str, float]]:
    """Pid -> (name, CPU seconds so far) for every live process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        name = argv[0].decode(errors="replace") if argv and argv[0] else comm
        if name.endswith(("python", "python3")) and len(argv) > 1:
            name = " ".join(a.decode(errors="replace") for a in argv[1:3])
        out[int(entry.name)] = (name[:70], (int(fields[11]) + int(fields[12])) / TICKS)
    return out


def main(argv: list[str] | None = None) -> int:
    """Load the endpoint once and print the CPU each process used meanwhile."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint", help="OpenAI base URL, ending in /v1")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument(
        "--tokenizer", default=None, help="a folder with tokenizer.json (default: the demo model's)"
    )
    parser.add_argument("--top", type=int, default=12, help="processes to list")
    opts = parser.parse_args(argv)
    from nbserve.load import bench  # aiohttp, tokenizers: only for a run

    tokenizer = opts.tokenizer or nbserve.demo_model()
    before, t0 = cpu_times(), time.monotonic()
    result = bench.run(
        opts.endpoint,
        num_prompts=opts.num_prompts,
        concurrency=opts.concurrency,
        input_len=opts.input_len,
        output_len=opts.output_len,
        tokenizer=tokenizer,
        progress=False,
    )
    after, wall = cpu_times(), time.monotonic() - t0
    used = []
    for pid, (name, seconds) in after.items():
        if pid in before:
            label = "load generator (this process)" if pid == os.getpid() else name
            used.append((seconds - before[pid][1], pid, label))
    used.sort(reverse=True)
    total = sum(u for u, _, _ in used)
    run = result.runs[0]
    print(
        f"{opts.endpoint}: {run.output_tokens_per_s:.0f} output tok/s, TTFT p50 "
        f"{run.ttft_ms[50] or 0:.0f} ms, {run.failed} failed, {wall:.1f} s; "
        f"{total / wall * 100:.0f}% of one core used in all ({os.cpu_count()} cores)"
    )
    print(f"{'% of a core':>11} {'pid':>7}  process")
    for seconds, pid, label in used[: opts.top]:
        print(f"{seconds / wall * 100:>10.0f}% {pid:>7}  {label}")
    rest = total - sum(u for u, _, _ in used[: opts.top])
    print(f"{rest / wall * 100:>10.0f}%          (all other processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
