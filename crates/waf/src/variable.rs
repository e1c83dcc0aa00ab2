//! Rule targets: the variables a rule inspects (`ARGS|!ARGS:id|&TX:score|XML:/*`).

use regex::bytes::Regex;

use crate::Error;
use crate::seclang::Location;

/// A SecLang variable, either a collection or a single value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variable {
    Args,
    ArgsCombinedSize,
    ArgsGet,
    ArgsGetNames,
    ArgsNames,
    ArgsPost,
    ArgsPostNames,
    Files,
    FilesCombinedSize,
    FilesNames,
    MatchedVar,
    MatchedVarName,
    MatchedVars,
    MatchedVarsNames,
    MultipartPartHeaders,
    QueryString,
    RemoteAddr,
    ReqbodyProcessor,
    RequestBasename,
    RequestBody,
    RequestBodyLength,
    RequestCookies,
    RequestCookiesNames,
    RequestFilename,
    RequestHeaders,
    RequestHeadersNames,
    RequestLine,
    RequestMethod,
    RequestProtocol,
    RequestUri,
    RequestUriRaw,
    /// A response variable. The engine evaluates request phases only, so it has no values.
    Response(&'static str),
    /// A persistent collection (`IP`, `GLOBAL`, `SESSION`, `USER`, `RESOURCE`), which CRS 3
    /// uses for IP reputation and DoS counting, or `GEO`, which `@geoLookup` fills. The engine
    /// keeps none of them, so they are always empty.
    Persistent(&'static str),
    Tx,
    UniqueId,
    /// Microseconds since the evaluation of the request started.
    Duration,
    Xml,
}

impl Variable {
    /// Looks a variable up by its SecLang name, ignoring case.
    pub fn from_name(name: &str) -> Option<Self> {
        let variable = match name.to_ascii_uppercase().as_str() {
            "ARGS" => Self::Args,
            "ARGS_COMBINED_SIZE" => Self::ArgsCombinedSize,
            "ARGS_GET" => Self::ArgsGet,
            "ARGS_GET_NAMES" => Self::ArgsGetNames,
            "ARGS_NAMES" => Self::ArgsNames,
            "ARGS_POST" => Self::ArgsPost,
            "ARGS_POST_NAMES" => Self::ArgsPostNames,
            "FILES" => Self::Files,
            "FILES_COMBINED_SIZE" => Self::FilesCombinedSize,
            "FILES_NAMES" => Self::FilesNames,
            "MATCHED_VAR" => Self::MatchedVar,
            "MATCHED_VAR_NAME" => Self::MatchedVarName,
            "MATCHED_VARS" => Self::MatchedVars,
            "MATCHED_VARS_NAMES" => Self::MatchedVarsNames,
            "MULTIPART_PART_HEADERS" => Self::MultipartPartHeaders,
            "QUERY_STRING" => Self::QueryString,
            "REMOTE_ADDR" => Self::RemoteAddr,
            "REQBODY_PROCESSOR" => Self::ReqbodyProcessor,
            "REQUEST_BASENAME" => Self::RequestBasename,
            "REQUEST_BODY" => Self::RequestBody,
            "REQUEST_BODY_LENGTH" => Self::RequestBodyLength,
            "REQUEST_COOKIES" => Self::RequestCookies,
            "REQUEST_COOKIES_NAMES" => Self::RequestCookiesNames,
            "REQUEST_FILENAME" => Self::RequestFilename,
            "REQUEST_HEADERS" => Self::RequestHeaders,
            "REQUEST_HEADERS_NAMES" => Self::RequestHeadersNames,
            "REQUEST_LINE" => Self::RequestLine,
            "REQUEST_METHOD" => Self::RequestMethod,
            "REQUEST_PROTOCOL" => Self::RequestProtocol,
            "REQUEST_URI" => Self::RequestUri,
            "REQUEST_URI_RAW" => Self::RequestUriRaw,
            "GEO" => Self::Persistent("GEO"),
            "GLOBAL" => Self::Persistent("GLOBAL"),
            "IP" => Self::Persistent("IP"),
            "RESOURCE" => Self::Persistent("RESOURCE"),
            "SESSION" => Self::Persistent("SESSION"),
            "USER" => Self::Persistent("USER"),
            "RESPONSE_BODY" => Self::Response("RESPONSE_BODY"),
            "RESPONSE_HEADERS" => Self::Response("RESPONSE_HEADERS"),
            "RESPONSE_STATUS" => Self::Response("RESPONSE_STATUS"),
            "TX" => Self::Tx,
            "UNIQUE_ID" => Self::UniqueId,
            "DURATION" => Self::Duration,
            "XML" => Self::Xml,
            _ => return None,
        };
        Some(variable)
    }

    /// Returns the SecLang name, as used in `MATCHED_VAR_NAME`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Args => "ARGS",
            Self::ArgsCombinedSize => "ARGS_COMBINED_SIZE",
            Self::ArgsGet => "ARGS_GET",
            Self::ArgsGetNames => "ARGS_GET_NAMES",
            Self::ArgsNames => "ARGS_NAMES",
            Self::ArgsPost => "ARGS_POST",
            Self::ArgsPostNames => "ARGS_POST_NAMES",
            Self::Files => "FILES",
            Self::FilesCombinedSize => "FILES_COMBINED_SIZE",
            Self::FilesNames => "FILES_NAMES",
            Self::MatchedVar => "MATCHED_VAR",
            Self::MatchedVarName => "MATCHED_VAR_NAME",
            Self::MatchedVars => "MATCHED_VARS",
            Self::MatchedVarsNames => "MATCHED_VARS_NAMES",
            Self::MultipartPartHeaders => "MULTIPART_PART_HEADERS",
            Self::QueryString => "QUERY_STRING",
            Self::RemoteAddr => "REMOTE_ADDR",
            Self::ReqbodyProcessor => "REQBODY_PROCESSOR",
            Self::RequestBasename => "REQUEST_BASENAME",
            Self::RequestBody => "REQUEST_BODY",
            Self::RequestBodyLength => "REQUEST_BODY_LENGTH",
            Self::RequestCookies => "REQUEST_COOKIES",
            Self::RequestCookiesNames => "REQUEST_COOKIES_NAMES",
            Self::RequestFilename => "REQUEST_FILENAME",
            Self::RequestHeaders => "REQUEST_HEADERS",
            Self::RequestHeadersNames => "REQUEST_HEADERS_NAMES",
            Self::RequestLine => "REQUEST_LINE",
            Self::RequestMethod => "REQUEST_METHOD",
            Self::RequestProtocol => "REQUEST_PROTOCOL",
            Self::RequestUri => "REQUEST_URI",
            Self::RequestUriRaw => "REQUEST_URI_RAW",
            Self::Response(name) | Self::Persistent(name) => name,
            Self::Tx => "TX",
            Self::UniqueId => "UNIQUE_ID",
            Self::Duration => "DURATION",
            Self::Xml => "XML",
        }
    }
}

