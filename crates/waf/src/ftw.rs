//! In-process runner for the CRS regression tests, which are go-ftw YAML files.
//!
//! go-ftw sends each stage's request to a web server and reads the server's error log. Here the
//! stage's request goes straight to [`RuleSet::evaluate`], and the rules that matched and log
//! stand in for the error log. A stage that checks only the HTTP status, or expects the server
//! to reject the request, has nothing to compare in process and is skipped with that reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use yaml_rust2::{Yaml, YamlLoader};

use crate::{Error, MatchedRule, Request, RuleSet};

/// Log expectations of a stage.
#[derive(Clone, Debug, Default)]
pub struct Expectation {
    pub expect_ids: Vec<u32>,
    pub no_expect_ids: Vec<u32>,
    pub match_regex: Option<String>,
    pub no_match_regex: Option<String>,
    /// True when the output has no log expectation (only `status` or `expect_error`).
    pub without_log: bool,
}

/// One stage: a request and its expectation.
#[derive(Clone, Debug)]
pub struct Stage {
    pub request: Result<Request, String>,
    pub expectation: Expectation,
}

/// One test of a YAML file, such as `942100-1`.
#[derive(Clone, Debug)]
pub struct TestCase {
    pub rule_id: u32,
    pub test_id: u32,
    /// Directory name of the test file, which matches the rule file stem.
    pub family: String,
    pub stages: Vec<Stage>,
}

impl TestCase {
    pub fn name(&self) -> String {
        format!("{}-{}", self.rule_id, self.test_id)
    }
}

/// An entry of a CRS test-overrides file.
#[derive(Clone, Debug)]
pub struct Override {
    pub rule_id: u32,
    pub test_ids: Vec<u32>,
    pub reason: String,
    /// Replacement expectation. `None` when the override changes only the status or gives no
    /// output, so the test is skipped.
    pub expectation: Option<Expectation>,
}

/// Verdict for one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    Skip(String),
}

/// Result of one stage.
#[derive(Clone, Debug)]
pub struct StageResult {
    pub test: String,
    /// Stage number from 1, and the stage count of the test.
    pub stage: usize,
    pub stages: usize,
    pub family: String,
    pub verdict: Verdict,
}

impl StageResult {
    /// Formats the result as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        object.insert("test".into(), self.test.clone().into());
        if self.stages > 1 {
            object.insert("stage".into(), self.stage.into());
        }
        let (result, reason) = match &self.verdict {
            Verdict::Pass => ("pass", None),
            Verdict::Fail(reason) => ("fail", Some(reason)),
            Verdict::Skip(reason) => ("skip", Some(reason)),
        };
        object.insert("result".into(), result.into());
        if let Some(reason) = reason {
            object.insert("reason".into(), reason.clone().into());
        }
        serde_json::Value::Object(object)
    }
}

/// Pass, fail and skip counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Counts {
    fn add(&mut self, verdict: &Verdict) {
        match verdict {
            Verdict::Pass => self.passed += 1,
            Verdict::Fail(_) => self.failed += 1,
            Verdict::Skip(_) => self.skipped += 1,
        }
    }

    /// Returns passed / (passed + failed), or 1 when nothing ran.
    pub fn pass_rate(&self) -> f64 {
        let run = self.passed + self.failed;
        if run == 0 {
            1.0
        } else {
            self.passed as f64 / run as f64
        }
    }
}

/// Totals and per-family counts.
pub fn summarize(results: &[StageResult]) -> (Counts, BTreeMap<String, Counts>) {
    let mut total = Counts::default();
    let mut families: BTreeMap<String, Counts> = BTreeMap::new();
    for result in results {
        total.add(&result.verdict);
        families
            .entry(result.family.clone())
            .or_default()
            .add(&result.verdict);
    }
    (total, families)
}

/// Loads every `*.yaml` and `*.yml` file under `dir`, sorted by path.
pub fn load_tests(dir: &Path) -> Result<Vec<TestCase>, Error> {
    let mut files = Vec::new();
    collect_yaml(dir, &mut files)?;
    files.sort();
    let mut tests = Vec::new();
    for file in files {
        tests.extend(parse_test_file(&file)?);
    }
    Ok(tests)
}

fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            collect_yaml(&path, files)?;
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            files.push(path);
        }
    }
    Ok(())
}

fn read_yaml(path: &Path) -> Result<Yaml, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |message: String| Error::Test {
        path: path.to_path_buf(),
        message,
    };
    let document = YamlLoader::load_from_str(&text)
        .map_err(|error| invalid(error.to_string()))?
        .into_iter()
        .next();
    Ok(document.unwrap_or(Yaml::Null))
}

fn as_u32(yaml: &Yaml) -> Option<u32> {
    match yaml {
        Yaml::Integer(value) => u32::try_from(*value).ok(),
        Yaml::String(text) => text.parse().ok(),
        _ => None,
    }
}

