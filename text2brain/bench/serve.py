"""Latency of `text2brain serve` over HTTP: a warm `GET /api/map`, and concurrent requests.

Starts the real command (`python -m text2brain serve --port 0`) in a new process, waits for
it, then from this process: a few warm-up requests, `--requests` sequential `GET /api/map`
(each a new query, so no answer comes from the server's cache; one keep-alive connection, as
a browser), the same for `format=json` and the glass-brain PNG (fewer), and `--concurrent`
requests at once, each on its own connection, all of which must answer 200 with a NIfTI.
Prints the machine, the medians and the concurrent run's outcome.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

from text2brain.bench.inference import QUERIES
from text2brain.bench.machine import describe_machine

#: How long the server may take to load its models and start.
START_TIMEOUT_S = 120


def start_server(
    model: str | None, precision: str, threads: int | None
) -> tuple[subprocess.Popen, str]:
    """`text2brain serve` on a free loopback port; the process and its base URL."""
    command = [sys.executable, "-m", "text2brain", "serve", "--port", "0"]
    command += ["--log-level", "warning", "--precision", precision]
    command += ["--threads", str(threads)] if threads is not None else []
    command += ["--model", model] if model else []
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    assert server.stdout is not None
    for line in server.stdout:
        print(f"  server: {line.rstrip()}")
        if line.startswith("serving on"):
            return server, line.split()[2].rstrip("/")
        if time.monotonic() > deadline:
            break
    server.kill()
    sys.exit(f"the server did not start (exit status {server.wait()})")


def get(connection: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()


def map_path(query: str, kind: str = "nifti") -> str:
    path = f"/api/map?q={quote(query)}"
    return path + "&format=json" if kind == "json" else path


def timed(base: str, paths: list[str]) -> list[float]:
    """Seconds of each GET, in order, on one keep-alive connection (each must answer 200)."""
    address = urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    times = []
    try:
        for path in paths:
            start = time.perf_counter()
            status, _ = get(connection, path)
            times.append(time.perf_counter() - start)
            if status != 200:
                sys.exit(f"GET {path} answered {status}")
    finally:
        connection.close()
    return times


def concurrent(base: str, queries: list[str]) -> tuple[int, float, float]:
    """All queries at once, one connection each: (answered 200 with a NIfTI, wall s, max s)."""
    address = urlsplit(base)

    def one(query: str) -> tuple[bool, float]:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        start = time.perf_counter()
        try:
            status, body = get(connection, map_path(query))
            ok = status == 200 and gzip.decompress(body)[344:348] == b"n+1\x00"
        except (OSError, http.client.HTTPException):
            ok = False
        finally:
            connection.close()
        return ok, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(len(queries)) as pool:
        results = list(pool.map(one, queries))
    wall = time.perf_counter() - start
    return sum(ok for ok, _ in results), wall, max(seconds for _, seconds in results)


def summary(times: list[float]) -> str:
    ms = sorted(t * 1e3 for t in times)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return f"median {statistics.median(ms):.1f} ms (min {ms[0]:.1f}, p90 {p90:.1f}, n={len(ms)})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m text2brain.bench serve", description=__doc__)
    parser.add_argument(
        "--model", default=None, help="a `--model` of text2brain serve (default: released)"
    )
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument(
        "--threads", type=int, default=None, help="the server's --threads (default: its own)"
    )
    parser.add_argument("--requests", type=int, default=50, help="sequential GET /api/map")
    parser.add_argument("--concurrent", type=int, default=20, help="requests sent at once")
    args = parser.parse_args(argv)
    print(f"machine: {describe_machine()}")

    server, base = start_server(args.model, args.precision, args.threads)
    try:
        timed(base, [map_path(f"warm-up {i}") for i in range(5)] + ["/api/map.png?q=warm-up"])
        queries = [f"{QUERIES[i % len(QUERIES)]} {i}" for i in range(args.requests)]
        nifti = timed(base, [map_path(query) for query in queries])
        print(f"warm GET /api/map (NIfTI, .nii.gz): {summary(nifti)}")
        json_queries = [f"{query} json" for query in queries]
        paths = [map_path(query, "json") for query in json_queries]
        print(f"warm GET /api/map?format=json: {summary(timed(base, paths))}")
        pictures = [f"/api/map.png?q={quote(query)}" for query in queries[:10]]
        print(f"warm GET /api/map.png (glass brain drawn): {summary(timed(base, pictures))}")
        at_once = [f"{query} at once" for query in queries[: args.concurrent]]
        ok, wall, slowest = concurrent(base, at_once)
        print(
            f"{len(at_once)} concurrent GET /api/map: {ok}/{len(at_once)} answered 200 with a "
            f"NIfTI, all in {wall * 1e3:.0f} ms (slowest {slowest * 1e3:.0f} ms)"
        )
        if ok != len(at_once):
            sys.exit("some concurrent requests failed")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
