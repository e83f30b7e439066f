"""Wait until a Kafka broker answers a real protocol request (not just an open port).

With aiokafka importable: a Metadata request through AIOKafkaAdminClient that must list
at least one broker and a controller. Without it (e.g. before the venv exists): a plain
ApiVersions v0 request over a socket, using only the standard library.

Exit 0 when ready, 1 on timeout, 2 if the process given by --pid died meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import struct
import sys
import time


async def probe_aiokafka(bootstrap: str, timeout_s: float) -> str:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(1000, int(timeout_s * 1000))
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        info = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    finally:
        await admin.close()
    brokers = info.get("brokers") or []
    if not brokers or info.get("controller_id", -1) < 0:
        raise RuntimeError(f"metadata not complete yet: {info}")
    return f"{len(brokers)} broker(s), controller {info['controller_id']}"


def probe_plain(bootstrap: str, timeout_s: float) -> str:
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    client_id = b"wait_ready"
    # Request header v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id.
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _read(sock, 4))[0]
        resp = _read(sock, size)
    correlation_id, error_code, n_apis = struct.unpack(">ihi", resp[:10])
    if correlation_id != 7 or error_code != 0 or n_apis <= 0:
        raise RuntimeError(f"bad ApiVersions answer: error_code={error_code}")
    return f"ApiVersions ok ({n_apis} APIs)"


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return buf


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--timeout", type=float, default=90.0, help="overall seconds (default 90)")
    ap.add_argument("--pid", type=int, help="give up early if this process exits")
    args = ap.parse_args()

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connections while waiting
    try:
        import aiokafka  # noqa: F401

        def probe(t: float) -> str:
            return asyncio.run(probe_aiokafka(args.bootstrap, t))
    except ImportError:

        def probe(t: float) -> str:
            return probe_plain(args.bootstrap, t)

    start = time.monotonic()
    deadline = start + args.timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        if args.pid and not pid_alive(args.pid):
            print(f"kafka: broker process {args.pid} exited", file=sys.stderr)
            return 2
        try:
            what = probe(min(5.0, max(0.5, deadline - time.monotonic())))
            print(f"kafka: ready at {args.bootstrap}: {what} ({time.monotonic() - start:.1f}s)")
            return 0
        except Exception as exc:  # not ready yet: refused, timeout, incomplete metadata
            last_err = exc
            time.sleep(0.5)
    print(f"kafka: not ready after {args.timeout:.0f}s: {last_err!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