fn as_text(yaml: &Yaml) -> Option<String> {
    match yaml {
        Yaml::String(text) => Some(text.clone()),
        Yaml::Integer(value) => Some(value.to_string()),
        Yaml::Real(value) => Some(value.clone()),
        Yaml::Boolean(value) => Some(value.to_string()),
        _ => None,
    }
}

fn id_list(yaml: &Yaml) -> Vec<u32> {
    match yaml {
        Yaml::Array(items) => items.iter().filter_map(as_u32).collect(),
        other => as_u32(other).into_iter().collect(),
    }
}

fn parse_test_file(path: &Path) -> Result<Vec<TestCase>, Error> {
    let document = read_yaml(path)?;
    if document.is_null() {
        // A file that holds only comments defines no tests.
        return Ok(Vec::new());
    }
    let invalid = |message: &str| Error::Test {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let rule_id = as_u32(&document["rule_id"]).ok_or_else(|| invalid("missing rule_id"))?;
    let family = path
        .parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tests = document["tests"]
        .as_vec()
        .ok_or_else(|| invalid("missing tests list"))?;
    let mut cases = Vec::new();
    for test in tests {
        let test_id = as_u32(&test["test_id"]).ok_or_else(|| invalid("test without test_id"))?;
        let stages = test["stages"]
            .as_vec()
            .ok_or_else(|| invalid("test without stages"))?
            .iter()
            .map(|stage| {
                let stage = if stage["stage"].is_badvalue() {
                    stage
                } else {
                    &stage["stage"]
                };
                Stage {
                    request: build_request(&stage["input"]),
                    expectation: parse_expectation(&stage["output"]),
                }
            })
            .collect();
        cases.push(TestCase {
            rule_id,
            test_id,
            family: family.clone(),
            stages,
        });
    }
    Ok(cases)
}

fn parse_expectation(output: &Yaml) -> Expectation {
    let log = &output["log"];
    let mut expectation = Expectation {
        expect_ids: id_list(&log["expect_ids"]),
        no_expect_ids: id_list(&log["no_expect_ids"]),
        match_regex: as_text(&log["match_regex"]),
        no_match_regex: as_text(&log["no_match_regex"]),
        without_log: log.is_badvalue(),
    };
    // Older files use the singular keys.
    expectation.expect_ids.extend(id_list(&log["expect_id"]));
    expectation
        .no_expect_ids
        .extend(id_list(&log["no_expect_id"]));
    expectation
}

/// Builds the request of a stage's `input`, as go-ftw would send it.
fn build_request(input: &Yaml) -> Result<Request, String> {
    if let Some(encoded) = as_text(&input["encoded_request"]) {
        let compact: String = encoded.split_whitespace().collect();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|error| format!("invalid encoded_request: {error}"))?;
        return parse_raw_request(&raw);
    }

    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(map) = input["headers"].as_hash() {
        for (name, value) in map {
            if let (Some(name), Some(value)) = (as_text(name), as_text(value)) {
                headers.push((name, value.into_bytes()));
            }
        }
    }

    let body = as_text(&input["data"]).unwrap_or_default().into_bytes();
    let autocomplete = input["autocomplete_headers"].as_bool().unwrap_or(true);
    let has = |headers: &[(String, Vec<u8>)], name: &str| {
        headers
            .iter()
            .any(|(key, _)| key.eq_ignore_ascii_case(name))
    };
    let method = as_text(&input["method"]).unwrap_or_else(|| "GET".to_string());
    // Like an HTTP client, go-ftw sends `Content-Length: 0` on a POST, PUT or PATCH without body.
    let sends_length = !body.is_empty() || matches!(method.as_str(), "POST" | "PUT" | "PATCH");
    if autocomplete && sends_length && !has(&headers, "content-length") {
        let length = body.len().to_string().into_bytes();
        headers.push(("Content-Length".to_string(), length));
    }
    if autocomplete && !body.is_empty() && !has(&headers, "content-type") {
        let form = b"application/x-www-form-urlencoded".to_vec();
        headers.push(("Content-Type".to_string(), form));
    }
    if autocomplete && !has(&headers, "connection") {
        headers.push(("Connection".to_string(), b"close".to_vec()));
    }

    Ok(frame_body(Request {
        method,
        uri: as_text(&input["uri"]).unwrap_or_else(|| "/".to_string()),
        protocol: as_text(&input["version"]).unwrap_or_else(|| "HTTP/1.1".to_string()),
        headers,
        body,
        remote_addr: "127.0.0.1".to_string(),
    }))
}

