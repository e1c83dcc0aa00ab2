#!/usr/bin/env python3
"""Open many idle HTTP/1.1 keep-alive connections to a loopback server and report its memory.

Each connection sends one GET, reads the whole response and then stays open without
further traffic. Once all connections are open (or have failed), the script waits
--settle seconds, reads VmRSS and the open file descriptor count of each --pid from
/proc and sums them, prints one JSON object on stdout, closes every connection and exits.
It exits 1 when any connection failed, and 2 when the whole run exceeded --timeout.
"""

import argparse
import asyncio
import ipaddress
import json
import os
import sys
import time
from collections import Counter


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address of the server")
    parser.add_argument("--port", type=int, required=True, help="TCP port of the server")
    parser.add_argument("--path", default="/", help="request path for the one request per connection")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="extra request header; may be repeated",
    )
    parser.add_argument("--connections", type=int, default=10_000, help="connections to open")
    parser.add_argument(
        "--concurrency", type=int, default=256, help="maximum connections being opened at the same time"
    )
    parser.add_argument(
        "--pid",
        type=int,
        action="append",
        required=True,
        help="process whose memory is reported; may be repeated, and the figures are summed",
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait after the last connection opens"
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="maximum seconds for the whole run")
    args = parser.parse_args()

    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error(f"--host {args.host} is not a loopback address; this client only targets this machine")
    if args.connections < 1 or args.concurrency < 1:
        parser.error("--connections and --concurrency must be at least 1")
    return args


def read_status_value(pid, field):
    """Return the value of FIELD (such as VmRSS) from /proc/PID/status, in kB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(f"{field} not found in /proc/{pid}/status")


def count_open_files(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


async def open_one(args, request, limit, open_writers, failures):
    """Open one connection, send the request and read the response. Keep the writer on success."""
    async with limit:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(args.host, args.port)
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split()[1])
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            if status != 200:
                failures[f"status {status}"] += 1
                writer.close()
                return
            open_writers.append(writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as error:
            failures[type(error).__name__] += 1
            if writer is not None:
                writer.close()


async def run(args):
    headers = "".join(f"{header.strip()}\r\n" for header in args.header)
    request = f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n{headers}\r\n".encode("latin-1")
    limit = asyncio.Semaphore(args.concurrency)
    open_writers = []
    failures = Counter()
    started = time.monotonic()
    rss_before_kib = sum(read_status_value(pid, "VmRSS") for pid in args.pid)
    await asyncio.gather(
        *(open_one(args, request, limit, open_writers, failures) for _ in range(args.connections))
    )
    open_seconds = time.monotonic() - started
    await asyncio.sleep(args.settle)
    report = {
        "requested": args.connections,
        "open": len(open_writers),
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "open_seconds": round(open_seconds, 2),
        "rss_before_kib": rss_before_kib,
        "rss_kib": sum(read_status_value(pid, "VmRSS") for pid in args.pid),
        "server_open_files": sum(count_open_files(pid) for pid in args.pid),
    }
    for writer in open_writers:
        writer.close()
    return report


def main():
    args = parse_args()
    try:
        report = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except asyncio.TimeoutError:
        print(f"error: idle connection run timed out after {args.timeout} s", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0 if report["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
