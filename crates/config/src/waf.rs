//! Validation of the `waf` policy.

use crate::load::KeyError;
use crate::model::WafSpec;

/// Checks a `waf` policy at `key`, such as `routes[0].policies[1].waf`. A `rules_dir` is
/// compiled here, through the shared rule set cache, so that a malformed rule stops the load
/// with the rule file and line, and the snapshot build reuses the compiled set.
pub(crate) fn validate_waf(key: &str, spec: &WafSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let paranoia_valid = (1..=4).contains(&spec.paranoia);
    if !paranoia_valid {
        errors.push(KeyError::new(
            format!("{key}.paranoia"),
            format!("paranoia must be 1 to 4, not {}", spec.paranoia),
        ));
    }
    if spec.anomaly_threshold == 0 {
        errors.push(KeyError::new(
            format!("{key}.anomaly_threshold"),
            "anomaly_threshold must be at least 1, because a threshold of 0 blocks every request",
        ));
    }
    if spec.body_limit == 0 {
        errors.push(KeyError::new(
            format!("{key}.body_limit"),
            "body_limit must be at least 1 byte",
        ));
    }
    for (name, threshold) in [
        ("model_threshold", spec.model_threshold),
        ("model_confirm_threshold", spec.model_confirm_threshold),
    ] {
        if let Some(threshold) = threshold
            && !(0.0..=1.0).contains(&threshold)
        {
            errors.push(KeyError::new(
                format!("{key}.{name}"),
                format!("{name} is a probability and must be 0 to 1, not {threshold}"),
            ));
        }
    }
    for (i, exclusion) in spec.exclusions.iter().enumerate() {
        let at = format!("{key}.exclusions[{i}]");
        if exclusion.rules.is_empty() && exclusion.tags.is_empty() {
            errors.push(KeyError::new(
                at.clone(),
                "an exclusion needs `rules` or `tags` to select the rules it applies to",
            ));
        }
        for (j, ids) in exclusion.rules.iter().enumerate() {
            if ids.range().is_none() {
                errors.push(KeyError::new(
                    format!("{at}.rules[{j}]"),
                    "expected a rule id such as 942100 or a range such as \"942100-942199\"",
                ));
            }
        }
        for (j, tag) in exclusion.tags.iter().enumerate() {
            if tag.is_empty() {
                errors.push(KeyError::new(format!("{at}.tags[{j}]"), "the tag is empty"));
            }
        }
        for (j, variable) in exclusion.variables.iter().enumerate() {
            if let Err(message) = portcullis_waf::engine::parse_exclusion_targets(variable) {
                errors.push(KeyError::new(
                    format!("{at}.variables[{j}]"),
                    format!("invalid target `{variable}`: {message}"),
                ));
            }
        }
    }
    if let Some(dir) = &spec.rules_dir {
        if let Err(message) = check_rules_dir(dir) {
            errors.push(KeyError::new(format!("{key}.rules_dir"), message));
        } else if paranoia_valid
            && spec.anomaly_threshold > 0
            && let Err(error) = portcullis_waf::load_shared(Some(dir), &waf_setup(spec))
        {
            errors.push(KeyError::new(
                format!("{key}.rules_dir"),
                format!("failed to load the WAF rules: {error}"),
            ));
        }
    }
    errors
}

/// Returns the rule set setup of a `waf` policy: paranoia level, anomaly threshold and, when
/// the model is enabled, its thresholds (the shipped ones unless the policy sets them).
pub fn waf_setup(spec: &WafSpec) -> portcullis_waf::Setup {
    let setup = portcullis_waf::Setup::deployment(spec.paranoia, spec.anomaly_threshold);
    if !spec.model_enabled() {
        return setup;
    }
    let model = portcullis_waf::Model::shipped();
    setup.with_model(
        spec.model_threshold.unwrap_or(model.threshold),
        spec.model_confirm_threshold
            .unwrap_or(model.confirm_threshold),
    )
}

fn check_rules_dir(dir: &std::path::Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|error| format!("cannot read the rules directory {}: {error}", dir.display()))?;
    let has_rules = entries
        .filter_map(Result::ok)
        .any(|entry| entry.path().extension().is_some_and(|ext| ext == "conf"));
    if has_rules {
        Ok(())
    } else {
        Err(format!(
            "{} contains no `*.conf` rule files; for the CRS, point `rules_dir` at its `rules` \
             directory",
            dir.display()
        ))
    }
}
