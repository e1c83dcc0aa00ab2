//! Rule operators (`@rx`, `@pm`, `@eq`, ...), compiled once when the rule set loads.

use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use ipnet::IpNet;
use regex::bytes::Regex;

use crate::Error;
use crate::model::Model;
use crate::regex_repair::{self, Repair};
use crate::seclang::Location;

/// An operator argument: literal bytes, or text with `%{...}` macros expanded per request.
#[derive(Clone, Debug)]
pub enum Argument {
    Literal(Vec<u8>),
    Macro(String),
}

impl Argument {
    fn new(text: &str) -> Self {
        if text.contains("%{") {
            Self::Macro(text.to_string())
        } else {
            Self::Literal(text.as_bytes().to_vec())
        }
    }
}

/// Backtracking steps after which a `fancy-regex` match gives up and counts as no match, as
/// PCRE does in ModSecurity when it reaches `SecPcreMatchLimit`. This is fancy-regex's default.
const BACKTRACK_LIMIT: usize = 1_000_000;

/// Maps each byte of `input` to the code point of the same value, for `fancy-regex`, which
/// matches strings.
fn latin1_text(input: &[u8]) -> String {
    input.iter().map(|&byte| char::from(byte)).collect()
}

/// Maps a string of code points up to U+00FF back to bytes, the inverse of [`latin1_text`].
fn latin1_bytes(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// A compiled operator.
#[derive(Clone, Debug)]
pub enum OperatorKind {
    Rx(Regex),
    /// An `@rx` pattern with lookarounds or backreferences, which the `regex` crate does not
    /// support, on the backtracking `fancy-regex` engine. The input's bytes are mapped to the
    /// code points of the same value, so the pattern matches bytes as PCRE does without its
    /// UTF flag. The exception: `\w`, `\d` and `\s` also match the non-ASCII letters, digits
    /// and spaces among U+0080 to U+00FF. CRS 3.3 has three such patterns (rules 920120, 942130
    /// and 953120); CRS 4 has none.
    BacktrackingRx(Box<fancy_regex::Regex>),
    /// `@pm`, `@pmFromFile` and `@pmf`: case-insensitive phrase match.
    Pm(AhoCorasick),
    StrEq(Argument),
    Contains(Argument),
    ContainsWord(Argument),
    BeginsWith(Argument),
    EndsWith(Argument),
    Within(Argument),
    Eq(Argument),
    Ge(Argument),
    Gt(Argument),
    Le(Argument),
    Lt(Argument),
    IpMatch(Vec<IpNet>),
    /// Allowed bytes. The operator matches when a byte outside the set occurs.
    ValidateByteRange(Box<[bool; 256]>),
    ValidateUrlEncoding,
    ValidateUtf8Encoding,
    DetectSqli,
    DetectXss,
    /// portcullis extension: the learned model's probability that the value is an attack is
    /// at least the argument, a number from 0 to 1.
    DetectModel(Argument),
    UnconditionalMatch,
    NoMatch,
}

/// An operator with its negation flag.
#[derive(Clone, Debug)]
pub struct Operator {
    pub kind: OperatorKind,
    pub negated: bool,
    /// Operator name as written, for messages.
    pub name: String,
}

/// Result of one operator evaluation: the match, with the captured groups for `capture`.
pub struct Outcome {
    pub matched: bool,
    pub captures: Vec<Vec<u8>>,
}

impl Operator {
    /// Parses an operator string such as `!@rx ^a` or a bare pattern (an implicit `@rx`).
    /// Pattern files for `@pmFromFile` are read relative to `rules_dir`.
    pub fn parse(
        location: &Location,
        text: &str,
        rules_dir: &Path,
        repairs: &mut Vec<(Location, Repair)>,
    ) -> Result<Self, Error> {
        let (negated, rest) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (name, argument) = match rest.strip_prefix('@') {
            Some(rest) => match rest.split_once(' ') {
                Some((name, argument)) => (name, argument),
                None => (rest, ""),
            },
            None => ("rx", rest),
        };
        let kind = match name.to_ascii_lowercase().as_str() {
            "rx" => match regex_repair::compile(argument) {
                Ok((regex, repair)) => {
                    if let Some(repair) = repair {
                        repairs.push((location.clone(), repair));
                    }
                    OperatorKind::Rx(regex)
                }
                Err(error) => {
                    let fancy = fancy_regex::RegexBuilder::new(argument)
                        .backtrack_limit(BACKTRACK_LIMIT)
                        .build()
                        .map_err(|fancy_error| {
                            Error::syntax(
                                location,
                                format!(
                                    "@rx pattern compiles on neither the regex crate ({error}) \
                                     nor fancy-regex ({fancy_error})"
                                ),
                            )
                        })?;
                    OperatorKind::BacktrackingRx(Box::new(fancy))
                }
            },
            "pm" => OperatorKind::Pm(phrase_matcher(location, argument.split_whitespace())?),
            "pmfromfile" | "pmf" => {
                let mut phrases = Vec::new();
                for file in argument.split_whitespace() {
                    let path = rules_dir.join(file);
                    let text = std::fs::read_to_string(&path).map_err(|error| {
                        Error::syntax(
                            location,
                            format!("failed to read phrase file {}: {error}", path.display()),
                        )
                    })?;
                    phrases.extend(
                        text.lines()
                            .map(str::trim)
                            .filter(|line| !line.is_empty() && !line.starts_with('#'))
                            .map(str::to_string),
                    );
                }
                OperatorKind::Pm(phrase_matcher(
                    location,
                    phrases.iter().map(String::as_str),
                )?)
            }
            "streq" => OperatorKind::StrEq(Argument::new(argument)),
            "contains" => OperatorKind::Contains(Argument::new(argument)),
            "containsword" => OperatorKind::ContainsWord(Argument::new(argument)),
            "beginswith" => OperatorKind::BeginsWith(Argument::new(argument)),
            "endswith" => OperatorKind::EndsWith(Argument::new(argument)),
            "within" => OperatorKind::Within(Argument::new(argument)),
            "eq" => OperatorKind::Eq(Argument::new(argument)),
            "ge" => OperatorKind::Ge(Argument::new(argument)),
            "gt" => OperatorKind::Gt(Argument::new(argument)),
            "le" => OperatorKind::Le(Argument::new(argument)),
            "lt" => OperatorKind::Lt(Argument::new(argument)),
            "ipmatch" => OperatorKind::IpMatch(parse_networks(location, argument)?),
            "validatebyterange" => {
                OperatorKind::ValidateByteRange(parse_byte_ranges(location, argument)?)
            }
            "validateurlencoding" => OperatorKind::ValidateUrlEncoding,
            "validateutf8encoding" => OperatorKind::ValidateUtf8Encoding,
            "detectsqli" => OperatorKind::DetectSqli,
            "detectxss" => OperatorKind::DetectXss,
            "detectmodel" => {
                let threshold = Argument::new(argument);
                if let Argument::Literal(bytes) = &threshold
                    && parse_probability(bytes).is_none()
                {
                    return Err(Error::syntax(
                        location,
                        format!(
                            "`@detectModel` expects a probability from 0 to 1, not `{argument}`"
                        ),
                    ));
                }
                OperatorKind::DetectModel(threshold)
            }
            "unconditionalmatch" => OperatorKind::UnconditionalMatch,
            "nomatch" => OperatorKind::NoMatch,
            // They need a GeoIP database and DNS lookups, which the engine does not have. The
            // rule set lists them as warnings (see `Compiler::add_directive`).
            "geolookup" | "rbl" => OperatorKind::NoMatch,
            _ => {
                return Err(Error::syntax(
                    location,
                    format!("unsupported operator `@{name}`"),
                ));
            }
        };
        Ok(Self {
            kind,
            negated,
            name: name.to_string(),
        })
    }

    /// Evaluates the operator on `input`. `expand` expands the macros of an argument.
    pub fn evaluate(
        &self,
        input: &[u8],
        expand: &dyn Fn(&str) -> Vec<u8>,
        want_captures: bool,
    ) -> Outcome {
        let mut captures = Vec::new();
        let argument = |argument: &Argument| match argument {
            Argument::Literal(bytes) => bytes.clone(),
            Argument::Macro(text) => expand(text),
        };
        let matched = match &self.kind {
            OperatorKind::Rx(regex) => {
                if want_captures {
                    match regex.captures(input) {
                        Some(groups) => {
                            captures = groups
                                .iter()
                                .take(10)
                                .map(|group| {
                                    group.map(|g| g.as_bytes().to_vec()).unwrap_or_default()
                                })
                                .collect();
                            true
                        }
                        None => false,
                    }
                } else {
                    regex.is_match(input)
                }
            }
            OperatorKind::BacktrackingRx(regex) => {
                match regex.captures(&latin1_text(input)) {
                    Ok(Some(groups)) => {
                        if want_captures {
                            captures = groups
                                .iter()
                                .take(10)
                                .map(|group| {
                                    group.map(|g| latin1_bytes(g.as_str())).unwrap_or_default()
                                })
                                .collect();
                        }
                        true
                    }
                    // A match that reached the backtrack limit counts as no match.
                    Ok(None) | Err(_) => false,
                }
            }
            OperatorKind::Pm(matcher) => match matcher.find(input) {
                Some(found) => {
                    if want_captures {
                        captures.push(input[found.range()].to_vec());
                    }
                    true
                }
                None => false,
            },
            OperatorKind::StrEq(arg) => input == argument(arg).as_slice(),
            OperatorKind::Contains(arg) => contains(input, &argument(arg)),
            OperatorKind::ContainsWord(arg) => contains_word(input, &argument(arg)),
            OperatorKind::BeginsWith(arg) => input.starts_with(&argument(arg)),
            OperatorKind::EndsWith(arg) => input.ends_with(&argument(arg)),
            OperatorKind::Within(arg) => {
                // An empty input is within nothing, as in ModSecurity.
                !input.is_empty() && contains(&argument(arg), input)
            }
            OperatorKind::Eq(arg) => parse_number(input) == parse_number(&argument(arg)),
            OperatorKind::Ge(arg) => parse_number(input) >= parse_number(&argument(arg)),
            OperatorKind::Gt(arg) => parse_number(input) > parse_number(&argument(arg)),
            OperatorKind::Le(arg) => parse_number(input) <= parse_number(&argument(arg)),
            OperatorKind::Lt(arg) => parse_number(input) < parse_number(&argument(arg)),
            OperatorKind::IpMatch(networks) => std::str::from_utf8(input)
                .ok()
                .and_then(|text| text.trim().parse::<std::net::IpAddr>().ok())
                .is_some_and(|address| networks.iter().any(|network| network.contains(&address))),
            OperatorKind::ValidateByteRange(allowed) => {
                input.iter().any(|byte| !allowed[usize::from(*byte)])
            }
            OperatorKind::ValidateUrlEncoding => !valid_url_encoding(input),
            OperatorKind::ValidateUtf8Encoding => std::str::from_utf8(input).is_err(),
            OperatorKind::DetectSqli => {
                let result = libinjectionrs::detect_sqli(input);
                let injection = result.is_injection();
                if injection
                    && want_captures
                    && let Some(fingerprint) = result.fingerprint
                {
                    captures.push(fingerprint.to_string().into_bytes());
                }
                injection
            }
            OperatorKind::DetectXss => libinjectionrs::detect_xss(input).is_injection(),
            OperatorKind::DetectModel(arg) => {
                // A macro that expands to no valid probability never matches.
                let threshold = parse_probability(&argument(arg)).unwrap_or(f64::INFINITY);
                if threshold <= 0.0 && !want_captures {
                    // Every probability is at least 0, so the model need not run.
                    return Outcome {
                        matched: !self.negated,
                        captures,
                    };
                }
                let probability = Model::shipped().probability(input);
                if want_captures {
                    captures.push(format!("{probability:.3}").into_bytes());
                }
                probability >= threshold
            }
            OperatorKind::UnconditionalMatch => true,
            OperatorKind::NoMatch => false,
        };
        Outcome {
            matched: matched != self.negated,
            captures,
        }
    }
}

fn parse_probability(bytes: &[u8]) -> Option<f64> {
    std::str::from_utf8(bytes)
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|value| (0.0..=1.0).contains(value))
}

