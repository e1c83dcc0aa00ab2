"""Keys, signed JWTs and client-assertion checks with PyJWT for the introspection tests.

Reads one JSON request on standard input and writes one JSON response on standard output.

    {"op": "mint", "keys": {"as": "RSA", "client": "P-256"},
     "tokens": {"name": {"key": "as", "alg": "RS256", "headers": {...}, "claims": {...}}}}
      -> {"jwks": {"as": {public JWK}}, "private_pem": {"as": "-----BEGIN PRIVATE KEY-----..."},
          "public_pem": {...}, "tokens": {"name": "eyJ..."}}

    {"op": "verify", "assertion": "eyJ...", "public_pem": "...", "client_id": "...",
     "audience": "..."}
      -> {"ok": true, "jti": "...", "lifetime": 60} or {"ok": false, "error": "..."}

`verify` checks a private_key_jwt client assertion as an authorization server would
(RFC 7523 section 3): signature, `iss` and `sub` equal to the client id, `aud` equal to the
endpoint, and `exp`, `iat` and `jti` present.
"""

import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


def make_key(kind):
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "P-256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key type {kind}")


def mint(request):
    private, private_pem, public_pem, jwks = {}, {}, {}, {}
    for name, kind in request["keys"].items():
        key = make_key(kind)
        private[name] = key
        private_pem[name] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public_pem[name] = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        algorithm = RSAAlgorithm if kind == "RSA" else ECAlgorithm
        jwks[name] = algorithm.to_jwk(key.public_key(), as_dict=True)
    tokens = {}
    for name, spec in request.get("tokens", {}).items():
        tokens[name] = jwt.encode(
            spec["claims"],
            private[spec["key"]],
            algorithm=spec["alg"],
            headers=spec.get("headers", {}),
        )
    return {"jwks": jwks, "private_pem": private_pem, "public_pem": public_pem, "tokens": tokens}


def verify(request):
    try:
        claims = jwt.decode(
            request["assertion"],
            request["public_pem"],
            algorithms=["RS256", "ES256"],
            audience=request["audience"],
            issuer=request["client_id"],
            options={"require": ["exp", "iat", "jti", "sub"]},
        )
    except jwt.PyJWTError as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    if claims["sub"] != request["client_id"]:
        return {"ok": False, "error": "sub is not the client id"}
    return {"ok": True, "jti": claims["jti"], "lifetime": claims["exp"] - claims["iat"]}


def main():
    request = json.load(sys.stdin)
    result = mint(request) if request["op"] == "mint" else verify(request)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
