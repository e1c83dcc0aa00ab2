//! Evaluation of a compiled [`RuleSet`] against one request.
//!
//! Transformed values are cached per request, keyed by the source value and the rule's
//! transformation list, so a value that fifty rules inspect with `t:none,t:urlDecodeUni` is
//! decoded once. Values of `TX` and `MATCHED_VAR*` change during evaluation and are not cached.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use crate::operator::parse_number;
use crate::request::{Pair, Request, RequestData};
use crate::ruleset::{Control, Disruptive, EngineMode, Entry, Rule, RuleSet, SetVar};
use crate::transform::{self, Transform};
use crate::variable::{Selector, Target, Variable};

/// A rule (or whole chain) that matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchedRule {
    pub id: u32,
    /// Rule file stem, such as `REQUEST-942-APPLICATION-ATTACK-SQLI`.
    pub family: String,
    pub msg: String,
    pub logdata: String,
    pub severity: Option<String>,
    /// False for rules marked `nolog`, which ModSecurity leaves out of its error log.
    pub logged: bool,
    pub disruptive: Disruptive,
}

/// Result of evaluating the request phases.
#[derive(Debug)]
pub struct Evaluation {
    pub matched: Vec<MatchedRule>,
    /// Final `tx` collection, keys lowercase.
    pub tx: HashMap<String, Vec<u8>>,
    /// True when a rule with `deny` matched, which in the CRS is the anomaly threshold check
    /// (rule 949110) or a configuration error.
    pub blocked: bool,
}

impl Evaluation {
    /// Returns the ids of matched rules that log, in match order.
    pub fn logged_ids(&self) -> Vec<u32> {
        self.matched
            .iter()
            .filter(|rule| rule.logged)
            .map(|rule| rule.id)
            .collect()
    }

    /// Returns the inbound anomaly score that the CRS compares with its threshold:
    /// `tx.blocking_inbound_anomaly_score` in CRS 4, `tx.anomaly_score` in CRS 3.
    pub fn anomaly_score(&self) -> i64 {
        self.tx
            .get("blocking_inbound_anomaly_score")
            .or_else(|| self.tx.get("anomaly_score"))
            .map_or(0, |value| parse_number(value))
    }
}

impl RuleSet {
    /// Runs phases 1 and 2 against `request` in detection mode: a `deny` sets
    /// [`Evaluation::blocked`] and stops evaluation, and `ctl:ruleEngine=DetectionOnly` lets it
    /// continue instead.
    pub fn evaluate(&self, request: &Request) -> Evaluation {
        self.evaluate_excluding(request, &Exclusions::default())
    }

    /// Runs phases 1 and 2 like [`RuleSet::evaluate`], with `exclusions` applied before the
    /// first rule, as if a rule at the start of phase 1 had run their `ctl` actions.
    pub fn evaluate_excluding(&self, request: &Request, exclusions: &Exclusions) -> Evaluation {
        let mut transaction = Transaction::new(self, request);
        for control in &exclusions.controls {
            transaction.apply_control(control);
        }
        transaction.run();
        Evaluation {
            matched: transaction.matched,
            tx: transaction.tx,
            blocked: transaction.blocked,
        }
    }
}

impl<'a> Transaction<'a> {
    fn new(set: &'a RuleSet, request: &'a Request) -> Self {
        Transaction {
            set,
            request,
            data: RequestData::new(request),
            tx: HashMap::new(),
            matched_var: None,
            matched_vars: Vec::new(),
            removed_ids: Vec::new(),
            removed_tags: Vec::new(),
            removed_targets: Vec::new(),
            mode: EngineMode::On,
            forced_processor: None,
            force_body_variable: false,
            matched: Vec::new(),
            blocked: false,
            cache: RefCell::new(HashMap::new()),
            cache_bytes: std::cell::Cell::new(0),
            prefilter_cache: RefCell::new(HashMap::new()),
            started: Instant::now(),
        }
    }
}

/// Rules and rule targets removed for every evaluation of a deployment, with the effect of
/// `ctl:ruleRemoveById`, `ctl:ruleRemoveByTag` and `ctl:ruleRemoveTarget*` at the start of a
/// request. The compiled rule set stays unchanged, so deployments with different exclusions
/// share it.
#[derive(Clone, Debug, Default)]
pub struct Exclusions {
    controls: Vec<Control>,
}

