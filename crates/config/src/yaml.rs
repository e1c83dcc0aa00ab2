//! Reads YAML into a `serde_json::Value` and records the line of every key path.
//!
//! The typed model is deserialised from the JSON value afterwards, so one parser serves both
//! syntax errors and semantic errors: each error carries a key path such as
//! `services[0].policies[1].rate-limit.window`, and [`LineIndex`] turns that path back into the
//! line where the key was written.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// The line (1-based) where each key path starts in the source document.
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Returns the line of `path`, or of its closest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut candidate = path;
        loop {
            if let Some(line) = self.lines.get(candidate) {
                return Some(*line);
            }
            let cut = candidate.rfind(['.', '['])?;
            candidate = &candidate[..cut];
        }
    }
}

/// A YAML syntax error, or a document that is not a single mapping.
#[derive(Debug)]
pub struct YamlError {
    pub line: Option<usize>,
    pub message: String,
}

/// Parses one YAML document into a JSON value with the line of each key path.
///
/// `${NAME}` in string scalars is replaced by the environment variable `NAME`, and
/// `${NAME:-fallback}` uses `fallback` when it is unset. A missing variable is reported as an
/// error at its key, never replaced by an empty string.
pub fn parse(
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Value, LineIndex), Vec<YamlError>> {
    let mut builder = Builder::default_with(env);
    let mut parser = Parser::new_from_str(source);
    if let Err(error) = parser.load(&mut builder, true) {
        return Err(vec![YamlError {
            line: Some(error.marker().line()),
            message: error.info().to_string(),
        }]);
    }
    if !builder.errors.is_empty() {
        return Err(builder.errors);
    }
    let root = builder.root.unwrap_or(Value::Object(Map::new()));
    if !root.is_object() {
        return Err(vec![YamlError {
            line: Some(1),
            message: "the configuration must be a YAML mapping of keys".into(),
        }]);
    }
    Ok((root, builder.index))
}

enum Frame {
    Sequence {
        items: Vec<Value>,
        path: String,
        anchor: usize,
    },
    Mapping {
        entries: Map<String, Value>,
        path: String,
        key: Option<String>,
        anchor: usize,
    },
}

struct Builder<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    root: Option<Value>,
    index: LineIndex,
    errors: Vec<YamlError>,
    documents: usize,
}

impl<'e> Builder<'e> {
    fn default_with(env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        Builder {
            env,
            stack: Vec::new(),
            anchors: HashMap::new(),
            root: None,
            index: LineIndex::default(),
            errors: Vec::new(),
            documents: 0,
        }
    }

    /// Returns the path the next value will have.
    fn next_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Sequence { items, path, .. }) => format!("{path}[{}]", items.len()),
            Some(Frame::Mapping {
                path,
                key: Some(key),
                ..
            }) => join_key(path, key),
            Some(Frame::Mapping { path, .. }) => path.clone(),
        }
    }

    /// Returns true when the next scalar is a mapping key rather than a value.
    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Mapping { key: None, .. }))
    }

    fn push_value(&mut self, value: Value, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Sequence { items, .. }) => items.push(value),
            Some(Frame::Mapping { entries, key, .. }) => {
                if let Some(key) = key.take() {
                    entries.insert(key, value);
                }
            }
        }
    }

    fn scalar(&mut self, text: String, style: TScalarStyle, anchor: usize, mark: Marker) {
        if self.expects_key() {
            let path = match self.stack.last() {
                Some(Frame::Mapping { path, .. }) => join_key(path, &text),
                _ => unreachable!("expects_key checked for a mapping"),
            };
            if let Some(Frame::Mapping { entries, .. }) = self.stack.last()
                && entries.contains_key(&text)
            {
                self.errors.push(YamlError {
                    line: Some(mark.line()),
                    message: format!("duplicate key `{path}`"),
                });
            }
            self.index.lines.entry(path).or_insert(mark.line());
            if let Some(Frame::Mapping { key, .. }) = self.stack.last_mut() {
                *key = Some(text);
            }
            return;
        }
        let path = self.next_path();
        self.index.lines.entry(path.clone()).or_insert(mark.line());
        let value = match interpolate(&text, self.env) {
            // A plain scalar is typed after interpolation, so `limit: ${LIMIT}` reads a number.
            Ok(text) if style == TScalarStyle::Plain => resolve_plain(&text),
            Ok(text) => Value::String(text),
            Err(message) => {
                self.errors.push(YamlError {
                    line: Some(mark.line()),
                    message: format!("{}: {message}", display_path(&path)),
                });
                Value::Null
            }
        };
        self.push_value(value, anchor);
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, style, anchor, _tag) => self.scalar(text, style, anchor, mark),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _)
                if self.expects_key() =>
            {
                let _ = anchor;
                self.errors.push(YamlError {
                    line: Some(mark.line()),
                    message: "a mapping key must be a plain string".into(),
                });
                // Keep parsing with a placeholder key so later errors are still found.
                if let Some(Frame::Mapping { key, .. }) = self.stack.last_mut() {
                    *key = Some(format!("<complex key at line {}>", mark.line()));
                }
                self.on_event_start(event, mark);
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => self.on_event_start(event, mark),
            Event::SequenceEnd => {
                if let Some(Frame::Sequence { items, anchor, .. }) = self.stack.pop() {
                    self.push_value(Value::Array(items), anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Mapping {
                    entries, anchor, ..
                }) = self.stack.pop()
                {
                    self.push_value(Value::Object(entries), anchor);
                }
            }
            Event::Alias(anchor) => {
                let value = self.anchors.get(&anchor).cloned().unwrap_or(Value::Null);
                if self.expects_key() {
                    self.errors.push(YamlError {
                        line: Some(mark.line()),
                        message: "an alias cannot be used as a mapping key".into(),
                    });
                    return;
                }
                self.push_value(value, 0);
            }
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.errors.push(YamlError {
                        line: Some(mark.line()),
                        message:
                            "the file has more than one YAML document; put the configuration in one"
                                .into(),
                    });
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

impl Builder<'_> {
    fn on_event_start(&mut self, event: Event, mark: Marker) {
        let path = self.next_path();
        self.index.lines.entry(path.clone()).or_insert(mark.line());
        match event {
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Sequence {
                items: Vec::new(),
                path,
                anchor,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Mapping {
                entries: Map::new(),
                path,
                key: None,
                anchor,
            }),
            _ => {}
        }
    }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Returns the path as shown to users: the document root is called `(root)`.
pub fn display_path(path: &str) -> &str {
    if path.is_empty() { "(root)" } else { path }
}

/// Resolves a plain scalar by the YAML 1.2 core schema.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(integer) = text.parse::<i64>() {
        return Value::Number(integer.into());
    }
    let looks_numeric = text
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'-' || b == b'+' || b == b'.');
    if looks_numeric
        && let Ok(float) = text.parse::<f64>()
        && let Some(number) = Number::from_f64(float)
    {
        return Value::Number(number);
    }
    Value::String(text.to_string())
}

