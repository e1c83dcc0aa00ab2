//! The request an evaluation inspects, and the collections derived from it (arguments, cookies,
//! parsed bodies).

/// A request as received: the request line, headers in order and the full body.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub method: String,
    /// Request target exactly as sent, such as `/a?b=c` or `http://host/a`.
    pub uri: String,
    /// Protocol from the request line, such as `HTTP/1.1`.
    pub protocol: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub remote_addr: String,
}

impl Request {
    /// Builds a `GET` request whose query string carries one parameter with `value`, the shape
    /// `portcullis waf scan` inspects.
    pub fn with_query_value(name: &str, value: &str) -> Self {
        let encoded = percent_encode(value.as_bytes());
        Self {
            method: "GET".to_string(),
            uri: format!("/?{name}={encoded}"),
            protocol: "HTTP/1.1".to_string(),
            headers: vec![
                ("Host".to_string(), b"localhost".to_vec()),
                ("User-Agent".to_string(), b"portcullis-waf-scan".to_vec()),
                ("Accept".to_string(), b"*/*".to_vec()),
            ],
            body: Vec::new(),
            remote_addr: "127.0.0.1".to_string(),
        }
    }

    /// Returns the first header named `name`, compared without regard to case.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut output = String::with_capacity(bytes.len() * 3);
    for byte in bytes {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(byte) {
            output.push(*byte as char);
        } else {
            output.push_str(&format!("%{byte:02X}"));
        }
    }
    output
}

/// A named value of a collection.
pub type Pair = (String, Vec<u8>);

/// Collections derived from a [`Request`] once per evaluation.
#[derive(Debug, Default)]
pub struct RequestData {
    pub request_line: Vec<u8>,
    pub uri: Vec<u8>,
    pub uri_raw: Vec<u8>,
    pub filename: Vec<u8>,
    pub basename: Vec<u8>,
    pub query_string: Vec<u8>,
    pub args_get: Vec<Pair>,
    pub args_post: Vec<Pair>,
    pub cookies: Vec<Pair>,
    pub files: Vec<Pair>,
    pub files_combined_size: usize,
    pub multipart_part_headers: Vec<Pair>,
    pub xml_text: Option<Vec<u8>>,
    pub xml_attributes: Vec<Vec<u8>>,
    pub body_processor: Option<String>,
}

