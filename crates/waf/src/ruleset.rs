//! Compilation of SecLang directives into a [`RuleSet`]: rules grouped by phase, chains linked,
//! `SecMarker` positions resolved and every operator compiled once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use regex::bytes::RegexSet;

use crate::Error;
use crate::operator::{Operator, OperatorKind};
use crate::regex_repair::Repair;
use crate::seclang::{self, Directive, Location};
use crate::transform::Transform;
use crate::variable::{Target, parse_targets};

/// Compiled size limit of one prefilter set. A set that exceeds it is not built, and its rules
/// run their regexes one by one.
const PREFILTER_SIZE_LIMIT: usize = 512 * 1024 * 1024;

/// Maximum number of patterns in one prefilter set.
const PREFILTER_CHUNK: usize = 32;

/// The built-in rule files, as name and text, in load order.
pub const BUILTIN_RULES: [(&str, &str); 6] = [
    (
        "BUILTIN-INITIALIZATION.conf",
        include_str!("../rules/BUILTIN-INITIALIZATION.conf"),
    ),
    (
        "BUILTIN-SQLI.conf",
        include_str!("../rules/BUILTIN-SQLI.conf"),
    ),
    (
        "BUILTIN-XSS.conf",
        include_str!("../rules/BUILTIN-XSS.conf"),
    ),
    (
        "BUILTIN-PATH-TRAVERSAL.conf",
        include_str!("../rules/BUILTIN-PATH-TRAVERSAL.conf"),
    ),
    (
        "BUILTIN-COMMAND-INJECTION.conf",
        include_str!("../rules/BUILTIN-COMMAND-INJECTION.conf"),
    ),
    (
        "BUILTIN-BLOCKING-EVALUATION.conf",
        include_str!("../rules/BUILTIN-BLOCKING-EVALUATION.conf"),
    ),
];

/// The rule of the learned model, compiled when a [`Setup`] enables the model.
const MODEL_RULES: (&str, &str) = (
    "BUILTIN-MODEL.conf",
    include_str!("../rules/BUILTIN-MODEL.conf"),
);

/// The `tx` variable that contains the model threshold, set by [`Setup::with_model`].
const MODEL_THRESHOLD_VARIABLE: &str = "model_threshold";

/// Settings that a deployment puts in `crs-setup.conf`, written here as `SecAction` rules so they
/// go through the same parser as the rule files.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Setup {
    /// Paranoia level, 1 to 4. It sets both `tx.blocking_paranoia_level` and
    /// `tx.detection_paranoia_level`.
    pub paranoia_level: u8,
    /// Extra `tx` variables, such as the limits the CRS regression tests expect.
    pub tx: Vec<(String, String)>,
}

