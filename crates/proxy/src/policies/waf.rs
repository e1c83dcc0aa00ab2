//! `waf`: inspects the request with a SecLang rule set, the OWASP Core Rule Set (CRS) or the
//! built-in rules of `portcullis-waf`. Runs in [`Phase::Inspect`].
//!
//! The rule set is compiled when the snapshot is built, through [`portcullis_waf::load_shared`],
//! so every policy and every later snapshot with the same rules directory, paranoia level and
//! threshold shares one compiled set. A request is inspected as the client sent it: method,
//! request target, protocol, headers (cookies included) and up to `body_limit` bytes of its
//! body, which is read here and then forwarded unchanged. A body with a `Content-Encoding`
//! (gzip, deflate or br) is inspected decoded, up to `body_limit` decoded bytes. Routes without
//! this policy never buffer their body.

use std::sync::Arc;

use bytes::Bytes;
use http::{StatusCode, Version, header};
use http_body::Body;
use portcullis_config::{WafMode, WafOverLimit, WafSpec};
use portcullis_waf::content_encoding;
use portcullis_waf::{Evaluation, Exclusions, RuleSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

use crate::body::read_rejection;
use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;
use crate::metrics::{Name, WafVerdictLabels};
use crate::policies::PolicyContext;

/// The policy's decision on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The anomaly score stayed below the threshold.
    Pass,
    /// Rejected with 403.
    Block,
    /// Would have been blocked, and was forwarded because the policy runs in detect mode.
    Detect,
    /// Rejected with 413 because the body exceeds `body_limit` and `on_body_over_limit` is
    /// `block`.
    BodyTooLarge,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Block => "block",
            Verdict::Detect => "detect",
            Verdict::BodyTooLarge => "body_too_large",
        }
    }
}

/// The access-log entry of an inspected request. It never contains the matched values.
#[derive(Debug, Clone, Serialize)]
pub struct WafRecord {
    pub verdict: Verdict,
    /// Inbound anomaly score (`tx.blocking_inbound_anomaly_score`).
    pub score: i64,
    /// Ids of the matched rules that log, in match order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<u32>,
    /// True when the body exceeded `body_limit` and only its first `body_limit` bytes were
    /// inspected.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub body_partial: bool,
}

pub struct Waf {
    rules: Arc<RuleSet>,
    exclusions: Exclusions,
    mode: WafMode,
    body_limit: usize,
    on_body_over_limit: WafOverLimit,
    verdicts: Family<WafVerdictLabels, Counter>,
}

impl Waf {
    /// Builds the policy, compiling its rule set unless an earlier snapshot already did. Fails
    /// with the rule file and line when a rule is malformed.
    pub fn new(spec: &WafSpec, context: &PolicyContext) -> Result<Self, String> {
        let setup = portcullis_config::waf_setup(spec);
        let rules = portcullis_waf::load_shared(spec.rules_dir.as_deref(), &setup)
            .map_err(|error| format!("failed to load the WAF rules: {error}"))?;
        Ok(Waf {
            rules,
            exclusions: exclusions(spec)?,
            mode: spec.mode,
            body_limit: usize::try_from(spec.body_limit).unwrap_or(usize::MAX),
            on_body_over_limit: spec.on_body_over_limit,
            verdicts: context.waf_verdicts.clone(),
        })
    }

    async fn inspect(&self, exchange: &mut Exchange<'_>) -> Result<(), Rejection> {
        let reject_over_limit =
            self.mode == WafMode::Block && self.on_body_over_limit == WafOverLimit::Block;
        if reject_over_limit
            && declared_length(exchange).is_some_and(|length| length > self.body_limit as u64)
        {
            return Err(self.finish_over_limit(exchange));
        }
        let (body, body_partial) = if exchange.body.is_end_stream() {
            (Bytes::new(), false)
        } else {
            let prefix = exchange
                .body
                .read_prefix(self.body_limit)
                .await
                .map_err(|error| read_rejection(&error))?;
            (prefix.bytes, !prefix.complete)
        };
        let (body, body_partial) = self.decode_body(exchange, body, body_partial)?;
        if body_partial && reject_over_limit {
            return Err(self.finish_over_limit(exchange));
        }

        let request = waf_request(exchange, body);
        let evaluation = self.rules.evaluate_excluding(&request, &self.exclusions);
        let would_block =
            evaluation.blocked || (body_partial && self.on_body_over_limit == WafOverLimit::Block);
        let verdict = match (would_block, self.mode) {
            (false, _) => Verdict::Pass,
            (true, WafMode::Block) => Verdict::Block,
            (true, WafMode::Detect) => Verdict::Detect,
        };
        self.count(exchange, &evaluation, verdict);
        let record = WafRecord {
            verdict,
            score: evaluation.anomaly_score(),
            rules: evaluation.logged_ids(),
            body_partial,
        };
        if verdict != Verdict::Pass {
            tracing::info!(
                request.id = exchange.request_id,
                route = %exchange.route.name,
                waf.verdict = verdict.as_str(),
                waf.score = record.score,
                waf.rules = ?record.rules,
                "web application firewall matched the request"
            );
        }
        exchange.waf = Some(record);
        if verdict == Verdict::Block {
            return Err(Rejection::new(
                StatusCode::FORBIDDEN,
                "request_blocked",
                "the request was blocked by the web application firewall",
            )
            .by_policy("waf"));
        }
        Ok(())
    }