impl Exclusions {
    /// Removes the rules with ids from `low` to `high`, both included.
    pub fn remove_ids(&mut self, low: u32, high: u32) {
        self.controls
            .push(Control::RuleRemoveById(vec![(low, high)]));
    }

    /// Removes the rules that carry `tag`.
    pub fn remove_tag(&mut self, tag: &str) {
        self.controls
            .push(Control::RuleRemoveByTag(tag.to_string()));
    }

    /// Removes `targets`, such as `ARGS:password|REQUEST_COOKIES:/^session/`, from the rules
    /// with ids from `low` to `high`. Fails with the parser's message when a target is invalid.
    pub fn remove_targets_by_id(
        &mut self,
        low: u32,
        high: u32,
        targets: &str,
    ) -> Result<(), String> {
        let targets = parse_exclusion_targets(targets)?;
        self.controls
            .push(Control::RuleRemoveTargetById((low, high), targets));
        Ok(())
    }

    /// Removes `targets` from the rules that carry `tag`.
    pub fn remove_targets_by_tag(&mut self, tag: &str, targets: &str) -> Result<(), String> {
        let targets = parse_exclusion_targets(targets)?;
        self.controls
            .push(Control::RuleRemoveTargetByTag(tag.to_string(), targets));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.controls.is_empty()
    }
}

/// Checks a target list written for an exclusion, such as `ARGS:password`.
pub fn parse_exclusion_targets(text: &str) -> Result<Vec<Target>, String> {
    let location = crate::seclang::Location {
        file: std::sync::Arc::from("exclusion"),
        line: 1,
    };
    let targets = crate::variable::parse_targets(&location, text).map_err(|error| match error {
        crate::Error::Syntax { message, .. } => message,
        other => other.to_string(),
    })?;
    if targets.is_empty() {
        return Err("the target list is empty".to_string());
    }
    if let Some(target) = targets.iter().find(|target| target.count || target.exclude) {
        return Err(format!(
            "`{}` is not a plain target: write `VARIABLE` or `VARIABLE:key` without `&` or `!`",
            target.variable.name()
        ));
    }
    Ok(targets)
}

/// Transformed values keyed by (source value identity, transformation list index).
type TransformCache = HashMap<(u32, usize), Rc<[u8]>>;

/// Bytes of transformed values that one request's transformation cache holds. Past it, new
/// transformed values are computed for each rule and not kept, which bounds the memory of a
/// request with a large body inspected by many transformation lists.
pub const MAX_TRANSFORM_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Scope of a `ctl:ruleRemoveTarget*` action: the rule ids or the tag it applies to.
enum Scope {
    Ids((u32, u32)),
    Tag(String),
}

/// A value offered to an operator.
struct Candidate<'v> {
    label: Label<'v>,
    value: Cow<'v, [u8]>,
    /// Identity of a request-derived value, for the transformation cache.
    cache_id: Option<u32>,
}

/// `MATCHED_VAR_NAME` of a candidate, kept unformatted until a match needs it.
enum Label<'v> {
    /// A single-valued variable, such as `REQUEST_URI`.
    Variable(&'static str),
    /// A collection member, such as `ARGS` and `id`.
    Keyed(&'static str, &'v str),
    /// A name recorded by an earlier match, such as `ARGS:id`.
    Named(&'v str),
}

impl Label<'_> {
    /// Returns the collection key that exclusions compare against.
    fn key(&self) -> &str {
        match self {
            Self::Variable(_) => "",
            Self::Keyed(_, key) => key,
            Self::Named(name) => name.split_once(':').map_or("", |(_, key)| key),
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Variable(variable) => (*variable).to_string(),
            Self::Keyed(variable, key) => format!("{variable}:{key}"),
            Self::Named(name) => (*name).to_string(),
        }
    }
}

/// A value after the rule's transformations: borrowed when there are none, shared with the
/// per-request cache otherwise.
enum Transformed<'v> {
    Borrowed(&'v [u8]),
    Shared(Rc<[u8]>),
}

impl std::ops::Deref for Transformed<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Borrowed(bytes) => bytes,
            Self::Shared(bytes) => bytes,
        }
    }
}

/// A target value that an operator matched.
struct Hit {
    name: String,
    value: Vec<u8>,
    captures: Vec<Vec<u8>>,
}

