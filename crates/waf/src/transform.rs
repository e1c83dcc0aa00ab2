//! Transformation functions (`t:` actions). Each one maps bytes to bytes with the semantics of
//! ModSecurity 2, which the CRS regression tests exercise. Values are bytes because request data
//! need not be valid UTF-8.

use std::borrow::Cow;

use base64::Engine as _;
use sha1::Digest as _;

/// One transformation function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transform {
    Base64Decode,
    Base64DecodeExt,
    CmdLine,
    CompressWhitespace,
    CssDecode,
    EscapeSeqDecode,
    HexDecode,
    HexEncode,
    HtmlEntityDecode,
    JsDecode,
    Length,
    Lowercase,
    NormalizePath,
    NormalizePathWin,
    RemoveComments,
    RemoveCommentsChar,
    RemoveNulls,
    RemoveWhitespace,
    ReplaceComments,
    ReplaceNulls,
    Sha1,
    Trim,
    TrimLeft,
    TrimRight,
    Uppercase,
    UrlDecode,
    UrlDecodeUni,
    Utf8ToUnicode,
}

impl Transform {
    /// Looks a transformation up by its SecLang name, ignoring case. `none` is handled by the
    /// caller because it clears the list instead of adding to it.
    pub fn from_name(name: &str) -> Option<Self> {
        let transform = match name.to_ascii_lowercase().as_str() {
            "base64decode" => Self::Base64Decode,
            "base64decodeext" => Self::Base64DecodeExt,
            "cmdline" => Self::CmdLine,
            "compresswhitespace" => Self::CompressWhitespace,
            "cssdecode" => Self::CssDecode,
            "escapeseqdecode" => Self::EscapeSeqDecode,
            "hexdecode" => Self::HexDecode,
            "hexencode" => Self::HexEncode,
            "htmlentitydecode" => Self::HtmlEntityDecode,
            "jsdecode" => Self::JsDecode,
            "length" => Self::Length,
            "lowercase" => Self::Lowercase,
            "normalisepath" | "normalizepath" => Self::NormalizePath,
            "normalisepathwin" | "normalizepathwin" => Self::NormalizePathWin,
            "removecomments" => Self::RemoveComments,
            "removecommentschar" => Self::RemoveCommentsChar,
            "removenulls" => Self::RemoveNulls,
            "removewhitespace" => Self::RemoveWhitespace,
            "replacecomments" => Self::ReplaceComments,
            "replacenulls" => Self::ReplaceNulls,
            "sha1" => Self::Sha1,
            "trim" => Self::Trim,
            "trimleft" => Self::TrimLeft,
            "trimright" => Self::TrimRight,
            "uppercase" => Self::Uppercase,
            "urldecode" => Self::UrlDecode,
            "urldecodeuni" => Self::UrlDecodeUni,
            "utf8tounicode" => Self::Utf8ToUnicode,
            _ => return None,
        };
        Some(transform)
    }

