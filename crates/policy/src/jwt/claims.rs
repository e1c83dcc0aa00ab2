//! Registered claim checks (RFC 7519 section 4.1) and helpers to read other claims.

use serde_json::{Map, Value};

use super::JwtError;

/// The claim checks of one issuer.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    /// Expected `iss`; `None` skips the check.
    pub issuer: Option<String>,
    /// Accepted `aud` values; the token must name at least one. Empty skips the check.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_seconds: i64,
    /// Reject tokens without `exp`.
    pub require_exp: bool,
    /// Claims that must be present, with any value other than `null`.
    pub required: Vec<String>,
}

impl ClaimRules {
    /// Checks `claims` at `now`, in seconds since the Unix epoch.
    pub fn check(&self, claims: &Map<String, Value>, now: i64) -> Result<(), JwtError> {
        match time_claim(claims, "exp")? {
            Some(exp) if now >= exp.saturating_add(self.leeway_seconds) => {
                return Err(JwtError::Expired);
            }
            None if self.require_exp => return Err(JwtError::MissingClaim),
            _ => {}
        }
        if let Some(nbf) = time_claim(claims, "nbf")?
            && now.saturating_add(self.leeway_seconds) < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        if let Some(iat) = time_claim(claims, "iat")?
            && now.saturating_add(self.leeway_seconds) < iat
        {
            return Err(JwtError::IssuedInFuture);
        }
        if let Some(issuer) = &self.issuer {
            match claims.get("iss") {
                Some(Value::String(iss)) if iss == issuer => {}
                _ => return Err(JwtError::WrongIssuer),
            }
        }
        if !self.audiences.is_empty() && !self.audience_matches(claims.get("aud")) {
            return Err(JwtError::WrongAudience);
        }
        let missing = self
            .required
            .iter()
            .any(|name| claim_at(claims, name).is_none_or(Value::is_null));
        if missing {
            return Err(JwtError::MissingClaim);
        }
        Ok(())
    }

    /// Accepts an `aud` string or array of strings that names a configured audience. A missing
    /// claim, an empty array, an array with a non-string member and any other type fail.
    fn audience_matches(&self, aud: Option<&Value>) -> bool {
        let accepted = |value: &str| self.audiences.iter().any(|audience| audience == value);
        match aud {
            Some(Value::String(value)) => accepted(value),
            Some(Value::Array(values)) => {
                values.iter().all(Value::is_string)
                    && values.iter().filter_map(Value::as_str).any(accepted)
            }
            _ => false,
        }
    }
}

/// Reads a NumericDate claim (seconds since the epoch, possibly fractional) as whole seconds.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => {
            if let Some(seconds) = number.as_i64() {
                return Ok(Some(seconds));
            }
            match number.as_f64() {
                Some(seconds) if seconds.is_finite() => Ok(Some(seconds.floor() as i64)),
                _ => Err(JwtError::InvalidTimeClaim),
            }
        }
        Some(_) => Err(JwtError::InvalidTimeClaim),
    }
}

/// Returns the claim `name`, or, when no top-level claim has that name, the value at the dotted
/// path (`realm_access.roles` reads `{"realm_access": {"roles": ...}}`).
pub fn claim_at<'c>(claims: &'c Map<String, Value>, name: &str) -> Option<&'c Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// Reads a claim as a list of strings: a string splits on spaces (the OAuth `scope` form) and
/// an array keeps its string members. Other values give `None`.
pub fn string_list(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(text) => Some(text.split_ascii_whitespace().map(str::to_string).collect()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        ),
        _ => None,
    }
}