/// The part of a collection a target selects.
#[derive(Clone, Debug)]
pub enum Selector {
    All,
    /// A key, stored lowercase because SecLang compares keys without regard to case.
    Key(String),
    Regex(Regex),
    /// An XPath expression on `XML`. Only `/*` (all text) and `//@*` (all attribute values) are
    /// evaluated.
    XPath(String),
}

/// One element of a rule's target list.
#[derive(Clone, Debug)]
pub struct Target {
    pub variable: Variable,
    pub selector: Selector,
    /// `&VAR`: the number of values instead of the values.
    pub count: bool,
    /// `!VAR:key`: removes the selected values from the rule's other targets.
    pub exclude: bool,
}

impl Target {
    /// Returns whether this exclusion target removes the value `key` of `variable`.
    pub fn excludes(&self, variable: Variable, key: &str) -> bool {
        if self.variable != variable {
            return false;
        }
        match &self.selector {
            Selector::All => true,
            Selector::Key(wanted) => wanted.eq_ignore_ascii_case(key),
            Selector::Regex(regex) => regex.is_match(key.as_bytes()),
            Selector::XPath(path) => path == key,
        }
    }
}

/// Parses a target list. `|` separates targets except inside a `/regex/` selector.
pub fn parse_targets(location: &Location, text: &str) -> Result<Vec<Target>, Error> {
    let mut targets = Vec::new();
    for part in split_targets(text) {
        targets.push(parse_target(location, part.trim())?);
    }
    Ok(targets)
}