impl Setup {
    /// Returns the setup that the README of the CRS regression tests prescribes:
    /// paranoia level 4, UTF-8 validation and the argument and file size limits.
    pub fn regression_tests() -> Self {
        let tx = [
            ("crs_validate_utf8_encoding", "1"),
            ("arg_name_length", "100"),
            ("arg_length", "400"),
            ("total_arg_length", "64000"),
            ("max_num_args", "255"),
            ("max_file_size", "64100"),
            ("combined_file_sizes", "65535"),
        ];
        Self {
            paranoia_level: 4,
            tx: tx
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Returns the setup of a gateway deployment: `paranoia_level` and the inbound anomaly
    /// score at which a request is denied (`tx.inbound_anomaly_score_threshold`).
    pub fn deployment(paranoia_level: u8, anomaly_threshold: u32) -> Self {
        Self {
            paranoia_level,
            tx: vec![(
                "inbound_anomaly_score_threshold".to_string(),
                anomaly_threshold.to_string(),
            )],
        }
    }

    /// Returns this setup with the learned model enabled. The model's rule
    /// (`crates/waf/rules/BUILTIN-MODEL.conf`) adds 5 to the anomaly score for each value whose
    /// attack probability is at least `threshold`. In the built-in rule set, a detection rule's
    /// match counts only when the matched value's probability is at least `confirm_threshold`.
    pub fn with_model(mut self, threshold: f64, confirm_threshold: f64) -> Self {
        self.tx
            .push((MODEL_THRESHOLD_VARIABLE.to_string(), threshold.to_string()));
        self.tx.push((
            "model_confirm_threshold".to_string(),
            confirm_threshold.to_string(),
        ));
        self
    }

    /// Returns whether [`Setup::with_model`] enabled the learned model.
    pub fn model_enabled(&self) -> bool {
        self.tx
            .iter()
            .any(|(name, _)| name == MODEL_THRESHOLD_VARIABLE)
    }

    fn to_seclang(&self) -> String {
        let mut actions = vec![
            "id:900000".to_string(),
            "phase:1".to_string(),
            "pass".to_string(),
            "nolog".to_string(),
            // Without this variable, which crs-setup.conf sets, CRS rule 901001 denies every request.
            "setvar:tx.crs_setup_version=400".to_string(),
            format!("setvar:tx.blocking_paranoia_level={}", self.paranoia_level),
            format!("setvar:tx.detection_paranoia_level={}", self.paranoia_level),
            // CRS 3 reads the level from these two variables.
            format!("setvar:tx.paranoia_level={}", self.paranoia_level),
            format!("setvar:tx.executing_paranoia_level={}", self.paranoia_level),
        ];
        for (name, value) in &self.tx {
            actions.push(format!("setvar:'tx.{name}={value}'"));
        }
        format!("SecAction \"{}\"\n", actions.join(","))
    }
}

/// Accepts a `SecDefaultAction` whose actions match the engine's fixed defaults: `block` is
/// `pass` (the CRS anomaly scoring mode) and rules log unless they carry `nolog`. CRS 3 setups
/// write `SecDefaultAction "phase:1,log,auditlog,pass"` and the same for phase 2. Any other
/// disruptive action would change what `block` does, which this engine does not support.
fn check_default_action(location: &Location, actions: &str) -> Result<(), Error> {
    for (name, argument) in seclang::split_actions(location, actions)? {
        let accepted = match name.as_str() {
            "phase" => matches!(argument.as_deref(), Some("1" | "2" | "request")),
            "t" => argument.as_deref() == Some("none"),
            "pass" | "log" | "auditlog" | "noauditlog" => true,
            _ => false,
        };
        if !accepted {
            let action = match argument {
                Some(argument) => format!("{name}:{argument}"),
                None => name,
            };
            return Err(Error::syntax(
                location,
                format!(
                    "unsupported SecDefaultAction action `{action}`: only a request phase, \
                     `pass`, `log`, `auditlog`, `noauditlog` and `t:none` are supported, because \
                     `block` always means `pass` (anomaly scoring mode)"
                ),
            ));
        }
    }
    Ok(())
}

/// Disruptive action of a rule: what happens to the request when the rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disruptive {
    Pass,
    /// `block`: the CRS runs in anomaly scoring mode, where its default action is `pass`.
    Block,
    Deny,
    /// `allow` without an argument: ends inspection of the request.
    Allow,
}

/// `setvar` operation on a `tx` variable.
#[derive(Clone, Debug)]
pub enum SetVar {
    Set { name: String, value: String },
    Add { name: String, value: String },
    Subtract { name: String, value: String },
    Delete { name: String },
}

/// Rule engine mode set by `ctl:ruleEngine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineMode {
    On,
    Off,
    DetectionOnly,
}

/// A `ctl` action: a change to the engine for the rest of the current request.
#[derive(Clone, Debug)]
pub enum Control {
    RuleRemoveById(Vec<(u32, u32)>),
    RuleRemoveByTag(String),
    RuleRemoveTargetById((u32, u32), Vec<Target>),
    RuleRemoveTargetByTag(String, Vec<Target>),
    RuleEngine(EngineMode),
    RequestBodyProcessor(String),
    ForceRequestBodyVariable,
    /// A control that changes only audit logging, which this engine does not write.
    AuditOnly,
}

/// One rule, or one link of a chain.
#[derive(Debug)]
pub struct Rule {
    pub id: u32,
    pub phase: u8,
    pub location: Location,
    /// Rule file stem, such as `REQUEST-942-APPLICATION-ATTACK-SQLI`.
    pub family: String,
    pub targets: Vec<Target>,
    pub operator: Operator,
    pub transforms: Vec<Transform>,
    /// Index of the transformation list in the rule set, used as cache key.
    pub transform_chain: usize,
    pub disruptive: Disruptive,
    pub log: bool,
    pub capture: bool,
    pub multi_match: bool,
    pub msg: Option<String>,
    pub logdata: Option<String>,
    pub severity: Option<String>,
    pub tags: Vec<String>,
    pub setvars: Vec<SetVar>,
    pub controls: Vec<Control>,
    pub skip_after: Option<String>,
    pub chained: Option<Box<Rule>>,
    /// Position of this link's pattern among the rule set's prefilter sets, as (set index,
    /// pattern index), for a non-negated `@rx` link of a request phase.
    pub prefilter_member: Option<(usize, usize)>,
}

