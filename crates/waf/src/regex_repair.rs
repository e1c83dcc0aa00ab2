//! Compilation of `@rx` patterns on the `regex` crate, which guarantees linear-time matching but
//! rejects some PCRE syntax. A pattern is rewritten only when it fails to compile as written, and
//! every rewrite is recorded so that `portcullis waf test` can report it and the tests can check
//! it against the original pattern on a backtracking engine.

use regex::bytes::{Regex, RegexBuilder};

/// Compiled size limit for one pattern. The largest CRS 4 patterns need about 20 MiB with the
/// default Unicode-off settings used here.
const SIZE_LIMIT: usize = 256 * 1024 * 1024;

/// A rewrite applied to a pattern that the `regex` crate rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    pub original: String,
    pub repaired: String,
    /// Description of the rewrite.
    pub change: &'static str,
}

/// Compiles a PCRE-style pattern. PCRE without its UTF and UCP flags treats `\w`, `\d`, `\s` and
/// `.` as byte classes, so Unicode is off.
pub fn build(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(SIZE_LIMIT)
        .dfa_size_limit(SIZE_LIMIT)
        .build()
}

/// Compiles `pattern`, repairing it when it does not compile as written.
///
/// A pattern with `\x{HH}` escapes or non-ASCII literals is always rewritten: the `regex` crate
/// accepts some of them in Unicode-off mode but reads them as code points, while PCRE without
/// its UTF flag reads them as bytes.
pub fn compile(pattern: &str) -> Result<(Regex, Option<Repair>), String> {
    let byte_mode_differs = pattern.contains("\\x{") || !pattern.is_ascii();
    let first_error = match build(pattern) {
        Ok(regex) if !byte_mode_differs => return Ok((regex, None)),
        Ok(_) => None,
        Err(error) => Some(error),
    };
    let describe = |error: Option<regex::Error>| match error {
        Some(error) => error.to_string(),
        None => "byte escapes could not be rewritten".to_string(),
    };
    let (repaired, change) = repair(pattern);
    if repaired == pattern {
        return Err(describe(first_error));
    }
    match build(&repaired) {
        Ok(regex) => Ok((
            regex,
            Some(Repair {
                original: pattern.to_string(),
                repaired,
                change,
            }),
        )),
        Err(_) => Err(describe(first_error)),
    }
}

/// Rewrites the PCRE constructs that have an equivalent for finding a match anywhere in the
/// input: possessive quantifiers (`a++`) and atomic groups (`(?>a)`) become their backtracking
/// forms, `\x{ff}` and non-ASCII literals become byte escapes, `[`, `&` and `~` inside a
/// character class are escaped, and `\Z` becomes `\z`. PCRE's
/// `\Z` also matches before a final newline, so a repaired pattern can miss a value that ends in
/// `\n`.
pub fn repair(pattern: &str) -> (String, &'static str) {
    let bytes = pattern.as_bytes();
    let mut output = String::with_capacity(pattern.len());
    let mut i = 0;
    let mut after_atom = false;
    let mut after_quantifier = false;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\\' => {
                i = push_escape(&mut output, bytes, i);
                after_atom = true;
                after_quantifier = false;
                continue;
            }
            b'[' => {
                let end = class_end(bytes, i);
                output.push('[');
                let mut j = i + 1;
                while j < end {
                    match bytes[j] {
                        b'\\' => j = push_escape(&mut output, bytes, j),
                        b'[' if bytes.get(j + 1) == Some(&b':') => {
                            let posix_end = bytes[j..end]
                                .windows(2)
                                .position(|w| w == b":]")
                                .map_or(end, |p| j + p + 2);
                            output.push_str(&pattern[j..posix_end]);
                            j = posix_end;
                        }
                        // PCRE reads `[` inside a class as a literal, and `&&` and `~~` have no
                        // meaning there, while the regex crate reads them as a nested class and
                        // as set operations.
                        b'[' | b'&' | b'~' => {
                            output.push('\\');
                            output.push(bytes[j] as char);
                            j += 1;
                        }
                        byte => {
                            push_byte(&mut output, byte);
                            j += 1;
                        }
                    }
                }
                i = end;
                after_atom = true;
                after_quantifier = false;
                continue;
            }
            b'(' => {
                if bytes[i..].starts_with(b"(?>") {
                    output.push_str("(?:");
                    i += 3;
                } else {
                    output.push('(');
                    i += 1;
                }
                after_atom = false;
                after_quantifier = false;
                continue;
            }
            b'+' if after_quantifier => {
                // A `+` right after a quantifier makes it possessive: drop it.
                after_quantifier = false;
                i += 1;
                continue;
            }
            b'*' | b'+' | b'?' if after_atom => {
                output.push(c as char);
                after_atom = false;
                after_quantifier = true;
                i += 1;
                continue;
            }
            b'{' if after_atom => {
                if let Some(close) = bytes[i..].iter().position(|b| *b == b'}') {
                    let inner = &bytes[i + 1..i + close];
                    if !inner.is_empty() && inner.iter().all(|b| b.is_ascii_digit() || *b == b',') {
                        output.push_str(&pattern[i..=i + close]);
                        i += close + 1;
                        after_atom = false;
                        after_quantifier = true;
                        continue;
                    }
                }
            }
            _ => {}
        }
        push_byte(&mut output, c);
        after_atom = c != b'|';
        after_quantifier = false;
        i += 1;
    }
    let change = if output != pattern {
        "possessive quantifiers, atomic groups, class literals, \\Z and code-point escapes rewritten to the regex crate's byte-mode syntax"
    } else {
        "none"
    };
    (output, change)
}