fn phrase_matcher<'a>(
    location: &Location,
    phrases: impl Iterator<Item = &'a str>,
) -> Result<AhoCorasick, Error> {
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostFirst)
        .build(phrases)
        .map_err(|error| Error::syntax(location, format!("invalid phrase list: {error}")))
}

fn parse_networks(location: &Location, text: &str) -> Result<Vec<IpNet>, Error> {
    text.split([',', ' '])
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    Error::syntax(
                        location,
                        format!("invalid address or network `{item}` in @ipMatch"),
                    )
                })
        })
        .collect()
}

fn parse_byte_ranges(location: &Location, text: &str) -> Result<Box<[bool; 256]>, Error> {
    let mut allowed = Box::new([false; 256]);
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let invalid = || {
            Error::syntax(
                location,
                format!("invalid byte range `{item}` in @validateByteRange"),
            )
        };
        let (low, high) = match item.split_once('-') {
            Some((low, high)) => (low.trim(), high.trim()),
            None => (item, item),
        };
        let low: u8 = low.parse().map_err(|_| invalid())?;
        let high: u8 = high.parse().map_err(|_| invalid())?;
        if low > high {
            return Err(invalid());
        }
        for byte in low..=high {
            allowed[usize::from(byte)] = true;
        }
    }
    Ok(allowed)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

