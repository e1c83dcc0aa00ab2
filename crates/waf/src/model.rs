//! The learned model: a logistic regression over hashed byte n-grams of one request value,
//! trained by `crates/waf/model/train.py` and shipped as `crates/waf/model/model.bin`.
//!
//! Features, computed the same way as in `train.py`:
//!
//! 1. The value, and its percent-decoded form when decoding changes it, are each folded (ASCII
//!    letters to lower case, ASCII digits to `0`) and framed by the bytes 0x02 and 0x03.
//! 2. Every n-gram of 1 to `max_n` bytes of each folded text is hashed with 32-bit FNV-1a, and
//!    the hash modulo the bucket count is its bucket.
//! 3. The distinct buckets are the features, each worth `1 / sqrt(number of distinct buckets)`.
//!
//! The weights are 16-bit integers with one scale factor, so the weighted sum is an exact
//! integer and Rust and Python agree on it. The probability is the logistic function of
//! `bias + scale * sum / sqrt(count)`.

use std::cell::RefCell;
use std::sync::OnceLock;

const MAGIC: &[u8; 8] = b"PCWAFM02";
const HEADER_LEN: usize = 8 + 4 * 2 + 8 * 4;
const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;
const START: u8 = 0x02;
const END: u8 = 0x03;

static SHIPPED: &[u8] = include_bytes!("../model/model.bin");

thread_local! {
    /// One bit per bucket, all clear between calls of [`Model::margin`].
    static SEEN: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// A loaded model.
#[derive(Debug)]
pub struct Model {
    bucket_mask: u32,
    max_n: usize,
    scale: f64,
    bias: f64,
    /// Probability at or above which a value counts as an attack, chosen by `train.py` for a
    /// false-positive rate of at most 0.03% on benign values held out from training.
    pub threshold: f64,
    /// Probability that a value matched by a built-in rule must reach for the match to count,
    /// chosen by `train.py` for a false-positive rate of at most 1% on those benign values.
    pub confirm_threshold: f64,
    weights: Vec<i16>,
}

impl Model {
    /// Returns the model compiled into the binary, parsed on first use.
    pub fn shipped() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| Model::parse(SHIPPED).expect("the shipped model.bin is valid"))
    }

    /// Parses a model file: the magic `PCWAFM02`, then little-endian `u32` bucket count (a power
    /// of two), `u32` maximum n-gram length, `f64` scale, `f64` bias, `f64` threshold, `f64`
    /// confirmation threshold, and one `i16` weight per bucket.
    pub fn parse(bytes: &[u8]) -> Result<Model, String> {
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err("not a portcullis WAF model file (missing PCWAFM02 header)".to_string());
        }
        let u32_at = |offset: usize| {
            u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
        };
        let f64_at = |offset: usize| {
            f64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
        };
        let buckets = u32_at(8);
        let max_n = u32_at(12) as usize;
        if !buckets.is_power_of_two() || !(1..=16).contains(&max_n) {
            return Err(format!(
                "invalid model header: {buckets} buckets (must be a power of two), maximum \
                 n-gram length {max_n} (must be 1 to 16)"
            ));
        }
        let weights: Vec<i16> = bytes[HEADER_LEN..]
            .chunks_exact(2)
            .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        if weights.len() != buckets as usize || !(bytes.len() - HEADER_LEN).is_multiple_of(2) {
            return Err(format!(
                "invalid model file: {} weight bytes for {buckets} buckets",
                bytes.len() - HEADER_LEN
            ));
        }
        Ok(Model {
            bucket_mask: buckets - 1,
            max_n,
            scale: f64_at(16),
            bias: f64_at(24),
            threshold: f64_at(32),
            confirm_threshold: f64_at(40),
            weights,
        })
    }

    /// Returns the probability, from 0 to 1, that `value` is an attack.
    pub fn probability(&self, value: &[u8]) -> f64 {
        1.0 / (1.0 + (-self.margin(value)).exp())
    }

    /// Returns the log-odds that `value` is an attack.
    pub fn margin(&self, value: &[u8]) -> f64 {
        let mut buckets = Vec::with_capacity((value.len() + 2) * self.max_n * 2);
        self.add_buckets(value, &mut buckets);
        if value.contains(&b'%') {
            let decoded = percent_decode(value);
            if decoded != value {
                self.add_buckets(&decoded, &mut buckets);
            }
        }
        let (sum, count) = SEEN.with(|seen| {
            let mut seen = seen.borrow_mut();
            let words = (self.bucket_mask as usize + 1).div_ceil(64);
            if seen.len() != words {
                *seen = vec![0; words];
            }
            // Each bucket counts once: a bit set marks the buckets already added, and the
            // bits are cleared afterwards, which is cheaper than sorting the list.
            let mut sum = 0i64;
            let mut count = 0usize;
            for bucket in &buckets {
                let (word, bit) = (*bucket as usize / 64, 1u64 << (bucket % 64));
                if seen[word] & bit == 0 {
                    seen[word] |= bit;
                    sum += i64::from(self.weights[*bucket as usize]);
                    count += 1;
                }
            }
            for bucket in &buckets {
                seen[*bucket as usize / 64] = 0;
            }
            (sum, count)
        });
        self.bias + self.scale * sum as f64 * (1.0 / (count as f64).sqrt())
    }

    /// Appends the bucket of every n-gram of the folded and framed `text`.
    fn add_buckets(&self, text: &[u8], buckets: &mut Vec<u32>) {
        let mut folded = Vec::with_capacity(text.len() + 2);
        folded.push(START);
        folded.extend(text.iter().map(|byte| fold(*byte)));
        folded.push(END);
        for start in 0..folded.len() {
            let mut hash = FNV_OFFSET;
            for byte in folded[start..].iter().take(self.max_n) {
                hash = (hash ^ u32::from(*byte)).wrapping_mul(FNV_PRIME);
                buckets.push(hash & self.bucket_mask);
            }
        }
    }
}

