//! Decoding of a request body's `Content-Encoding` before inspection.
//!
//! A client can compress a request body (RFC 9110, section 8.4), and rules that read the raw
//! bytes would then see only compressed data. [`decode`] undoes the codings `gzip` (and its
//! alias `x-gzip`), `deflate` (a zlib stream, RFC 1950) and `br` (Brotli), in the reverse of the
//! order they are listed, so that the rules see the body the application reads.
//!
//! Decoding is bounded in two ways against decompression bombs: the output stops at
//! `max_output` bytes, and a body whose decoded size exceeds [`MAX_RATIO`] times its encoded
//! size (once it reaches [`RATIO_FLOOR`] bytes) is rejected.

use std::io::Read;

/// Ratio of decoded to encoded size above which a body is rejected as a decompression bomb.
/// Text such as JSON typically compresses 5 to 20 times with gzip, while a gzip or deflate stream
/// can expand a little over 1000 times and Brotli far more.
pub const MAX_RATIO: usize = 100;

/// Decoded size below which the ratio is not checked, because short inputs such as a run of
/// one repeated byte have high ratios without costing anything to decode.
pub const RATIO_FLOOR: usize = 16 * 1024;

/// Output of [`decode`].
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The decoded body, at most `max_output` bytes.
    pub body: Vec<u8>,
    /// True when the decoded body is longer than `max_output`, so `body` is only its first
    /// `max_output` bytes.
    pub truncated: bool,
}

/// Reasons why [`decode`] failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header names a coding this module does not decode.
    #[error("unsupported content coding `{0}`; supported: gzip, deflate, br, identity")]
    Unsupported(String),
    /// The bytes are not a valid stream of the named coding.
    #[error("the body is not valid {coding} data: {message}")]
    Invalid {
        coding: &'static str,
        message: String,
    },
    /// The decoded body grew more than [`MAX_RATIO`] times its encoded size.
    #[error(
        "the body expands more than {MAX_RATIO} times when decoded ({encoded} encoded bytes), \
         which is rejected as a decompression bomb"
    )]
    RatioExceeded { encoded: usize },
}

impl DecodeError {
    /// Returns the HTTP status for a request whose body failed to decode: 415 for an
    /// unsupported coding, 400 for invalid data and 413 for a decompression bomb.
    pub fn status(&self) -> u16 {
        match self {
            DecodeError::Unsupported(_) => 415,
            DecodeError::Invalid { .. } => 400,
            DecodeError::RatioExceeded { .. } => 413,
        }
    }

    /// Returns the machine-readable error code that goes with [`DecodeError::status`].
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Unsupported(_) => "unsupported_content_encoding",
            DecodeError::Invalid { .. } => "invalid_content_encoding",
            DecodeError::RatioExceeded { .. } => "decompression_ratio_exceeded",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
    Brotli,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
        }
    }
}

/// Parses a `Content-Encoding` value into its codings, in the order they were applied.
/// `identity` and empty list elements are dropped.
fn parse_codings(header: &str) -> Result<Vec<Coding>, DecodeError> {
    let mut codings = Vec::new();
    for token in header.split(',') {
        let token = token.trim();
        if token.is_empty() || token.eq_ignore_ascii_case("identity") {
            continue;
        }
        let coding = if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Coding::Gzip
        } else if token.eq_ignore_ascii_case("deflate") {
            Coding::Deflate
        } else if token.eq_ignore_ascii_case("br") {
            Coding::Brotli
        } else {
            return Err(DecodeError::Unsupported(token.to_string()));
        };
        codings.push(coding);
    }
    Ok(codings)
}

/// Returns true when `header` lists a coding other than `identity`, so that the body needs
/// [`decode`] before inspection.
pub fn is_encoded(header: &str) -> bool {
    header.split(',').any(|token| {
        let token = token.trim();
        !token.is_empty() && !token.eq_ignore_ascii_case("identity")
    })
}

/// Decodes `body` by the codings of the `Content-Encoding` value `header`, keeping at most
/// `max_output` bytes. When `complete` is false, `body` is only the start of the encoded body,
/// and a stream that ends early is not an error: the bytes decoded so far are returned.
pub fn decode(
    header: &str,
    body: &[u8],
    complete: bool,
    max_output: usize,
) -> Result<Decoded, DecodeError> {
    let codings = parse_codings(header)?;
    let mut current = Decoded {
        body: body.to_vec(),
        truncated: false,
    };
    let mut input_complete = complete;
    for coding in codings.into_iter().rev() {
        let decoded = decode_one(coding, &current.body, input_complete, max_output)?;
        if decoded.body.len() >= RATIO_FLOOR
            && decoded.body.len() > body.len().saturating_mul(MAX_RATIO)
        {
            return Err(DecodeError::RatioExceeded {
                encoded: body.len(),
            });
        }
        // A truncated intermediate output is the start of the next coding's input.
        input_complete = input_complete && !decoded.truncated;
        current = Decoded {
            body: decoded.body,
            truncated: current.truncated || decoded.truncated,
        };
    }
    Ok(current)
}

fn decode_one(
    coding: Coding,
    input: &[u8],
    complete: bool,
    max_output: usize,
) -> Result<Decoded, DecodeError> {
    match coding {
        Coding::Gzip => read_bounded(
            coding,
            flate2::read::MultiGzDecoder::new(input),
            complete,
            max_output,
        ),
        Coding::Deflate => read_bounded(
            coding,
            flate2::read::ZlibDecoder::new(input),
            complete,
            max_output,
        ),
        Coding::Brotli => read_bounded(
            coding,
            brotli_decompressor::Decompressor::new(input, 4096),
            complete,
            max_output,
        ),
    }
}