    /// Applies the transformation.
    pub fn apply<'a>(self, input: &'a [u8]) -> Cow<'a, [u8]> {
        match self {
            Self::Base64Decode => Cow::Owned(base64_decode(input, false)),
            Self::Base64DecodeExt => Cow::Owned(base64_decode(input, true)),
            Self::CmdLine => Cow::Owned(cmd_line(input)),
            Self::CompressWhitespace => Cow::Owned(compress_whitespace(input)),
            Self::CssDecode => Cow::Owned(css_decode(input)),
            Self::EscapeSeqDecode => Cow::Owned(escape_seq_decode(input)),
            Self::HexDecode => Cow::Owned(hex_decode(input)),
            Self::HexEncode => Cow::Owned(hex_encode(input).into_bytes()),
            Self::HtmlEntityDecode => Cow::Owned(html_entity_decode(input)),
            Self::JsDecode => Cow::Owned(js_decode(input)),
            Self::Length => Cow::Owned(input.len().to_string().into_bytes()),
            Self::Lowercase => Cow::Owned(input.to_ascii_lowercase()),
            Self::NormalizePath => Cow::Owned(normalize_path(input, false)),
            Self::NormalizePathWin => Cow::Owned(normalize_path(input, true)),
            Self::RemoveComments => Cow::Owned(replace_comments(input, false)),
            Self::RemoveCommentsChar => Cow::Owned(remove_comment_chars(input)),
            Self::RemoveNulls => Cow::Owned(input.iter().copied().filter(|b| *b != 0).collect()),
            Self::RemoveWhitespace => Cow::Owned(
                input
                    .iter()
                    .copied()
                    .filter(|b| !is_space(*b) && *b != 0xa0)
                    .collect(),
            ),
            Self::ReplaceComments => Cow::Owned(replace_comments(input, true)),
            Self::ReplaceNulls => Cow::Owned(
                input
                    .iter()
                    .map(|b| if *b == 0 { b' ' } else { *b })
                    .collect(),
            ),
            Self::Sha1 => Cow::Owned(sha1::Sha1::digest(input).to_vec()),
            Self::Trim => Cow::Borrowed(input.trim_ascii()),
            Self::TrimLeft => Cow::Borrowed(input.trim_ascii_start()),
            Self::TrimRight => Cow::Borrowed(input.trim_ascii_end()),
            Self::Uppercase => Cow::Owned(input.to_ascii_uppercase()),
            Self::UrlDecode => Cow::Owned(url_decode(input, false)),
            Self::UrlDecodeUni => Cow::Owned(url_decode(input, true)),
            Self::Utf8ToUnicode => Cow::Owned(utf8_to_unicode(input)),
        }
    }
}

/// Applies a list of transformations in order.
pub fn apply_all<'a>(transforms: &[Transform], input: &'a [u8]) -> Cow<'a, [u8]> {
    let mut value = Cow::Borrowed(input);
    for transform in transforms {
        value = match value {
            Cow::Borrowed(bytes) => transform.apply(bytes),
            Cow::Owned(bytes) => Cow::Owned(transform.apply(&bytes).into_owned()),
        };
    }
    value
}

fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

fn hex_encode(input: &[u8]) -> String {
    input.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(input: &[u8]) -> Vec<u8> {
    input
        .chunks(2)
        .map_while(|pair| match pair {
            [high, low] => Some(hex_value(*high)? << 4 | hex_value(*low)?),
            _ => None,
        })
        .collect()
}

fn base64_decode(input: &[u8], lenient: bool) -> Vec<u8> {
    // ModSecurity decodes up to the first byte outside the alphabet. The `Ext` variant skips such
    // bytes instead of stopping.
    let mut clean: Vec<u8> = Vec::with_capacity(input.len());
    for byte in input {
        if byte.is_ascii_alphanumeric() || *byte == b'+' || *byte == b'/' {
            clean.push(*byte);
        } else if *byte == b'=' || !lenient {
            break;
        }
    }
    let usable = clean.len() - clean.len() % 4;
    let mut output = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&clean[..usable])
        .unwrap_or_default();
    let tail = &clean[usable..];
    if tail.len() >= 2
        && let Ok(bytes) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(tail)
    {
        output.extend(bytes);
    }
    output
}

fn url_decode(input: &[u8], unicode: bool) -> Vec<u8> {
    let mut output = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let byte = input[i];
        if byte == b'+' {
            output.push(b' ');
            i += 1;
            continue;
        }
        if byte != b'%' {
            output.push(byte);
            i += 1;
            continue;
        }
        if unicode
            && input.len() >= i + 6
            && (input[i + 1] | 0x20) == b'u'
            && input[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit)
        {
            // %uHHHH keeps the low byte, with the full-width ASCII range (U+FF01 to U+FF5E)
            // mapped onto ASCII as ModSecurity does.
            let code = input[i + 2..i + 6].iter().fold(0u32, |acc, b| {
                acc << 4 | u32::from(hex_value(*b).unwrap_or(0))
            });
            let low = (code & 0xff) as u8;
            if (0xff01..=0xff5e).contains(&code) {
                output.push(low + 0x20);
            } else {
                output.push(low);
            }
            i += 6;
            continue;
        }
        match (
            input.get(i + 1).and_then(|b| hex_value(*b)),
            input.get(i + 2).and_then(|b| hex_value(*b)),
        ) {
            (Some(high), Some(low)) => {
                output.push(high << 4 | low);
                i += 3;
            }
            _ => {
                output.push(byte);
                i += 1;
            }
        }
    }
    output
}

