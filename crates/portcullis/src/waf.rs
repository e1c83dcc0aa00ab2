//! `portcullis waf`: run the CRS regression tests through the WAF engine, and score values read
//! from standard input.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use portcullis_waf::{Request, RuleSet, Setup, ftw};

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
    /// which is always null because no learned model is available yet.
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
    },
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
        } => scan(rules.as_deref(), paranoia, anomaly_threshold),
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

fn scan(rules: Option<&Path>, paranoia: u8, anomaly_threshold: u32) -> anyhow::Result<ExitCode> {
    let setup = Setup::deployment(paranoia, anomaly_threshold);
    let set = match rules {
        Some(rules) => load_rules(rules, &setup)?,
        None => RuleSet::builtin(&setup).context("failed to compile the built-in rules")?,
    };
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let value = line.context("failed to read standard input")?;
        let evaluation = set.evaluate(&Request::with_query_value("q", &value));
        let result = serde_json::json!({
            "value": value,
            "blocked": evaluation.blocked,
            "score": evaluation.anomaly_score(),
            "rules": evaluation.logged_ids(),
            "probability": null,
        });
        writeln!(out, "{result}")?;
    }
    Ok(ExitCode::SUCCESS)
}
