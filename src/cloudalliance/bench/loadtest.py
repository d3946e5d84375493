"""A closed-loop load benchmark of the prediction API (``cloudalliance bench api``).

At each concurrency C, C clients each keep one HTTP/1.1 keep-alive connection and send the same POST again as
soon as the previous answer is in (a *closed loop*: offered load follows the server's speed, like a fixed pool of
users), for ``seconds`` or ``max_requests``, whichever comes first. Per level it reports requests/s, latency
percentiles and the errors counted per HTTP status (or per transport failure).

The client is plain asyncio streams (no new dependency), speaking just enough HTTP/1.1: ``Content-Length`` or
``chunked`` answers (RFC 9112 section 6), a reconnect when the server says ``Connection: close``, TLS for https.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import time
import urllib.parse
from typing import Any, Sequence

import numpy as np

from ..api.calls import ApiClientError
from ..api.calls import image_payload
from ..records import Record

MAX_SECONDS = 600.0
MAX_CONCURRENCY = 1024
MAX_REQUESTS_PER_LEVEL = 1_000_000


@dataclasses.dataclass
class LevelResult:
    """One concurrency level: every answer's latency and status (``"timeout"``/``"connection"`` for failures)."""

    concurrency: int
    elapsed_s: float
    latencies_s: list[float]
    statuses: list[str]

    @property
    def requests(self) -> int:
        return len(self.statuses)

    @property
    def ok(self) -> int:
        return sum(1 for s in self.statuses if s == "200")

    @property
    def errors(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.statuses:
            if s != "200":
                counts[s] = counts.get(s, 0) + 1
        return dict(sorted(counts.items()))

    def percentile_ms(self, q: float) -> float:
        ok = [t for t, s in zip(self.latencies_s, self.statuses) if s == "200"]
        return float(np.percentile(ok, q)) * 1000 if ok else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "requests": self.requests, "ok": self.ok,
                "requests_per_s": round(self.ok / self.elapsed_s, 3) if self.elapsed_s > 0 else 0.0,
                "p50_ms": round(self.percentile_ms(50), 3), "p95_ms": round(self.percentile_ms(95), 3),
                "p99_ms": round(self.percentile_ms(99), 3), "errors": self.errors,
                "elapsed_s": round(self.elapsed_s, 3)}


