#!/usr/bin/env python3
"""Build the labelled corpus of request values that trains and tests the WAF model.

Attack values come from the datasets directory, `$PORTCULLIS_SHARED_DIR/datasets` (default
`../shared` relative to the repository root): HttpParamsDataset, libinjection's sample data and
the PayloadsAllTheThings lists. Benign values come from text installed on a Debian machine:
rendered man pages, `/usr/share/doc`, and the READMEs and docs of the crates in
`~/.cargo/registry/src`. The JSON, base64, JWT, URL, email and name values derived from that
text are benign too, as are the benign HttpParamsDataset values and libinjection's list of
known false positives.

Every value belongs to a source file, and a whole source file goes to either the training or the
test split, chosen by a keyed hash of its path (see `split_of`). Each attack family with two or
more files has at least one file in the test split. Where a family or a benign list is one file
(HttpParamsDataset, libinjection's false positives, a single PayloadsAllTheThings list), each
line is its own source. Test attack values that also occur in the training split are dropped,
so the test split measures values never seen in training.

Writes `train.jsonl` and `test.jsonl` to the output directory (one JSON object per line:
`label` 1 for an attack and 0 for benign, `family`, `source`, `value`) and `sources.txt`, the
list of benign source files read. `benign-sources.txt` beside this script records the sources
that the shipped model was trained on. The script warns when the machine's sources differ, and
`--record` rewrites that file. Only the Python standard library is used.
"""

import argparse
import base64
import csv
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
RECORDED_SOURCES = Path(__file__).resolve().parent / "benign-sources.txt"
SEED = "portcullis-waf-model-1"
# Fraction of source files, in percent, that go to the test split.
TEST_PERCENT = 25
# Values taken from one benign text file at most, so large manuals do not dominate.
MAX_VALUES_PER_DOC = 60
# Attack values taken from one file of the training split at most (dotdotpwn alone has 21,000).
MAX_TRAIN_VALUES_PER_ATTACK_FILE = 3000
MAX_VALUE_LENGTH = 1000
MAN_SECTIONS = ("man1", "man5", "man7", "man8")
MAN_PAGES = 1500
# Pages taken at most from one family of generated pages, named by the part of the file name
# before the first `_` (the Google Cloud CLI alone installs 16,000 `gcloud_*` pages).
MAN_PAGES_PER_PREFIX = 20

PAYLOAD_FAMILIES = {
    "SQL_Injection": "sqli",
    "XSS_Injection": "xss",
    "Directory_Traversal": "traversal",
    "File_Inclusion": "file-inclusion",
    "Command_Injection": "cmdi",
    "LDAP_Injection": "ldap",
    "NoSQL_Injection": "nosql",
    "CRLF_Injection": "crlf",
    "Server_Side_Include_Injection": "ssi",
    "XXE_Injection": "xxe",
    "Open_Redirect": "open-redirect",
}
# Lists of plain names that are not attacks by themselves: LDAP attribute names such as `cn`,
# common web files such as `/robots.txt`, and bare event handler names such as `onclick`.
PAYLOAD_EXCLUDED = {
    "LDAP_attributes.txt",
    "Web-files.txt",
    "0xcela_event_handlers.txt",
    "port_swigger_xss_cheatsheet_event_handlers.txt",
}
HTTP_PARAMS_FAMILIES = {
    "sqli": "sqli",
    "xss": "xss",
    "path-traversal": "traversal",
    "cmdi": "cmdi",
    "norm": "form",
}


def shared_dir():
    return Path(os.environ.get("PORTCULLIS_SHARED_DIR", REPO.parent / "shared"))


def keyed_hash(text):
    return int.from_bytes(hashlib.sha256(f"{SEED}:{text}".encode()).digest()[:8], "big")


def split_of(source):
    """Return "test" for TEST_PERCENT percent of sources, chosen by a keyed hash of the name."""
    return "test" if keyed_hash(source) % 100 < TEST_PERCENT else "train"


def record(label, family, source, value):
    return {"label": label, "family": family, "source": source, "value": value}


# Attack values


def http_params(datasets):
    path = datasets / "HttpParamsDataset" / "payload_train.csv"
    with open(path, newline="", encoding="utf-8") as file:
        for row_number, row in enumerate(csv.DictReader(file), start=2):
            family = HTTP_PARAMS_FAMILIES[row["attack_type"]]
            label = 0 if family == "form" else 1
            value = row["payload"]
            if value.strip():
                yield record(label, family, f"HttpParamsDataset/payload_train.csv:{row_number}", value)