fn fold(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => b'0',
        _ => byte.to_ascii_lowercase(),
    }
}

/// Decodes `%XX` escapes. Invalid escapes and `+` stay as they are.
fn percent_decode(value: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%'
            && i + 2 < value.len()
            && let (Some(high), Some(low)) = (hex(value[i + 1]), hex(value[i + 2]))
        {
            decoded.push(high << 4 | low);
            i += 3;
        } else {
            decoded.push(value[i]);
            i += 1;
        }
    }
    decoded
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_model_loads() {
        let model = Model::shipped();
        assert_eq!(model.weights.len(), model.bucket_mask as usize + 1);
        assert!(model.threshold > 0.0, "{}", model.threshold);
        assert!(model.threshold < 1.0, "{}", model.threshold);
        assert!(model.confirm_threshold > 0.0, "{}", model.confirm_threshold);
        assert!(
            model.confirm_threshold < model.threshold,
            "{}",
            model.confirm_threshold
        );
    }

    /// A line of `samples.tsv`: the expected label, the value and the probability that
    /// `train.py` computed for it.
    struct Sample {
        attack: bool,
        value: String,
        python_probability: f64,
    }

    fn samples() -> Vec<Sample> {
        include_str!("../model/samples.tsv")
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                assert_eq!(fields.len(), 3, "{line:?}");
                Sample {
                    attack: fields[0] == "1",
                    value: serde_json::from_str(fields[1]).expect("a JSON string"),
                    python_probability: fields[2].parse().expect("a probability"),
                }
            })
            .collect()
    }

    #[test]
    fn samples_classified_as_labelled() {
        let model = Model::shipped();
        let samples = samples();
        assert!(samples.iter().filter(|sample| sample.attack).count() >= 5);
        assert!(samples.iter().filter(|sample| !sample.attack).count() >= 5);
        for sample in samples {
            let probability = model.probability(sample.value.as_bytes());
            assert_eq!(
                probability >= model.threshold,
                sample.attack,
                "{:?}: probability {probability}, threshold {}",
                sample.value,
                model.threshold
            );
        }
    }

    #[test]
    fn python_and_rust_scores_agree() {
        let model = Model::shipped();
        for sample in samples() {
            let rust = model.probability(sample.value.as_bytes());
            assert!(
                (rust - sample.python_probability).abs() < 1e-9,
                "{:?}: Rust {rust}, Python {}",
                sample.value,
                sample.python_probability
            );
        }
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode(b"%2e%2E%zz%4"), b"..%zz%4");
    }

    #[test]
    fn truncated_file_is_rejected() {
        let error = Model::parse(&SHIPPED[..100]).unwrap_err();
        assert!(error.contains("weight bytes"), "{error}");
        let error = Model::parse(b"not a model").unwrap_err();
        assert!(error.contains("PCWAFM02"), "{error}");
    }
}
