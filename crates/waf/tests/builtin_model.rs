//! The learned model inside rule sets: rule 100500 of the built-in set, the model's second
//! opinion on built-in rule matches, and the model rule added to a rules directory.

use portcullis_waf::{Model, Request, RuleSet, Setup};

fn with_model() -> RuleSet {
    let model = Model::shipped();
    let setup = Setup::deployment(1, 5).with_model(model.threshold, model.confirm_threshold);
    RuleSet::builtin(&setup).expect("the built-in rules compile")
}

fn without_model() -> RuleSet {
    RuleSet::builtin(&Setup::deployment(1, 5)).expect("the built-in rules compile")
}

/// Attacks that no built-in rule matches and the model detects.
const MODEL_ONLY: [&str; 2] = ["<!--#exec cmd=\"ls\" -->", "{\"$gt\": \"\"}"];

#[test]
fn model_rule_blocks_attacks_rules_miss() {
    let (with, without) = (with_model(), without_model());
    for value in MODEL_ONLY {
        let request = Request::with_query_value("q", value);
        assert!(
            !without.evaluate(&request).blocked,
            "{value:?} without model"
        );
        let evaluation = with.evaluate(&request);
        assert!(evaluation.blocked, "{value:?} with model");
        assert_eq!(evaluation.logged_ids(), vec![100500, 100900], "{value:?}");
    }
}

/// Prose that a built-in rule matches and the model scores below its confirmation threshold.
const RULE_FALSE_POSITIVES: [(&str, u32); 2] = [
    (
        "tr no longer mishandles a second operand with leading \"-\".",
        100100,
    ),
    (
        "`chmod`, but left a small but exploitable window just after the `fopen`.",
        100400,
    ),
];

#[test]
fn model_vetoes_rule_false_positives() {
    let (with, without) = (with_model(), without_model());
    for (value, rule) in RULE_FALSE_POSITIVES {
        let request = Request::with_query_value("q", value);
        let evaluation = without.evaluate(&request);
        assert!(evaluation.logged_ids().contains(&rule), "{value:?}");
        assert!(evaluation.blocked, "{value:?} without model");
        let evaluation = with.evaluate(&request);
        assert_eq!(evaluation.logged_ids(), Vec::<u32>::new(), "{value:?}");
        assert!(!evaluation.blocked, "{value:?} with model");
    }
}

#[test]
fn confirmed_rule_match_adds_its_score() {
    let evaluation = with_model().evaluate(&Request::with_query_value("q", "1' OR '1'='1"));
    assert_eq!(evaluation.logged_ids(), vec![100100, 100500, 100900]);
    assert_eq!(evaluation.anomaly_score(), 10);
}

#[test]
fn model_threshold_from_setup_applies() {
    let setup = Setup::deployment(1, 5).with_model(1.0, 0.0);
    let set = RuleSet::builtin(&setup).unwrap();
    let evaluation = set.evaluate(&Request::with_query_value("q", MODEL_ONLY[0]));
    assert!(!evaluation.blocked);
}

/// A rules directory scored like the CRS: detection adds to the level-1 score, which a phase-2
/// rule compares with the threshold.
const CRS_LIKE_RULES: &str = "\
SecAction \"id:1,phase:1,pass,nolog,setvar:'tx.inbound_anomaly_score_pl1=0'\"
SecRule TX:INBOUND_ANOMALY_SCORE_PL1 \"@ge 5\" \"id:2,phase:2,deny,msg:'score reached'\"
";

#[test]
fn model_scores_rules_dir_level_one() {
    let dir = std::env::temp_dir().join(format!("portcullis-waf-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.conf"), CRS_LIKE_RULES).unwrap();
    let model = Model::shipped();
    let with = RuleSet::load(
        &dir,
        &Setup::deployment(1, 5).with_model(model.threshold, model.confirm_threshold),
    )
    .unwrap();
    let without = RuleSet::load(&dir, &Setup::deployment(1, 5)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let attack = Request::with_query_value("q", MODEL_ONLY[0]);
    let evaluation = with.evaluate(&attack);
    assert!(evaluation.blocked);
    assert_eq!(evaluation.logged_ids(), vec![100500, 2]);
    assert!(!without.evaluate(&attack).blocked);
    let benign = Request::with_query_value("q", "O'Brien");
    assert!(!with.evaluate(&benign).blocked);
}

#[test]
fn invalid_model_threshold_is_rejected() {
    let error = RuleSet::from_text(
        "SecRule ARGS \"@detectModel 1.5\" \"id:1,phase:2,deny\"",
        std::path::Path::new("."),
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("`@detectModel` expects a probability from 0 to 1, not `1.5`"),
        "{error}"
    );
}