impl RequestData {
    /// Derives the request-line and header collections. The body is parsed later by
    /// [`RequestData::parse_body`], between phases 1 and 2.
    pub fn new(request: &Request) -> Self {
        let raw = request.uri.as_bytes().to_vec();
        // An absolute-form target keeps only its path and query in REQUEST_URI.
        let absolute = !request.uri.starts_with('/');
        let uri = match request.uri.find("://").filter(|_| absolute) {
            Some(scheme_end) => {
                let after = &request.uri[scheme_end + 3..];
                after
                    .find('/')
                    .map_or("/".to_string(), |slash| after[slash..].to_string())
            }
            None => request.uri.clone(),
        };

        let without_fragment = uri.split('#').next().unwrap_or_default();
        let (path, query) = match without_fragment.split_once('?') {
            Some((path, query)) => (path, query),
            None => (without_fragment, ""),
        };

        // REQUEST_FILENAME is the percent-decoded path, as in libmodsecurity and Coraza. A `+`
        // stays a `+` because it is a space only in form data.
        let filename = percent_decode(path.as_bytes());
        let basename = match filename.iter().rposition(|b| *b == b'/') {
            Some(slash) => filename[slash + 1..].to_vec(),
            None => filename.clone(),
        };

        let cookies = request
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, value)| parse_cookies(value))
            .collect();

        Self {
            request_line: format!("{} {} {}", request.method, request.uri, request.protocol)
                .into_bytes(),
            uri: uri.clone().into_bytes(),
            uri_raw: raw,
            filename,
            basename,
            query_string: query.as_bytes().to_vec(),
            args_get: parse_urlencoded(query.as_bytes()),
            cookies,
            body_processor: body_processor(request),
            ..Self::default()
        }
    }

    /// Parses the body with the processor that `Content-Type` selects, unless `forced` names
    /// one (`ctl:requestBodyProcessor`).
    pub fn parse_body(&mut self, request: &Request, forced: Option<&str>) {
        let content_type = request
            .header("content-type")
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default();
        let processor = match forced {
            Some(forced) => Some(forced.to_string()),
            None => body_processor(request),
        };
        if request.body.is_empty() {
            self.body_processor = processor;
            return;
        }
        match processor.as_deref() {
            Some("URLENCODED") => self.args_post = parse_urlencoded(&request.body),
            Some("MULTIPART") => self.parse_multipart(&content_type, &request.body),
            Some("JSON") => {
                if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&request.body) {
                    flatten_json("json", &value, &mut self.args_post);
                }
            }
            Some("XML") => self.parse_xml(&request.body),
            _ => {}
        }
        self.body_processor = processor;
    }

    fn parse_multipart(&mut self, content_type: &str, body: &[u8]) {
        let Some(boundary) = content_type.split(';').find_map(|part| {
            let (key, value) = part.trim().split_once('=')?;
            key.eq_ignore_ascii_case("boundary")
                .then(|| value.trim().trim_matches('"').to_string())
        }) else {
            return;
        };
        let delimiter = format!("--{boundary}").into_bytes();
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut rest = body;
        while let Some(start) = find(rest, &delimiter) {
            rest = &rest[start + delimiter.len()..];
            if rest.starts_with(b"--") {
                break;
            }
            let end = find(rest, &delimiter).unwrap_or(rest.len());
            parts.push(&rest[..end]);
        }
        for part in parts {
            let part = part
                .strip_prefix(b"\r\n")
                .or_else(|| part.strip_prefix(b"\n"))
                .unwrap_or(part);
            let (head, content) = match find(part, b"\r\n\r\n") {
                Some(split) => (&part[..split], &part[split + 4..]),
                None => match find(part, b"\n\n") {
                    Some(split) => (&part[..split], &part[split + 2..]),
                    None => (part, &b""[..]),
                },
            };
            let content = content
                .strip_suffix(b"\r\n")
                .or_else(|| content.strip_suffix(b"\n"))
                .unwrap_or(content);
            let mut name = String::new();
            let mut filename = None;
            let head_lines: Vec<&[u8]> = head
                .split(|b| *b == b'\n')
                .map(|line| line.trim_ascii_end())
                .collect();
            for line in &head_lines {
                let text = String::from_utf8_lossy(line);
                if text
                    .to_ascii_lowercase()
                    .starts_with("content-disposition:")
                {
                    for (key, value) in disposition_parameters(&text) {
                        match key.as_str() {
                            "name" => name = value,
                            "filename" => filename = Some(value),
                            _ => {}
                        }
                    }
                }
            }
            for line in head_lines.iter().filter(|line| !line.is_empty()) {
                self.multipart_part_headers
                    .push((name.clone(), line.to_vec()));
            }
            match filename {
                Some(filename) => {
                    self.files.push((name, filename.into_bytes()));
                    self.files_combined_size += content.len();
                }
                None => self.args_post.push((name, content.to_vec())),
            }
        }
    }

    fn parse_xml(&mut self, body: &[u8]) {
        let mut text = Vec::new();
        let mut i = 0;
        while i < body.len() {
            if body[i] != b'<' {
                text.push(body[i]);
                i += 1;
                continue;
            }
            let rest = &body[i..];
            if rest.starts_with(b"<![CDATA[") {
                let end = find(rest, b"]]>").unwrap_or(rest.len());
                text.extend_from_slice(&rest[9..end.max(9)]);
                i += (end + 3).min(rest.len());
            } else if rest.starts_with(b"<!--") {
                i += find(rest, b"-->").map_or(rest.len(), |end| end + 3);
            } else {
                let end = rest
                    .iter()
                    .position(|b| *b == b'>')
                    .map_or(rest.len(), |end| end + 1);
                let tag = &rest[..end];
                if !tag.starts_with(b"<?") && !tag.starts_with(b"</") && !tag.starts_with(b"<!") {
                    self.xml_attributes.extend(xml_attribute_values(tag));
                }
                i += end;
            }
        }
        // The XML parser in ModSecurity (libxml2) hands over text with entities decoded.
        // NOTE: CDATA sections are decoded too, which libxml2 would leave as written.
        self.xml_text = Some(decode_entities(&text));
        for value in &mut self.xml_attributes {
            *value = decode_entities(value);
        }
    }
}