def libinjection(datasets):
    data = datasets / "libinjection" / "data"
    for path in sorted(data.glob("*.txt")):
        name = path.name
        if name == "false_positives.txt":
            label, family = 0, "libinjection-fp"
        elif name.startswith("sqli-"):
            label, family = 1, "sqli"
        elif "xss-" in name:
            label, family = 1, "xss"
        else:
            continue
        source = f"libinjection/data/{name}"
        for number, line in enumerate( path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1
        ):
            if not line.strip() or line.startswith("#"):
                continue
            line_source = f"{source}:{number}" if label == 0 else source
            # The files hold URL-encoded query-string values, and a WAF inspects them decoded.
            yield record(label, family, line_source, urllib.parse.unquote_plus(line))


def payloads(datasets):
    root = datasets / "PayloadsAllTheThings"
    for directory, family in sorted(PAYLOAD_FAMILIES.items()):
        for path in sorted((root / directory).glob("*.txt")):
            if path.name in PAYLOAD_EXCLUDED:
                continue
            source = f"PayloadsAllTheThings/{directory}/{path.name}"
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            for line in lines:
                # A line starting with "# " is a comment, such as the header of dotdotpwn.txt.
                if line.strip() and not line.startswith("# "):
                    yield record(1, family, source, line)


# Benign values


def render_man_page(path):
    """Render a man page to plain text with groff, at a fixed width and without hyphenation."""
    with gzip.open(path, "rb") as file:
        source = file.read()
    result = subprocess.run(
        ["groff", "-t", "-man", "-Tutf8", "-P-cbou", "-rLL=78n", "-rHY=0"],
        input=source,
        capture_output=True,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
    )
    return result.stdout.decode("utf-8", errors="replace")


def man_pages():
    pages = []
    for section in MAN_SECTIONS:
        directory = Path("/usr/share/man") / section
        if directory.is_dir():
            pages.extend(sorted(directory.glob("*.gz")))
    pages.sort(key=lambda path: keyed_hash(str(path)))
    per_prefix = {}
    chosen = []
    for path in pages:
        prefix = path.name.split("_", 1)[0] if "_" in path.name else path.name
        per_prefix[prefix] = per_prefix.get(prefix, 0) + 1
        if per_prefix[prefix] <= MAN_PAGES_PER_PREFIX:
            chosen.append(path)
    for path in chosen[:MAN_PAGES]:
        yield str(path), render_man_page(path)


DOC_NAMES = re.compile(r"(?i)^(readme|news|changes|changelog|copyright|authors|faq|todo)")
DOC_SUFFIXES = (".md", ".txt", ".rst")


def read_text(path):
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as file:
            data = file.read(200_000)
    else:
        with open(path, "rb") as file:
            data = file.read(200_000)
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def is_doc(path):
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return DOC_NAMES.match(name) is not None or name.endswith(DOC_SUFFIXES)


def doc_files():
    root = Path("/usr/share/doc")
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and is_doc(path):
            text = read_text(path)
            if text:
                yield str(path), text


def crate_docs():
    registry = Path.home() / ".cargo" / "registry" / "src"
    for index in sorted(registry.glob("*")):
        for crate in sorted(index.glob("*")):
            candidates = [p for p in crate.glob("*") if p.is_file() and is_doc(p)]
            docs = crate / "docs"
            if docs.is_dir():
                candidates.extend(p for p in docs.rglob("*.md") if p.is_file())
            for path in sorted(candidates):
                text = read_text(path)
                if text:
                    # Name by crate and file, without the registry index's hash directory.
                    yield f"cargo-registry/{crate.name}/{path.relative_to(crate)}", text


SPACES = re.compile(r"\s+")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def text_values(text):
    """Split text into candidate values: lines, sentences and whole paragraphs."""
    values = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [SPACES.sub(" ", line).strip() for line in paragraph.splitlines()]
        lines = [line for line in lines if len(line) >= 2]
        if not lines:
            continue
        values.extend(lines)
        joined = " ".join(lines)
        if len(lines) > 1:
            values.extend(sentence for sentence in SENTENCE_END.split(joined) if len(sentence) >= 2)
            values.append(joined[:MAX_VALUE_LENGTH])
    return values


