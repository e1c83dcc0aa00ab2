//! Evaluation of the learned model and the built-in rules on a labelled corpus, the
//! `test.jsonl` split that `crates/waf/model/corpus.py` writes.
//!
//! Three detectors are compared: the model alone (probability at or above its threshold), the
//! built-in rules alone, and the built-in rules with the model rule, which is what a `waf`
//! policy without `rules_dir` runs by default. The rules see each value as the single query
//! parameter of a `GET` request, like `portcullis waf scan`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{Model, Request, RuleSet, Setup};

/// Families of benign values built from text on the machine (man pages, documentation).
const PROSE_FAMILIES: [&str; 7] = ["prose", "json", "base64", "jwt", "url", "email", "name"];

/// One labelled value of the corpus.
#[derive(Debug, Clone)]
pub struct Sample {
    pub attack: bool,
    pub family: String,
    pub value: String,
}

/// Reads a JSON Lines corpus with `label` (1 attack, 0 benign), `family` and `value`.
pub fn load_samples(path: &Path) -> Result<Vec<Sample>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("failed to read {}: {error}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(index, line)| {
            let invalid = |what: &str| format!("{}:{}: {what}", path.display(), index + 1);
            let item: serde_json::Value =
                serde_json::from_str(line).map_err(|error| invalid(&error.to_string()))?;
            Ok(Sample {
                attack: item["label"]
                    .as_i64()
                    .ok_or_else(|| invalid("missing `label`"))?
                    == 1,
                family: item["family"]
                    .as_str()
                    .ok_or_else(|| invalid("missing `family`"))?
                    .to_string(),
                value: item["value"]
                    .as_str()
                    .ok_or_else(|| invalid("missing `value`"))?
                    .to_string(),
            })
        })
        .collect()
}

/// A way of deciding whether a value is an attack.
pub enum Detector {
    Model(&'static Model),
    Rules(RuleSet),
}

impl Detector {
    /// Returns the three detectors of the report: `model`, `rules` and `rules+model`, the
    /// built-in rule set at paranoia level 1 and anomaly threshold 5.
    pub fn standard() -> Result<Vec<(&'static str, Detector)>, crate::Error> {
        let model = Model::shipped();
        let setup = Setup::deployment(1, 5);
        Ok(vec![
            ("model", Detector::Model(model)),
            ("rules", Detector::Rules(RuleSet::builtin(&setup)?)),
            (
                "rules+model",
                Detector::Rules(RuleSet::builtin(
                    &setup.with_model(model.threshold, model.confirm_threshold),
                )?),
            ),
        ])
    }

    /// Returns true when the detector flags `value`.
    pub fn detects(&self, value: &str) -> bool {
        match self {
            Detector::Model(model) => model.probability(value.as_bytes()) >= model.threshold,
            Detector::Rules(set) => set.evaluate(&Request::with_query_value("q", value)).blocked,
        }
    }
}

/// Values and detections of one family.
#[derive(Debug, Default, Clone, Copy)]
pub struct Count {
    pub total: usize,
    pub detected: usize,
}

impl Count {
    /// Returns detected / total, or 0 for an empty family.
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.detected as f64 / self.total as f64
        }
    }

    fn add(&mut self, other: Count) {
        self.total += other.total;
        self.detected += other.detected;
    }
}

/// Detections of one detector, by family.
#[derive(Debug, Default, Clone)]
pub struct DetectorReport {
    pub attacks: BTreeMap<String, Count>,
    pub benign: BTreeMap<String, Count>,
}

impl DetectorReport {
    /// Returns the detections over all attack values (recall).
    pub fn all_attacks(&self) -> Count {
        sum(self.attacks.values())
    }

    /// Returns the false positives over the benign values built from text on the machine.
    pub fn prose(&self) -> Count {
        sum(self
            .benign
            .iter()
            .filter(|(family, _)| PROSE_FAMILIES.contains(&family.as_str()))
            .map(|(_, count)| count))
    }