/// Reads up to `max_output + 1` bytes from `reader` to learn whether the output is longer
/// than `max_output`, without decoding more than that.
fn read_bounded(
    coding: Coding,
    reader: impl Read,
    complete: bool,
    max_output: usize,
) -> Result<Decoded, DecodeError> {
    let limit = u64::try_from(max_output)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut body = Vec::new();
    let result = reader.take(limit).read_to_end(&mut body);
    if let Err(error) = result {
        let ended_early = error.kind() == std::io::ErrorKind::UnexpectedEof
            || (coding == Coding::Brotli && !body.is_empty());
        if complete || !ended_early {
            return Err(DecodeError::Invalid {
                coding: coding.name(),
                message: error.to_string(),
            });
        }
    }
    let truncated = body.len() > max_output;
    body.truncate(max_output);
    Ok(Decoded { body, truncated })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// Encodes `data` as a Brotli stream of one uncompressed meta-block (RFC 7932, section
    /// 9.2). The stream is written by hand because the decoder crate has no encoder. `data`
    /// must be 1 to 65536 bytes.
    fn brotli_uncompressed(data: &[u8]) -> Vec<u8> {
        assert!((1..=65536).contains(&data.len()));
        let length = data.len() - 1;
        // Bits, least significant first: WBITS=16 (1 bit 0), ISLAST=0, MNIBBLES=4 (2 bits 0),
        // MLEN-1 (16 bits), ISUNCOMPRESSED=1; then padding to the byte boundary, the data and
        // a final empty last meta-block (ISLAST=1, ISLASTEMPTY=1).
        let bits: u64 = (length as u64) << 4 | 1 << 20;
        let mut stream = vec![bits as u8, (bits >> 8) as u8, (bits >> 16) as u8];
        stream.extend_from_slice(data);
        stream.push(0b11);
        stream
    }

    const JSON: &[u8] = br#"{"user":"alice","note":"1 UNION SELECT password FROM users"}"#;

    #[test]
    fn gzip_body_decodes() {
        let decoded = decode("gzip", &gzip(JSON), true, 1024).unwrap();
        assert_eq!(decoded.body, JSON);
        assert!(!decoded.truncated);
        assert_eq!(
            decode("X-GZIP", &gzip(JSON), true, 1024).unwrap().body,
            JSON
        );
    }

    #[test]
    fn deflate_body_decodes() {
        assert_eq!(
            decode("deflate", &deflate(JSON), true, 1024).unwrap().body,
            JSON
        );
    }

    #[test]
    fn brotli_body_decodes() {
        let decoded = decode("br", &brotli_uncompressed(JSON), true, 1024).unwrap();
        assert_eq!(decoded.body, JSON);
    }

    #[test]
    fn stacked_codings_decode_in_reverse() {
        let body = gzip(&deflate(JSON));
        assert_eq!(
            decode("deflate, gzip", &body, true, 1024).unwrap().body,
            JSON
        );
        assert!(decode("gzip, deflate", &body, true, 1024).is_err());
        assert_eq!(decode("identity", JSON, true, 1024).unwrap().body, JSON);
    }

    #[test]
    fn output_stops_at_limit() {
        let decoded = decode("gzip", &gzip(JSON), true, 10).unwrap();
        assert_eq!(decoded.body, &JSON[..10]);
        assert!(decoded.truncated);
    }

    #[test]
    fn invalid_streams_fail() {
        for coding in ["gzip", "deflate", "br"] {
            let error = decode(coding, b"this is not compressed", true, 1024).unwrap_err();
            assert!(
                matches!(error, DecodeError::Invalid { .. }),
                "{coding}: {error:?}"
            );
        }
        let mut cut = gzip(JSON);
        cut.truncate(cut.len() - 12);
        assert!(decode("gzip", &cut, true, 1024).is_err());
    }

    #[test]
    fn truncated_prefix_decodes_partially() {
        let data = "1 UNION SELECT password FROM users; ".repeat(200);
        let mut cut = gzip(data.as_bytes());
        cut.truncate(cut.len() / 2);
        let decoded = decode("gzip", &cut, false, 1 << 20).unwrap();
        assert!(!decoded.body.is_empty());
        assert!(data.as_bytes().starts_with(&decoded.body));
    }

    #[test]
    fn unsupported_coding_fails() {
        let error = decode("zstd", JSON, true, 1024).unwrap_err();
        assert_eq!(error, DecodeError::Unsupported("zstd".to_string()));
        assert!(is_encoded("gzip"));
        assert!(is_encoded("identity, zstd"));
        assert!(!is_encoded("identity"));
        assert!(!is_encoded(" "));
    }

    #[test]
    fn decompression_bomb_is_rejected() {
        let zeros = vec![0u8; 4 << 20];
        let bomb = gzip(&zeros);
        assert!(bomb.len() * MAX_RATIO < zeros.len());
        let error = decode("gzip", &bomb, true, 8 << 20).unwrap_err();
        assert_eq!(
            error,
            DecodeError::RatioExceeded {
                encoded: bomb.len()
            }
        );
        // Below the floor, a high ratio is accepted.
        let small = gzip(&[b'a'; 4096]);
        assert_eq!(decode("gzip", &small, true, 8192).unwrap().body.len(), 4096);
    }
}