fn split_targets(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut in_regex = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_regex => i += 1,
            b'/' if in_regex => in_regex = false,
            b'/' if i > 0
                && bytes[i - 1] == b':'
                && !text[start..i].to_ascii_uppercase().contains("XML") =>
            {
                in_regex = true
            }
            b'|' if !in_regex => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&text[start..]);
    parts
}

fn parse_target(location: &Location, text: &str) -> Result<Target, Error> {
    let mut rest = text;
    let mut exclude = false;
    let mut count = false;
    if let Some(stripped) = rest.strip_prefix('!') {
        exclude = true;
        rest = stripped;
    }
    if let Some(stripped) = rest.strip_prefix('&') {
        count = true;
        rest = stripped;
    }
    let (name, key) = match rest.split_once(':') {
        Some((name, key)) => (name, Some(key)),
        None => (rest, None),
    };
    let variable = Variable::from_name(name).ok_or_else(|| {
        Error::syntax(
            location,
            format!("unsupported variable `{name}` in target `{text}`"),
        )
    })?;
    let selector = match key {
        None | Some("") => Selector::All,
        Some(key) if variable == Variable::Xml => Selector::XPath(key.to_string()),
        Some(key) if key.len() >= 2 && key.starts_with('/') && key.ends_with('/') => {
            let pattern = &key[1..key.len() - 1];
            let regex = regex::bytes::RegexBuilder::new(pattern)
                .case_insensitive(true)
                .build()
                .map_err(|error| {
                    Error::syntax(
                        location,
                        format!("invalid selector regex `{pattern}` in target `{text}`: {error}"),
                    )
                })?;
            Selector::Regex(regex)
        }
        Some(key) => {
            let key = key.trim_matches('\'');
            Selector::Key(key.to_ascii_lowercase())
        }
    };
    Ok(Target {
        variable,
        selector,
        count,
        exclude,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn location() -> Location {
        Location {
            file: Arc::from("t.conf"),
            line: 7,
        }
    }

    #[test]
    fn targets_split_outside_regex() {
        let targets = parse_targets(
            &location(),
            "ARGS|!REQUEST_COOKIES:/^a|b$/|&TX:Score|XML://@*",
        )
        .unwrap();
        assert_eq!(targets.len(), 4);
        assert!(targets[1].exclude);
        assert!(matches!(targets[1].selector, Selector::Regex(_)));
        assert!(targets[2].count);
        assert!(matches!(&targets[2].selector, Selector::Key(key) if key == "score"));
        assert!(matches!(&targets[3].selector, Selector::XPath(path) if path == "//@*"));
    }

    #[test]
    fn unknown_variable_is_reported() {
        let error = parse_targets(&location(), "ARGS|ENV:home").unwrap_err();
        assert_eq!(
            error.to_string(),
            "t.conf:7: unsupported variable `ENV` in target `ENV:home`"
        );
    }

    #[test]
    fn exclusion_matches_key_and_regex() {
        let targets = parse_targets(&location(), "!ARGS:Foo|!REQUEST_COOKIES:/^_ga/").unwrap();
        assert!(targets[0].excludes(Variable::Args, "foo"));
        assert!(!targets[0].excludes(Variable::ArgsNames, "foo"));
        assert!(targets[1].excludes(Variable::RequestCookies, "_gat"));
        assert!(!targets[1].excludes(Variable::RequestCookies, "x_ga"));
    }
}