    /// Returns the false positives on the benign family `family`.
    pub fn benign_family(&self, family: &str) -> Count {
        self.benign.get(family).copied().unwrap_or_default()
    }

    /// Returns the precision of the detections of attack `family`, or of all attacks for
    /// `None`, against every benign false positive: true positives / (true positives + false
    /// positives on all benign values).
    pub fn precision(&self, family: Option<&str>) -> f64 {
        let true_positives = match family {
            Some(family) => self.attacks.get(family).map_or(0, |count| count.detected),
            None => self.all_attacks().detected,
        };
        let false_positives = sum(self.benign.values()).detected;
        if true_positives + false_positives == 0 {
            return 0.0;
        }
        true_positives as f64 / (true_positives + false_positives) as f64
    }
}

fn sum<'a>(counts: impl Iterator<Item = &'a Count>) -> Count {
    let mut total = Count::default();
    for count in counts {
        total.add(*count);
    }
    total
}

/// Runs `detector` on every sample.
pub fn evaluate(samples: &[Sample], detector: &Detector) -> DetectorReport {
    let mut report = DetectorReport::default();
    for sample in samples {
        let counts = if sample.attack {
            &mut report.attacks
        } else {
            &mut report.benign
        };
        let count = counts.entry(sample.family.clone()).or_default();
        count.total += 1;
        if detector.detects(&sample.value) {
            count.detected += 1;
        }
    }
    report
}

/// Formats the reports as Markdown tables: recall and precision per attack family, then the
/// false-positive rate per benign family.
pub fn format_report(reports: &[(&str, DetectorReport)]) -> String {
    let mut out = String::new();
    let names: Vec<&str> = reports.iter().map(|(name, _)| *name).collect();
    let Some((_, first)) = reports.first() else {
        return out;
    };

    out.push_str(&format!(
        "| attack family | values | {} |\n",
        names
            .iter()
            .map(|name| format!("{name} recall | {name} precision"))
            .collect::<Vec<_>>()
            .join(" | ")
    ));
    out.push_str(&format!(
        "| --- | ---{} |\n",
        " | --- | ---".repeat(names.len())
    ));
    for family in first.attacks.keys() {
        let total = first.attacks[family].total;
        let cells: Vec<String> = reports
            .iter()
            .map(|(_, report)| {
                format!(
                    "{} | {}",
                    percent(report.attacks[family].rate()),
                    percent(report.precision(Some(family)))
                )
            })
            .collect();
        out.push_str(&format!("| {family} | {total} | {} |\n", cells.join(" | ")));
    }
    let cells: Vec<String> = reports
        .iter()
        .map(|(_, report)| {
            format!(
                "{} | {}",
                percent(report.all_attacks().rate()),
                percent(report.precision(None))
            )
        })
        .collect();
    out.push_str(&format!(
        "| all attacks | {} | {} |\n\n",
        first.all_attacks().total,
        cells.join(" | ")
    ));

    out.push_str(&format!(
        "| benign family | values | {} |\n",
        names
            .iter()
            .map(|name| format!("{name} false positives"))
            .collect::<Vec<_>>()
            .join(" | ")
    ));
    out.push_str(&format!("| --- | ---{} |\n", " | ---".repeat(names.len())));
    let mut rows: Vec<(String, Vec<Count>)> = first
        .benign
        .keys()
        .map(|family| {
            let counts = reports
                .iter()
                .map(|(_, report)| report.benign_family(family))
                .collect();
            (family.clone(), counts)
        })
        .collect();
    rows.push((
        "all prose-derived".to_string(),
        reports.iter().map(|(_, report)| report.prose()).collect(),
    ));
    for (family, counts) in rows {
        let cells: Vec<String> = counts
            .iter()
            .map(|count| format!("{} ({})", percent(count.rate()), count.detected))
            .collect();
        out.push_str(&format!(
            "| {family} | {} | {} |\n",
            counts[0].total,
            cells.join(" | ")
        ));
    }
    out
}

fn percent(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}