/// An entry of a phase's rule list.
#[derive(Debug)]
pub(crate) enum Entry {
    Rule(usize),
    Marker(String),
}

/// A compiled rule set.
#[derive(Debug, Default)]
pub struct RuleSet {
    pub(crate) rules: Vec<Rule>,
    /// Rules and markers of phases 1 and 2, in file order.
    pub(crate) phases: [Vec<Entry>; 2],
    pub(crate) transform_chains: Vec<Vec<Transform>>,
    /// Constructs accepted without effect, with the reason. Callers should show them.
    pub warnings: Vec<String>,
    /// Patterns rewritten because the `regex` crate rejected them.
    pub repairs: Vec<(Location, Repair)>,
    /// Rules of phases 3 to 5, parsed but never evaluated.
    pub response_rules: usize,
    pub component_signature: Option<String>,
    /// `RegexSet`s over the `@rx` patterns of links that share a transformation list, at most
    /// [`PREFILTER_CHUNK`] patterns each. `None` for a set of one pattern or one that fails to
    /// compile.
    pub(crate) prefilters: Vec<Option<RegexSet>>,
}

impl RuleSet {
    /// Loads every `*.conf` file of `dir` in name order, after the `setup` rules.
    pub fn load(dir: &Path, setup: &Setup) -> Result<Self, Error> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "conf"))
            .collect();
        files.sort();

        let mut compiler = Compiler::new(dir);
        compiler.add_text("<setup>", &setup.to_seclang())?;
        if setup.model_enabled() {
            // The CRS resets tx.blocking_inbound_anomaly_score in phase 2 (rule 949059) and
            // then adds the per-paranoia-level scores, so the model adds to the level-1 score.
            // Loaded first, the rule runs at the start of phase 2, before that evaluation.
            let (name, text) = MODEL_RULES;
            let text = text.replace(
                "tx.blocking_inbound_anomaly_score=+",
                "tx.inbound_anomaly_score_pl1=+",
            );
            compiler.add_text(name, &text)?;
        }
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
                path: file.clone(),
                source,
            })?;
            compiler.add_text(&file.display().to_string(), &text)?;
        }
        Ok(compiler.finish())
    }

    /// Compiles the built-in rule set of `crates/waf/rules` after the `setup` rules: libinjection
    /// SQL injection and XSS detection, path traversal and command injection checks, scored like
    /// the CRS anomaly mode.
    pub fn builtin(setup: &Setup) -> Result<Self, Error> {
        let mut compiler = Compiler::new(Path::new("."));
        compiler.add_text("<setup>", &setup.to_seclang())?;
        for (name, text) in BUILTIN_RULES {
            if name == "BUILTIN-BLOCKING-EVALUATION.conf" && setup.model_enabled() {
                compiler.add_text(MODEL_RULES.0, MODEL_RULES.1)?;
            }
            compiler.add_text(name, text)?;
        }
        Ok(compiler.finish())
    }

    /// Compiles rules from text, for tests and embedded rule sets. `@pmFromFile` paths resolve
    /// against `data_dir`.
    pub fn from_text(text: &str, data_dir: &Path) -> Result<Self, Error> {
        let mut compiler = Compiler::new(data_dir);
        compiler.add_text("<text>", text)?;
        Ok(compiler.finish())
    }

    /// Returns the rule with `id`, if loaded.
    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.id == id)
    }

    /// Returns the number of rules (chains count once), including response-phase rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

struct Compiler<'a> {
    data_dir: &'a Path,
    set: RuleSet,
    chains: HashMap<Vec<Transform>, usize>,
    /// Index of the chain starter still waiting for its next link.
    open_chain: Option<usize>,
}

impl<'a> Compiler<'a> {
    fn new(data_dir: &'a Path) -> Self {
        Self {
            data_dir,
            set: RuleSet::default(),
            chains: HashMap::new(),
            open_chain: None,
        }
    }