/// Applies HTTP/1.1 message framing (RFC 9112, section 6.3) as the web server in front of the
/// WAF would: a chunked body is decoded and any `Content-Length` dropped, and without either
/// header the request has no body.
fn frame_body(mut request: Request) -> Request {
    let chunked = request.headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().starts_with(b"chunked")
    });
    let has_length = request.header("content-length").is_some();
    if chunked {
        request.body = decode_chunked(&request.body);
        request
            .headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case("content-length"));
    } else if !has_length && request.protocol.starts_with("HTTP/1") {
        request.body.clear();
    }
    request
}

/// Returns the reason a web server would reject the request before it reaches the WAF, if any.
fn server_rejection(request: &Request) -> Option<&'static str> {
    let bare_line_break = request
        .headers
        .iter()
        .any(|(_, value)| value.contains(&b'\r') || value.contains(&b'\n'));
    bare_line_break.then_some("a header value contains CR or LF")
}

/// Parses a raw HTTP/1 request.
fn parse_raw_request(raw: &[u8]) -> Result<Request, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            raw.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        })
        .unwrap_or((raw.len(), raw.len()));
    let head = String::from_utf8_lossy(&raw[..head_end.0]).into_owned();
    let mut lines = head.lines();
    let request_line = lines.next().ok_or("empty encoded_request")?;
    let mut parts = request_line.splitn(3, ' ');
    let method = parts.next().unwrap_or_default().to_string();
    let uri = parts.next().unwrap_or("/").to_string();
    let protocol = parts.next().unwrap_or("HTTP/1.1").trim().to_string();
    let mut headers = Vec::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().as_bytes().to_vec()));
        }
    }
    Ok(frame_body(Request {
        method,
        uri,
        protocol,
        headers,
        body: raw[head_end.1..].to_vec(),
        remote_addr: "127.0.0.1".to_string(),
    }))
}

fn escape_log(text: &str) -> String {
    let mut output = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            output.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            output.push(c);
        }
    }
    output
}

fn decode_chunked(mut input: &[u8]) -> Vec<u8> {
    let mut output = Vec::new();
    while let Some(line_end) = input.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&input[..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        input = &input[line_end + 2..];
        if size == 0 || size > input.len() {
            break;
        }
        output.extend_from_slice(&input[..size]);
        input = input.get(size + 2..).unwrap_or_default();
    }
    output
}

/// Loads a CRS test-overrides file (`test_overrides` entries).
pub fn load_overrides(path: &Path) -> Result<Vec<Override>, Error> {
    let document = read_yaml(path)?;
    let entries = document["test_overrides"]
        .as_vec()
        .cloned()
        .unwrap_or_default();
    let mut overrides = Vec::new();
    for entry in entries {
        let rule_id = as_u32(&entry["rule_id"]).ok_or_else(|| Error::Test {
            path: path.to_path_buf(),
            message: "override without rule_id".to_string(),
        })?;
        let output = &entry["output"];
        let expectation = (!output["log"].is_badvalue() && output["expect_error"].is_badvalue())
            .then(|| parse_expectation(output));
        overrides.push(Override {
            rule_id,
            test_ids: id_list(&entry["test_ids"]),
            reason: as_text(&entry["reason"])
                .unwrap_or_default()
                .trim()
                .to_string(),
            expectation,
        });
    }
    Ok(overrides)
}

/// Runs every stage of `tests` through `set`.
pub fn run(set: &RuleSet, tests: &[TestCase], overrides: &[Override]) -> Vec<StageResult> {
    let mut results = Vec::new();
    for test in tests {
        let applied = overrides.iter().find(|o| {
            o.rule_id == test.rule_id
                && (o.test_ids.is_empty() || o.test_ids.contains(&test.test_id))
        });
        let response_rule = set
            .rule(test.rule_id)
            .map_or(test.family.starts_with("RESPONSE-"), |rule| rule.phase > 2);
        for (index, stage) in test.stages.iter().enumerate() {
            let verdict = if response_rule {
                Verdict::Skip(
                    "rule runs in a response phase, which this engine does not evaluate"
                        .to_string(),
                )
            } else {
                match applied {
                    Some(o) => match &o.expectation {
                        Some(expectation) => run_stage(set, &stage.request, expectation),
                        None => Verdict::Skip(format!("override: {}", o.reason)),
                    },
                    None => run_stage(set, &stage.request, &stage.expectation),
                }
            };
            results.push(StageResult {
                test: test.name(),
                stage: index + 1,
                stages: test.stages.len(),
                family: test.family.clone(),
                verdict,
            });
        }
    }
    results
}

fn run_stage(
    set: &RuleSet,
    request: &Result<Request, String>,
    expectation: &Expectation,
) -> Verdict {
    if expectation.without_log {
        return Verdict::Skip(
            "expects only an HTTP status or a connection error, which need a web server"
                .to_string(),
        );
    }
    let request = match request {
        Ok(request) => request,
        Err(error) => return Verdict::Fail(format!("failed to build the request: {error}")),
    };

    // A request the server rejects never reaches the WAF, so nothing is logged.
    let matched = match server_rejection(request) {
        Some(_) => Vec::new(),
        None => set.evaluate(request).matched,
    };
    let logged: Vec<&MatchedRule> = matched.iter().filter(|rule| rule.logged).collect();
    let problems = compare(expectation, &logged);
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(problems.join("; "))
    }
}

