//! Malformed input must produce errors or empty results, never a panic: rule text, request
//! bodies and transformation inputs built from a fixed pseudo-random sequence.

use std::path::Path;

use portcullis_waf::transform::Transform;
use portcullis_waf::{Request, RuleSet};

/// Pseudo-random byte source (xorshift64) with a fixed seed, so a failure reproduces.
struct ByteSource(u64);

impl ByteSource {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Returns up to `max` bytes drawn mostly from characters that SecLang and HTTP parsers
    /// treat specially.
    fn take(&mut self, max: usize) -> Vec<u8> {
        const SPECIAL: &[u8] = b"\\\"'%&=;:,|!@#<>/*-+{}[]()\r\n\t x0a&#;uUZ";
        let len = (self.next() % (max as u64 + 1)) as usize;
        (0..len)
            .map(|_| {
                let roll = self.next();
                if roll.is_multiple_of(4) {
                    (roll >> 8) as u8
                } else {
                    SPECIAL[(roll >> 8) as usize % SPECIAL.len()]
                }
            })
            .collect()
    }
}

const TRANSFORMS: &[&str] = &[
    "base64Decode",
    "base64DecodeExt",
    "cmdLine",
    "compressWhitespace",
    "cssDecode",
    "escapeSeqDecode",
    "hexDecode",
    "hexEncode",
    "htmlEntityDecode",
    "jsDecode",
    "length",
    "lowercase",
    "normalizePath",
    "normalizePathWin",
    "removeComments",
    "removeCommentsChar",
    "removeNulls",
    "removeWhitespace",
    "replaceComments",
    "replaceNulls",
    "sha1",
    "trim",
    "urlDecode",
    "urlDecodeUni",
    "utf8toUnicode",
];

#[test]
fn transformations_never_panic() {
    let mut bytes = ByteSource(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2000 {
        let input = bytes.take(64);
        for name in TRANSFORMS {
            let transform = Transform::from_name(name).unwrap();
            let _ = transform.apply(&input);
        }
    }
}

#[test]
fn rule_text_never_panics() {
    let mut bytes = ByteSource(0x2545_f491_4f6c_dd1d);
    let prefix = b"SecRule ARGS|REQUEST_HEADERS:/a/ \"@rx a\" \"id:1,phase:2,";
    for _ in 0..2000 {
        let mut text = prefix.to_vec();
        text.extend(bytes.take(48));
        let text = String::from_utf8_lossy(&text);
        let _ = RuleSet::from_text(&text, Path::new("."));
    }
}

#[test]
fn request_bodies_never_panic() {
    let rules = r#"
SecRule ARGS|ARGS_NAMES|FILES|XML:/*|XML://@*|REQUEST_COOKIES|MULTIPART_PART_HEADERS "@rx ." "id:1,phase:2,pass,t:none,t:urlDecodeUni,t:htmlEntityDecode"
"#;
    let set = RuleSet::from_text(rules, Path::new(".")).unwrap();
    let content_types: &[&[u8]] = &[
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"application/json",
        b"text/xml",
    ];
    let mut bytes = ByteSource(0x1234_5678_9abc_def1);
    for round in 0..2000 {
        let mut request = Request::with_query_value("q", "v");
        let content_type = content_types[round % content_types.len()];
        request
            .headers
            .push(("Content-Type".to_string(), content_type.to_vec()));
        request.headers.push(("Cookie".to_string(), bytes.take(24)));
        request.uri = format!("/{}", String::from_utf8_lossy(&bytes.take(24)));
        let mut body = b"--x\r\nContent-Disposition: form-data; name=\"".to_vec();
        body.extend(bytes.take(96));
        request.body = body;
        let _ = set.evaluate(&request);
    }
}
