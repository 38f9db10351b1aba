"""Soak the server with hostile and careless clients: `gemma-export serve` in its own process on
loopback, several thousand mixed requests (completions and chat, streamed and not, streams dropped
mid-way, bad bodies) from concurrent clients while slow ones trickle their headers, hold idle
connections and vanish mid-stream. Reports the request and error counts by kind, the latency of the
well-behaved requests with and without the slow clients, the server's RSS over time (growth after
warm-up) and the engine's slots and queue at the end (all free).

    python benchmarks/soak.py ARTIFACT [--requests 3000] [--clients 16] [--slow-clients 16]

Prints a table, writes benchmarks/results/soak.json. tests/test_soak.py runs a bounded one."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60
KINDS = ("completion", "chat_stream", "dropped_stream", "bad_body")


class Server:
    """`gemma-export serve ARTIFACT` on a free loopback port, in its own process."""

    def __init__(self, artifact: Path, max_batch: int = 4, threads: int = 1, options: tuple[str, ...] = ()):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cli = Path(sys.executable).parent / "gemma-export"
        self.process = subprocess.Popen([str(cli), "serve", str(artifact), "--port", str(self.port), "--max-batch",
                                         str(max_batch), "--threads", str(threads), *options],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + TIMEOUT_S
        while True:
            with contextlib.suppress(OSError):  # not listening yet
                if self.get("/health")[0] == 200:
                    break
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the server did not start: {self.process.stderr.read()[-2000:]}")
            time.sleep(0.2)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)

    def get(self, path: str) -> tuple[int, str]:
        c = self.connection()
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def metric(self, name: str) -> float:
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()


def one_request(server: Server, kind: str, rng: random.Random) -> tuple[str, int, float]:
    """(kind, HTTP status, seconds) of one request of that kind."""
    prompt = [2, *(rng.randrange(3, 300) for _ in range(rng.randrange(1, 24)))]
    body: dict = {"prompt": prompt, "max_tokens": rng.randrange(1, 12), "temperature": 0}
    path = "/v1/completions"
    if kind in ("chat_stream", "dropped_stream"):
        path = "/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": "hi " * rng.randrange(1, 8)}], "max_tokens": 16,
                "stream": True}
    elif kind == "bad_body":
        body = rng.choice([{"prompt": prompt, "max_tokens": -1}, {"prompt": [], "max_tokens": 2},
                           {"messages": "not a list"}, {"prompt": prompt, "temperature": "hot"}])
    start = time.perf_counter()
    c = server.connection()
    try:
        c.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        r = c.getresponse()
        if kind == "dropped_stream":
            r.read(1)  # the first bytes of the stream, then the client vanishes
        else:
            r.read()
        return kind, r.status, time.perf_counter() - start
    finally:
        c.close()


def slow_client(server: Server, stop: threading.Event, rng: random.Random) -> None:
    """Until stop: trickle a request's headers a byte at a time, or hold a connection idle."""
    while not stop.is_set():
        s = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S)
        try:
            if rng.random() < 0.5:
                for byte in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n":
                    if stop.wait(0.05):
                        break
                    s.send(bytes([byte]))
            else:
                stop.wait(2.0)
        except OSError:
            pass  # the server may close a connection it finds idle: that is its right
        finally:
            s.close()


def soak(artifact: Path, requests: int, clients: int, slow_clients: int, max_batch: int = 4, seed: int = 0) -> dict:
    rng = random.Random(seed)
    server = Server(artifact, max_batch=max_batch)
    try:
        kinds = [rng.choices(KINDS, weights=(4, 3, 2, 1))[0] for _ in range(requests)]
        rss: list[tuple[float, float]] = []
        sampling = threading.Event()
        start = time.perf_counter()

        def sample() -> None:
            while not sampling.wait(0.25):
                rss.append((time.perf_counter() - start, server.rss_mib()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stop = threading.Event()
        half = requests // 2
        results = []
        with ThreadPoolExecutor(clients) as pool:  # the first half alone, the second beside the slow clients
            results += list(pool.map(lambda k: one_request(server, k, random.Random(rng.random())), kinds[:half]))
            slow = [threading.Thread(target=slow_client, args=(server, stop, random.Random(i)), daemon=True)
                    for i in range(slow_clients)]
            for t in slow:
                t.start()
            results += list(pool.map(lambda k: one_request(server, k, random.Random(rng.random())), kinds[half:]))
            stop.set()
            for t in slow:
                t.join(TIMEOUT_S)
        sampling.set()
        sampler.join()
        time.sleep(0.5)  # dropped streams end at their next token
        end = {"active_slots": server.metric("gemma_active_slots"), "queue_depth": server.metric("gemma_queue_depth")}
    finally:
        server.close()
    return summary(results, half, rss, end, time.perf_counter() - start)


def summary(results: list[tuple[str, int, float]], half: int, rss: list[tuple[float, float]], end: dict,
            seconds: float) -> dict:
    by_kind = {}
    for kind in KINDS:
        mine = [(status, s) for k, status, s in results if k == kind]
        by_kind[kind] = {"requests": len(mine), "statuses": dict(sorted(
            {str(st): sum(1 for x, _ in mine if x == st) for st, _ in mine}.items()))}

    def p50(part) -> float:
        times = [s for k, status, s in part if k == "completion" and status == 200]
        return statistics.median(times) if times else float("nan")

    warm = [m for t, m in rss if t >= rss[len(rss) // 5][0]] if rss else []
    return {"requests": len(results), "seconds": seconds, "by_kind": by_kind,
            "server_errors": sum(1 for _, status, _ in results if status >= 500),
            "completion_p50_s": {"alone": p50(results[:half]), "beside_slow_clients": p50(results[half:])},
            "rss_mib": {"first": rss[0][1] if rss else None, "after_warm_up": warm[0] if warm else None,
                        "last": rss[-1][1] if rss else None, "max": max(m for _, m in rss) if rss else None,
                        "curve": [(round(t, 2), round(m, 1)) for t, m in rss[:: max(1, len(rss) // 40)]]},
            "end": end}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--slow-clients", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()
    result = soak(args.artifact, args.requests, args.clients, args.slow_clients)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{result['requests']} requests in {result['seconds']:.0f} s, {result['server_errors']} server errors")
    print("kind | requests | statuses")
    for kind, row in result["by_kind"].items():
        print(f"{kind} | {row['requests']} | {row['statuses']}")
    rss, p50 = result["rss_mib"], result["completion_p50_s"]
    print(f"completion p50: {p50['alone'] * 1e3:.0f} ms alone, {p50['beside_slow_clients'] * 1e3:.0f} ms beside "
          f"{args.slow_clients} slow clients")
    print(f"RSS MiB: first {rss['first']:.0f}, after warm-up {rss['after_warm_up']:.0f}, last {rss['last']:.0f}, "
          f"max {rss['max']:.0f}; at the end: {result['end']}")


if __name__ == "__main__":
    main()