@dataclasses.dataclass
class _Target:
    scheme: str
    host: str
    port: int
    path: str
    netloc: str

    @classmethod
    def parse(cls, url: str) -> "_Target":
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--api must be an http(s) URL, not {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"--api has an invalid port: {url!r}") from None
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        return cls(parts.scheme, parts.hostname, port, path, parts.netloc)


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends one request at a time."""

    def __init__(self, target: _Target, request: bytes):
        self.target, self.request = target, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        ctx = ssl.create_default_context() if self.target.scheme == "https" else None
        self.reader, self.writer = await asyncio.open_connection(
            self.target.host, self.target.port, ssl=ctx, server_hostname=self.target.host if ctx else None)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
        self.reader = self.writer = None

    async def post(self) -> tuple[int, bytes]:
        if self.writer is None:
            await self._open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")  # no trailers expected; the empty line
                    break
                body += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
        else:
            body = await self.reader.read()
            headers["connection"] = "close"
        connection = headers.get("connection", "").lower()
        # RFC 9112 section 9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive"
        if connection == "close" or (lines[0].startswith("HTTP/1.0") and connection != "keep-alive"):
            await self.close()
        return status, body


def build_request(target: _Target, body: bytes, content_type: str = "application/json") -> bytes:
    head = (f"POST {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\nUser-Agent: cloudalliance-bench/1\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nAccept: application/json\r\n"
            "Connection: keep-alive\r\n\r\n")
    return head.encode("latin-1") + body


async def _worker(target: _Target, request: bytes, deadline: float, budget: list[int], timeout: float,
                  latencies: list[float], statuses: list[str]) -> None:
    conn = _Connection(target, request)
    try:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            t0 = time.perf_counter()
            try:
                status, _ = await asyncio.wait_for(conn.post(), min(timeout, max(0.001, deadline + timeout
                                                                               - time.monotonic())))
                label = str(status)
            except asyncio.TimeoutError:
                label = "timeout"
                await conn.close()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
                label = "connection"
                await conn.close()
            latencies.append(time.perf_counter() - t0)
            statuses.append(label)
            if label == "connection":
                await asyncio.sleep(0.05)  # a refused connection fails at once: do not spin
    finally:
        await conn.close()


async def _level(target: _Target, request: bytes, concurrency: int, seconds: float, max_requests: int,
                 timeout: float) -> LevelResult:
    latencies: list[float] = []
    statuses: list[str] = []
    budget = [max_requests]
    t0 = time.monotonic()
    deadline = t0 + seconds
    await asyncio.gather(*(_worker(target, request, deadline, budget, timeout, latencies, statuses)
                           for _ in range(concurrency)))
    return LevelResult(concurrency, time.monotonic() - t0, latencies, statuses)


async def _probe(target: _Target, request: bytes, timeout: float) -> int:
    conn = _Connection(target, request)
    try:
        status, body = await asyncio.wait_for(conn.post(), timeout)
    finally:
        await conn.close()
    return status


def run_load(api_url: str, body: bytes, concurrency: Sequence[int] = (1, 4, 16), seconds: float = 20.0,
             max_requests: int = 100_000, timeout: float = 30.0, warmup: int = 2,
             content_type: str = "application/json", progress: bool = True) -> list[LevelResult]:
    """Closed-loop load at each concurrency in turn (bounded in time and in count); raises if the API is down."""
    target = _Target.parse(api_url)
    levels = [int(c) for c in concurrency]
    if not levels or any(c < 1 or c > MAX_CONCURRENCY for c in levels):
        raise ValueError(f"concurrency must be between 1 and {MAX_CONCURRENCY}, not {list(concurrency)}")
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be > 0 and at most {MAX_SECONDS:.0f}, not {seconds}")
    if not 1 <= max_requests <= MAX_REQUESTS_PER_LEVEL:
        raise ValueError(f"max_requests must be between 1 and {MAX_REQUESTS_PER_LEVEL}, not {max_requests}")
    if not body:
        raise ValueError("the request body is empty")
    request = build_request(target, body, content_type)

    async def main() -> list[LevelResult]:
        try:
            status = await _probe(target, request, min(timeout, 30.0))
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            raise ApiClientError(f"The API at {api_url} is not reachable: {type(exc).__name__}: {exc}") from exc
        if status != 200:
            raise ApiClientError(f"The API at {api_url} answered HTTP {status} to the benchmark's request; "
                                 "check the payload with `cloudalliance predict` first")
        for _ in range(max(0, warmup - 1)):
            await _probe(target, request, timeout)
        results = []
        for c in levels:
            result = await _level(target, request, c, seconds, max_requests, timeout)
            if progress:
                print(format_row(result.to_dict()), flush=True)
            results.append(result)
        return results

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    # inside a running loop (a Jupyter kernel): asyncio.run refuses, so give the benchmark its own thread and loop
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bench-api") as pool:
        return pool.submit(asyncio.run, main()).result()


def format_row(d: dict[str, Any]) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in d["errors"].items()) or "none"
    return (f"{d['concurrency']:>11} {d['requests']:>8} {d['requests_per_s']:>8.1f} {d['p50_ms']:>8.1f} "
            f"{d['p95_ms']:>8.1f} {d['p99_ms']:>8.1f}  {errors}")


def levels_table(record) -> list[dict[str, Any]]:
    """A load record's levels as a table a reader takes in: units in the column names, errors as one text."""
    return [{"concurrency": d["concurrency"], "requests": d["requests"], "requests/s": round(d["requests_per_s"], 1),
             "p50 (ms)": round(d["p50_ms"], 1), "p95 (ms)": round(d["p95_ms"], 1), "p99 (ms)": round(d["p99_ms"], 1),
             "errors": ", ".join(f"{k}: {v}" for k, v in d["errors"].items()) or "none"}
            for d in record.metrics["levels"]]


HEADER = f"{'concurrency':>11} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  errors"


def load_record(results: Sequence[LevelResult], backend: str, api_url: str, payload: str, payload_bytes: int,
                seconds: float, name: str = "load"):
    """The api stage's ``load`` record: one entry per concurrency level (``bench.figure_api_load`` draws it)."""

    rows = [r.to_dict() for r in results]
    return Record(
        stage="api", name=name, backend=backend, instance="local gateway" if backend == "local" else "API Gateway",
        timings={"elapsed_s": [r["elapsed_s"] for r in rows], "total_s": round(sum(r.elapsed_s for r in results), 3)},
        sizes={"concurrency": [r["concurrency"] for r in rows], "requests": [r["requests"] for r in rows],
               "ok": [r["ok"] for r in rows], "payload_bytes": payload_bytes},
        metrics={"levels": rows, "best_requests_per_s": max((r["requests_per_s"] for r in rows), default=0.0)},
        config={"api_url": api_url, "payload": payload, "seconds_per_level": seconds, "closed_loop": True,
                "client": "asyncio HTTP/1.1 keep-alive, one connection per concurrent client"},
    )


def payload_from_args(payload_file: str | None, image: str | None, image_url: str | None) -> tuple[bytes, str]:
    """The request body and a short description of it, from exactly one of the CLI's three sources."""
    from pathlib import Path

    given = [x for x in (payload_file, image, image_url) if x]
    if len(given) != 1:
        raise ValueError("give exactly one of --payload-file, --image or --image-url")
    if payload_file:
        data = Path(payload_file).read_bytes()
        try:
            json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"--payload-file {payload_file} is not JSON (send {{\"url\"}} or {{\"image\"}})") from None
        return data, f"file {Path(payload_file).name}"
    if image:
        return json.dumps(image_payload(image)).encode(), f"base64 of {Path(image).name}"
    return json.dumps({"url": image_url}).encode(), f"url {image_url}"