URL = re.compile(r"\bhttps?://[^\s<>\"')\]]+")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
APOSTROPHE_NAME = re.compile(r"\b[A-Z][a-z]*'[A-Z][a-z]+(?: [A-Z][a-z]+)?")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def derived_values(text, lines, rng):
    """Values of the kinds a form or API carries, built from the text of one document."""
    values = [("url", url) for url in URL.findall(text)[:5]]
    values.extend(("email", email) for email in EMAIL.findall(text)[:5])
    values.extend(("name", name) for name in APOSTROPHE_NAME.findall(text)[:5])
    if not lines:
        return values
    for line in rng.sample(lines, min(3, len(lines))):
        words = line.split()[:4]
        document = {"id": rng.randrange(1, 100_000), "title": line[:120], "tags": words}
        values.append(("json", json.dumps(document)))
        values.append(("base64", base64.b64encode(line.encode()).decode()))
    line = rng.choice(lines)
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": line.split()[0][:40], "name": line[:40], "iat": rng.randrange(10**9, 2 * 10**9)}
    payload = b64url(json.dumps(claims).encode())
    signature = b64url(hashlib.sha256(f"{header}.{payload}".encode()).digest())
    values.append(("jwt", f"{header}.{payload}.{signature}"))
    return values


def benign_documents(sources):
    for name, text in man_pages():
        sources.append(name)
        yield name, text
    for name, text in doc_files():
        sources.append(name)
        yield name, text
    for name, text in crate_docs():
        sources.append(name)
        yield name, text


def benign_records(sources):
    for name, text in benign_documents(sources):
        rng = random.Random(keyed_hash(name))
        lines = list(dict.fromkeys(text_values(text)))
        chosen = rng.sample(lines, min(MAX_VALUES_PER_DOC, len(lines)))
        for value in chosen:
            yield record(0, "prose", name, value)
        for family, value in derived_values(text, lines, rng):
            yield record(0, family, name, value)


# Assembly


def attack_test_files(records):
    """Split single-file attack families by line, and return one test file of each other family."""
    files = {}
    for item in records:
        if item["label"] == 1 and ":" not in item["source"]:
            files.setdefault(item["family"], set()).add(item["source"])
    single = {next(iter(names)) for names in files.values() if len(names) == 1}
    counters = {}
    for item in records:
        if item["source"] in single:
            counters[item["source"]] = counters.get(item["source"], 0) + 1
            item["source"] = f"{item['source']}:{counters[item['source']]}"
    return {min(names, key=keyed_hash) for names in files.values() if len(names) > 1}


def build(datasets, out):
    sources = []
    records = []
    for generator in (http_params(datasets), libinjection(datasets), payloads(datasets)):
        records.extend(generator)
    forced_test = attack_test_files(records)
    records.extend(benign_records(sources))

    splits = {"train": [], "test": []}
    by_source = {}
    for item in records:
        item["value"] = item["value"][:MAX_VALUE_LENGTH]
        by_source.setdefault(item["source"], []).append(item)
    for source in sorted(by_source):
        items = by_source[source]
        split = "test" if source in forced_test else split_of(source)
        if split == "train" and items[0]["label"] == 1:
            rng = random.Random(keyed_hash(source))
            if len(items) > MAX_TRAIN_VALUES_PER_ATTACK_FILE:
                items = rng.sample(items, MAX_TRAIN_VALUES_PER_ATTACK_FILE)
        splits[split].extend(items)

    seen = {item["value"] for item in splits["train"]}
    test = []
    unique = set()
    for item in splits["test"]:
        key = (item["label"], item["value"])
        if key in unique or (item["label"] == 1 and item["value"] in seen):
            continue
        unique.add(key)
        test.append(item)
    splits["test"] = test

    out.mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as file:
            for item in items:
                file.write(json.dumps(item, ensure_ascii=False) + "\n")
    listing = "".join(f"{source}\n" for source in sources)
    (out / "sources.txt").write_text(listing)
    compare_sources(sources)
    for split, items in splits.items():
        attacks = sum(item["label"] for item in items)
        print(f"{split}: {attacks} attack and {len(items) - attacks} benign values", file=sys.stderr)


def compare_sources(sources):
    """Warn when the benign sources differ from the ones the shipped model was trained on."""
    if not RECORDED_SOURCES.is_file():
        return
    recorded = set(RECORDED_SOURCES.read_text().splitlines())
    current = set(sources)
    if recorded != current:
        print(
            f"warning: {len(current - recorded)} benign sources are new and "
            f"{len(recorded - current)} are missing compared with {RECORDED_SOURCES.name}, so "
            "a model trained on this corpus differs from model.bin",
            file=sys.stderr,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "target" / "waf-model",
                        help="output directory (default: target/waf-model)")
    parser.add_argument("--record", action="store_true",
                        help=f"write the benign sources read to {RECORDED_SOURCES.name}")
    args = parser.parse_args()
    datasets = shared_dir() / "datasets"
    if not (datasets / "HttpParamsDataset").is_dir():
        sys.exit(f"error: datasets not found in {datasets}; set PORTCULLIS_SHARED_DIR")
    build(datasets, args.out)
    if args.record:
        RECORDED_SOURCES.write_text((args.out / "sources.txt").read_text())


if __name__ == "__main__":
    main()