struct Transaction<'a> {
    set: &'a RuleSet,
    request: &'a Request,
    data: RequestData,
    tx: HashMap<String, Vec<u8>>,
    matched_var: Option<(String, Vec<u8>)>,
    matched_vars: Vec<(String, Vec<u8>)>,
    removed_ids: Vec<(u32, u32)>,
    removed_tags: Vec<String>,
    removed_targets: Vec<(Scope, Target)>,
    mode: EngineMode,
    forced_processor: Option<String>,
    force_body_variable: bool,
    matched: Vec<MatchedRule>,
    blocked: bool,
    cache: RefCell<TransformCache>,
    /// Bytes of the values in `cache`.
    cache_bytes: std::cell::Cell<usize>,
    /// Prefilter set results, keyed like the transformation cache.
    prefilter_cache: RefCell<HashMap<(u32, usize), regex::bytes::SetMatches>>,
    /// Start of the evaluation, for `DURATION`.
    started: Instant,
}

// Cache identities: the source collection in the high byte and the index below it.
const SOURCE_ARGS_GET: u32 = 1 << 24;
const SOURCE_ARGS_POST: u32 = 2 << 24;
const SOURCE_HEADERS: u32 = 3 << 24;
const SOURCE_COOKIES: u32 = 4 << 24;
const SOURCE_ARGS_GET_NAMES: u32 = 5 << 24;
const SOURCE_ARGS_POST_NAMES: u32 = 6 << 24;
const SOURCE_HEADER_NAMES: u32 = 7 << 24;
const SOURCE_COOKIE_NAMES: u32 = 8 << 24;
const SOURCE_SCALAR: u32 = 9 << 24;
const SOURCE_XML: u32 = 10 << 24;