/// Returns the body processor that the `Content-Type` header selects, as `REQBODY_PROCESSOR`
/// names it. ModSecurity sets it from the request headers, so phase 1 rules can read it.
fn body_processor(request: &Request) -> Option<String> {
    let content_type = request.header("content-type")?;
    let content_type = String::from_utf8_lossy(content_type);
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let processor = match mime.as_str() {
        "application/x-www-form-urlencoded" => "URLENCODED",
        "multipart/form-data" => "MULTIPART",
        "application/json" => "JSON",
        "text/xml" | "application/xml" => "XML",
        _ if mime.ends_with("+json") => "JSON",
        _ if mime.ends_with("+xml") => "XML",
        _ => return None,
    };
    Some(processor.to_string())
}

/// Parses the `key=value` parameters of a `Content-Disposition` header line. A quoted value may
/// contain `;`, and `\"` inside it is a quote. Keys are returned lowercase.
fn disposition_parameters(line: &str) -> Vec<(String, String)> {
    let mut parameters = Vec::new();
    let mut chars = line.chars().skip_while(|c| *c != ';').peekable();
    while chars.next().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' if chars.peek() == Some(&'"') => value.push(chars.next().unwrap_or('"')),
                    '"' => break,
                    _ => value.push(c),
                }
            }
            while chars.peek().is_some_and(|c| *c != ';') {
                chars.next();
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| *c != ';') {
                value.push(c);
                chars.next();
            }
        }
        parameters.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    parameters
}

fn xml_attribute_values(tag: &[u8]) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    let mut i = 0;
    while let Some(eq) = tag[i..].iter().position(|b| *b == b'=') {
        let mut j = i + eq + 1;
        while j < tag.len() && tag[j].is_ascii_whitespace() {
            j += 1;
        }
        match tag.get(j) {
            Some(quote @ (b'"' | b'\'')) => {
                let start = j + 1;
                let end = tag[start..]
                    .iter()
                    .position(|b| b == quote)
                    .map_or(tag.len(), |p| start + p);
                values.push(tag[start..end].to_vec());
                i = (end + 1).min(tag.len());
            }
            _ => i = j,
        }
    }
    values
}

fn percent_decode(value: &[u8]) -> Vec<u8> {
    let plus = value.iter().filter(|b| **b == b'+').count();
    if plus == 0 {
        return crate::transform::Transform::UrlDecode
            .apply(value)
            .into_owned();
    }
    // Protect `+` from the form-data rule of urlDecode by decoding around it.
    let parts: Vec<Vec<u8>> = value
        .split(|b| *b == b'+')
        .map(|part| {
            crate::transform::Transform::UrlDecode
                .apply(part)
                .into_owned()
        })
        .collect();
    parts.join(&b'+')
}

fn decode_entities(value: &[u8]) -> Vec<u8> {
    crate::transform::Transform::HtmlEntityDecode
        .apply(value)
        .into_owned()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Splits `a=1&b=2` into decoded pairs. A `+` is a space. A name without `=` gets an empty value.
pub fn parse_urlencoded(text: &[u8]) -> Vec<Pair> {
    text.split(|b| *b == b'&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = match part.iter().position(|b| *b == b'=') {
                Some(eq) => (&part[..eq], &part[eq + 1..]),
                None => (part, &b""[..]),
            };
            let name = crate::transform::Transform::UrlDecode.apply(name);
            let value = crate::transform::Transform::UrlDecode
                .apply(value)
                .into_owned();
            (String::from_utf8_lossy(&name).into_owned(), value)
        })
        .collect()
}

fn parse_cookies(header: &[u8]) -> Vec<Pair> {
    header
        .split(|b| *b == b';')
        .map(|part| part.trim_ascii())
        .filter(|part| !part.is_empty())
        .map(|part| match part.iter().position(|b| *b == b'=') {
            Some(eq) => (
                String::from_utf8_lossy(&part[..eq]).into_owned(),
                part[eq + 1..].to_vec(),
            ),
            None => (String::from_utf8_lossy(part).into_owned(), Vec::new()),
        })
        .collect()
}

