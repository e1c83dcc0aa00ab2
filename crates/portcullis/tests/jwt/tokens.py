"""Makes keys and signed JWTs with PyJWT for the gateway's JWT tests.

Reads a JSON request on standard input and writes a JSON response on standard output:

    request:  {"keys": {"rsa": "RSA", "p256": "P-256", "p384": "P-384", "ed": "Ed25519"},
               "secret": "...",
               "tokens": {"name": {"key": "rsa", "alg": "RS256", "headers": {...},
                                   "claims": {...}, "attack": null}}}
    response: {"jwks": {"rsa": {public JWK}}, "pem": {"rsa": "-----BEGIN PUBLIC KEY-----..."},
               "tokens": {"name": "eyJ..."}}

`key: "secret"` signs with the shared HMAC secret, and `embed_jwk: true` puts the signing key's
public JWK in the header. `attack` builds tokens that PyJWT refuses
to make: "none" (alg none, empty signature) and "hmac_with_public_pem" (HS256 keyed with the
PEM text of the named key's public key).
"""

import base64
import hashlib
import hmac
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def make_key(kind):
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "P-256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "P-384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {kind}")


def public_jwk(kind, public_key):
    if kind == "RSA":
        return RSAAlgorithm.to_jwk(public_key, as_dict=True)
    if kind in ("P-256", "P-384"):
        return ECAlgorithm.to_jwk(public_key, as_dict=True)
    return OKPAlgorithm.to_jwk(public_key, as_dict=True)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value):
    return b64(json.dumps(value, separators=(",", ":")).encode())


def main():
    request = json.load(sys.stdin)
    private = {}
    pem = {}
    jwks = {}
    for name, kind in request["keys"].items():
        key = make_key(kind)
        private[name] = key
        public_key = key.public_key()
        pem[name] = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        jwks[name] = public_jwk(kind, public_key)

    tokens = {}
    for name, spec in request["tokens"].items():
        headers = spec.get("headers", {})
        claims = spec["claims"]
        attack = spec.get("attack")
        if attack == "none":
            header = {"alg": "none", "typ": "JWT", **headers}
            tokens[name] = f"{segment(header)}.{segment(claims)}."
        elif attack == "hmac_with_public_pem":
            header = {"alg": "HS256", "typ": "JWT", **headers}
            signing_input = f"{segment(header)}.{segment(claims)}".encode()
            secret = pem[spec["key"]].encode()
            signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
            tokens[name] = f"{signing_input.decode()}.{b64(signature)}"
        else:
            if spec.get("embed_jwk"):
                headers = {**headers, "jwk": jwks[spec["key"]]}
            key = request["secret"] if spec["key"] == "secret" else private[spec["key"]]
            tokens[name] = jwt.encode(claims, key, algorithm=spec["alg"], headers=headers)

    json.dump({"jwks": jwks, "pem": pem, "tokens": tokens}, sys.stdout)


if __name__ == "__main__":
    main()