    fn add_text(&mut self, file: &str, text: &str) -> Result<(), Error> {
        let family = Path::new(file)
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        for directive in seclang::lex(file, text)? {
            self.add_directive(&family, directive)?;
        }
        if let Some(index) = self.open_chain {
            let location = &self.set.rules[index].location;
            return Err(Error::syntax(
                location,
                "rule has `chain` but no rule follows",
            ));
        }
        Ok(())
    }

    fn add_directive(&mut self, family: &str, directive: Directive) -> Result<(), Error> {
        let location = &directive.location;
        let args = &directive.args;
        let expect = |count: usize| {
            if args.len() == count {
                Ok(())
            } else {
                let message = format!(
                    "{} takes {count} arguments, found {}",
                    directive.name,
                    args.len()
                );
                Err(Error::syntax(location, message))
            }
        };
        match directive.name.as_str() {
            "SecRule" => {
                if args.len() != 2 && args.len() != 3 {
                    return Err(Error::syntax(
                        location,
                        format!("SecRule takes 2 or 3 arguments, found {}", args.len()),
                    ));
                }
                let targets = parse_targets(location, &args[0])?;
                let operator =
                    Operator::parse(location, &args[1], self.data_dir, &mut self.set.repairs)?;
                if matches!(operator.kind, OperatorKind::BacktrackingRx(_)) {
                    self.set.warnings.push(format!(
                        "{location}: @rx pattern needs lookarounds or backreferences and runs on the backtracking fancy-regex engine"
                    ));
                }
                if matches!(
                    operator.name.to_ascii_lowercase().as_str(),
                    "geolookup" | "rbl"
                ) {
                    self.set.warnings.push(format!(
                        "{location}: operator `@{}` never matches because this engine has no GeoIP database or DNS blocklist lookups",
                        operator.name
                    ));
                }
                let actions = args.get(2).map_or("", String::as_str);
                self.add_rule(family, location, targets, operator, actions)
            }
            "SecAction" => {
                expect(1)?;
                let operator = Operator::parse(
                    location,
                    "@unconditionalMatch",
                    self.data_dir,
                    &mut self.set.repairs,
                )?;
                self.add_rule(family, location, Vec::new(), operator, &args[0])
            }
            "SecMarker" => {
                expect(1)?;
                for phase in &mut self.set.phases {
                    phase.push(Entry::Marker(args[0].clone()));
                }
                Ok(())
            }
            "SecComponentSignature" => {
                expect(1)?;
                self.set.component_signature = Some(args[0].clone());
                Ok(())
            }
            "SecRuleUpdateTargetById" => {
                if args.len() != 2 {
                    let message = "SecRuleUpdateTargetById takes a rule id and a target list, and the form with a replacement target is unsupported";
                    return Err(Error::syntax(location, message));
                }
                let (low, high) = parse_id_range(location, &args[0])?;
                let targets = parse_targets(location, &args[1])?;
                let mut found = false;
                for rule in self
                    .set
                    .rules
                    .iter_mut()
                    .filter(|rule| rule.id >= low && rule.id <= high)
                {
                    rule.targets.extend(targets.iter().cloned());
                    found = true;
                }
                if !found {
                    return Err(Error::syntax(
                        location,
                        format!("SecRuleUpdateTargetById: no rule with id {}", args[0]),
                    ));
                }
                Ok(())
            }
            "SecRuleRemoveById" => {
                let mut ranges = Vec::new();
                for arg in args {
                    ranges.push(parse_id_range(location, arg)?);
                }
                let removed: Vec<usize> = (0..self.set.rules.len())
                    .filter(|index| {
                        let id = self.set.rules[*index].id;
                        ranges.iter().any(|(low, high)| id >= *low && id <= *high)
                    })
                    .collect();
                for phase in &mut self.set.phases {
                    phase.retain(
                        |entry| !matches!(entry, Entry::Rule(index) if removed.contains(index)),
                    );
                }
                Ok(())
            }
            "SecDefaultAction" => {
                expect(1)?;
                check_default_action(location, &args[0])
            }
            // CRS 3 setups set it for the persistent IP and session collections.
            "SecCollectionTimeout" => {
                expect(1)?;
                self.set.warnings.push(format!(
                    "{location}: SecCollectionTimeout has no effect because this engine keeps no persistent collections"
                ));
                Ok(())
            }
            other => Err(Error::syntax(
                location,
                format!("unsupported directive `{other}`"),
            )),
        }
    }

