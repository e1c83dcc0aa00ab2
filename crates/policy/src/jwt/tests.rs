use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW: i64 = 1_700_000_000;

fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn hs256_token(header: Value, claims: Value) -> String {
    let input = format!("{}.{}", encode(&header), encode(&claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn hmac_set() -> KeySet {
    KeySet::new(vec![
        VerifyingKey::hmac(Some("k1".into()), SECRET, None).unwrap(),
    ])
}

fn rules() -> ClaimRules {
    ClaimRules {
        issuer: Some("https://idp.test".into()),
        audiences: vec!["orders".into()],
        leeway_seconds: 30,
        require_exp: true,
        required: vec![],
    }
}

fn good_claims() -> Value {
    json!({"iss": "https://idp.test", "aud": "orders", "sub": "alice", "exp": NOW + 60, "iat": NOW})
}

/// Decodes, selects and verifies `token` like the proxy adapter does.
fn check(token: &str, set: &KeySet, rules: &ClaimRules) -> Result<Map<String, Value>, JwtError> {
    let decoded = decode(token, DEFAULT_MAX_TOKEN_BYTES, &Algorithm::ALL)?;
    let keys = match set.select(decoded.kid.as_deref(), decoded.algorithm) {
        Selection::Keys(keys) => keys,
        Selection::UnknownKid => return Err(JwtError::UnknownKid),
        Selection::NoMatchingKey => return Err(JwtError::NoMatchingKey),
    };
    verify(decoded, &keys, rules, NOW)
}

#[test]
fn valid_hs256_token_passes() {
    let token = hs256_token(json!({"alg": "HS256", "kid": "k1"}), good_claims());
    let claims = check(&token, &hmac_set(), &rules()).unwrap();
    assert_eq!(claims["sub"], "alice");
}

#[test]
fn header_attacks_are_rejected() {
    let set = hmac_set();
    let none = format!(
        "{}.{}.",
        encode(&json!({"alg": "none"})),
        encode(&good_claims())
    );
    assert_eq!(
        check(&none, &set, &rules()),
        Err(JwtError::UnsupportedAlgorithm)
    );
    for parameter in ["jwk", "jku", "x5u", "x5c", "crit"] {
        let token = hs256_token(
            json!({"alg": "HS256", "kid": "k1", parameter: "x"}),
            good_claims(),
        );
        assert_eq!(
            check(&token, &set, &rules()),
            Err(JwtError::ForbiddenHeader),
            "{parameter}"
        );
    }
    let traversal = hs256_token(
        json!({"alg": "HS256", "kid": "../../etc/passwd"}),
        good_claims(),
    );
    assert_eq!(check(&traversal, &set, &rules()), Err(JwtError::UnknownKid));
    let control = hs256_token(json!({"alg": "HS256", "kid": "a\nb"}), good_claims());
    assert_eq!(check(&control, &set, &rules()), Err(JwtError::InvalidKid));
}

#[test]
fn allowed_algorithms_bound_decoding() {
    let token = hs256_token(json!({"alg": "HS256"}), good_claims());
    let result = decode(&token, DEFAULT_MAX_TOKEN_BYTES, &[Algorithm::RS256]);
    assert_eq!(result.unwrap_err(), JwtError::AlgorithmNotAllowed);
}

#[test]
fn key_type_fixes_algorithm() {
    let pair = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let jwk = json!({
        "kty": "OKP", "crv": "Ed25519", "kid": "ed",
        "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
    });
    let key = VerifyingKey::from_jwk(&jwk).unwrap();
    assert_eq!(key.algorithms(), &[Algorithm::EdDSA]);
    let set = KeySet::new(vec![key]);

    let input = format!(
        "{}.{}",
        encode(&json!({"alg": "EdDSA", "kid": "ed"})),
        encode(&good_claims())
    );
    let signature = pair.sign(input.as_bytes());
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
    assert!(check(&token, &set, &rules()).is_ok());

    // The public key bytes used as an HMAC secret must not verify.
    let confused = hs256_token(json!({"alg": "HS256", "kid": "ed"}), good_claims());
    assert_eq!(
        check(&confused, &set, &rules()),
        Err(JwtError::NoMatchingKey)
    );
}

#[test]
fn fetched_jwks_never_yield_secrets() {
    let jwks = json!({"keys": [{"kty": "oct", "k": URL_SAFE_NO_PAD.encode(SECRET), "kid": "s"}]});
    let (set, skipped) = KeySet::from_jwks(&serde_json::to_vec(&jwks).unwrap()).unwrap();
    assert!(set.is_empty());
    assert_eq!(skipped.len(), 1);
}

#[test]
fn time_claims_use_leeway() {
    let set = hmac_set();
    let cases = [
        (json!({"exp": NOW - 31}), Err(JwtError::Expired)),
        (json!({"exp": NOW - 29}), Ok(())),
        (
            json!({"exp": NOW + 60, "nbf": NOW + 31}),
            Err(JwtError::NotYetValid),
        ),
        (json!({"exp": NOW + 60, "nbf": NOW + 29}), Ok(())),
        (
            json!({"exp": NOW + 60, "iat": NOW + 31}),
            Err(JwtError::IssuedInFuture),
        ),
        (json!({"exp": "soon"}), Err(JwtError::InvalidTimeClaim)),
        (json!({"exp": (NOW + 60) as f64 + 0.5}), Ok(())),
        (json!({}), Err(JwtError::MissingClaim)),
    ];
    for (extra, expected) in cases {
        let mut claims = json!({"iss": "https://idp.test", "aud": "orders"});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let token = hs256_token(json!({"alg": "HS256"}), claims.clone());
        let result = check(&token, &set, &rules()).map(|_| ());
        assert_eq!(result, expected, "claims {claims}");
    }
}

#[test]
fn audience_forms() {
    let set = hmac_set();
    let cases = [
        (json!("orders"), true),
        (json!(["billing", "orders"]), true),
        (json!("billing"), false),
        (json!([]), false),
        (json!(["orders", 5]), false),
        (json!(5), false),
        (Value::Null, false),
    ];
    for (aud, accepted) in cases {
        let mut claims = good_claims();
        claims["aud"] = aud.clone();
        let token = hs256_token(json!({"alg": "HS256"}), claims);
        let result = check(&token, &set, &rules());
        assert_eq!(result.is_ok(), accepted, "aud {aud}");
    }
}

#[test]
fn required_claims_and_paths() {
    let mut rules = rules();
    rules.required = vec!["tenant".into(), "realm_access.roles".into()];
    let set = hmac_set();
    let mut claims = good_claims();
    claims["tenant"] = json!("t1");
    let token = hs256_token(json!({"alg": "HS256"}), claims.clone());
    assert_eq!(check(&token, &set, &rules), Err(JwtError::MissingClaim));
    claims["realm_access"] = json!({"roles": ["admin"]});
    let token = hs256_token(json!({"alg": "HS256"}), claims);
    let verified = check(&token, &set, &rules).unwrap();
    let roles = string_list(claim_at(&verified, "realm_access.roles").unwrap()).unwrap();
    assert_eq!(roles, vec!["admin".to_string()]);
}

#[test]
fn string_list_forms() {
    assert_eq!(string_list(&json!("a  b")).unwrap(), vec!["a", "b"]);
    assert_eq!(string_list(&json!(["a", 1, "b"])).unwrap(), vec!["a", "b"]);
    assert!(string_list(&json!(3)).is_none());
}

#[test]
fn malformed_tokens_are_rejected() {
    let set = hmac_set();
    let good = hs256_token(json!({"alg": "HS256"}), good_claims());
    let (head, rest) = good.split_once('.').unwrap();
    let cases = [
        String::new(),
        "a.b".to_string(),
        format!("{good}.extra"),
        format!("{head}=.{rest}"),
        format!("!!.{rest}"),
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode(b"{not json")),
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode(b"[1]")),
    ];
    for token in cases {
        assert_eq!(
            check(&token, &set, &rules()),
            Err(JwtError::Malformed),
            "{token}"
        );
    }
    let long = "a".repeat(DEFAULT_MAX_TOKEN_BYTES + 1);
    assert_eq!(check(&long, &set, &rules()), Err(JwtError::TooLarge));
}

#[test]
fn decode_never_panics_on_noise() {
    let alphabet = b"eyJhbGciOiJIUzI1NiJ9.-_=+/{}\"\\ \x00\xff";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let length = (state % 64) as usize;
        let bytes: Vec<u8> = (0..length)
            .map(|i| alphabet[((state >> (i % 57)) as usize + i) % alphabet.len()])
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode(&text, DEFAULT_MAX_TOKEN_BYTES, &Algorithm::ALL);
    }
}

