"""Bounded HTTP load against a local server, counting every single failure.

The fork bug makes only a handful of early requests fail, so a load run must report each error
(not a rate) and must never hang: each request has a timeout and the run has a deadline.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

NOT_SENT = "not sent: deadline"


@dataclass
class LoadResult:
    requests: int
    ok: list[dict[str, Any]] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)
    """JSON bodies of the HTTP error responses (the app's error handler says which process)."""
    transport_failures: int = 0
    """Failures without any HTTP response: connection refused/reset, timeout (e.g. a killed
    worker's requests in flight). Also counted in ``failures``."""

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def _address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1" or parts.port is None:
        raise ValueError(f"only http://127.0.0.1:PORT is supported, got {base_url!r}")
    return parts.hostname, parts.port


def _request(host: str, port: int, path: str, timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def get_json(base_url: str, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    """(status, parsed JSON body, or the text if not JSON); transport errors raise."""
    host, port = _address(base_url)
    status, body = _request(host, port, path, timeout)
    return status, _decode(body)


def _one(host: str, port: int, path: str, timeout: float) -> tuple[dict[str, Any] | None, str]:
    """(JSON body, "") for a 200 with a JSON object, else (None, failure message)."""
    data, error, _body, _transport = _one_detailed(host, port, path, timeout)
    return data, error


def _one_detailed(
    host: str, port: int, path: str, timeout: float
) -> tuple[dict[str, Any] | None, str, dict[str, Any] | None, bool]:
    """Like _one, plus the error response's JSON body and whether no response came at all."""
    try:
        status, body = _request(host, port, path, timeout)
    except Exception as e:  # every transport error is a counted failure, never a crash
        return None, str(e) or type(e).__name__, None, True
    data = _decode(body)
    if status == 200:
        if isinstance(data, dict):
            return data, "", None, False
        return None, "HTTP 200 without a JSON object", None, False
    if isinstance(data, dict) and "error" in data:
        return None, str(data["error"]), data, False
    return None, f"HTTP {status}", None, False


def run_load(
    base_url: str,
    path: str,
    *,
    total: int,
    concurrency: int,
    timeout: float = 10.0,
    deadline: float = 120.0,
) -> LoadResult:
    """Send ``total`` GETs, ``concurrency`` at a time; every request ends up in ok or failures.

    No request starts after ``deadline`` seconds; those are counted as ``NOT_SENT`` failures.
    """
    host, port = _address(base_url)
    result = LoadResult(requests=total)
    lock = threading.Lock()
    next_index = 0
    started = time.monotonic()

    def worker() -> None:
        nonlocal next_index
        while True:
            with lock:
                if next_index >= total or time.monotonic() - started > deadline:
                    return
                next_index += 1
            data, error, body, transport = _one_detailed(host, port, path, timeout)
            with lock:
                if data is not None:
                    result.ok.append(data)
                else:
                    result.failures[error] += 1
                    result.transport_failures += transport
                    if body is not None:
                        result.errors.append(body)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for future in [pool.submit(worker) for _ in range(max(1, concurrency))]:
            future.result()
    if next_index < total:
        result.failures[NOT_SENT] += total - next_index
    result.seconds = time.monotonic() - started
    return result