/// Returns every way the logged rules differ from the expectation.
fn compare(expectation: &Expectation, logged: &[&MatchedRule]) -> Vec<String> {
    let ids: Vec<u32> = logged.iter().map(|rule| rule.id).collect();
    let missing: Vec<u32> = expectation
        .expect_ids
        .iter()
        .copied()
        .filter(|id| !ids.contains(id))
        .collect();
    let unexpected: Vec<u32> = expectation
        .no_expect_ids
        .iter()
        .copied()
        .filter(|id| ids.contains(id))
        .collect();

    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "expected ids {missing:?} did not fire (fired: {ids:?})"
        ));
    }
    if !unexpected.is_empty() {
        problems.push(format!("ids {unexpected:?} fired but must not"));
    }

    let log = error_log(logged);
    if let Some(pattern) = &expectation.match_regex {
        match regex::Regex::new(pattern) {
            Ok(regex) if regex.is_match(&log) => {}
            Ok(_) => problems.push(format!("log does not match {pattern}")),
            Err(error) => problems.push(format!("invalid match_regex {pattern}: {error}")),
        }
    }
    if let Some(pattern) = &expectation.no_match_regex {
        match regex::Regex::new(pattern) {
            Ok(regex) if !regex.is_match(&log) => {}
            Ok(_) => problems.push(format!("log matches {pattern} (fired: {ids:?})")),
            Err(error) => problems.push(format!("invalid no_match_regex {pattern}: {error}")),
        }
    }
    problems
}

/// Formats matched rules like ModSecurity's error log, which escapes control characters.
fn error_log(logged: &[&MatchedRule]) -> String {
    logged
        .iter()
        .map(|rule| {
            format!(
                "[id \"{}\"] [msg \"{}\"] [data \"{}\"]\n",
                rule.id,
                escape_log(&rule.msg),
                escape_log(&rule.logdata)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_chunked_request_parses() {
        let raw = b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nHi \r\n3\r\nCRS\r\n0\r\n\r\n";
        let request = parse_raw_request(raw).unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.uri, "/a?b=c");
        assert_eq!(request.protocol, "HTTP/1.1");
        assert_eq!(request.body, b"Hi CRS");
        assert_eq!(request.header("host"), Some(&b"x"[..]));
    }

    #[test]
    fn framing_follows_transfer_encoding_and_length() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 20\r\nTransfer-Encoding: chunked\r\n\r\n3\r\na=1\r\n0\r\n\r\n";
        let request = parse_raw_request(raw).unwrap();
        assert_eq!(request.body, b"a=1");
        assert_eq!(request.header("content-length"), None);
        let without_length = parse_raw_request(b"POST / HTTP/1.1\r\nHost: h\r\n\r\na=1").unwrap();
        assert!(without_length.body.is_empty());
    }

    #[test]
    fn header_line_break_is_rejected() {
        let mut request = Request::with_query_value("a", "b");
        assert_eq!(server_rejection(&request), None);
        request.headers.push(("X".to_string(), b"a\rB: c".to_vec()));
        assert!(server_rejection(&request).is_some());
    }

    #[test]
    fn log_escapes_control_characters() {
        assert_eq!(escape_log("a\r\nb"), "a\\x0d\\x0ab");
    }

    #[test]
    fn stage_input_autocompletes_headers() {
        let yaml =
            &YamlLoader::load_from_str("method: POST\nuri: /p\ndata: a=1\nheaders:\n  Host: h\n")
                .unwrap()[0];
        let request = build_request(yaml).unwrap();
        assert_eq!(request.header("content-length"), Some(&b"3"[..]));
        assert_eq!(
            request.header("content-type"),
            Some(&b"application/x-www-form-urlencoded"[..])
        );
        assert_eq!(request.protocol, "HTTP/1.1");
    }

    #[test]
    fn verdict_compares_ids() {
        let set = RuleSet::from_text(
            "SecRule ARGS \"@rx x\" \"id:5,phase:2,pass\"",
            Path::new("."),
        )
        .unwrap();
        let request = Ok(Request::with_query_value("a", "x"));
        let expect = Expectation {
            expect_ids: vec![5],
            ..Expectation::default()
        };
        assert_eq!(run_stage(&set, &request, &expect), Verdict::Pass);
        let forbid = Expectation {
            no_expect_ids: vec![5],
            ..Expectation::default()
        };
        assert!(matches!(
            run_stage(&set, &request, &forbid),
            Verdict::Fail(_)
        ));
    }
}