impl<'a> Transaction<'a> {
    fn run(&mut self) {
        for phase in 0..2 {
            if phase == 1 {
                let forced = self.forced_processor.clone();
                let request = self.request;
                self.data.parse_body(request, forced.as_deref());
            }
            let mut skip_to: Option<&str> = None;
            for entry in &self.set.phases[phase] {
                if self.mode == EngineMode::Off {
                    return;
                }
                match entry {
                    Entry::Marker(name) => {
                        if skip_to == Some(name.as_str()) {
                            skip_to = None;
                        }
                    }
                    Entry::Rule(_) if skip_to.is_some() => {}
                    Entry::Rule(index) => {
                        let rule = &self.set.rules[*index];
                        if self.is_removed(rule) {
                            continue;
                        }
                        if self.evaluate_rule(rule) {
                            if let Some(marker) = &rule.skip_after {
                                skip_to = Some(marker.as_str());
                            }
                            if rule.disruptive == Disruptive::Deny {
                                self.blocked = true;
                                if self.mode == EngineMode::On {
                                    return;
                                }
                            }
                            // `allow` without an argument ends inspection of the request. Like
                            // every disruptive action it is ignored in detection-only mode.
                            if rule.disruptive == Disruptive::Allow && self.mode == EngineMode::On {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    fn is_removed(&self, rule: &Rule) -> bool {
        self.removed_ids
            .iter()
            .any(|(low, high)| rule.id >= *low && rule.id <= *high)
            || rule
                .tags
                .iter()
                .any(|tag| self.removed_tags.iter().any(|removed| removed == tag))
    }

    /// Evaluates a rule with its chain. Returns whether every link matched.
    fn evaluate_rule(&mut self, rule: &'a Rule) -> bool {
        self.matched_vars.clear();
        let mut link = rule;
        loop {
            let hits = self.evaluate_link(rule, link);
            if hits.is_empty() {
                return false;
            }
            // As in ModSecurity 2, the non-disruptive actions run once per matched value, each
            // seeing that value's captures and MATCHED_VAR.
            for hit in hits {
                if link.capture && !hit.captures.is_empty() {
                    for (index, capture) in hit.captures.iter().enumerate() {
                        self.tx.insert(index.to_string(), capture.clone());
                    }
                }
                self.matched_vars
                    .push((hit.name.clone(), hit.value.clone()));
                self.matched_var = Some((hit.name, hit.value));
                for setvar in &link.setvars {
                    self.apply_setvar(setvar);
                }
                for control in &link.controls {
                    self.apply_control(control);
                }
            }
            match &link.chained {
                Some(next) => link = next,
                None => break,
            }
        }
        let msg = rule
            .msg
            .as_deref()
            .map(|msg| self.expand_text(msg))
            .unwrap_or_default();
        let logdata = rule
            .logdata
            .as_deref()
            .map(|data| self.expand_text(data))
            .unwrap_or_default();
        self.matched.push(MatchedRule {
            id: rule.id,
            family: rule.family.clone(),
            msg,
            logdata,
            severity: rule.severity.clone(),
            logged: rule.log,
            disruptive: rule.disruptive,
        });
        true
    }

    /// Evaluates one link over all its targets and returns the values that matched.
    fn evaluate_link(&self, starter: &Rule, link: &Rule) -> Vec<Hit> {
        let mut hits = Vec::new();
        let expand = |text: &str| self.expand(text);
        let exclusions: Vec<&Target> = link
            .targets
            .iter()
            .filter(|target| target.exclude)
            .chain(self.removed_targets.iter().filter_map(|(scope, target)| {
                let applies = match scope {
                    Scope::Ids((low, high)) => starter.id >= *low && starter.id <= *high,
                    Scope::Tag(tag) => starter.tags.iter().any(|t| t == tag),
                };
                applies.then_some(target)
            }))
            .collect();

        if link.targets.is_empty() {
            // SecAction, or a rule whose targets were all removed: match once on nothing.
            let outcome = link.operator.evaluate(b"", &expand, link.capture);
            if outcome.matched {
                hits.push(Hit {
                    name: String::new(),
                    value: Vec::new(),
                    captures: outcome.captures,
                });
            }
            return hits;
        }

        for target in link.targets.iter().filter(|target| !target.exclude) {
            let candidates: Vec<Candidate> = self
                .collect(target)
                .into_iter()
                .filter(|candidate| {
                    let key = candidate.label.key();
                    !exclusions
                        .iter()
                        .any(|exclusion| exclusion.excludes(target.variable, key))
                })
                .collect();
            if target.count {
                let value = candidates.len().to_string().into_bytes();
                let outcome = link.operator.evaluate(&value, &expand, link.capture);
                if outcome.matched {
                    hits.push(Hit {
                        name: target.variable.name().to_string(),
                        value,
                        captures: outcome.captures,
                    });
                }
                continue;
            }
            for candidate in candidates {
                if link.multi_match {
                    let mut value = candidate.value.into_owned();
                    let mut steps: Vec<Vec<u8>> = vec![value.clone()];
                    for transform in &link.transforms {
                        value = transform.apply(&value).into_owned();
                        steps.push(value.clone());
                    }
                    for step in steps {
                        let outcome = link.operator.evaluate(&step, &expand, link.capture);
                        if outcome.matched {
                            hits.push(Hit {
                                name: candidate.label.name(),
                                value: step,
                                captures: outcome.captures,
                            });
                        }
                    }
                    continue;
                }
                let transformed = self.transformed(&candidate, link);
                if !self.may_match(link, &candidate, &transformed) {
                    continue;
                }
                let outcome = link.operator.evaluate(&transformed, &expand, link.capture);
                if outcome.matched {
                    hits.push(Hit {
                        name: candidate.label.name(),
                        value: transformed.to_vec(),
                        captures: outcome.captures,
                    });
                }
            }
        }
        hits
    }

    fn transformed<'c>(&self, candidate: &'c Candidate, link: &Rule) -> Transformed<'c> {
        if link.transforms.is_empty() {
            return Transformed::Borrowed(&candidate.value);
        }
        let key = candidate.cache_id.map(|id| (id, link.transform_chain));
        if let Some(key) = key
            && let Some(cached) = self.cache.borrow().get(&key)
        {
            return Transformed::Shared(cached.clone());
        }
        let value: Rc<[u8]> =
            Rc::from(transform::apply_all(&link.transforms, &candidate.value).as_ref());
        let cached_bytes = self.cache_bytes.get() + value.len();
        if let Some(key) = key
            && cached_bytes <= MAX_TRANSFORM_CACHE_BYTES
        {
            self.cache.borrow_mut().insert(key, value.clone());
            self.cache_bytes.set(cached_bytes);
        }
        Transformed::Shared(value)
    }

    /// Consults the prefilter set of the link's transformation list. Returns false only when
    /// the link's `@rx` pattern cannot match `value`.
    fn may_match(&self, link: &Rule, candidate: &Candidate, value: &[u8]) -> bool {
        let (Some((chunk, member)), Some(id)) = (link.prefilter_member, candidate.cache_id) else {
            return true;
        };
        let Some(set) = &self.set.prefilters[chunk] else {
            return true;
        };
        let key = (id, chunk);
        if let Some(matches) = self.prefilter_cache.borrow().get(&key) {
            return matches.matched(member);
        }
        let matches = set.matches(value);
        let result = matches.matched(member);
        self.prefilter_cache.borrow_mut().insert(key, matches);
        result
    }

    /// Returns the values a target selects, before exclusions.
    fn collect(&self, target: &Target) -> Vec<Candidate<'_>> {
        let data = &self.data;
        let variable = target.variable;
        let selector = &target.selector;
        let mut output = Vec::new();
        let name = variable.name();
        let headers = self.request.headers.as_slice();
        let pair_sources: Vec<(&[Pair], u32, Side)> = match variable {
            Variable::Args => vec![
                (&data.args_get, SOURCE_ARGS_GET, Side::Values),
                (&data.args_post, SOURCE_ARGS_POST, Side::Values),
            ],
            Variable::ArgsGet => vec![(&data.args_get, SOURCE_ARGS_GET, Side::Values)],
            Variable::ArgsPost => vec![(&data.args_post, SOURCE_ARGS_POST, Side::Values)],
            Variable::ArgsNames => vec![
                (&data.args_get, SOURCE_ARGS_GET_NAMES, Side::Names),
                (&data.args_post, SOURCE_ARGS_POST_NAMES, Side::Names),
            ],
            Variable::ArgsGetNames => vec![(&data.args_get, SOURCE_ARGS_GET_NAMES, Side::Names)],
            Variable::ArgsPostNames => vec![(&data.args_post, SOURCE_ARGS_POST_NAMES, Side::Names)],
            Variable::RequestHeaders => vec![(headers, SOURCE_HEADERS, Side::Values)],
            Variable::RequestHeadersNames => vec![(headers, SOURCE_HEADER_NAMES, Side::Names)],
            Variable::RequestCookies => vec![(&data.cookies, SOURCE_COOKIES, Side::Values)],
            Variable::RequestCookiesNames => {
                vec![(&data.cookies, SOURCE_COOKIE_NAMES, Side::Names)]
            }
            Variable::Files => vec![(&data.files, 0, Side::Values)],
            Variable::FilesNames => vec![(&data.files, 0, Side::Names)],
            Variable::MultipartPartHeaders => vec![(&data.multipart_part_headers, 0, Side::Values)],
            _ => Vec::new(),
        };
        if !pair_sources.is_empty() {
            for (pairs, source, side) in pair_sources {
                select_pairs(&mut output, name, pairs, source, selector, side);
            }
            return output;
        }
        match variable {
            Variable::Tx => {
                for (key, value) in &self.tx {
                    if selects(selector, key) {
                        output.push(Candidate {
                            label: Label::Keyed(name, key),
                            value: Cow::Borrowed(value),
                            cache_id: None,
                        });
                    }
                }
            }
            Variable::MatchedVars
            | Variable::MatchedVarsNames
            | Variable::MatchedVar
            | Variable::MatchedVarName => {
                let entries = match variable {
                    Variable::MatchedVars | Variable::MatchedVarsNames => {
                        self.matched_vars.as_slice()
                    }
                    _ => self.matched_var.as_slice(),
                };
                let names = matches!(
                    variable,
                    Variable::MatchedVarsNames | Variable::MatchedVarName
                );
                for (key, value) in entries {
                    let value = if names {
                        key.as_bytes()
                    } else {
                        value.as_slice()
                    };
                    output.push(Candidate {
                        label: Label::Named(key),
                        value: Cow::Borrowed(value),
                        cache_id: None,
                    });
                }
            }
            Variable::Xml => {
                let attributes = matches!(selector, Selector::XPath(path) if path == "//@*");
                if attributes {
                    for (index, value) in data.xml_attributes.iter().enumerate() {
                        output.push(Candidate {
                            label: Label::Variable("XML://@*"),
                            value: Cow::Borrowed(value),
                            cache_id: Some(SOURCE_XML | (index as u32 + 1)),
                        });
                    }
                } else if let Some(text) = &data.xml_text {
                    output.push(Candidate {
                        label: Label::Variable("XML:/*"),
                        value: Cow::Borrowed(text),
                        cache_id: Some(SOURCE_XML),
                    });
                }
            }
            Variable::Response(_) | Variable::Persistent(_) => {}
            scalar => {
                if let Some((value, id)) = self.scalar(scalar) {
                    output.push(Candidate {
                        label: Label::Variable(name),
                        value,
                        cache_id: id.map(|id| SOURCE_SCALAR | id),
                    });
                }
            }
        }
        output
    }

    /// Returns a single-valued variable with its cache identity.
    fn scalar(&self, variable: Variable) -> Option<(Cow<'_, [u8]>, Option<u32>)> {
        let data = &self.data;
        let request = self.request;
        let value = match variable {
            Variable::RequestLine => (Cow::Borrowed(data.request_line.as_slice()), Some(1)),
            Variable::RequestUri => (Cow::Borrowed(data.uri.as_slice()), Some(2)),
            Variable::RequestUriRaw => (Cow::Borrowed(data.uri_raw.as_slice()), Some(3)),
            Variable::RequestFilename => (Cow::Borrowed(data.filename.as_slice()), Some(4)),
            Variable::RequestBasename => (Cow::Borrowed(data.basename.as_slice()), Some(5)),
            Variable::QueryString => (Cow::Borrowed(data.query_string.as_slice()), Some(6)),
            Variable::RequestMethod => (Cow::Borrowed(request.method.as_bytes()), Some(7)),
            Variable::RequestProtocol => (Cow::Borrowed(request.protocol.as_bytes()), Some(8)),
            Variable::RequestBody => {
                // ModSecurity 2 fills REQUEST_BODY for URL-encoded bodies, and for others only
                // after `ctl:forceRequestBodyVariable`.
                let urlencoded = data.body_processor.as_deref() == Some("URLENCODED");
                if !urlencoded && !self.force_body_variable {
                    return None;
                }
                (Cow::Borrowed(request.body.as_slice()), Some(9))
            }
            Variable::RemoteAddr => (Cow::Borrowed(request.remote_addr.as_bytes()), Some(10)),
            Variable::RequestBodyLength => (
                Cow::Owned(request.body.len().to_string().into_bytes()),
                None,
            ),
            Variable::ReqbodyProcessor => {
                // An empty value, not a missing one, when no processor applies, so that
                // `!@rx URLENCODED|...` matches.
                let processor = data.body_processor.clone().unwrap_or_default();
                (Cow::Owned(processor.into_bytes()), None)
            }
            Variable::FilesCombinedSize => (
                Cow::Owned(data.files_combined_size.to_string().into_bytes()),
                None,
            ),
            Variable::ArgsCombinedSize => {
                let size: usize = data
                    .args_get
                    .iter()
                    .chain(&data.args_post)
                    .map(|(name, value)| name.len() + value.len())
                    .sum();
                (Cow::Owned(size.to_string().into_bytes()), None)
            }
            Variable::UniqueId => (Cow::Borrowed(&b"0000000000000000"[..]), None),
            Variable::Duration => {
                let micros = self.started.elapsed().as_micros();
                (Cow::Owned(micros.to_string().into_bytes()), None)
            }
            _ => return None,
        };
        Some(value)
    }

    fn apply_setvar(&mut self, setvar: &SetVar) {
        match setvar {
            SetVar::Set { name, value } => {
                let name = self.expand_text(name).to_ascii_lowercase();
                let value = self.expand(value);
                self.tx.insert(name, value);
            }
            SetVar::Add { name, value } | SetVar::Subtract { name, value } => {
                let name = self.expand_text(name).to_ascii_lowercase();
                let delta = parse_number(&self.expand(value));
                let current = self.tx.get(&name).map_or(0, |v| parse_number(v));
                let result = if matches!(setvar, SetVar::Add { .. }) {
                    current.saturating_add(delta)
                } else {
                    current.saturating_sub(delta)
                };
                self.tx.insert(name, result.to_string().into_bytes());
            }
            SetVar::Delete { name } => {
                let name = self.expand_text(name).to_ascii_lowercase();
                self.tx.remove(&name);
            }
        }
    }

    fn apply_control(&mut self, control: &Control) {
        match control {
            Control::RuleRemoveById(ranges) => self.removed_ids.extend(ranges.iter().copied()),
            Control::RuleRemoveByTag(tag) => self.removed_tags.push(tag.clone()),
            Control::RuleRemoveTargetById(range, targets) => {
                for target in targets {
                    self.removed_targets
                        .push((Scope::Ids(*range), target.clone()));
                }
            }
            Control::RuleRemoveTargetByTag(tag, targets) => {
                for target in targets {
                    self.removed_targets
                        .push((Scope::Tag(tag.clone()), target.clone()));
                }
            }
            Control::RuleEngine(mode) => self.mode = *mode,
            Control::RequestBodyProcessor(processor) => {
                self.forced_processor = Some(processor.clone())
            }
            Control::ForceRequestBodyVariable => self.force_body_variable = true,
            Control::AuditOnly => {}
        }
    }

    fn expand_text(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.expand(text)).into_owned()
    }

    /// Expands `%{collection.key}` and `%{VARIABLE}` macros.
    fn expand(&self, text: &str) -> Vec<u8> {
        if !text.contains("%{") {
            return text.as_bytes().to_vec();
        }
        let mut output = Vec::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("%{") {
            output.extend_from_slice(&rest.as_bytes()[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                output.extend_from_slice(&rest.as_bytes()[start..]);
                return output;
            };
            output.extend(self.lookup(&after[..end]));
            rest = &after[end + 1..];
        }
        output.extend_from_slice(rest.as_bytes());
        output
    }

    fn lookup(&self, reference: &str) -> Vec<u8> {
        let (name, key) = match reference.split_once('.') {
            Some((name, key)) => (name, Some(key)),
            None => (reference, None),
        };
        if name.eq_ignore_ascii_case("tx") {
            return key
                .and_then(|key| self.tx.get(&key.to_ascii_lowercase()))
                .cloned()
                .unwrap_or_default();
        }
        let Some(variable) = Variable::from_name(name) else {
            return Vec::new();
        };
        let target = Target {
            variable,
            selector: key.map_or(Selector::All, |key| Selector::Key(key.to_ascii_lowercase())),
            count: false,
            exclude: false,
        };
        self.collect(&target)
            .into_iter()
            .next()
            .map(|candidate| candidate.value.into_owned())
            .unwrap_or_default()
    }
}

fn selects(selector: &Selector, key: &str) -> bool {
    match selector {
        Selector::All | Selector::XPath(_) => true,
        Selector::Key(wanted) => wanted.eq_ignore_ascii_case(key),
        Selector::Regex(regex) => regex.is_match(key.as_bytes()),
    }
}

/// Side of a collection's pairs that a variable reads: the values or the names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Values,
    Names,
}

fn select_pairs<'v>(
    output: &mut Vec<Candidate<'v>>,
    name: &'static str,
    pairs: &'v [Pair],
    source: u32,
    selector: &Selector,
    side: Side,
) {
    for (index, (key, value)) in pairs.iter().enumerate() {
        if selects(selector, key) {
            let value = match side {
                Side::Values => value.as_slice(),
                Side::Names => key.as_bytes(),
            };
            output.push(Candidate {
                label: Label::Keyed(name, key),
                value: Cow::Borrowed(value),
                cache_id: (source != 0).then_some(source | index as u32),
            });
        }
    }
}

/// Applies the transformations of `transforms` without the cache, for callers outside a request.
pub fn apply_transforms(transforms: &[Transform], value: &[u8]) -> Vec<u8> {
    transform::apply_all(transforms, value).into_owned()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn evaluate(rules: &str, request: &Request) -> Evaluation {
        RuleSet::from_text(rules, Path::new("."))
            .unwrap()
            .evaluate(request)
    }

    #[test]
    fn chain_and_setvar_score() {
        let rules = r#"
SecRule ARGS "@rx (?i)union" "id:1,phase:2,block,capture,t:none,t:urlDecodeUni,setvar:tx.score=+%{tx.inc},setvar:tx.seen=%{TX.0},chain"
    SecRule MATCHED_VAR_NAME "@streq ARGS:q" "setvar:tx.score=+1"
SecAction "id:2,phase:1,pass,nolog,setvar:tx.inc=5"
"#;
        let result = evaluate(rules, &Request::with_query_value("q", "1 UNION select"));
        assert_eq!(result.logged_ids(), vec![1]);
        assert_eq!(result.tx.get("score").map(Vec::as_slice), Some(&b"6"[..]));
        assert_eq!(
            result.tx.get("seen").map(Vec::as_slice),
            Some(&b"UNION"[..])
        );
    }

    #[test]
    fn transform_cache_is_bounded() {
        let set = RuleSet::from_text(
            "SecRule ARGS \"@rx x\" \"id:1,phase:2,pass,t:lowercase\"\n",
            Path::new("."),
        )
        .unwrap();
        let request = Request::with_query_value("q", "x");
        let transaction = Transaction::new(&set, &request);
        let link = set.rule(1).unwrap();
        let value = vec![b'A'; MAX_TRANSFORM_CACHE_BYTES / 3];
        for id in 0..5 {
            let candidate = Candidate {
                label: Label::Variable("ARGS"),
                value: Cow::Borrowed(&value),
                cache_id: Some(SOURCE_ARGS_GET | id),
            };
            let transformed = transaction.transformed(&candidate, link);
            assert_eq!(transformed.len(), value.len());
            assert!(transformed.iter().all(|byte| *byte == b'a'));
        }
        // Three values fit, the other two were transformed without being kept.
        assert_eq!(transaction.cache.borrow().len(), 3);
        assert_eq!(transaction.cache_bytes.get(), 3 * value.len());
        assert!(transaction.cache_bytes.get() <= MAX_TRANSFORM_CACHE_BYTES);
    }

    #[test]
    fn skip_after_jumps_to_marker() {
        let rules = r#"
SecAction "id:1,phase:1,pass,nolog,skipAfter:END"
SecRule REQUEST_METHOD "@streq GET" "id:2,phase:1,pass"
SecMarker END
SecRule REQUEST_METHOD "@streq GET" "id:3,phase:1,pass"
"#;
        let result = evaluate(rules, &Request::with_query_value("q", "x"));
        assert_eq!(result.logged_ids(), vec![3]);
    }

    #[test]
    fn exclusions_and_counts() {
        let rules = r#"
SecRule ARGS|!ARGS:safe "@rx bad" "id:1,phase:1,pass"
SecRule &ARGS "@eq 2" "id:2,phase:1,pass"
SecRule &REQUEST_HEADERS:X-Missing "@eq 0" "id:3,phase:1,pass"
"#;
        let mut request = Request::with_query_value("safe", "bad");
        request.uri.push_str("&other=good");
        let result = evaluate(rules, &request);
        assert_eq!(result.logged_ids(), vec![2, 3]);
    }

    #[test]
    fn ctl_removes_rule_and_deny_stops() {
        let rules = r#"
SecAction "id:1,phase:1,pass,nolog,ctl:ruleRemoveById=2"
SecRule REQUEST_METHOD "@streq GET" "id:2,phase:1,pass"
SecRule REQUEST_METHOD "@streq GET" "id:3,phase:1,deny"
SecRule REQUEST_METHOD "@streq GET" "id:4,phase:2,pass"
"#;
        let result = evaluate(rules, &Request::with_query_value("q", "x"));
        assert_eq!(result.logged_ids(), vec![3]);
        assert!(result.blocked);
    }

    #[test]
    fn prefilter_keeps_matches() {
        let rules = r#"
SecRule ARGS "@rx (?i)union" "id:1,phase:2,pass,t:none,t:lowercase"
SecRule ARGS "@rx select\s" "id:2,phase:2,pass,t:none,t:lowercase"
SecRule ARGS "!@rx drop" "id:3,phase:2,pass,t:none,t:lowercase"
SecRule ARGS "@rx from" "id:4,phase:2,pass,t:none,t:lowercase"
"#;
        let set = RuleSet::from_text(rules, Path::new(".")).unwrap();
        assert!(set.prefilters.iter().any(Option::is_some));
        assert_eq!(set.rule(3).unwrap().prefilter_member, None);
        let result = set.evaluate(&Request::with_query_value("q", "UNION SELECT 1"));
        assert_eq!(result.logged_ids(), vec![1, 2, 3]);
    }

    #[test]
    fn allow_ends_inspection() {
        let rules = r#"
SecRule REQUEST_METHOD "@streq GET" "id:1,phase:1,allow"
SecRule REQUEST_METHOD "@streq GET" "id:2,phase:2,deny"
"#;
        let result = evaluate(rules, &Request::with_query_value("q", "x"));
        assert_eq!(result.logged_ids(), vec![1]);
        assert!(!result.blocked);
    }

    #[test]
    fn negated_operator_needs_a_value() {
        let rules = "SecRule ARGS:absent \"!@rx x\" \"id:1,phase:1,pass\"";
        let result = evaluate(rules, &Request::with_query_value("q", "x"));
        assert!(result.logged_ids().is_empty());
    }
}
