"""Load-test ``pcamlab serve`` on loopback: N requests, C at a time, latency percentiles and errors.

Starts ``pcamlab serve MODEL`` in a child process on 127.0.0.1 and a free port (the server's own
defaults: 2 inference workers, torch threads = cores // workers), waits for ``/health``, sends
``--warmup`` requests it does not count, then ``--requests`` ``POST /v1/predict`` requests from
``--concurrency`` concurrent clients (one asyncio httpx client, keep-alive connections), each with
``--patches`` real PCam patches (the JPEG files of the shipped sample, as they are on disk). It
reports requests/s, patches/s, latency p50/p90/p99/max, every non-200 answer or transport error, the
server's CPU time per request, the CPU model and the load average before and after. The client runs on
the same machine and competes with the server for the cores: the figures are a floor.

Usage:
    python scripts/bench_serve.py runs/demo/best.safetensors                 # 2,000 requests, 8 at a time
    python scripts/bench_serve.py model.onnx --requests 500 --patches 16 --json bench_serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def load(url: str, payloads: list[list[tuple[str, bytes]]], requests: int, concurrency: int,
               warmup: int) -> tuple[list[float], dict[str, int], float]:
    """Send ``warmup`` then ``requests`` POSTs with ``concurrency`` in flight; latencies (s), errors, wall (s)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        latencies: list[float] = []
        errors: dict[str, int] = {}

        async def one(index: int, record: bool) -> None:
            files = [("files", (name, data, "image/jpeg")) for name, data in payloads[index % len(payloads)]]
            started = time.perf_counter()
            try:
                response = await client.post("/v1/predict", files=files)
                outcome = None if response.status_code == 200 else f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                outcome = type(error).__name__
            if record:
                latencies.append(time.perf_counter() - started)
                if outcome:
                    errors[outcome] = errors.get(outcome, 0) + 1

        async def run(total: int, record: bool) -> None:
            counter = iter(range(total))

            async def worker() -> None:
                for index in counter:
                    await one(index, record)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await run(warmup, record=False)
        started = time.perf_counter()
        await run(requests, record=True)
        return latencies, errors, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="checkpoint .safetensors or exported .onnx / .pt")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--patches", type=int, default=1, help="patches per request")
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--serve-args", default="", help="extra arguments for pcamlab serve, e.g. '--workers 1'")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()

    from pcamlab.data import sample_root

    files = sorted(sample_root().glob("valid/*/*.jpg"))
    payloads = [[(path.name, path.read_bytes()) for path in files[start:start + args.patches]]
                for start in range(0, len(files) - args.patches + 1, args.patches)]
    port = free_port()
    command = [sys.executable, "-m", "pcamlab", "serve", args.model, "--port", str(port), *args.serve_args.split()]
    load_before = os.getloadavg()
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print(server.stdout.read() if server.stdout else "", file=sys.stderr)
                print("bench_serve: the server did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        card = httpx.get(url + "/v1/model").json()
        server_cpu_before = process_cpu_seconds(server.pid)
        client_before = resource.getrusage(resource.RUSAGE_SELF)
        latencies, errors, wall = asyncio.run(load(url, payloads, args.requests, args.concurrency, args.warmup))
        client_after = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = process_cpu_seconds(server.pid) - server_cpu_before
        pool = httpx.get(url + "/health").json()["pool"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    load_after = os.getloadavg()
    milliseconds = [1000 * value for value in latencies]
    client_cpu = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    figures = {
        "model": f"{card['file']} ({card['architecture']['name']}, {card['format']})",
        "requests": len(latencies),
        "concurrency": args.concurrency,
        "patches_per_request": args.patches,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "wall_seconds": round(wall, 3),
        "requests_per_second": round(len(latencies) / wall, 1),
        "patches_per_second": round(len(latencies) * args.patches / wall, 1),
        "latency_ms": {"p50": round(statistics.median(milliseconds), 2), "p90": round(percentile(milliseconds, 90), 2),
                       "p99": round(percentile(milliseconds, 99), 2), "max": round(max(milliseconds), 2)},
        "server_cpu_ms_per_request": round(1000 * server_cpu / len(latencies), 2),
        "client_cpu_seconds": round(client_cpu, 2),
        "server_pool": pool,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in load_after],
    }
    latency = figures["latency_ms"]
    print(f"{figures['model']}: {figures['requests']} requests x {args.patches} patch(es), {args.concurrency} concurrent, "
          f"loopback")
    print(f"  {figures['requests_per_second']} requests/s ({figures['patches_per_second']} patches/s), latency p50 "
          f"{latency['p50']} ms, p90 {latency['p90']} ms, p99 {latency['p99']} ms, max {latency['max']} ms; "
          f"errors {figures['errors']} {errors or ''}")
    print(f"  server CPU {figures['server_cpu_ms_per_request']} ms/request, client CPU {figures['client_cpu_seconds']} s; "
          f"{figures['cpu']}, {figures['cores']} cores; load average before {figures['load_average_before']}, "
          f"after {figures['load_average_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
