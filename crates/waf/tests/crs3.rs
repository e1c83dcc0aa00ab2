//! Loads the OWASP CRS 3.3 as Debian 12 packages it (`modsecurity-crs`: rules in
//! `/usr/share/modsecurity-crs/rules`, setup in `/etc/modsecurity/crs/crs-setup.conf`) and
//! checks the verdicts that `bench/run.sh waf` relies on when it compares the engine with
//! ModSecurity on the same rules.
//!
//! The directories can be moved with `PORTCULLIS_CRS3_RULES` and `PORTCULLIS_CRS3_SETUP`. The
//! tests print a `skipping:` line and pass when the rules are not installed.

use std::path::{Path, PathBuf};

use portcullis_waf::{Request, RuleSet, Setup};

fn path_from_env(name: &str, default: &str) -> PathBuf {
    std::env::var_os(name).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// Links the setup file and every rule and data file into a temporary directory, with the
/// setup first in name order, the way the benchmark builds the `rules_dir` of its CRS 3.3
/// target.
fn linked_rules_dir(test: &str) -> Option<PathBuf> {
    let rules = path_from_env("PORTCULLIS_CRS3_RULES", "/usr/share/modsecurity-crs/rules");
    let setup = path_from_env(
        "PORTCULLIS_CRS3_SETUP",
        "/etc/modsecurity/crs/crs-setup.conf",
    );
    if !rules.is_dir() || !setup.is_file() {
        eprintln!(
            "skipping: no CRS 3.3 at {} and {} (apt-get install modsecurity-crs, or set \
             PORTCULLIS_CRS3_RULES and PORTCULLIS_CRS3_SETUP)",
            rules.display(),
            setup.display()
        );
        return None;
    }
    let dir = std::env::temp_dir().join(format!("portcullis-crs3-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&setup, dir.join("00-crs-setup.conf")).unwrap();
    for entry in std::fs::read_dir(&rules).unwrap() {
        let path = entry.unwrap().path();
        std::os::unix::fs::symlink(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    Some(dir)
}

fn load(dir: &Path, paranoia_level: u8) -> RuleSet {
    RuleSet::load(dir, &Setup::deployment(paranoia_level, 5))
        .unwrap_or_else(|error| panic!("CRS 3.3 failed to load: {error}"))
}

fn get(target: &str) -> Request {
    Request {
        method: "GET".to_string(),
        uri: target.to_string(),
        protocol: "HTTP/1.1".to_string(),
        headers: vec![
            ("Host".to_string(), b"localhost".to_vec()),
            ("User-Agent".to_string(), b"portcullis-test/1.0".to_vec()),
            ("Accept".to_string(), b"*/*".to_vec()),
        ],
        body: Vec::new(),
        remote_addr: "127.0.0.1".to_string(),
    }
}

fn json_post(body: &str) -> Request {
    let mut request = get("/api/orders");
    request.method = "POST".to_string();
    request
        .headers
        .push(("Content-Type".to_string(), b"application/json".to_vec()));
    request.headers.push((
        "Content-Length".to_string(),
        body.len().to_string().into_bytes(),
    ));
    request.body = body.as_bytes().to_vec();
    request
}

#[test]
fn crs3_blocks_attacks_at_paranoia_one() {
    let Some(dir) = linked_rules_dir("crs3_blocks_attacks_at_paranoia_one") else {
        return;
    };
    let set = load(&dir, 1);
    assert!(set.len() > 100, "only {} rules loaded", set.len());
    let attacks = [
        "/?q=1%27%20OR%20%271%27%3D%271",
        "/?id=1%20UNION%20SELECT%20password%20FROM%20users",
        "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "/?file=..%2F..%2F..%2Fetc%2Fpasswd",
        "/?cmd=%3Bcat%20%2Fetc%2Fpasswd",
    ];
    for target in attacks {
        let evaluation = set.evaluate(&get(target));
        assert!(
            evaluation.blocked,
            "{target} passed: {:?}",
            evaluation.logged_ids()
        );
        assert!(
            evaluation.anomaly_score() >= 5,
            "{target}: score {}",
            evaluation.anomaly_score()
        );
    }
    let attack = json_post(r#"{"note":"1' UNION SELECT password FROM users--"}"#);
    assert!(set.evaluate(&attack).blocked);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn crs3_passes_benign_requests() {
    let Some(dir) = linked_rules_dir("crs3_passes_benign_requests") else {
        return;
    };
    let set = load(&dir, 1);
    for request in [
        get("/fast?user=alice&page=2"),
        json_post(r#"{"customer":"alice","items":[{"sku":"A-100","quantity":2}]}"#),
    ] {
        let evaluation = set.evaluate(&request);
        assert!(
            evaluation.matched.iter().all(|rule| !rule.logged),
            "{} {} matched {:?}",
            request.method,
            request.uri,
            evaluation.logged_ids()
        );
        assert!(!evaluation.blocked);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn crs3_paranoia_level_applies() {
    let Some(dir) = linked_rules_dir("crs3_paranoia_level_applies") else {
        return;
    };
    // Rule 942432 (restricted SQL character anomaly) is paranoia level 4 in CRS 3.3.
    let target = "/?q=a%27%27%27%27%27%27b";
    let level_one = load(&dir, 1).evaluate(&get(target));
    let level_four = load(&dir, 4).evaluate(&get(target));
    assert!(!level_one.logged_ids().contains(&942432));
    assert!(
        level_four.logged_ids().contains(&942432),
        "{:?}",
        level_four.logged_ids()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