    fn add_rule(
        &mut self,
        family: &str,
        location: &Location,
        targets: Vec<Target>,
        operator: Operator,
        actions: &str,
    ) -> Result<(), Error> {
        let mut rule = Rule {
            id: 0,
            phase: 2,
            location: location.clone(),
            family: family.to_string(),
            targets,
            operator,
            transforms: Vec::new(),
            transform_chain: 0,
            disruptive: Disruptive::Pass,
            log: true,
            capture: false,
            multi_match: false,
            msg: None,
            logdata: None,
            severity: None,
            tags: Vec::new(),
            setvars: Vec::new(),
            controls: Vec::new(),
            skip_after: None,
            chained: None,
            prefilter_member: None,
        };
        let mut has_chain = false;
        for (name, argument) in seclang::split_actions(location, actions)? {
            has_chain |= self.apply_action(&mut rule, location, &name, argument)?;
        }
        let chain_key = rule.transforms.clone();
        let next_chain = self.chains.len();
        rule.transform_chain = *self.chains.entry(chain_key.clone()).or_insert(next_chain);
        if rule.transform_chain == next_chain {
            self.set.transform_chains.push(chain_key);
        }

        if let Some(starter) = self.open_chain.take() {
            let mut link = &mut self.set.rules[starter];
            while link.chained.is_some() {
                link = link.chained.as_mut().expect("checked above");
            }
            link.chained = Some(Box::new(rule));
            if has_chain {
                self.open_chain = Some(starter);
            }
            return Ok(());
        }

        if rule.id == 0 {
            return Err(Error::syntax(location, "rule has no `id` action"));
        }
        let index = self.set.rules.len();
        match rule.phase {
            1 | 2 => self.set.phases[usize::from(rule.phase - 1)].push(Entry::Rule(index)),
            _ => self.set.response_rules += 1,
        }
        self.set.rules.push(rule);
        if has_chain {
            self.open_chain = Some(index);
        }
        Ok(())
    }

    /// Applies one action to `rule`. Returns whether the action is `chain`.
    fn apply_action(
        &mut self,
        rule: &mut Rule,
        location: &Location,
        name: &str,
        argument: Option<String>,
    ) -> Result<bool, Error> {
        let required = |argument: Option<String>| {
            argument.ok_or_else(|| {
                Error::syntax(location, format!("action `{name}` needs an argument"))
            })
        };
        match name {
            "id" => {
                let text = required(argument)?;
                rule.id = text
                    .parse()
                    .map_err(|_| Error::syntax(location, format!("invalid rule id `{text}`")))?;
            }
            "phase" => {
                let text = required(argument)?;
                rule.phase = match text.as_str() {
                    "1" => 1,
                    "2" | "request" => 2,
                    "3" | "4" | "response" => 4,
                    "5" | "logging" => 5,
                    _ => return Err(Error::syntax(location, format!("invalid phase `{text}`"))),
                };
            }
            "t" => {
                let text = required(argument)?;
                if text.eq_ignore_ascii_case("none") {
                    rule.transforms.clear();
                } else {
                    let transform = Transform::from_name(&text).ok_or_else(|| {
                        Error::syntax(location, format!("unsupported transformation `t:{text}`"))
                    })?;
                    rule.transforms.push(transform);
                }
            }
            "chain" => return Ok(true),
            "pass" => rule.disruptive = Disruptive::Pass,
            "block" => rule.disruptive = Disruptive::Block,
            "deny" | "drop" => rule.disruptive = Disruptive::Deny,
            "allow" if argument.is_none() => rule.disruptive = Disruptive::Allow,
            "allow" => {
                let message = "unsupported action `allow` with a scope argument: use plain `allow`";
                return Err(Error::syntax(location, message));
            }
            "log" => rule.log = true,
            "nolog" => rule.log = false,
            "capture" => rule.capture = true,
            "multiMatch" => rule.multi_match = true,
            "msg" => rule.msg = Some(required(argument)?),
            "logdata" => rule.logdata = Some(required(argument)?),
            "severity" => rule.severity = Some(required(argument)?),
            "tag" => rule.tags.push(required(argument)?),
            "skipAfter" => rule.skip_after = Some(required(argument)?),
            "setvar" => {
                let text = required(argument)?;
                if is_persistent_setvar(&text) {
                    self.set.warnings.push(format!(
                        "{location}: `setvar:{text}` has no effect because this engine keeps no persistent collections"
                    ));
                } else {
                    rule.setvars.push(parse_setvar(location, &text)?);
                }
            }
            "ctl" => rule
                .controls
                .push(parse_control(location, &required(argument)?)?),
            // Metadata and audit-log settings that do not change matching.
            "ver" | "rev" | "maturity" | "accuracy" | "auditlog" | "noauditlog" | "status" => {}
            "initcol" | "expirevar" | "setenv" => {
                self.set.warnings.push(format!(
                    "{location}: action `{name}` has no effect because this engine keeps no persistent collections or environment"
                ));
            }
            _ => {
                return Err(Error::syntax(
                    location,
                    format!("unsupported action `{name}`"),
                ));
            }
        }
        Ok(false)
    }