fn compress_whitespace(input: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(input.len());
    let mut in_space = false;
    for byte in input {
        if is_space(*byte) || *byte == 0xa0 {
            if !in_space {
                output.push(b' ');
            }
            in_space = true;
        } else {
            output.push(*byte);
            in_space = false;
        }
    }
    output
}

/// Normalizes a Windows or Unix command line: drops `\ " ' ^`, turns `, ;` and whitespace runs
/// into one space, drops a space before `/` or `(`, and lowercases.
fn cmd_line(input: &[u8]) -> Vec<u8> {
    let mut output: Vec<u8> = Vec::with_capacity(input.len());
    let mut in_space = false;
    for byte in input {
        match byte {
            b'"' | b'\'' | b'\\' | b'^' => {}
            b' ' | b',' | b';' | b'\t' | b'\r' | b'\n' => {
                if !in_space {
                    output.push(b' ');
                    in_space = true;
                }
            }
            b'/' | b'(' => {
                if in_space {
                    output.pop();
                }
                in_space = false;
                output.push(*byte);
            }
            _ => {
                in_space = false;
                output.push(byte.to_ascii_lowercase());
            }
        }
    }
    output
}

fn css_decode(input: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'\\' {
            output.push(input[i]);
            i += 1;
            continue;
        }
        i += 1;
        let digits = input[i..]
            .iter()
            .take(6)
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits > 0 {
            let hex = &input[i..i + digits];
            // Only the last byte of the code point is kept, except that a full-width ASCII
            // character maps onto ASCII.
            let code = hex.iter().fold(0u32, |acc, b| {
                acc.wrapping_shl(4) | u32::from(hex_value(*b).unwrap_or(0))
            });
            let low = (code & 0xff) as u8;
            if (0xff01..=0xff5e).contains(&code) {
                output.push(low + 0x20);
            } else {
                output.push(low);
            }
            i += digits;
            if input.get(i).is_some_and(|b| is_space(*b)) {
                i += 1;
            }
        } else if let Some(byte) = input.get(i) {
            if *byte != b'\n' {
                output.push(*byte);
            }
            i += 1;
        }
    }
    output
}

fn js_decode(input: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'\\' || i + 1 >= input.len() {
            output.push(input[i]);
            i += 1;
            continue;
        }
        let next = input[i + 1];
        let hex_run = |start: usize, len: usize| {
            input
                .get(start..start + len)
                .filter(|s| s.iter().all(u8::is_ascii_hexdigit))
        };
        if (next == b'u')
            && let Some(hex) = hex_run(i + 2, 4)
        {
            let code = hex.iter().fold(0u32, |acc, b| {
                acc << 4 | u32::from(hex_value(*b).unwrap_or(0))
            });
            let low = (code & 0xff) as u8;
            output.push(if (0xff01..=0xff5e).contains(&code) {
                low + 0x20
            } else {
                low
            });
            i += 6;
        } else if next == b'x'
            && let Some(hex) = hex_run(i + 2, 2)
        {
            output.push(hex_value(hex[0]).unwrap_or(0) << 4 | hex_value(hex[1]).unwrap_or(0));
            i += 4;
        } else if (b'0'..=b'7').contains(&next) {
            let mut len = input[i + 1..]
                .iter()
                .take(3)
                .take_while(|b| (b'0'..=b'7').contains(*b))
                .count();
            if len == 3 && input[i + 1] > b'3' {
                len = 2;
            }
            let value = input[i + 1..i + 1 + len]
                .iter()
                .fold(0u8, |acc, b| acc.wrapping_mul(8).wrapping_add(b - b'0'));
            output.push(value);
            i += 1 + len;
        } else {
            output.push(match next {
                b'a' => 7,
                b'b' => 8,
                b'f' => 12,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'v' => 11,
                other => other,
            });
            i += 2;
        }
    }
    output
}