fn contains_word(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let is_word = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    haystack
        .windows(needle.len())
        .enumerate()
        .any(|(start, window)| {
            let end = start + needle.len();
            window == needle
                && (start == 0 || !is_word(haystack[start - 1]))
                && (end == haystack.len() || !is_word(haystack[end]))
        })
}

/// Parses a number the way C's `atoi` does: optional sign and leading digits, 0 otherwise.
pub fn parse_number(bytes: &[u8]) -> i64 {
    let text = bytes.trim_ascii();
    let (negative, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let mut value: i64 = 0;
    for byte in digits.iter().take_while(|b| b.is_ascii_digit()) {
        value = value
            .saturating_mul(10)
            .saturating_add(i64::from(byte - b'0'));
    }
    if negative { -value } else { value }
}

fn valid_url_encoding(input: &[u8]) -> bool {
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let valid = input
                .get(i + 1..i + 3)
                .is_some_and(|pair| pair.iter().all(u8::is_ascii_hexdigit));
            if !valid {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn operator(text: &str) -> Operator {
        let location = Location {
            file: Arc::from("t.conf"),
            line: 1,
        };
        Operator::parse(&location, text, Path::new("."), &mut Vec::new()).unwrap()
    }

    fn matches(text: &str, input: &str) -> bool {
        operator(text)
            .evaluate(input.as_bytes(), &|_| b"GET POST".to_vec(), false)
            .matched
    }

    #[test]
    fn lookaround_patterns_backtrack() {
        assert!(matches!(
            operator("@rx (?<!&amp|&apos);").kind,
            OperatorKind::BacktrackingRx(_)
        ));
        assert!(matches("@rx (?<!&amp|&apos);", "a;b"));
        assert!(!matches("@rx (?<!&amp|&apos);", "a&amp;b"));
        assert!(matches(r"@rx \b(\w+)=\1\b", "x=x"));
        assert!(!matches(r"@rx \b(\w+)=\1\b", "x=y"));
        // Bytes above 0x7f match as themselves, not as UTF-8.
        let byte = operator(r"@rx (?<!a)\xe9");
        assert!(byte.evaluate(b"b\xe9", &|_| Vec::new(), false).matched);
        assert!(
            !byte
                .evaluate("b\u{e9}".as_bytes(), &|_| Vec::new(), false)
                .matched
        );
        let outcome = operator(r"@rx (\w+)(?=;)").evaluate(b"key;", &|_| Vec::new(), true);
        assert_eq!(outcome.captures, vec![b"key".to_vec(), b"key".to_vec()]);
    }

    #[test]
    fn string_operators_match() {
        assert!(matches("@rx ^a.c$", "abc"));
        assert!(matches("!@rx ^a", "bcd"));
        assert!(matches("@pm foo BAR", "xbarx"));
        assert!(matches("@streq abc", "abc"));
        assert!(matches("@containsWord select", "a select b"));
        assert!(!matches("@containsWord select", "selection"));
        assert!(matches("@within %{tx.allowed_methods}", "POST"));
        assert!(!matches("@within %{tx.allowed_methods}", "PUT"));
        assert!(!matches("@within %{tx.allowed_methods}", ""));
        assert!(matches("@endsWith .php", "a.php"));
    }

    #[test]
    fn numeric_operators_compare() {
        assert!(matches("@eq 0", ""));
        assert!(matches("@gt 3", "10"));
        assert!(matches("@lt 2", "1abc"));
        assert!(matches("@ge -1", "-1"));
    }

    #[test]
    fn validation_operators_flag_bad_input() {
        assert!(matches("@validateByteRange 32-126", "a\tb"));
        assert!(!matches("@validateByteRange 9,32-126", "a\tb"));
        assert!(matches("@validateUrlEncoding", "%zz"));
        assert!(!matches("@validateUrlEncoding", "%41"));
        assert!(
            operator("@validateUtf8Encoding")
                .evaluate(b"\xc3\x28", &|_| Vec::new(), false)
                .matched
        );
        assert!(matches("@ipMatch 127.0.0.1,10.0.0.0/8", "10.1.2.3"));
    }

    #[test]
    fn libinjection_detects() {
        assert!(matches("@detectSQLi", "1' OR '1'='1"));
        assert!(!matches("@detectSQLi", "hello world"));
        assert!(matches("@detectXSS", "<script>alert(1)</script>"));
    }

    #[test]
    fn unknown_operator_is_reported() {
        let location = Location {
            file: Arc::from("t.conf"),
            line: 3,
        };
        let error =
            Operator::parse(&location, "@verifyCC 1", Path::new("."), &mut Vec::new()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "t.conf:3: unsupported operator `@verifyCC`"
        );
    }
}