/// Flattens a JSON document into `json.a.b` names. Array elements keep the name of the array,
/// as in ModSecurity 2, so a rule on the key name matches them.
fn flatten_json(prefix: &str, value: &serde_json::Value, output: &mut Vec<Pair>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                flatten_json(&format!("{prefix}.{key}"), value, output);
            }
        }
        serde_json::Value::Array(items) => {
            for value in items {
                flatten_json(prefix, value, output);
            }
        }
        serde_json::Value::String(text) => {
            output.push((prefix.to_string(), text.clone().into_bytes()))
        }
        serde_json::Value::Null => output.push((prefix.to_string(), Vec::new())),
        other => output.push((prefix.to_string(), other.to_string().into_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, content_type: &str, body: &str) -> Request {
        Request {
            method: "POST".to_string(),
            uri: uri.to_string(),
            protocol: "HTTP/1.1".to_string(),
            headers: vec![
                ("Content-Type".to_string(), content_type.as_bytes().to_vec()),
                ("Cookie".to_string(), b"a=1; b=x%20y".to_vec()),
            ],
            body: body.as_bytes().to_vec(),
            remote_addr: "127.0.0.1".to_string(),
        }
    }

    #[test]
    fn uri_parts_and_query_args() {
        let origin_form = RequestData::new(&request("/get?x=file://a/b", "", ""));
        assert_eq!(origin_form.filename, b"/get");
        let encoded = RequestData::new(&request("/a%20b+c/d%28.php", "", ""));
        assert_eq!(encoded.filename, b"/a b+c/d(.php");
        assert_eq!(encoded.basename, b"d(.php");
        let data = RequestData::new(&request("http://h/x/y.php?a=1+2&b&c=%41#frag", "", ""));
        assert_eq!(data.uri, b"/x/y.php?a=1+2&b&c=%41#frag");
        assert_eq!(data.filename, b"/x/y.php");
        assert_eq!(data.basename, b"y.php");
        assert_eq!(data.query_string, b"a=1+2&b&c=%41");
        assert_eq!(data.args_get[0], ("a".to_string(), b"1 2".to_vec()));
        assert_eq!(data.args_get[1], ("b".to_string(), Vec::new()));
        assert_eq!(data.args_get[2], ("c".to_string(), b"A".to_vec()));
        assert_eq!(data.cookies[1], ("b".to_string(), b"x%20y".to_vec()));
    }

    #[test]
    fn json_body_flattens() {
        let req = request("/", "application/json", r#"{"a":{"b":[1,"x"]},"c":null}"#);
        let mut data = RequestData::new(&req);
        data.parse_body(&req, None);
        assert_eq!(data.body_processor.as_deref(), Some("JSON"));
        assert_eq!(data.args_post[0], ("json.a.b".to_string(), b"1".to_vec()));
        assert_eq!(data.args_post[1], ("json.a.b".to_string(), b"x".to_vec()));
        assert_eq!(data.args_post[2], ("json.c".to_string(), Vec::new()));
    }

    #[test]
    fn multipart_body_splits_files_and_fields() {
        let body = "--XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a;.php\"\r\nContent-Type: text/plain\r\n\r\n<?php\r\n--XX\r\nContent-Disposition: form-data; name=\"t\"\r\n\r\nhello\r\n--XX--\r\n";
        let req = request("/", "multipart/form-data; boundary=XX", body);
        let mut data = RequestData::new(&req);
        data.parse_body(&req, None);
        assert_eq!(data.files, vec![("f".to_string(), b"a;.php".to_vec())]);
        assert_eq!(data.files_combined_size, 5);
        assert_eq!(data.args_post, vec![("t".to_string(), b"hello".to_vec())]);
        assert_eq!(data.multipart_part_headers.len(), 3);
    }

    #[test]
    fn xml_body_collects_text_and_attributes() {
        let req = request(
            "/",
            "text/xml",
            "<?xml version=\"1.0\"?><a x='&#x7B;1'>hi<b y=\"2\"><![CDATA[<c>]]></b></a>",
        );
        let mut data = RequestData::new(&req);
        data.parse_body(&req, None);
        assert_eq!(data.xml_text.as_deref(), Some(&b"hi<c>"[..]));
        assert_eq!(data.xml_attributes, vec![b"{1".to_vec(), b"2".to_vec()]);
    }
}