fn escape_seq_decode(input: &[u8]) -> Vec<u8> {
    // ANSI C escapes are the JavaScript ones without `\u`.
    let mut output = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'\\' && input.get(i + 1) == Some(&b'u') {
            output.extend_from_slice(b"\\u");
            i += 2;
            continue;
        }
        let end = input[i + 1..]
            .iter()
            .position(|b| *b == b'\\')
            .map_or(input.len(), |p| p + i + 1);
        output.extend(js_decode(&input[i..end]));
        i = end;
    }
    output
}

fn html_entity_decode(input: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'&' {
            output.push(input[i]);
            i += 1;
            continue;
        }
        let rest = &input[i + 1..];
        if let Some(after_hash) = rest.strip_prefix(b"#") {
            let (hex, digits_start) = match after_hash.first() {
                Some(b'x' | b'X') => (true, 1),
                _ => (false, 0),
            };
            let digits = after_hash[digits_start..]
                .iter()
                .take_while(|b| {
                    if hex {
                        b.is_ascii_hexdigit()
                    } else {
                        b.is_ascii_digit()
                    }
                })
                .count();
            if digits > 0 {
                let text = &after_hash[digits_start..digits_start + digits];
                let radix = if hex { 16 } else { 10 };
                let code = std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| u32::from_str_radix(t, radix).ok())
                    .unwrap_or(0);
                output.push((code & 0xff) as u8);
                let mut consumed = 1 + 1 + digits_start + digits;
                if input.get(i + consumed) == Some(&b';') {
                    consumed += 1;
                }
                i += consumed;
                continue;
            }
        } else {
            let name_len = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
            let name = rest[..name_len].to_ascii_lowercase();
            let decoded = match name.as_slice() {
                b"quot" => Some(b'"'),
                b"amp" => Some(b'&'),
                b"lt" => Some(b'<'),
                b"gt" => Some(b'>'),
                b"nbsp" => Some(0xa0),
                b"apos" => Some(b'\''),
                _ => None,
            };
            if let Some(byte) = decoded {
                output.push(byte);
                let mut consumed = 1 + name_len;
                if input.get(i + consumed) == Some(&b';') {
                    consumed += 1;
                }
                i += consumed;
                continue;
            }
        }
        output.push(b'&');
        i += 1;
    }
    output
}

/// Replaces each C-style comment with one space (`replace`) or removes it together with `--`
/// and `#` line comments (`removeComments`). An unterminated `/*` comment runs to the end.
fn replace_comments(input: &[u8], replace: bool) -> Vec<u8> {
    let mut output = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i..].starts_with(b"/*") {
            let end = input[i + 2..]
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(input.len(), |p| i + 2 + p + 2);
            if replace {
                output.push(b' ');
            }
            i = end;
        } else if !replace && (input[i..].starts_with(b"--") || input[i] == b'#') {
            break;
        } else {
            output.push(input[i]);
            i += 1;
        }
    }
    output
}

fn remove_comment_chars(input: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let rest = &input[i..];
        if rest.starts_with(b"/*") || rest.starts_with(b"*/") || rest.starts_with(b"--") {
            i += 2;
        } else if rest.starts_with(b"<!--") {
            i += 4;
        } else if rest.starts_with(b"-->") {
            i += 3;
        } else if input[i] == b'#' {
            i += 1;
        } else {
            output.push(input[i]);
            i += 1;
        }
    }
    output
}

