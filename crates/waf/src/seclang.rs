//! Lexer for SecLang, the ModSecurity rule language, which splits lines as Apache's configuration
//! reader does. A trailing backslash continues a line and `#` starts a comment line. An argument
//! is either a bare word or a double-quoted string in which only `\"` is an escape.

use std::sync::Arc;

use crate::Error;

/// Position of a directive: the file and the line its first physical line is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<str>,
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One directive: its name (`SecRule`) and its arguments with quoting removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    pub location: Location,
    pub name: String,
    pub args: Vec<String>,
}

/// Splits a configuration file into directives.
pub fn lex(file: &str, text: &str) -> Result<Vec<Directive>, Error> {
    let file: Arc<str> = Arc::from(file);
    let mut directives = Vec::new();
    let mut logical = String::new();
    let mut start_line = 0;

    for (index, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if logical.is_empty() {
            start_line = index + 1;
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
        }
        match line.strip_suffix('\\') {
            Some(head) => logical.push_str(head),
            None => {
                logical.push_str(line);
                let location = Location {
                    file: file.clone(),
                    line: start_line,
                };
                directives.push(split_directive(location, &logical)?);
                logical.clear();
            }
        }
    }
    if !logical.is_empty() {
        let location = Location {
            file,
            line: start_line,
        };
        directives.push(split_directive(location, &logical)?);
    }
    Ok(directives)
}

fn split_directive(location: Location, line: &str) -> Result<Directive, Error> {
    let mut words = Vec::new();
    let mut chars = line.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            word = read_quoted(&mut chars, '"')
                .ok_or_else(|| Error::syntax(&location, "unterminated double-quoted argument"))?;
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    let mut words = words.into_iter();
    let name = words.next().unwrap_or_default();
    Ok(Directive {
        location,
        name,
        args: words.collect(),
    })
}

/// Reads up to the closing `quote`, with `\` before `quote` as its escape. Returns `None` when
/// the text ends first.
fn read_quoted(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    quote: char,
) -> Option<String> {
    let mut text = String::new();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&quote) {
            text.push(quote);
            chars.next();
        } else if c == quote {
            return Some(text);
        } else {
            text.push(c);
        }
    }
    None
}

/// Splits an action list (`id:1,phase:2,msg:'a, b'`) into `(name, argument)` pairs. A comma
/// inside single quotes does not separate actions, and `\'` is a quote inside a quoted argument.
pub fn split_actions(
    location: &Location,
    text: &str,
) -> Result<Vec<(String, Option<String>)>, Error> {
    let mut actions = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == ':' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        let name = name.trim().to_string();
        let mut argument = None;
        if chars.peek() == Some(&':') {
            chars.next();
            while chars.peek().is_some_and(|c| *c == ' ') {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'\'') {
                chars.next();
                value = read_quoted(&mut chars, '\'').ok_or_else(|| {
                    let message = format!("unterminated quoted argument of action `{name}`");
                    Error::syntax(location, message)
                })?;
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim_end().to_string();
            }
            argument = Some(value);
        }
        actions.push((name, argument));
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_lines_join() {
        let text = "# comment\nSecRule ARGS \"@rx a\\\"b\" \\\n    \"id:1,\\\n    phase:2\"\nSecMarker END\n";
        let directives = lex("t.conf", text).unwrap();
        assert_eq!(directives.len(), 2);
        assert_eq!(directives[0].location.line, 2);
        assert_eq!(
            directives[0].args,
            vec!["ARGS", "@rx a\"b", "id:1,    phase:2"]
        );
        assert_eq!(directives[1].name, "SecMarker");
        assert_eq!(directives[1].location.line, 5);
    }

    #[test]
    fn unterminated_quote_names_line() {
        let error = lex("t.conf", "\nSecRule ARGS \"@rx a").unwrap_err();
        assert_eq!(
            error.to_string(),
            "t.conf:2: unterminated double-quoted argument"
        );
    }

    #[test]
    fn actions_keep_quoted_commas() {
        let location = Location {
            file: Arc::from("t.conf"),
            line: 1,
        };
        let actions = split_actions(&location, "id:1, msg:'a, b\\'c',t:none,nolog").unwrap();
        assert_eq!(actions[0], ("id".to_string(), Some("1".to_string())));
        assert_eq!(actions[1], ("msg".to_string(), Some("a, b'c".to_string())));
        assert_eq!(actions[2], ("t".to_string(), Some("none".to_string())));
        assert_eq!(actions[3], ("nolog".to_string(), None));
    }
}