    fn finish(mut self) -> RuleSet {
        self.build_prefilters();
        self.set
    }

    /// Groups the non-negated `@rx` links by transformation list and compiles each group into
    /// `RegexSet`s. One pass of a set over a value tells which of its patterns can match, so the
    /// evaluator skips the individual regexes of a benign value. Response-phase rules are left
    /// out because they are never evaluated.
    fn build_prefilters(&mut self) {
        // Sets are split into chunks: one set over hundreds of large patterns overwhelms the lazy
        // DFA and is slower than running the patterns one by one.
        let mut open_chunk: HashMap<usize, usize> = HashMap::new();
        let mut chunks: Vec<Vec<String>> = Vec::new();
        for rule in self.set.rules.iter_mut().filter(|rule| rule.phase <= 2) {
            let mut link = Some(rule);
            while let Some(current) = link {
                if let (OperatorKind::Rx(regex), false) =
                    (&current.operator.kind, current.operator.negated)
                {
                    let chunk = *open_chunk
                        .entry(current.transform_chain)
                        .or_insert_with(|| {
                            chunks.push(Vec::new());
                            chunks.len() - 1
                        });
                    current.prefilter_member = Some((chunk, chunks[chunk].len()));
                    chunks[chunk].push(regex.as_str().to_string());
                    if chunks[chunk].len() == PREFILTER_CHUNK {
                        open_chunk.remove(&current.transform_chain);
                    }
                }
                link = current.chained.as_deref_mut();
            }
        }
        self.set.prefilters = chunks
            .iter()
            .map(|group| {
                if group.len() < 2 {
                    return None;
                }
                regex::bytes::RegexSetBuilder::new(group)
                    .unicode(false)
                    .size_limit(PREFILTER_SIZE_LIMIT)
                    .dfa_size_limit(PREFILTER_SIZE_LIMIT)
                    .build()
                    .ok()
            })
            .collect();
    }
}

fn parse_id_range(location: &Location, text: &str) -> Result<(u32, u32), Error> {
    let invalid = || Error::syntax(location, format!("invalid rule id or range `{text}`"));
    match text.split_once('-') {
        Some((low, high)) => Ok((
            low.parse().map_err(|_| invalid())?,
            high.parse().map_err(|_| invalid())?,
        )),
        None => {
            let id = text.parse().map_err(|_| invalid())?;
            Ok((id, id))
        }
    }
}

/// Returns true when a `setvar` argument writes a persistent collection (see
/// [`crate::variable::Variable::Persistent`]).
fn is_persistent_setvar(text: &str) -> bool {
    let name = text.trim_start_matches('!');
    ["ip.", "global.", "session.", "user.", "resource."]
        .iter()
        .any(|prefix| {
            name.get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
        })
}

fn parse_setvar(location: &Location, text: &str) -> Result<SetVar, Error> {
    let (negate, text) = match text.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (name, value) = match text.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (text, None),
    };
    let Some(name) = name
        .strip_prefix("tx.")
        .or_else(|| name.strip_prefix("TX."))
        .or_else(|| name.strip_prefix("Tx."))
    else {
        return Err(Error::syntax(
            location,
            format!("unsupported setvar target `{name}`: only the tx collection is supported"),
        ));
    };
    let name = name.to_ascii_lowercase();
    if negate {
        return Ok(SetVar::Delete { name });
    }
    let value = value.unwrap_or("1");
    Ok(if let Some(value) = value.strip_prefix('+') {
        SetVar::Add {
            name,
            value: value.to_string(),
        }
    } else if let Some(value) = value.strip_prefix('-') {
        SetVar::Subtract {
            name,
            value: value.to_string(),
        }
    } else {
        SetVar::Set {
            name,
            value: value.to_string(),
        }
    })
}

