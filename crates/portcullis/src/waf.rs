//! `portcullis waf`: run the CRS regression tests through the WAF engine, score values read
//! from standard input, and evaluate the learned model on a labelled corpus.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use portcullis_waf::{Model, Request, RuleSet, Setup, ftw, model_eval};

#[derive(Subcommand)]
pub enum WafCommand {
    /// Run go-ftw regression tests in process and compare the rules that fired.
    ///
    /// Prints one JSON line per test stage, one JSON line per rule family (test directory) with
    /// its pass rate, then `N passed, N failed, N skipped`. Exits 1 when a stage failed.
    Test {
        /// Directory of SecLang rule files (`*.conf`, loaded in name order).
        #[arg(long, value_name = "DIR")]
        rules: PathBuf,
        /// Directory searched recursively for go-ftw test files (`*.yaml`).
        #[arg(long, value_name = "DIR")]
        tests: PathBuf,
        /// CRS paranoia level, 1 to 4.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=4))]
        paranoia: u8,
        /// CRS test-overrides file whose entries skip tests or replace their expected output.
        #[arg(long, value_name = "FILE")]
        overrides: Option<PathBuf>,
    },
    /// Inspect each line of standard input as the value of a query parameter.
    ///
    /// Prints one JSON line per value: `blocked` (the CRS anomaly threshold was reached),
    /// `score` (inbound anomaly score), `rules` (ids of the rules that fired) and `probability`,
    /// the learned model's probability that the value is an attack.
    Scan {
        /// Directory of SecLang rule files, such as a CRS `rules` directory. Without it the
        /// built-in rule set runs, the one a `waf` policy without `rules_dir` uses.
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
        /// CRS paranoia level, 1 to 4.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
        paranoia: u8,
        /// Inbound anomaly score at which a value is blocked.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        anomaly_threshold: u32,
        /// Whether the learned model's rule (id 100500) runs with the rules. Default: on for
        /// the built-in rule set, off with `--rules`, as in the `waf` policy.
        #[arg(long, value_enum)]
        model: Option<Switch>,
        /// Attack probability, from 0 to 1, at which the model's rule matches. Default: the
        /// threshold shipped with the model.
        #[arg(long, value_name = "PROBABILITY", value_parser = parse_probability)]
        model_threshold: Option<f64>,
        /// Attack probability, from 0 to 1, that a value matched by a built-in rule must reach
        /// for the match to count. Default: the confirmation threshold shipped with the model.
        #[arg(long, value_name = "PROBABILITY", value_parser = parse_probability)]
        model_confirm_threshold: Option<f64>,
    },
    /// Report the recall and false-positive rate of the learned model, the built-in rules and
    /// both together on a labelled corpus.
    ///
    /// Reads a JSON Lines file with `label` (1 attack, 0 benign), `family` and `value`, such as
    /// the `test.jsonl` that `crates/waf/model/corpus.py` writes, and prints Markdown tables.
    Eval {
        /// The labelled corpus.
        #[arg(long, value_name = "FILE")]
        corpus: PathBuf,
    },
}

/// `on` or `off`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

fn parse_probability(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("expected a number from 0 to 1, not `{text}`"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("expected a number from 0 to 1, not `{text}`"))
    }
}

pub fn run(command: WafCommand) -> ExitCode {
    let result = match command {
        WafCommand::Test {
            rules,
            tests,
            paranoia,
            overrides,
        } => test(&rules, &tests, paranoia, overrides.as_deref()),
        WafCommand::Scan {
            rules,
            paranoia,
            anomaly_threshold,
            model,
            model_threshold,
            model_confirm_threshold,
        } => {
            let model_on = model.unwrap_or(if rules.is_some() {
                Switch::Off
            } else {
                Switch::On
            }) == Switch::On;
            let mut setup = Setup::deployment(paranoia, anomaly_threshold);
            if model_on {
                let model = Model::shipped();
                setup = setup.with_model(
                    model_threshold.unwrap_or(model.threshold),
                    model_confirm_threshold.unwrap_or(model.confirm_threshold),
                );
            }
            scan(rules.as_deref(), &setup)
        }
        WafCommand::Eval { corpus } => eval(&corpus),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn load_rules(dir: &Path, setup: &Setup) -> anyhow::Result<RuleSet> {
    let set = RuleSet::load(dir, setup)
        .with_context(|| format!("failed to load rules from {}", dir.display()))?;
    for warning in &set.warnings {
        eprintln!("warning: {warning}");
    }
    for (location, repair) in &set.repairs {
        eprintln!("note: {location}: @rx pattern repaired: {}", repair.change);
    }
    Ok(set)
}

fn test(
    rules: &Path,
    tests: &Path,
    paranoia: u8,
    overrides: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let setup = Setup {
        paranoia_level: paranoia,
        ..Setup::regression_tests()
    };
    let set = load_rules(rules, &setup)?;
    let cases = ftw::load_tests(tests)?;
    let overrides = match overrides {
        Some(path) => ftw::load_overrides(path)?,
        None => Vec::new(),
    };
    let results = ftw::run(&set, &cases, &overrides);
    let (total, families) = ftw::summarize(&results);

    let mut out = std::io::stdout().lock();
    for result in &results {
        writeln!(out, "{}", result.to_json())?;
    }
    for (family, counts) in &families {
        let line = serde_json::json!({
            "family": family,
            "passed": counts.passed,
            "failed": counts.failed,
            "skipped": counts.skipped,
            "pass_rate": (counts.pass_rate() * 1000.0).round() / 1000.0,
        });
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "{} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    )?;
    Ok(if total.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn scan(rules: Option<&Path>, setup: &Setup) -> anyhow::Result<ExitCode> {
    let set = match rules {
        Some(rules) => load_rules(rules, setup)?,
        None => RuleSet::builtin(setup).context("failed to compile the built-in rules")?,
    };
    let model = Model::shipped();
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let value = line.context("failed to read standard input")?;
        let evaluation = set.evaluate(&Request::with_query_value("q", &value));
        let result = serde_json::json!({
            "value": value,
            "blocked": evaluation.blocked,
            "score": evaluation.anomaly_score(),
            "rules": evaluation.logged_ids(),
            "probability": round(model.probability(value.as_bytes())),
        });
        writeln!(out, "{result}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Rounds a probability to 4 decimal places for printing.
fn round(probability: f64) -> f64 {
    (probability * 10_000.0).round() / 10_000.0
}

fn eval(corpus: &Path) -> anyhow::Result<ExitCode> {
    let samples = model_eval::load_samples(corpus).map_err(anyhow::Error::msg)?;
    let detectors =
        model_eval::Detector::standard().context("failed to compile the built-in rules")?;
    let mut reports = Vec::new();
    for (name, detector) in &detectors {
        let started = Instant::now();
        let report = model_eval::evaluate(&samples, detector);
        let elapsed = started.elapsed();
        eprintln!(
            "{name}: {} values in {:.1} s, {:.1} µs per value",
            samples.len(),
            elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / samples.len().max(1) as f64
        );
        reports.push((*name, report));
    }
    let model = Model::shipped();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "model threshold {:.4}, confirmation threshold {:.4}, anomaly threshold 5, paranoia \
         level 1\n",
        model.threshold, model.confirm_threshold
    )?;
    write!(out, "{}", model_eval::format_report(&reports))?;
    Ok(ExitCode::SUCCESS)
}
