"""A throwaway Redis (Debian's redis-server) on 127.0.0.1, for Celery's broker and RQ.

No persistence (``--save '' --appendonly no``) and its own dir, so nothing outlives the test
session; stopped by its pid.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .process import ServerProcess, free_port, start_process


@dataclass
class RedisServer:
    server: ServerProcess
    port: int
    root: Path

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def command(self, *words: str) -> bytes:
        """One inline command, raw reply: enough for PING and FLUSHALL without a client."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall((" ".join(words) + "\r\n").encode())
            return s.recv(4096)


def find_redis_server() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None
    )
    if found is None:
        raise RuntimeError("redis-server not found: run scripts/setup.sh (installs redis-server)")
    return found


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(timeout: float = 30) -> RedisServer:
    root = Path(tempfile.mkdtemp(prefix="dbfix-redis-"))
    last: Exception | None = None
    for _ in range(5):  # a port picked free may be taken before redis binds it
        port = free_port()
        cmd = [
            find_redis_server(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(root),
        ]  # fmt: skip
        try:
            server = start_process(
                cmd,
                log_path=root / f"redis-{port}.log",
                ready=lambda _server, p=port: _pong(p),
                timeout=timeout,
            )
        except RuntimeError as e:
            last = e
            continue
        return RedisServer(server, port, root)
    raise RuntimeError(f"redis-server did not start: {last}")


def stop_redis(redis: RedisServer) -> None:
    redis.server.stop()
    shutil.rmtree(redis.root, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    redis = start_redis()
    try:
        yield redis
    finally:
        stop_redis(redis)