fn parse_control(location: &Location, text: &str) -> Result<Control, Error> {
    let (name, value) = text.split_once('=').ok_or_else(|| {
        Error::syntax(
            location,
            format!("invalid ctl action `{text}`: expected name=value"),
        )
    })?;
    let target_list = |value: &str| -> Result<(String, Vec<Target>), Error> {
        let (selector, targets) = value.split_once(';').ok_or_else(|| {
            Error::syntax(
                location,
                format!("invalid ctl:{name} value `{value}`: expected ID;TARGETS"),
            )
        })?;
        Ok((selector.to_string(), parse_targets(location, targets)?))
    };
    let control = match name {
        "ruleRemoveById" => {
            let mut ranges = Vec::new();
            for item in value.split([',', ' ']).filter(|item| !item.is_empty()) {
                ranges.push(parse_id_range(location, item)?);
            }
            Control::RuleRemoveById(ranges)
        }
        "ruleRemoveByTag" => Control::RuleRemoveByTag(value.to_string()),
        "ruleRemoveTargetById" => {
            let (id, targets) = target_list(value)?;
            Control::RuleRemoveTargetById(parse_id_range(location, &id)?, targets)
        }
        "ruleRemoveTargetByTag" => {
            let (tag, targets) = target_list(value)?;
            Control::RuleRemoveTargetByTag(tag, targets)
        }
        "ruleEngine" => Control::RuleEngine(match value.to_ascii_lowercase().as_str() {
            "on" => EngineMode::On,
            "off" => EngineMode::Off,
            "detectiononly" => EngineMode::DetectionOnly,
            _ => {
                return Err(Error::syntax(
                    location,
                    format!("invalid ctl:ruleEngine value `{value}`"),
                ));
            }
        }),
        "requestBodyProcessor" => Control::RequestBodyProcessor(value.to_ascii_uppercase()),
        "forceRequestBodyVariable" => Control::ForceRequestBodyVariable,
        "auditEngine" | "auditLogParts" => Control::AuditOnly,
        _ => {
            return Err(Error::syntax(
                location,
                format!("unsupported control `ctl:{name}`"),
            ));
        }
    };
    Ok(control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_links_and_markers_compile() {
        let text = r#"
SecRule ARGS "@rx a" "id:10,phase:1,block,t:none,t:lowercase,chain"
    SecRule MATCHED_VAR "@rx b" "setvar:tx.x=+1"
SecMarker END
SecAction "id:11,phase:2,pass,nolog,skipAfter:END"
"#;
        let set = RuleSet::from_text(text, Path::new(".")).unwrap();
        assert_eq!(set.len(), 2);
        let rule = set.rule(10).unwrap();
        assert_eq!(rule.phase, 1);
        assert_eq!(rule.transforms, vec![Transform::Lowercase]);
        assert!(rule.chained.is_some());
        assert_eq!(set.phases[0].len(), 2);
        assert_eq!(set.phases[1].len(), 2);
    }

    #[test]
    fn unsupported_action_names_file_and_line() {
        let text = "\nSecRule ARGS \"@rx a\" \"id:10,phase:1,exec:/bin/true\"";
        let error = RuleSet::from_text(text, Path::new(".")).unwrap_err();
        assert_eq!(error.to_string(), "<text>:2: unsupported action `exec`");
    }

    #[test]
    fn dangling_chain_is_reported() {
        let error = RuleSet::from_text("SecRule ARGS \"@rx a\" \"id:10,chain\"", Path::new("."))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "<text>:1: rule has `chain` but no rule follows"
        );
    }

    #[test]
    fn update_target_appends_exclusion() {
        let text = "SecRule ARGS \"@rx a\" \"id:10\"\nSecRuleUpdateTargetById 10 \"!ARGS:foo\"";
        let set = RuleSet::from_text(text, Path::new(".")).unwrap();
        assert_eq!(set.rule(10).unwrap().targets.len(), 2);
        let error = RuleSet::from_text("SecRuleUpdateTargetById 11 \"!ARGS:foo\"", Path::new("."))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "<text>:1: SecRuleUpdateTargetById: no rule with id 11"
        );
    }
}
