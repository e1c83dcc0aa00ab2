#!/usr/bin/env python3
"""Send an attack and benign corpus through WAF targets and count the requests each rejects.

The corpus is the HttpParamsDataset CSV (columns payload, length, attack_type, label, where
label is `norm` for benign values and `anom` for attacks). The script takes PER_CLASS values of
each label, spread evenly over the file so that every attack type is sampled, and sends each
value as the query parameter `q` of one GET request, on one keep-alive connection per target.

Prints one JSON object per target:
  {"target": NAME, "attacks": N, "attacks_blocked": N, "benign": N, "benign_blocked": N,
   "other_status": {"STATUS": N}}
where blocked means status 403. A status other than 200 and 403 is counted in other_status.
"""

import argparse
import collections
import csv
import http.client
import json
import sys
import urllib.parse


def sample(rows, count):
    """Return COUNT rows spread evenly over ROWS, in file order."""
    if len(rows) <= count:
        return rows
    step = len(rows) / count
    return [rows[int(i * step)] for i in range(count)]


def load_corpus(path, per_class):
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    attacks = [row["payload"] for row in rows if row["label"] == "anom"]
    benign = [row["payload"] for row in rows if row["label"] == "norm"]
    return sample(attacks, per_class), sample(benign, per_class)


class Target:
    """One keep-alive HTTP/1.1 connection to a target, reopened when the server closes it."""

    def __init__(self, url, timeout):
        parsed = urllib.parse.urlsplit(url)
        if parsed.hostname != "127.0.0.1":
            raise SystemExit(f"error: {url}: only targets on 127.0.0.1 are allowed")
        self.host, self.port = parsed.hostname, parsed.port
        self.path = parsed.path or "/"
        self.timeout = timeout
        self.connection = None

    def status(self, value):
        target = f"{self.path}?q={urllib.parse.quote(value, safe='')}"
        for attempt in range(2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.connection.request("GET", target)
                response = self.connection.getresponse()
                response.read()
                if response.will_close:
                    self.connection.close()
                    self.connection = None
                return response.status
            except (http.client.HTTPException, ConnectionError):
                self.connection.close()
                self.connection = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", required=True, help="HttpParamsDataset payload CSV file")
    parser.add_argument("--per-class", type=int, default=500, help="values per label (default 500)")
    parser.add_argument("--timeout", type=float, default=10, help="seconds per request (default 10)")
    parser.add_argument("--target", action="append", required=True, metavar="NAME=URL",
                        help="target name and URL of the path to send requests to; repeatable")
    arguments = parser.parse_args()

    attacks, benign = load_corpus(arguments.csv, arguments.per_class)
    for spec in arguments.target:
        name, _, url = spec.partition("=")
        target = Target(url, arguments.timeout)
        counts = {"target": name, "attacks": len(attacks), "attacks_blocked": 0,
                  "benign": len(benign), "benign_blocked": 0}
        other = collections.Counter()
        for key, values in (("attacks_blocked", attacks), ("benign_blocked", benign)):
            for value in values:
                status = target.status(value)
                if status == 403:
                    counts[key] += 1
                elif status != 200:
                    other[str(status)] += 1
        counts["other_status"] = dict(other)
        print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
