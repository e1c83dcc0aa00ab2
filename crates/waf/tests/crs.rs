//! Runs the OWASP CRS regression suite through the engine and checks the repaired `@rx`
//! patterns against the originals.
//!
//! The CRS is not part of this repository. The tests look for it in `PORTCULLIS_CRS_DIR` (a
//! directory with `rules/` and `tests/`), by default `../shared/crs` relative to the repository
//! root, and skip with a message on standard error when it is absent.

use std::path::PathBuf;

use portcullis_waf::ftw::{self, Verdict};
use portcullis_waf::transform::Transform;
use portcullis_waf::{RuleSet, Setup};

/// Share of request-phase stages that pass at paranoia level 4 with no overrides file. The
/// engine passed all 3807 on CRS 4.29.0-dev; a lower share is a regression.
const MIN_PASS_RATE: f64 = 1.0;

/// Stages skipped by the runner: 64 of response-phase rules and 20 that expect only an HTTP
/// status.
const MAX_SKIPPED: usize = 84;

fn crs_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("PORTCULLIS_CRS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs"),
    };
    if dir.join("rules").is_dir() && dir.join("tests").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: no CRS at {} (set PORTCULLIS_CRS_DIR to a directory with rules/ and tests/)",
            dir.display()
        );
        None
    }
}

#[test]
fn regression_suite_pass_rate() {
    let Some(dir) = crs_dir() else { return };
    let set = RuleSet::load(&dir.join("rules"), &Setup::regression_tests()).unwrap();
    let tests = ftw::load_tests(&dir.join("tests")).unwrap();
    let results = ftw::run(&set, &tests, &[]);
    let (total, families) = ftw::summarize(&results);
    for (family, counts) in &families {
        eprintln!(
            "{family}: {} passed, {} failed, {} skipped",
            counts.passed, counts.failed, counts.skipped
        );
    }
    eprintln!(
        "{} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );

    assert!(total.passed > 3000, "only {} stages passed", total.passed);
    assert!(
        total.pass_rate() >= MIN_PASS_RATE,
        "pass rate {:.4} fell below {MIN_PASS_RATE}",
        total.pass_rate()
    );
    assert!(
        total.skipped <= MAX_SKIPPED,
        "{} stages skipped",
        total.skipped
    );
}

#[test]
fn benign_requests_trigger_nothing() {
    let Some(dir) = crs_dir() else { return };
    let set = RuleSet::load(&dir.join("rules"), &Setup::regression_tests()).unwrap();
    let tests = ftw::load_tests(&dir.join("tests/REQUEST-999-COMMON-EXCEPTIONS-AFTER")).unwrap();
    let benign: Vec<_> = tests
        .into_iter()
        .filter(|test| test.rule_id == 999999)
        .collect();
    assert!(!benign.is_empty(), "999999.yml not found");
    for result in ftw::run(&set, &benign, &[]) {
        assert_eq!(result.verdict, Verdict::Pass, "{}", result.test);
    }
}

/// Maps each byte to the code point of the same value, so that a Unicode regex engine reads the
/// bytes the way PCRE without its UTF flag does.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| char::from(*byte)).collect()
}

#[test]
fn repaired_patterns_agree_with_originals() {
    let Some(dir) = crs_dir() else { return };
    let set = RuleSet::load(&dir.join("rules"), &Setup::regression_tests()).unwrap();
    assert!(
        !set.repairs.is_empty(),
        "expected the CRS to need at least one repair"
    );

    // Sample inputs: every request target, header value and body of the suite, raw and decoded,
    // plus non-ASCII text that the repaired byte escapes are about.
    let mut samples: Vec<Vec<u8>> = vec![
        "\u{2039}script\u{203a}alert(1)".as_bytes().to_vec(),
        "\u{ff1c}script\u{ff1e}".as_bytes().to_vec(),
        "caf\u{e9} \u{a9} \u{bf}".as_bytes().to_vec(),
        b"$\xff\xfe(1)".to_vec(),
    ];
    for test in ftw::load_tests(&dir.join("tests")).unwrap() {
        for stage in test.stages {
            let Ok(request) = stage.request else { continue };
            for value in [request.uri.into_bytes(), request.body] {
                samples.push(Transform::UrlDecodeUni.apply(&value).into_owned());
                samples.push(value);
            }
            samples.extend(request.headers.into_iter().map(|(_, value)| value));
        }
    }

    for (location, repair) in &set.repairs {
        let original = fancy_regex::Regex::new(&repair.original).unwrap_or_else(|error| {
            panic!("{location}: original does not compile on fancy-regex: {error}")
        });
        let repaired = portcullis_waf::regex_repair::build(&repair.repaired).unwrap();
        let mut disagreements = Vec::new();
        for sample in &samples {
            let expected = original.is_match(&latin1(sample)).unwrap_or(false);
            if repaired.is_match(sample) != expected {
                disagreements.push(String::from_utf8_lossy(sample).into_owned());
            }
        }
        assert!(
            disagreements.is_empty(),
            "{location}: repaired pattern disagrees on {} of {} samples, first: {:?}",
            disagreements.len(),
            samples.len(),
            disagreements.first()
        );
    }
}