/// Replaces `${NAME}` and `${NAME:-fallback}` with environment values; `$${` is a literal `${`.
fn interpolate(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            output.push_str(&rest[..start - 1]);
            output.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        output.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in `{text}`"))?;
        let reference = &after[..end];
        let (name, fallback) = match reference.split_once(":-") {
            Some((name, fallback)) => (name, Some(fallback)),
            None => (reference, None),
        };
        let valid_name = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid_name {
            return Err(format!("invalid environment variable name `{name}`"));
        }
        match (env(name), fallback) {
            (Some(value), _) => output.push_str(&value),
            (None, Some(fallback)) => output.push_str(fallback),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set; set it or write `${{{name}:-default}}`"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    output.push_str(rest);
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn records_lines_of_nested_keys() {
        let source = "a: 1\nlist:\n  - name: x\n    port: 8\n  - name: y\n";
        let (value, index) = parse(source, &no_env).unwrap();
        assert_eq!(value["list"][1]["name"], "y");
        assert_eq!(index.line_of("a"), Some(1));
        assert_eq!(index.line_of("list[0].port"), Some(4));
        assert_eq!(index.line_of("list[1].name"), Some(5));
        assert_eq!(index.line_of("list[1].missing"), Some(5));
    }

    #[test]
    fn resolves_core_schema_scalars() {
        let (value, _) = parse("a: 5\nb: 1s\nc: '5'\nd: true\ne: ~\nf: 3.00\n", &no_env).unwrap();
        assert_eq!(value["a"], 5);
        assert_eq!(value["b"], "1s");
        assert_eq!(value["c"], "5");
        assert_eq!(value["d"], true);
        assert!(value["e"].is_null());
        assert_eq!(value["f"], 3.0);
    }

    #[test]
    fn interpolates_environment_variables() {
        let env = |name: &str| (name == "TOKEN").then(|| "s3cret".to_string());
        let (value, _) = parse("t: ${TOKEN}\nu: x-${MISSING:-none}\nv: $${TOKEN}\n", &env).unwrap();
        assert_eq!(value["t"], "s3cret");
        assert_eq!(value["u"], "x-none");
        assert_eq!(value["v"], "${TOKEN}");
    }

    #[test]
    fn plain_variable_is_typed() {
        let env = |name: &str| match name {
            "LIMIT" => Some("5".to_string()),
            "ON" => Some("true".to_string()),
            _ => None,
        };
        let (value, _) = parse("a: ${LIMIT}\nb: ${ON}\nc: '${LIMIT}'\n", &env).unwrap();
        assert_eq!(value["a"], 5);
        assert_eq!(value["b"], true);
        assert_eq!(value["c"], "5");
    }

    #[test]
    fn second_document_is_rejected() {
        let errors = parse("a: 1\n---\nb: 2\n", &no_env).unwrap_err();
        assert!(errors[0].message.contains("more than one YAML document"));
    }

    #[test]
    fn missing_variable_names_key_and_line() {
        let errors = parse("admin:\n  token: ${NOPE}\n", &no_env).unwrap_err();
        assert_eq!(errors[0].line, Some(2));
        assert!(
            errors[0].message.contains("admin.token"),
            "{}",
            errors[0].message
        );
        assert!(errors[0].message.contains("NOPE"), "{}", errors[0].message);
    }

    #[test]
    fn syntax_error_has_line() {
        let errors = parse("a: [1, 2\nb: 3\n", &no_env).unwrap_err();
        assert!(errors[0].line.is_some());
    }

    #[test]
    fn duplicate_key_is_rejected() {
        let errors = parse("a: 1\na: 2\n", &no_env).unwrap_err();
        assert_eq!(errors[0].line, Some(2));
        assert!(errors[0].message.contains("duplicate"));
    }

    #[test]
    fn non_mapping_document_is_rejected() {
        assert!(parse("- 1\n- 2\n", &no_env).is_err());
    }
}
