#!/usr/bin/env python3
"""Identity provider for the `bench/run.sh identity` targets, on loopback.

It generates an RSA-2048 and an Ed25519 key with the openssl command, writes one JWT signed
with each (RS256 and EdDSA, `sub` alice, valid for a day) into the output folder, and then
serves, until it is stopped:

  GET  /jwks.json    the JWK Set with both public keys
  POST /introspect   an RFC 7662 response: active, `sub` alice, `exp` in a day, for the
                     opaque token written to introspection.token; inactive for anything else
  GET  /stats        {"jwks": N, "introspect": N}: the requests served so far

The files written are rs256.token, eddsa.token and introspection.token. The gateway caches the
JWK Set and the introspection results, so after its warm-up the counts in /stats stay small.

Usage: identity_fixture.py --dir DIR --port PORT
"""

import argparse
import base64
import http.server
import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

ISSUER = "https://idp.bench"
AUDIENCE = "bench"
SUBJECT = "alice"
LIFETIME_S = 24 * 3600


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        sys.exit(f"openssl {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


def generate_keys(directory: Path) -> tuple[Path, Path]:
    rsa = directory / "rs256.pem"
    ed25519 = directory / "eddsa.pem"
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(rsa))
    openssl("genpkey", "-algorithm", "ED25519", "-out", str(ed25519))
    return rsa, ed25519


def rsa_jwk(key: Path) -> dict:
    modulus = openssl("rsa", "-in", str(key), "-noout", "-modulus").decode().strip()
    hex_digits = modulus.split("=", 1)[1]
    text = openssl("rsa", "-in", str(key), "-noout", "-text").decode()
    exponent = int(text.split("publicExponent: ", 1)[1].split(" ", 1)[0])
    exponent_bytes = exponent.to_bytes((exponent.bit_length() + 7) // 8, "big")
    return {
        "kty": "RSA",
        "kid": "bench-rs256",
        "alg": "RS256",
        "use": "sig",
        "n": b64url(bytes.fromhex(hex_digits)),
        "e": b64url(exponent_bytes),
    }


def ed25519_jwk(key: Path) -> dict:
    # The DER SubjectPublicKeyInfo of an Ed25519 key ends with the 32-byte public key.
    der = openssl("pkey", "-in", str(key), "-pubout", "-outform", "DER")
    return {"kty": "OKP", "crv": "Ed25519", "kid": "bench-eddsa", "alg": "EdDSA", "use": "sig", "x": b64url(der[-32:])}


def sign_token(key: Path, algorithm: str, kid: str, directory: Path) -> str:
    now = int(time.time())
    header = {"alg": algorithm, "typ": "JWT", "kid": kid}
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": SUBJECT, "iat": now, "exp": now + LIFETIME_S}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    if algorithm == "RS256":
        signature = openssl("dgst", "-sha256", "-sign", str(key), stdin=signing_input.encode())
    else:
        # openssl 3.0 signs Ed25519 in one shot and needs the input as a file of known size.
        message = directory / "eddsa.signing-input"
        message.write_text(signing_input)
        signature = openssl("pkeyutl", "-sign", "-inkey", str(key), "-rawin", "-in", str(message))
    return f"{signing_input}.{b64url(signature)}"


def make_handler(jwks: bytes, opaque_token: str, counts: dict, lock: threading.Lock):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def send_json(self, status: int, body: dict | bytes) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/jwks.json":
                with lock:
                    counts["jwks"] += 1
                self.send_json(200, jwks)
            elif self.path == "/stats":
                with lock:
                    self.send_json(200, dict(counts))
            else:
                self.send_json(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            if self.path != "/introspect":
                self.send_json(404, {"error": "not found"})
                return
            with lock:
                counts["introspect"] += 1
            if form.get("token") == [opaque_token]:
                now = int(time.time())
                self.send_json(200, {"active": True, "sub": SUBJECT, "iss": ISSUER, "aud": AUDIENCE, "exp": now + LIFETIME_S})
            else:
                self.send_json(200, {"active": False})

        def log_message(self, format: str, *args) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path, help="folder for keys and tokens")
    parser.add_argument("--port", required=True, type=int, help="port to listen on at 127.0.0.1")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    rsa, ed25519 = generate_keys(args.dir)
    jwks = json.dumps({"keys": [rsa_jwk(rsa), ed25519_jwk(ed25519)]}).encode()
    (args.dir / "rs256.token").write_text(sign_token(rsa, "RS256", "bench-rs256", args.dir))
    (args.dir / "eddsa.token").write_text(sign_token(ed25519, "EdDSA", "bench-eddsa", args.dir))
    opaque_token = secrets.token_urlsafe(32)
    (args.dir / "introspection.token").write_text(opaque_token)

    counts = {"jwks": 0, "introspect": 0}
    handler = make_handler(jwks, opaque_token, counts, threading.Lock())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    print(f"serving on http://127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