/// Copies a non-ASCII byte as an escape, because a non-ASCII literal is matched as its UTF-8
/// bytes, as PCRE does without its UTF flag.
fn push_byte(output: &mut String, byte: u8) {
    if byte.is_ascii() {
        output.push(byte as char);
    } else {
        output.push_str(&format!("\\x{byte:02x}"));
    }
}

/// Copies the escape sequence at `start` and returns the index after it.
fn push_escape(output: &mut String, bytes: &[u8], start: usize) -> usize {
    match bytes.get(start + 1) {
        Some(b'Z') => {
            output.push_str("\\z");
            start + 2
        }
        Some(b'x') if bytes.get(start + 2) == Some(&b'{') => {
            let close = bytes[start..]
                .iter()
                .position(|b| *b == b'}')
                .map(|p| start + p);
            let digits = close.map(|close| &bytes[start + 3..close]);
            match (close, digits) {
                (Some(close), Some(digits)) if !digits.is_empty() && digits.len() <= 2 => {
                    // `\x{ff}` names a code point, which Unicode-off mode rejects; `\xff` is the byte.
                    let text = std::str::from_utf8(digits).unwrap_or("0");
                    let byte = u8::from_str_radix(text, 16).unwrap_or(0);
                    output.push_str(&format!("\\x{byte:02x}"));
                    close + 1
                }
                _ => {
                    output.push_str("\\x");
                    start + 2
                }
            }
        }
        Some(next) => {
            output.push('\\');
            push_byte(output, *next);
            start + 2
        }
        None => {
            output.push('\\');
            start + 1
        }
    }
}

/// Returns the index just past the `]` that closes the class starting at `start`.
fn class_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    if bytes.get(i) == Some(&b'^') {
        i += 1;
    }
    if bytes.get(i) == Some(&b']') {
        i += 1;
    }
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'[' if bytes.get(i + 1) == Some(&b':') => {
                i = bytes[i + 2..]
                    .windows(2)
                    .position(|w| w == b":]")
                    .map_or(bytes.len(), |p| i + 2 + p + 2);
            }
            b']' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn possessive_and_atomic_rewritten() {
        assert_eq!(repair("a++b*+c?+[+]++").0, "a+b*c?[+]+");
        assert_eq!(repair("(?>ab|a)c\\Z").0, "(?:ab|a)c\\z");
        assert_eq!(repair("[\\x7f-\\x{ff}]\u{e9}").0, "[\\x7f-\\xff]\\xc3\\xa9");
        assert_eq!(repair("\\++x{2,3}+").0, "\\++x{2,3}");
    }

    #[test]
    fn class_literals_escaped() {
        // From CRS 3.3 rule 920600: `[` is a literal inside a PCRE class.
        let (regex, repair) = compile(r"^[^;<=>?![\x5c\]{}]+$").unwrap();
        assert_eq!(repair.unwrap().repaired, r"^[^;<=>?!\[\x5c\]{}]+$");
        assert!(regex.is_match(b"text/html"));
        assert!(!regex.is_match(b"text[html"));
        assert_eq!(
            repair_class("[a&&b~~c[:alpha:]]"),
            r"[a\&\&b\~\~c[:alpha:]]"
        );
    }

    fn repair_class(pattern: &str) -> String {
        repair(pattern).0
    }

    #[test]
    fn braced_escape_matches_byte() {
        let (regex, repair) = compile("\\x{e2}\\x80[\\x98\\x99]").unwrap();
        assert!(repair.is_some());
        assert!(regex.is_match(b"a\xe2\x80\x99b"));
        assert!(!regex.is_match("\u{e2}".as_bytes()));
    }

    #[test]
    fn valid_pattern_not_repaired() {
        let (_, repair) = compile("(?i)union\\s+select").unwrap();
        assert!(repair.is_none());
    }

    #[test]
    fn lookahead_still_rejected() {
        assert!(compile("a(?=b)").is_err());
    }
}