    /// Decodes a body sent with a `Content-Encoding` for inspection, keeping at most
    /// `body_limit` decoded bytes, and returns it with the flag that it is partial. The body
    /// forwarded upstream stays as the client sent it. In detect mode a body that fails to
    /// decode is inspected as sent. In block mode it is rejected with 415 for an unsupported
    /// coding, 400 for invalid data and 413 for a decompression bomb.
    fn decode_body(
        &self,
        exchange: &Exchange<'_>,
        body: Bytes,
        partial: bool,
    ) -> Result<(Bytes, bool), Rejection> {
        let Some(value) = exchange.headers.get(header::CONTENT_ENCODING) else {
            return Ok((body, partial));
        };
        let coding = String::from_utf8_lossy(value.as_bytes());
        if body.is_empty() || !content_encoding::is_encoded(&coding) {
            return Ok((body, partial));
        }
        match content_encoding::decode(&coding, &body, !partial, self.body_limit) {
            Ok(decoded) => Ok((Bytes::from(decoded.body), partial || decoded.truncated)),
            Err(error) if self.mode == WafMode::Detect => {
                tracing::info!(
                    request.id = exchange.request_id,
                    route = %exchange.route.name,
                    error = %error,
                    "web application firewall inspects an undecodable body as sent"
                );
                Ok((body, partial))
            }
            Err(error) => {
                let status =
                    StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
                Err(Rejection::new(status, error.code(), error.to_string()).by_policy("waf"))
            }
        }
    }

    /// Records and returns the rejection of a body over `body_limit`.
    fn finish_over_limit(&self, exchange: &mut Exchange<'_>) -> Rejection {
        self.verdicts
            .get_or_create(&WafVerdictLabels {
                route: Name(exchange.route.name.clone()),
                family: Name(Arc::from("none")),
                verdict: Verdict::BodyTooLarge.as_str(),
            })
            .inc();
        exchange.waf = Some(WafRecord {
            verdict: Verdict::BodyTooLarge,
            score: 0,
            rules: Vec::new(),
            body_partial: true,
        });
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_over_inspection_limit",
            format!(
                "the request body is larger than the {} bytes that the web application firewall \
                 inspects",
                self.body_limit
            ),
        )
        .by_policy("waf")
    }

    /// Counts the verdict once for each family of the matched rules, or under `none`.
    fn count(&self, exchange: &Exchange<'_>, evaluation: &Evaluation, verdict: Verdict) {
        let mut families: Vec<&str> = evaluation
            .matched
            .iter()
            .filter(|rule| rule.logged)
            .map(|rule| rule.family.as_str())
            .collect();
        families.sort_unstable();
        families.dedup();
        if families.is_empty() {
            families.push("none");
        }
        for family in families {
            self.verdicts
                .get_or_create(&WafVerdictLabels {
                    route: Name(exchange.route.name.clone()),
                    family: Name(Arc::from(family)),
                    verdict: verdict.as_str(),
                })
                .inc();
        }
    }
}

impl Policy for Waf {
    fn name(&self) -> &'static str {
        "waf"
    }

    fn phase(&self) -> Phase {
        Phase::Inspect
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        Box::pin(self.inspect(exchange))
    }
}

/// Converts the `exclusions` of a spec, which the config validation has already checked.
fn exclusions(spec: &WafSpec) -> Result<Exclusions, String> {
    let mut exclusions = Exclusions::default();
    for (i, exclusion) in spec.exclusions.iter().enumerate() {
        let ranges: Vec<(u32, u32)> = exclusion
            .rules
            .iter()
            .map(|ids| {
                ids.range()
                    .ok_or_else(|| format!("exclusions[{i}]: invalid rule id or range {ids:?}"))
            })
            .collect::<Result<_, _>>()?;
        let invalid = |message: String| format!("exclusions[{i}]: {message}");
        if exclusion.variables.is_empty() {
            for (low, high) in &ranges {
                exclusions.remove_ids(*low, *high);
            }
            for tag in &exclusion.tags {
                exclusions.remove_tag(tag);
            }
            continue;
        }
        let targets = exclusion.variables.join("|");
        for (low, high) in &ranges {
            exclusions
                .remove_targets_by_id(*low, *high, &targets)
                .map_err(invalid)?;
        }
        for tag in &exclusion.tags {
            exclusions
                .remove_targets_by_tag(tag, &targets)
                .map_err(invalid)?;
        }
    }
    Ok(exclusions)
}

fn declared_length(exchange: &Exchange<'_>) -> Option<u64> {
    exchange
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Builds the request the rule set inspects. HTTP/2 and HTTP/3 carry the host in the
/// `:authority` pseudo-header, so a `Host` header is added from the canonical host when the
/// client sent none, as the CRS expects one.
fn waf_request(exchange: &Exchange<'_>, body: Bytes) -> portcullis_waf::Request {
    let mut headers: Vec<(String, Vec<u8>)> = exchange
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect();
    if !exchange.headers.contains_key(header::HOST) && !exchange.canonical.host.is_empty() {
        headers.push((
            "host".to_string(),
            exchange.canonical.host.as_bytes().to_vec(),
        ));
    }
    let protocol = match exchange.version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    };
    portcullis_waf::Request {
        method: exchange.method.as_str().to_string(),
        uri: exchange.target.to_string(),
        protocol: protocol.to_string(),
        headers,
        body: body.to_vec(),
        remote_addr: exchange.canonical.client_ip.to_string(),
    }
}
