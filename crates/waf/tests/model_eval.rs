//! Recall and false-positive rate of the learned model, and of the built-in rules with the model
//! (the default of a `waf` policy without `rules_dir`), on the held-out test split.
//!
//! The attack datasets are not part of this repository. The test looks for them in
//! `$PORTCULLIS_SHARED_DIR/datasets`, by default `../shared/datasets` relative to the repository
//! root, and skips with a message on standard error when they are absent. It builds the split
//! with `crates/waf/model/corpus.py` (Python 3 standard library only), which also reads man pages
//! and documentation installed on the machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_waf::model_eval::{self, Detector};

/// Documented figures of a detector: minimum recall over all held-out attack values, and
/// maximum false-positive rates on the benign prose-derived values and on the benign
/// HttpParamsDataset values. docs/waf.md records the measured figures.
struct Target {
    detector: &'static str,
    min_recall: f64,
    max_prose_fpr: f64,
    max_form_fpr: f64,
}

const TARGETS: [Target; 2] = [
    Target {
        detector: "model",
        min_recall: 0.985,
        max_prose_fpr: 0.0005,
        max_form_fpr: 0.001,
    },
    Target {
        detector: "rules+model",
        min_recall: 0.99,
        max_prose_fpr: 0.001,
        max_form_fpr: 0.001,
    },
];

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn datasets() -> Option<PathBuf> {
    let shared = match std::env::var_os("PORTCULLIS_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repository().join("../shared"),
    };
    let datasets = shared.join("datasets");
    if datasets.join("HttpParamsDataset").is_dir() {
        Some(shared)
    } else {
        eprintln!(
            "skipping: no datasets at {} (set PORTCULLIS_SHARED_DIR to a directory with \
             datasets/HttpParamsDataset)",
            datasets.display()
        );
        None
    }
}

fn build_test_split(shared: &Path) -> PathBuf {
    let out = std::env::temp_dir().join(format!("portcullis-waf-corpus-{}", std::process::id()));
    let status = Command::new("python3")
        .arg(repository().join("crates/waf/model/corpus.py"))
        .arg("--out")
        .arg(&out)
        .env("PORTCULLIS_SHARED_DIR", shared)
        .status()
        .expect("python3 runs");
    assert!(status.success(), "corpus.py failed: {status}");
    out
}

#[test]
fn held_out_recall_and_false_positives() {
    let Some(shared) = datasets() else {
        return;
    };
    let out = build_test_split(&shared);
    let samples = model_eval::load_samples(&out.join("test.jsonl")).expect("test.jsonl loads");
    std::fs::remove_dir_all(&out).expect("temporary corpus removed");

    for (name, detector) in Detector::standard().expect("the built-in rules compile") {
        let Some(target) = TARGETS.iter().find(|target| target.detector == name) else {
            continue;
        };
        let report = model_eval::evaluate(&samples, &detector);
        let recall = report.all_attacks();
        let prose = report.prose();
        let form = report.benign_family("form");
        eprintln!(
            "{name}: recall {}/{}, prose false positives {}/{}, form false positives {}/{}",
            recall.detected, recall.total, prose.detected, prose.total, form.detected, form.total
        );
        assert!(recall.total > 5000, "{name}: only {} attacks", recall.total);
        assert!(
            prose.total > 30000,
            "{name}: only {} prose values",
            prose.total
        );
        assert!(form.total > 2000, "{name}: only {} form values", form.total);
        assert!(
            recall.rate() >= target.min_recall,
            "{name}: recall {}",
            recall.rate()
        );
        assert!(
            prose.rate() <= target.max_prose_fpr,
            "{name}: prose {}",
            prose.rate()
        );
        assert!(
            form.rate() <= target.max_form_fpr,
            "{name}: form {}",
            form.rate()
        );
    }
}

/// Prints the mean cost per value of the model and of the built-in rule sets on the corpus in
/// `target/waf-model/test.jsonl`, written by `corpus.py`. Run it on a release build:
/// `cargo test --release -p portcullis-waf --test model_eval -- --ignored --nocapture`.
/// `PORTCULLIS_WAF_COST_DETECTORS` (comma-separated names, possibly none) limits the detectors
/// run, so that `perf stat` can count the instructions of one detector against a run of none.
#[test]
#[ignore = "a measurement, meaningful only in a release build"]
fn cost_per_value() {
    let corpus = repository().join("target/waf-model/test.jsonl");
    if !corpus.is_file() {
        eprintln!(
            "skipping: no corpus at {} (run crates/waf/model/corpus.py)",
            corpus.display()
        );
        return;
    }
    let samples = model_eval::load_samples(&corpus).expect("test.jsonl loads");
    let bytes: usize = samples.iter().map(|sample| sample.value.len()).sum();
    eprintln!(
        "{} values, mean length {} bytes",
        samples.len(),
        bytes / samples.len()
    );
    let selected = std::env::var("PORTCULLIS_WAF_COST_DETECTORS").ok();
    for (name, detector) in Detector::standard().expect("the built-in rules compile") {
        if let Some(selected) = &selected
            && !selected.split(',').any(|selection| selection == name)
        {
            continue;
        }
        let started = std::time::Instant::now();
        let detected = samples
            .iter()
            .filter(|sample| detector.detects(&sample.value))
            .count();
        let elapsed = started.elapsed();
        eprintln!(
            "{name}: {:.0} ns per value ({detected} detected)",
            elapsed.as_nanos() as f64 / samples.len() as f64
        );
    }
}
