//! Writes JSON values as block-style YAML that the config loader reads back as the same values.
//!
//! Every string value is double-quoted with backslash escapes, and `${` is written as `$${`
//! because the loader replaces `${NAME}` in every string with an environment variable.
//! Numbers, booleans and null are written as JSON writes them, which the YAML 1.2 core schema
//! reads back as the same values. Within a mapping a `name` key comes first and the other keys
//! follow in byte order, so the output does not depend on whether `serde_json` keeps insertion
//! order (its `preserve_order` feature, which another crate in the build may turn on).

use std::fmt::Write;

use serde_json::{Map, Value};

/// Returns a YAML document of one mapping with `entries` in the given order.
pub fn document(entries: &[(&str, &Value)]) -> String {
    let mut out = String::new();
    for (key, value) in entries {
        write_entry(&mut out, key, value, 0);
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn write_entry(out: &mut String, key: &str, value: &Value, indent: usize) {
    pad(out, indent);
    out.push_str(&mapping_key(key));
    out.push(':');
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_mapping(out, map, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_sequence(out, items, indent + 2);
        }
        scalar => {
            out.push(' ');
            out.push_str(&flow_scalar(scalar));
            out.push('\n');
        }
    }
}

fn write_mapping(out: &mut String, map: &Map<String, Value>, indent: usize) {
    if let Some(name) = map.get("name") {
        write_entry(out, "name", name, indent);
    }
    let mut entries: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(key, _)| key.as_str() != "name")
        .collect();
    entries.sort_by_key(|(key, _)| *key);
    for (key, value) in entries {
        write_entry(out, key, value, indent);
    }
}

fn write_sequence(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        pad(out, indent);
        out.push('-');
        match item {
            Value::Object(map) if !map.is_empty() => {
                // The first entry goes on the dash's line: write the mapping indented past
                // the dash, then drop the indentation of its first line.
                let mut nested = String::new();
                write_mapping(&mut nested, map, indent + 2);
                out.push(' ');
                out.push_str(&nested[indent + 2..]);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_sequence(out, inner, indent + 2);
            }
            scalar => {
                out.push(' ');
                out.push_str(&flow_scalar(scalar));
                out.push('\n');
            }
        }
    }
}

/// Returns a scalar, or an empty mapping or sequence, in flow style.
fn flow_scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => quoted(&text.replace("${", "$${")),
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
    }
}

/// Returns a mapping key, plain when YAML reads it back as the same string and quoted
/// otherwise. The loader does not interpolate keys, so `${` stays as it is.
fn mapping_key(key: &str) -> String {
    const RESERVED: [&str; 11] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf",
    ];
    let plain = key
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !RESERVED.contains(&key.to_ascii_lowercase().as_str());
    if plain { key.to_owned() } else { quoted(key) }
}

/// Returns `text` as a YAML double-quoted scalar. Characters that YAML does not allow
/// unescaped, or reads as line breaks, are written as `\uXXXX`, which works because all of
/// them lie in the Basic Multilingual Plane.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{FEFF}' | '\u{FFFE}' | '\u{FFFF}'
                ) =>
            {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Loads `yaml` as a config with no environment variables set.
    fn load(yaml: &str) -> portcullis_config::Config {
        let env = |_: &str| None;
        portcullis_config::load_str(yaml, None, &env)
            .unwrap_or_else(|errors| panic!("the YAML does not load: {errors}\n{yaml}"))
    }

    #[test]
    fn nested_values_have_block_layout() {
        let services = json!([{
            "targets": ["http://127.0.0.1:9000"],
            "name": "echo",
            "preserve_host": false,
            "policies": [{"key-auth": {"header_names": ["apikey"], "bearer": true}}],
            "timeouts": {"connect": "5s"},
            "empty": [],
        }]);
        let text = document(&[("services", &services), ("routes", &json!([]))]);
        let expected = r#"services:
  - name: "echo"
    empty: []
    policies:
      - key-auth:
          bearer: true
          header_names:
            - "apikey"
    preserve_host: false
    targets:
      - "http://127.0.0.1:9000"
    timeouts:
      connect: "5s"
routes: []
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn strings_load_back_unchanged() {
        let cases = [
            "plain-secret-value-of-32-characters",
            "${NOT_A_VARIABLE} and $${ and $$${X}, all literal, padded to 32",
            "quotes \" and 'single' and backslash \\ and # hash: colon - dash",
            "line one\nline two\r\n\ttabbed, bell \u{7}, DEL \u{7F}, NEL \u{85}",
            "unicode: é, 中文, emoji \u{1F600}, LS \u{2028}, BOM \u{FEFF}",
            "  leading and trailing spaces, 32 characters or more  ",
            "12345678901234567890123456789012",
        ];
        for text in cases {
            // The loader rejects a key_hash_secret shorter than 32 bytes.
            assert!(text.len() >= 32, "case too short: {text:?}");
            let value = Value::String(text.to_owned());
            let yaml = document(&[("key_hash_secret", &value)]);
            let config = load(&yaml);
            assert_eq!(config.key_hash_secret.as_deref(), Some(text), "{yaml}");
        }
    }

    #[test]
    fn scalars_keep_their_types() {
        let value = json!({"a": 5, "b": -1.5, "c": true, "d": null, "e": "5", "f": {}});
        let yaml = document(&[("root", &value)]);
        assert_eq!(
            yaml,
            "root:\n  a: 5\n  b: -1.5\n  c: true\n  d: null\n  e: \"5\"\n  f: {}\n"
        );
    }

    #[test]
    fn unusual_keys_are_quoted() {
        assert_eq!(mapping_key("rate-limit"), "rate-limit");
        assert_eq!(mapping_key("header_names"), "header_names");
        assert_eq!(mapping_key("true"), "\"true\"");
        assert_eq!(mapping_key("a b"), "\"a b\"");
        assert_eq!(mapping_key("${X}"), "\"${X}\"");
        assert_eq!(mapping_key(""), "\"\"");
    }
}