/// Removes `.` segments and resolves `..` segments, collapsing repeated slashes. With `windows`
/// set, backslashes become slashes first.
fn normalize_path(input: &[u8], windows: bool) -> Vec<u8> {
    let path: Vec<u8> = if windows {
        input
            .iter()
            .map(|b| if *b == b'\\' { b'/' } else { *b })
            .collect()
    } else {
        input.to_vec()
    };
    if path.is_empty() {
        return path;
    }
    let absolute = path.starts_with(b"/");
    let trailing = path.ends_with(b"/")
        || path.ends_with(b"/.")
        || path.ends_with(b"/..")
        || path == b"."
        || path == b"..";
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in path.split(|b| *b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                if segments.last().is_some_and(|last| *last != b"..") {
                    segments.pop();
                } else if !absolute {
                    segments.push(segment);
                }
            }
            _ => segments.push(segment),
        }
    }
    let mut output = Vec::with_capacity(path.len());
    if absolute {
        output.push(b'/');
    }
    output.extend(segments.join(&b'/'));
    if trailing && !output.ends_with(b"/") {
        output.push(b'/');
    }
    output
}

/// Replaces each multi-byte UTF-8 sequence with `%uHHHH`, the form ModSecurity emits.
fn utf8_to_unicode(input: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(input.len());
    for chunk in input.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_ascii() {
                output.push(c as u8);
            } else {
                output.extend(format!("%u{:04x}", u32::from(c) & 0xffff).into_bytes());
            }
        }
        output.extend_from_slice(chunk.invalid());
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(transform: Transform, input: &str) -> String {
        String::from_utf8_lossy(&transform.apply(input.as_bytes())).into_owned()
    }

    #[test]
    fn url_decode_uni_cases() {
        assert_eq!(
            run(Transform::UrlDecodeUni, "a%20b+c%u0041%uFF1C%zz"),
            "a b cA<%zz"
        );
    }

    #[test]
    fn html_entities_decode() {
        assert_eq!(
            run(Transform::HtmlEntityDecode, "&lt;a&#x41;&#66&quot;&bogus;"),
            "<aAB\"&bogus;"
        );
    }

    #[test]
    fn js_escapes_decode() {
        assert_eq!(
            run(Transform::JsDecode, "\\x41\\u0042\\103\\n\\q"),
            "ABC\nq"
        );
    }

    #[test]
    fn css_escapes_decode() {
        assert_eq!(run(Transform::CssDecode, "\\61 b\\\"\\000063"), "ab\"c");
    }

    #[test]
    fn cmd_line_normalizes() {
        assert_eq!(
            run(Transform::CmdLine, "C^at \"/etc\" ,; (X)"),
            "cat/etc(x)"
        );
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(run(Transform::NormalizePath, "/a/./b/../../c//d/"), "/c/d/");
        assert_eq!(
            run(Transform::NormalizePathWin, "..\\..\\boot.ini"),
            "../../boot.ini"
        );
    }

    #[test]
    fn comments_replace_and_remove() {
        assert_eq!(run(Transform::ReplaceComments, "a/*x*/b/*y"), "a b ");
        assert_eq!(run(Transform::RemoveCommentsChar, "a/*b*/--c#"), "abc");
    }

    #[test]
    fn base64_and_hex_decode() {
        assert_eq!(run(Transform::Base64Decode, "aGVsbG8=!"), "hello");
        assert_eq!(run(Transform::HexDecode, "414243"), "ABC");
        assert_eq!(run(Transform::Length, "abcd"), "4");
    }

    #[test]
    fn sha1_then_hex_encode() {
        let digest = Transform::Sha1.apply(b"abc");
        let hex = Transform::HexEncode.apply(&digest);
        assert_eq!(hex.as_ref(), b"a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn utf8_becomes_percent_u() {
        assert_eq!(run(Transform::Utf8ToUnicode, "a\u{e9}"), "a%u00e9");
    }
}