#[test]
fn pem_keys_parse() {
    let rng = SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    // SubjectPublicKeyInfo for P-256: a fixed 26-byte prefix, then the 65-byte point.
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let key = VerifyingKey::from_pem(None, &pem, None).unwrap();
    assert_eq!(key.algorithms(), &[Algorithm::ES256]);
    assert!(VerifyingKey::from_pem(None, &pem, Some(Algorithm::RS256)).is_err());
    assert!(VerifyingKey::from_pem(None, "not pem", None).is_err());
    assert!(VerifyingKey::hmac(None, b"short", None).is_err());
}

#[test]
fn key_parsers_never_panic_on_noise() {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // DER-like input: mostly SEQUENCE, INTEGER, BIT STRING and OID tags with random lengths.
    let tags = [0x30u8, 0x02, 0x03, 0x06, 0x81, 0x82, 0x00, 0xff];
    for _ in 0..5_000 {
        let length = (next() % 96) as usize;
        let der: Vec<u8> = (0..length)
            .map(|i| {
                let value = next();
                if i % 3 == 0 {
                    tags[(value % tags.len() as u64) as usize]
                } else {
                    value as u8
                }
            })
            .collect();
        for label in ["PUBLIC KEY", "RSA PUBLIC KEY"] {
            let pem = format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                base64::engine::general_purpose::STANDARD.encode(&der)
            );
            let _ = VerifyingKey::from_pem(None, &pem, None);
        }
        let _ = KeySet::from_jwks(&der);
    }
    let odd_jwks = [
        json!({"keys": [{"kty": "RSA", "n": "", "e": ""}]}),
        json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}),
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519"}]}),
        json!({"keys": [{"kty": 5}, null, [], "x"]}),
        json!({"keys": {}}),
    ];
    for document in odd_jwks {
        let _ = KeySet::from_jwks(document.to_string().as_bytes());
    }
}
