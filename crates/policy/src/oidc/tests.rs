use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn keys() -> SessionKeys {
    SessionKeys::derive(SECRET, "https://idp.test", "gateway")
}

#[test]
fn sealed_cookie_opens() {
    let keys = keys();
    let value = keys.seal(Purpose::Session, "sid", b"payload").unwrap();
    assert_eq!(
        keys.open(Purpose::Session, "sid", &value).as_deref(),
        Some(&b"payload"[..])
    );
}

#[test]
fn sealed_cookie_uses_fresh_nonces() {
    let keys = keys();
    let first = keys.seal(Purpose::Session, "sid", b"payload").unwrap();
    let second = keys.seal(Purpose::Session, "sid", b"payload").unwrap();
    assert_ne!(first, second);
}

#[test]
fn changed_cookie_fails() {
    let keys = keys();
    let value = keys.seal(Purpose::Session, "sid", b"payload").unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(&value).unwrap();
    for index in [0, aead::NONCE_LEN, bytes.len() - 1] {
        bytes[index] ^= 1;
        let changed = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(
            keys.open(Purpose::Session, "sid", &changed),
            None,
            "{index}"
        );
        bytes[index] ^= 1;
    }
    assert_eq!(keys.open(Purpose::Session, "sid", "not base64!"), None);
    assert_eq!(keys.open(Purpose::Session, "sid", "AAAA"), None);
}

#[test]
fn cookie_is_bound_to_purpose_name_and_client() {
    let keys = keys();
    let value = keys.seal(Purpose::Login, "sid", b"payload").unwrap();
    assert_eq!(keys.open(Purpose::Session, "sid", &value), None);
    assert_eq!(keys.open(Purpose::Login, "other", &value), None);
    let other_client = SessionKeys::derive(SECRET, "https://idp.test", "another-client");
    assert_eq!(other_client.open(Purpose::Login, "sid", &value), None);
    let other_secret = SessionKeys::derive(
        b"fedcba9876543210fedcba9876543210",
        "https://idp.test",
        "gateway",
    );
    assert_eq!(other_secret.open(Purpose::Login, "sid", &value), None);
}

#[test]
fn pkce_challenge_matches_rfc_7636() {
    // RFC 7636 appendix B.
    assert_eq!(
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
}

#[test]
fn random_tokens_are_long_and_distinct() {
    let keys = keys();
    let first = keys.random_token().unwrap();
    let second = keys.random_token().unwrap();
    assert_eq!(first.len(), 43);
    assert_ne!(first, second);
}

#[test]
fn token_response_rejects_other_token_types() {
    let parsed = TokenResponse::parse(br#"{"access_token":"a","token_type":"bearer"}"#).unwrap();
    assert_eq!(parsed.access_token.as_deref(), Some("a"));
    let error = TokenResponse::parse(br#"{"access_token":"a","token_type":"DPoP"}"#).unwrap_err();
    assert!(error.contains("DPoP"), "{error}");
    assert!(TokenResponse::parse(b"[1]").is_err());
}

#[test]
fn token_response_debug_hides_tokens() {
    let parsed = TokenResponse::parse(
        br#"{"access_token":"secret-access","refresh_token":"secret-refresh"}"#,
    )
    .unwrap();
    let text = format!("{parsed:?}");
    assert!(!text.contains("secret-access"), "{text}");
    assert!(!text.contains("secret-refresh"), "{text}");
}

#[test]
fn token_error_code_is_read() {
    assert_eq!(
        token_error_code(br#"{"error":"invalid_grant","error_description":"x"}"#).as_deref(),
        Some("invalid_grant")
    );
    assert_eq!(token_error_code(b"<html>"), None);
    assert_eq!(token_error_code(br#"{"error":"has space"}"#), None);
}

#[test]
fn session_drops_transient_claims_and_refreshes() {
    let claims: Map<String, Value> = serde_json::from_str(
        r#"{"sub":"alice","nonce":"n","at_hash":"h","iss":"https://idp.test"}"#,
    )
    .unwrap();
    let tokens = TokenResponse::parse(
        br#"{"access_token":"a1","expires_in":60,"refresh_token":"r1","id_token":"i1"}"#,
    )
    .unwrap();
    let session = Session::new(claims, &tokens, 1000, 3600);
    assert_eq!(session.claims.get("nonce"), None);
    assert_eq!(session.claims.get("at_hash"), None);
    assert_eq!(session.claims["sub"], "alice");
    assert_eq!(session.access_expires_at, Some(1060));
    assert_eq!(session.expires_at, 4600);
    assert!(!session.needs_refresh(1000, 30));
    assert!(session.needs_refresh(1031, 30));
    assert!(!session.access_expired(1059));
    assert!(session.access_expired(1060));

    let refresh = TokenResponse::parse(br#"{"access_token":"a2","expires_in":60}"#).unwrap();
    let refreshed = session.refreshed(&refresh, None, 1050);
    assert_eq!(refreshed.access_token.as_deref(), Some("a2"));
    assert_eq!(
        refreshed.refresh_token.as_deref(),
        Some("r1"),
        "kept when not rotated"
    );
    assert_eq!(refreshed.access_expires_at, Some(1110));
    assert_eq!(
        refreshed.expires_at, 4600,
        "a refresh does not extend the session"
    );
}

#[test]
fn consumed_nonce_is_rejected_until_expiry() {
    let mut nonces = ConsumedNonces::new(2);
    assert!(nonces.consume("a", 100, 0));
    assert!(!nonces.consume("a", 100, 50));
    assert!(
        nonces.consume("a", 200, 100),
        "expired entries can be used again"
    );
    assert!(nonces.consume("b", 150, 100));
    assert!(nonces.consume("c", 150, 100));
    assert_eq!(nonces.entries.len(), 2);
    assert!(
        !nonces.entries.contains_key("b"),
        "the entry that expires first is dropped"
    );
    assert!(nonces.entries.contains_key("a"));
}

#[test]
fn cookie_values_finds_every_match() {
    let headers = ["a=1; sid=one", "sid=\"two\";b=2"];
    assert_eq!(cookie_values(headers, "sid"), ["one", "two"]);
    assert!(cookie_values(["sidx=1"], "sid").is_empty());
}

#[test]
fn set_cookie_renders_attributes() {
    let cookie = SetCookie {
        name: "sid",
        path: "/",
        domain: Some("example.test"),
        secure: true,
        same_site: "Lax",
    };
    assert_eq!(
        cookie.store("v", 60),
        "sid=v; Path=/; Domain=example.test; Max-Age=60; HttpOnly; Secure; SameSite=Lax"
    );
    assert_eq!(
        cookie.delete(),
        "sid=; Path=/; Domain=example.test; Max-Age=0; HttpOnly; Secure; SameSite=Lax"
    );
}
