//! [`Policy`]: the compiled policy, and [`PolicyBuilder`], which loads and compiles it.
//!
//! Compilation puts every term of every category and set (after normalisation, deduplicated)
//! into one Aho-Corasick automaton and every regex into one `RegexSet`, so evaluating a prompt
//! costs one automaton pass and one regex-set pass per normalised form, however many
//! categories are loaded.
//!
//! Co-occurrence windows (`all_of` rules with `window = N`) reuse the positions that pass
//! already recorded; nothing is scanned again except that, when every set of a windowed rule
//! matched, the regexes of those sets that matched are run once more to learn where (a
//! `RegexSet` only says whether). Prompts that do not reach a windowed rule pay nothing.
//!
//! Only the positive prompt is evaluated. The negative prompt lists what the image must *not*
//! show, so words such as "child, nude" there are protective; matching it would block the
//! users who are being careful. Rewrites likewise apply to the prompt only, and
//! `force_negative` only appends to the negative prompt.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::ops::Range;
use std::path::Path;

use aho_corasick::{AhoCorasick, MatchKind};
use inpaint_plugin_api::{Block, Change, Modification, Verdict};
use regex::{Regex, RegexSet};

use crate::defaults::DEFAULT_SOURCES;
use crate::error::PolicyError;
use crate::file::{Action, Location, PolicyDef, RuleKind};
use crate::lexicon::Lexicon;
use crate::normalize::{Normalized, Words, normalize, normalize_term};

/// Loads policy files in order and compiles them into a [`Policy`].
#[derive(Debug)]
pub struct PolicyBuilder {
    def: PolicyDef,
    fuzzy: bool,
}

impl Default for PolicyBuilder {
    fn default() -> Self {
        Self {
            def: PolicyDef::default(),
            fuzzy: true,
        }
    }
}

impl PolicyBuilder {
    /// An empty builder (no built-in lists).
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder holding the built-in lists from `ops/policy/` (embedded at compile time).
    pub fn with_defaults() -> Result<Self, PolicyError> {
        let mut builder = Self::new();
        for (name, text) in DEFAULT_SOURCES {
            builder.add_source(&format!("{name} (built-in)"), text)?;
        }
        Ok(builder)
    }

    /// Merges a policy given as text; `name` is used in error messages.
    pub fn add_source(&mut self, name: &str, text: &str) -> Result<&mut Self, PolicyError> {
        self.def.merge_source(name, text)?;
        Ok(self)
    }

    /// Reads and merges a policy file.
    pub fn add_file(&mut self, path: &Path) -> Result<&mut Self, PolicyError> {
        let name = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|source| PolicyError::Read {
            file: name.clone(),
            source,
        })?;
        self.add_source(&name, &text)
    }

    /// Whether prompts also get the fixed form (joins, splits, misspelling corrections; see
    /// [`crate::lexicon`]). On by default; off leaves exact matching of the normalised forms.
    pub fn fuzzy(&mut self, on: bool) -> &mut Self {
        self.fuzzy = on;
        self
    }

    /// Validates everything and compiles the matchers.
    pub fn build(&self) -> Result<Policy, PolicyError> {
        let mut policy = Policy::compile(&self.def)?;
        policy.fuzzy = self.fuzzy;
        Ok(policy)
    }
}

#[derive(Debug, Clone)]
struct CompiledSet {
    phrases: Vec<usize>,
    regexes: Vec<usize>,
}

#[derive(Debug, Clone)]
enum CompiledRule {
    Regex(usize),
    AllOf {
        sets: Vec<usize>,
        /// At least one of these sets must match as well (empty: no such condition).
        any: Vec<usize>,
        /// Maximum distance in words between the sets' matches; `None`: anywhere.
        window: Option<usize>,
    },
}

#[derive(Debug, Clone)]
struct CompiledCategory {
    id: String,
    action: Action,
    replacement: String,
    negative: Vec<String>,
    /// (phrase id, audit rule id)
    terms: Vec<(usize, String)>,
    /// (rule, audit rule id)
    rules: Vec<(CompiledRule, String)>,
}

/// A compiled prompt policy.
#[derive(Debug, Clone)]
pub struct Policy {
    categories: Vec<CompiledCategory>,
    sets: Vec<CompiledSet>,
    phrases: AhoCorasick,
    phrase_count: usize,
    /// Per phrase: written `stem*`, so it needs no word boundary at its end.
    prefix: Vec<bool>,
    /// Per phrase: the sets it belongs to.
    phrase_sets: Vec<Vec<usize>>,
    /// Per regex: the sets it belongs to.
    regex_sets: Vec<Vec<usize>>,
    lexicon: Lexicon,
    /// Whether the fixed form is matched too.
    fuzzy: bool,
    regex_set: RegexSet,
    regexes: Vec<Regex>,
}

/// One category that matched a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryMatch {
    /// The category id.
    pub category: String,
    /// What the category does.
    pub action: Action,
    /// Audit ids of the rules that matched: `<category>/term:<term>` or `<category>/<rule id>`.
    pub rules: Vec<String>,
    /// Byte ranges of the prompt that matched (for rewriting).
    pub spans: Vec<Range<usize>>,
}

/// The result of evaluating one prompt: every matching category, in policy order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// Matching categories.
    pub matches: Vec<CategoryMatch>,
}

impl Evaluation {
    /// True when no category matched.
    pub fn is_clean(&self) -> bool {
        self.matches.is_empty()
    }

    /// True when a `block` category matched.
    pub fn is_blocked(&self) -> bool {
        self.matches.iter().any(|m| m.action == Action::Block)
    }

    /// Ids of the matching categories.
    pub fn categories(&self) -> impl Iterator<Item = &str> {
        self.matches.iter().map(|m| m.category.as_str())
    }
}

/// Where phrases and regexes matched in one prompt.
struct Hits<'a> {
    normalized: &'a Normalized,
    /// (phrase, form, start, end) of each term match, sorted by phrase: a prompt matches a
    /// handful of the thousands of terms, so a per-phrase table would cost more than the scan.
    phrases: Vec<(usize, usize, usize, usize)>,
    /// Per regex: forms it matched in.
    regexes: Vec<Vec<usize>>,
    sets: Vec<bool>,
}

impl Hits<'_> {
    /// The matches of phrase `p`.
    fn phrase(&self, p: usize) -> &[(usize, usize, usize, usize)] {
        let start = self.phrases.partition_point(|h| h.0 < p);
        let end = self.phrases.partition_point(|h| h.0 <= p);
        &self.phrases[start..end]
    }
}

/// Word positions of set matches, worked out on first use by a windowed rule.
struct Positions {
    words: Words,
    /// Per set: where its matches are; `None` until a windowed rule needs that set.
    sets: Vec<Option<SetPositions>>,
}

/// The matches of one set as (first word, last word), sorted, with the running maximum of the
/// last word, so "does some match start by word `x` and end at or after word `y`" is one binary
/// search. That keeps a window check O(h log h) in the number of matches h, which matters
/// only for hostile prompts that repeat a term hundreds of times.
#[derive(Clone)]
struct SetPositions {
    matches: Vec<(usize, usize)>,
    latest_end: Vec<usize>,
}

impl SetPositions {
    fn new(mut matches: Vec<(usize, usize)>) -> Self {
        matches.sort_unstable();
        matches.dedup();
        let mut latest = 0;
        let latest_end = matches
            .iter()
            .map(|&(_, last)| {
                latest = latest.max(last);
                latest
            })
            .collect();
        Self {
            matches,
            latest_end,
        }
    }

    /// Whether some match starts at or before word `reach` and ends at or after word `anchor`.
    fn reaches(&self, anchor: usize, reach: usize) -> bool {
        let starting_by = self.matches.partition_point(|&(first, _)| first <= reach);
        starting_by
            .checked_sub(1)
            .and_then(|i| self.latest_end.get(i))
            .is_some_and(|&end| end >= anchor)
    }
}

impl Policy {
    fn compile(def: &PolicyDef) -> Result<Policy, PolicyError> {
        let mut phrase_ids: HashMap<(String, bool), usize> = HashMap::new();
        let mut phrase_texts: Vec<String> = Vec::new();
        let mut prefix: Vec<bool> = Vec::new();
        let mut regex_sources: Vec<String> = Vec::new();
        let mut regexes: Vec<Regex> = Vec::new();

        // `stem*` is a prefix term: it matches every word that starts with the stem.
        let mut intern = |term: &str| -> Option<(usize, String)> {
            let trimmed = term.trim();
            let (body, is_prefix) = match trimmed.strip_suffix('*') {
                Some(stem) => (stem, true),
                None => (trimmed, false),
            };
            let normalized = normalize_term(body);
            if normalized.is_empty() {
                return None;
            }
            let next = phrase_texts.len();
            let id = *phrase_ids
                .entry((normalized.clone(), is_prefix))
                .or_insert(next);
            if id == next {
                phrase_texts.push(normalized.clone());
                prefix.push(is_prefix);
            }
            let audit = if is_prefix {
                format!("{normalized}*")
            } else {
                normalized
            };
            Some((id, audit))
        };
        let mut add_regex = |source: &str| -> Result<usize, String> {
            let regex = Regex::new(source).map_err(|e| format!("invalid regex: {e}"))?;
            regexes.push(regex);
            regex_sources.push(source.to_owned());
            Ok(regexes.len() - 1)
        };

        let set_error = |name: &str, at: &Location, message: String| PolicyError::Set {
            file: at.file.to_string(),
            line: at.line,
            set: name.to_owned(),
            message,
        };
        let mut set_index: HashMap<&str, usize> = HashMap::new();
        let mut sets = Vec::with_capacity(def.sets.len());
        for (name, set) in &def.sets {
            let mut compiled = CompiledSet {
                phrases: Vec::new(),
                regexes: Vec::new(),
            };
            for term in &set.terms {
                let (id, _) = intern(&term.value).ok_or_else(|| {
                    set_error(
                        name,
                        &term.at,
                        format!("term `{}` is empty after normalisation", term.value),
                    )
                })?;
                compiled.phrases.push(id);
            }
            for regex in &set.regex {
                let id = add_regex(&regex.value).map_err(|m| set_error(name, &regex.at, m))?;
                compiled.regexes.push(id);
            }
            if compiled.phrases.is_empty() && compiled.regexes.is_empty() {
                let at = set.at.clone().unwrap_or(Location {
                    file: "<policy>".into(),
                    line: 1,
                });
                return Err(set_error(
                    name,
                    &at,
                    "set has no terms and no regexes".into(),
                ));
            }
            set_index.insert(name.as_str(), sets.len());
            sets.push(compiled);
        }

        let mut categories = Vec::with_capacity(def.categories.len());
        for cat in &def.categories {
            let cat_error = |at: &Location, message: String| PolicyError::Category {
                file: at.file.to_string(),
                line: at.line,
                category: cat.id.clone(),
                message,
            };
            if cat.action == Action::ForceNegative
                && cat.negative.iter().all(|n| n.trim().is_empty())
            {
                return Err(cat_error(
                    &cat.at,
                    "action `force_negative` needs `negative` terms".into(),
                ));
            }
            let mut compiled = CompiledCategory {
                id: cat.id.clone(),
                action: cat.action,
                replacement: cat.replacement.clone(),
                negative: cat
                    .negative
                    .iter()
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .collect(),
                terms: Vec::new(),
                rules: Vec::new(),
            };
            for term in &cat.terms {
                let (id, normalized) = intern(&term.value).ok_or_else(|| {
                    cat_error(
                        &term.at,
                        format!("term `{}` is empty after normalisation", term.value),
                    )
                })?;
                let audit = format!("{}/term:{normalized}", cat.id);
                if !compiled.terms.iter().any(|(p, _)| *p == id) {
                    compiled.terms.push((id, audit));
                }
            }
            for rule in &cat.rules {
                let audit = format!("{}/{}", cat.id, rule.id);
                if compiled.rules.iter().any(|(_, a)| *a == audit) {
                    return Err(cat_error(
                        &rule.at,
                        format!("duplicate rule id `{}`", rule.id),
                    ));
                }
                let compiled_rule = match &rule.kind {
                    RuleKind::Regex(source) => CompiledRule::Regex(
                        add_regex(source)
                            .map_err(|m| cat_error(&rule.at, format!("rule `{}`: {m}", rule.id)))?,
                    ),
                    RuleKind::AllOf {
                        sets: names,
                        any,
                        window,
                    } => {
                        let resolve = |names: &[String]| -> Result<Vec<usize>, PolicyError> {
                            names
                                .iter()
                                .map(|name| {
                                    set_index.get(name.as_str()).copied().ok_or_else(|| {
                                        cat_error(
                                            &rule.at,
                                            format!("rule `{}`: unknown set `{name}`", rule.id),
                                        )
                                    })
                                })
                                .collect()
                        };
                        CompiledRule::AllOf {
                            sets: resolve(names)?,
                            any: resolve(any)?,
                            window: window.and_then(|w| usize::try_from(w).ok()),
                        }
                    }
                };
                compiled.rules.push((compiled_rule, audit));
            }
            if compiled.terms.is_empty() && compiled.rules.is_empty() {
                return Err(cat_error(
                    &cat.at,
                    "category has no terms and no rules".into(),
                ));
            }
            categories.push(compiled);
        }
        if categories.is_empty() {
            return Err(PolicyError::Empty);
        }

        let phrases = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&phrase_texts)
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
        let regex_set =
            RegexSet::new(&regex_sources).map_err(|e| PolicyError::Compile(e.to_string()))?;
        let mut phrase_sets = vec![Vec::new(); phrase_texts.len()];
        let mut regex_sets = vec![Vec::new(); regexes.len()];
        for (s, set) in sets.iter().enumerate() {
            for &p in &set.phrases {
                phrase_sets[p].push(s);
            }
            for &r in &set.regexes {
                regex_sets[r].push(s);
            }
        }
        let lexicon = Lexicon::new(
            phrase_texts
                .iter()
                .map(String::as_str)
                .zip(prefix.iter().copied()),
            def.known_words.iter().map(|w| normalize_term(w)),
        );
        tracing::debug!(
            categories = categories.len(),
            phrases = phrase_texts.len(),
            regexes = regexes.len(),
            "prompt policy compiled"
        );
        Ok(Policy {
            categories,
            sets,
            phrases,
            phrase_count: phrase_texts.len(),
            prefix,
            phrase_sets,
            regex_sets,
            lexicon,
            fuzzy: true,
            regex_set,
            regexes,
        })
    }

    /// Category ids and actions, in policy order.
    pub fn categories(&self) -> impl Iterator<Item = (&str, Action)> {
        self.categories.iter().map(|c| (c.id.as_str(), c.action))
    }

    /// Number of distinct normalised terms in the automaton.
    pub fn phrase_count(&self) -> usize {
        self.phrase_count
    }

    /// The vocabulary and fuzzy matcher built from the terms.
    pub fn lexicon(&self) -> &Lexicon {
        &self.lexicon
    }

    /// Number of regexes.
    pub fn regex_count(&self) -> usize {
        self.regexes.len()
    }

    fn hits<'a>(&self, normalized: &'a Normalized) -> Hits<'a> {
        let mut phrases = Vec::new();
        let mut regexes = vec![Vec::new(); self.regexes.len()];
        for (f, form) in normalized.forms().iter().enumerate() {
            for m in self.phrases.find_overlapping_iter(form.text()) {
                let p = m.pattern().as_usize();
                if form.is_term_match(m.start(), m.end(), self.prefix.get(p) == Some(&true)) {
                    phrases.push((p, f, m.start(), m.end()));
                }
            }
            for r in self.regex_set.matches(form.text()).iter() {
                if let Some(slot) = regexes.get_mut(r) {
                    slot.push(f);
                }
            }
        }
        phrases.sort_unstable();
        let mut sets = vec![false; self.sets.len()];
        for &(p, ..) in &phrases {
            for &s in self.phrase_sets.get(p).map_or(&[][..], Vec::as_slice) {
                sets[s] = true;
            }
        }
        for (r, forms) in regexes.iter().enumerate() {
            if !forms.is_empty() {
                for &s in self.regex_sets.get(r).map_or(&[][..], Vec::as_slice) {
                    sets[s] = true;
                }
            }
        }
        Hits {
            normalized,
            phrases,
            regexes,
            sets,
        }
    }

    /// Every form of `prompt` that is matched: the normalised forms and, when the lexicon
    /// repaired some word, the fixed form.
    pub fn forms(&self, prompt: &str) -> Normalized {
        let mut normalized = normalize(prompt);
        // The fixed form repairs the leetspeak form when there is one (it differs from the
        // plain form only in words that mixed letters and leet characters).
        let base = normalized.forms.get(1).or(normalized.forms.first());
        if let Some(fixed) = base
            .filter(|_| self.fuzzy)
            .and_then(|b| self.lexicon.fix(b))
        {
            normalized.forms.push(fixed);
        }
        normalized
    }

    /// Evaluates a prompt against every category.
    pub fn evaluate(&self, prompt: &str) -> Evaluation {
        let normalized = self.forms(prompt);
        let hits = self.hits(&normalized);
        let mut positions = None;
        let mut matches = Vec::new();
        for cat in &self.categories {
            let mut rules = Vec::new();
            let mut phrase_ids = Vec::new();
            let mut regex_ids = Vec::new();
            for (phrase, audit) in &cat.terms {
                if !hits.phrase(*phrase).is_empty() {
                    rules.push(audit.clone());
                    phrase_ids.push(*phrase);
                }
            }
            for (rule, audit) in &cat.rules {
                match rule {
                    CompiledRule::Regex(r) if !hits.regexes[*r].is_empty() => {
                        rules.push(audit.clone());
                        regex_ids.push(*r);
                    }
                    CompiledRule::AllOf { sets, any, window }
                        if sets.iter().all(|&s| hits.sets[s])
                            && (any.is_empty() || any.iter().any(|&s| hits.sets[s]))
                            && window.is_none_or(|w| {
                                self.within_window(&hits, &mut positions, sets, w)
                            }) =>
                    {
                        // A rewrite removes every match of the sets, as without a window: the
                        // text is the same words either way.
                        rules.push(audit.clone());
                        for &s in sets.iter().chain(any) {
                            phrase_ids.extend(&self.sets[s].phrases);
                            regex_ids.extend(&self.sets[s].regexes);
                        }
                    }
                    _ => {}
                }
            }
            if rules.is_empty() {
                continue;
            }
            let spans = if cat.action == Action::Rewrite {
                self.spans(&hits, &phrase_ids, &regex_ids)
            } else {
                Vec::new()
            };
            matches.push(CategoryMatch {
                category: cat.id.clone(),
                action: cat.action,
                rules,
                spans,
            });
        }
        Evaluation { matches }
    }

    /// Whether one match of each of `sets` can be picked so that the last starts at most
    /// `window` words after the first ends (every set is known to match somewhere).
    ///
    /// Picking the match that ends first as the anchor, the others must end no earlier and start
    /// no later than `window` words after it; trying every match as the anchor is exact.
    fn within_window(
        &self,
        hits: &Hits<'_>,
        positions: &mut Option<Positions>,
        sets: &[usize],
        window: usize,
    ) -> bool {
        let positions = positions.get_or_insert_with(|| Positions {
            words: Words::of(hits.normalized),
            sets: vec![None; self.sets.len()],
        });
        for &s in sets {
            if positions.sets.get(s).is_some_and(Option::is_none) {
                let located = SetPositions::new(self.locate_set(hits, &positions.words, s));
                positions.sets[s] = Some(located);
            }
        }
        let mut lists = Vec::with_capacity(sets.len());
        for &s in sets {
            match positions.sets.get(s) {
                Some(Some(list)) => lists.push(list),
                // Unreachable (every set was just located); no match means no window match.
                _ => return false,
            }
        }
        lists
            .iter()
            .flat_map(|list| list.matches.iter())
            .any(|&(_, anchor)| {
                let reach = anchor.saturating_add(window);
                lists.iter().all(|list| list.reaches(anchor, reach))
            })
    }

    /// (first word, last word) of every match of set `s`, in any form.
    fn locate_set(&self, hits: &Hits<'_>, words: &Words, s: usize) -> Vec<(usize, usize)> {
        let forms = hits.normalized.forms();
        let mut located = Vec::new();
        let Some(set) = self.sets.get(s) else {
            return located;
        };
        for &p in &set.phrases {
            for &(_, f, start, end) in hits.phrase(p) {
                if let Some(form) = forms.get(f) {
                    located.extend(words.locate(form, start, end));
                }
            }
        }
        for &r in &set.regexes {
            for &f in &hits.regexes[r] {
                if let (Some(form), Some(regex)) = (forms.get(f), self.regexes.get(r)) {
                    for m in regex.find_iter(form.text()) {
                        located.extend(words.locate(form, m.start(), m.end()));
                    }
                }
            }
        }
        located
    }

    /// Prompt byte ranges of the given phrases' and regexes' matches.
    fn spans(
        &self,
        hits: &Hits<'_>,
        phrase_ids: &[usize],
        regex_ids: &[usize],
    ) -> Vec<Range<usize>> {
        let forms = hits.normalized.forms();
        let mut spans = Vec::new();
        for &p in phrase_ids {
            for &(_, f, start, end) in hits.phrase(p) {
                spans.extend(forms.get(f).and_then(|form| form.origin_range(start, end)));
            }
        }
        for &r in regex_ids {
            for &f in &hits.regexes[r] {
                if let Some(form) = forms.get(f) {
                    for m in self.regexes[r].find_iter(form.text()) {
                        spans.extend(form.origin_range(m.start(), m.end()));
                    }
                }
            }
        }
        spans.sort_by_key(|s| (s.start, s.end));
        spans.dedup();
        spans
    }

    /// Evaluates a prompt and turns the result into a stage [`Verdict`]:
    /// - any `block` category → [`Verdict::Block`] naming the first one (policy order), with
    ///   every matched block rule id and a score of 1.0 per matched block category;
    /// - otherwise one `RewritePrompt` per `rewrite` category (each cumulative, so the last
    ///   holds every rewrite), one `AppendNegative` per `force_negative` category and one
    ///   `AddScores` (category → 1.0) per `flag` category;
    /// - otherwise [`Verdict::Continue`].
    pub fn verdict(&self, prompt: &str) -> Verdict {
        verdict_from(prompt, &self.evaluate(prompt), &self.categories)
    }
}

fn verdict_from(prompt: &str, evaluation: &Evaluation, categories: &[CompiledCategory]) -> Verdict {
    let blocking: Vec<&CategoryMatch> = evaluation
        .matches
        .iter()
        .filter(|m| m.action == Action::Block)
        .collect();
    if let Some(first) = blocking.first() {
        let mut reason = format!(
            "prompt matches blocked policy category `{}` (OpenRAIL-M Attachment A)",
            first.category
        );
        if blocking.len() > 1 {
            let others: Vec<&str> = blocking[1..].iter().map(|m| m.category.as_str()).collect();
            reason.push_str(&format!("; also matches: {}", others.join(", ")));
        }
        let scores: BTreeMap<String, f32> =
            blocking.iter().map(|m| (m.category.clone(), 1.0)).collect();
        let rules = blocking
            .iter()
            .flat_map(|m| m.rules.iter().cloned())
            .collect();
        return Verdict::Block(Block {
            category: first.category.clone(),
            reason,
            scores,
            rules,
        });
    }

    let mut mods = Vec::new();
    let mut pending: Vec<(Range<usize>, &str)> = Vec::new();
    for m in &evaluation.matches {
        let Some(cat) = categories.iter().find(|c| c.id == m.category) else {
            continue;
        };
        let change = match m.action {
            Action::Rewrite => {
                pending.extend(
                    m.spans
                        .iter()
                        .map(|s| (s.clone(), cat.replacement.as_str())),
                );
                Change::RewritePrompt(rewrite(prompt, &pending))
            }
            Action::ForceNegative => Change::AppendNegative(cat.negative.clone()),
            Action::Flag => Change::AddScores(BTreeMap::from([(m.category.clone(), 1.0)])),
            Action::Block => continue,
        };
        mods.push(
            Modification::new(change)
                .with_category(m.category.clone())
                .with_rules(m.rules.iter().cloned()),
        );
    }
    if mods.is_empty() {
        Verdict::Continue
    } else {
        Verdict::Modify(mods)
    }
}

/// Replaces `spans` of `prompt` (overlaps merged, first replacement wins) and tidies the
/// spaces a removal leaves behind.
fn rewrite(prompt: &str, spans: &[(Range<usize>, &str)]) -> String {
    let mut sorted: Vec<(Range<usize>, &str)> = spans.to_vec();
    sorted.sort_by_key(|(s, _)| (s.start, std::cmp::Reverse(s.end)));
    let mut merged: Vec<(Range<usize>, &str)> = Vec::new();
    for (span, replacement) in sorted {
        match merged.last_mut() {
            Some((last, _)) if span.start < last.end => last.end = last.end.max(span.end),
            _ => merged.push((span, replacement)),
        }
    }
    let mut out = String::with_capacity(prompt.len());
    let mut pos = 0;
    for (span, replacement) in merged {
        let (Some(before), true) = (prompt.get(pos..span.start), span.end <= prompt.len()) else {
            continue;
        };
        out.push_str(before);
        out.push_str(replacement);
        pos = span.end;
        if out.ends_with(' ') || out.is_empty() {
            while prompt.get(pos..).is_some_and(|rest| rest.starts_with(' ')) {
                pos += 1;
            }
        }
    }
    out.push_str(prompt.get(pos..).unwrap_or_default());
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        let mut builder = PolicyBuilder::new();
        builder.add_source("test.toml", text).expect("valid source");
        builder.build().expect("compiles")
    }

    const DEMO: &str = r#"
[sets.animal]
terms = ["cat", "dog"]
[sets.color]
terms = ["purple"]
regex = ['\bgr[ae]y\b']

[[category]]
id = "demo_block"
action = "block"
terms = ["forbidden thing"]
[[category.rule]]
id = "purple-animal"
all_of = ["animal", "color"]

[[category]]
id = "demo_rewrite"
action = "rewrite"
replacement = "friendly"
terms = ["scary", "creepy"]

[[category]]
id = "demo_negative"
action = "force_negative"
negative = ["blood", "gore"]
terms = ["battle"]
"#;

    #[test]
    fn terms_match_whole_words_only() {
        let p = policy(DEMO);
        assert!(p.evaluate("a forbidden thing here").is_blocked());
        assert!(p.evaluate("FORBIDDEN, thing!").is_blocked());
        // A close inflection is a misspelling to the fuzzy matcher (no dictionary protects
        // `things` in this policy); a different word is not.
        assert!(p.evaluate("forbidden things").is_blocked());
        assert!(p.evaluate("forbidden thinking").is_clean());
        assert!(p.evaluate("unforbidden thing").is_clean());
    }

    #[test]
    fn all_of_needs_every_set() {
        let p = policy(DEMO);
        let e = p.evaluate("a purple dog");
        assert_eq!(
            e.matches[0].rules,
            vec!["demo_block/purple-animal".to_owned()]
        );
        assert!(p.evaluate("a grey cat").is_blocked());
        assert!(p.evaluate("a dog").is_clean());
        assert!(p.evaluate("purple rain").is_clean());
    }

    const WINDOWED: &str = r#"
[sets.minor]
terms = ["child", "little girl"]
regex = ['\baged? (?:1[0-7]|[1-9])\b']
[sets.nudity]
terms = ["naked", "nude"]
[sets.place]
terms = ["beach"]

[[category]]
id = "near"
action = "block"
[[category.rule]]
id = "minor-near-nudity"
all_of = ["nudity", "minor"]
window = 2

[[category]]
id = "trio"
action = "block"
[[category.rule]]
id = "all-three"
all_of = ["minor", "nudity", "place"]
window = 3

[[category]]
id = "anywhere"
action = "force_negative"
negative = ["nsfw"]
[[category.rule]]
id = "minor-and-nudity"
all_of = ["minor", "nudity"]
"#;

    fn windowed_rules(p: &Policy, prompt: &str) -> Vec<String> {
        p.evaluate(prompt)
            .matches
            .into_iter()
            .filter(|m| m.category != "anywhere")
            .flat_map(|m| m.rules)
            .collect()
    }

    #[test]
    fn window_counts_words_between_the_matches() {
        let p = policy(WINDOWED);
        let near = vec!["near/minor-near-nudity".to_owned()];
        for prompt in [
            "a naked child",
            "a child, naked",              // order does not matter
            "naked little girl",           // phrase match
            "a naked smiling child",       // one word between
            "naked!!! ... --- child",      // punctuation is not a word
            "a c h i l d , n.u.d.e",       // spaced and dotted letters are one word each
            "naked x x x x x x x x child", // a run of single letters is one word
            "n4ked ch1ld",                 // leet form matches, located by plain words
            "nude, aged 9",                // regex match located too
            "a child in a park and, far away, a naked child", // any pair may qualify
        ] {
            assert_eq!(windowed_rules(&p, prompt), near, "{prompt:?}");
        }
        for prompt in [
            "naked, happy smiling child",
            "a child laughing at the naked emperor",
            "nude at the beach, aged 9",
            "n4ked and ab cd ch1ld",
        ] {
            assert_eq!(
                windowed_rules(&p, prompt),
                Vec::<String>::new(),
                "{prompt:?}"
            );
            // The rule without a window still fires on the same prompt.
            assert_eq!(
                p.evaluate(prompt).categories().collect::<Vec<_>>(),
                vec!["anywhere"],
                "{prompt:?}"
            );
        }
    }

    #[test]
    fn window_spans_every_set_of_the_rule() {
        let p = policy(WINDOWED);
        let trio = "trio/all-three".to_owned();
        assert!(windowed_rules(&p, "naked child at beach").contains(&trio));
        assert!(windowed_rules(&p, "beach, child: nude").contains(&trio));
        // naked (0) .. beach (4): four words from first to last.
        assert!(!windowed_rules(&p, "naked child on a beach").contains(&trio));
    }

    #[test]
    fn many_repeated_terms_are_checked_exactly() {
        let p = policy(WINDOWED);
        // naked: words 0..=299, filler 300..=302, child 303..=602: distance 4, window 2.
        let far = format!(
            "{}one two three {}",
            "naked ".repeat(300),
            "child ".repeat(300)
        );
        assert_eq!(windowed_rules(&p, &far), Vec::<String>::new());
        let near = format!("{far}naked");
        assert_eq!(
            windowed_rules(&p, &near),
            vec!["near/minor-near-nudity".to_owned()]
        );
    }

    #[test]
    fn set_positions_find_long_matches_that_started_early() {
        let set = SetPositions::new(vec![(6, 6), (0, 5), (2, 2)]);
        assert!(set.reaches(4, 5)); // (0, 5) starts by word 5 and ends at or after word 4
        assert!(!set.reaches(6, 5)); // nothing that starts by word 5 ends at or after word 6
        assert!(set.reaches(6, 6));
        assert!(!set.reaches(7, 100));
        assert!(!SetPositions::new(Vec::new()).reaches(0, 10));
    }

    const CONCEPTS: &str = r#"
[sets.minor]
terms = ["child", "ребен*", "幼女"]
[sets.nudity]
terms = ["naked", "голы*"]
[sets.photo]
terms = ["photo"]
[sets.drawing]
terms = ["drawing"]

[[category]]
id = "pair"
action = "block"
[[category.rule]]
id = "minor-nudity"
all_of = ["minor", "nudity"]

[[category]]
id = "review"
action = "flag"
[[category.rule]]
id = "image-of-minor"
all_of = ["minor"]
any_of = ["photo", "drawing"]
"#;

    #[test]
    fn prefix_and_cjk_terms_match_inflections_and_substrings() {
        let p = policy(CONCEPTS);
        for prompt in [
            "голый ребенок",
            "голые ребенка",
            "naked ребёнку",
            "写真の幼女、naked",
            "naked幼女",
        ] {
            assert!(p.evaluate(prompt).is_blocked(), "{prompt:?}");
        }
        // A stem needs a word boundary where it starts.
        assert!(p.evaluate("naked пребенок").is_clean());
    }

    #[test]
    fn any_of_needs_one_of_its_sets_and_all_of_the_others() {
        let p = policy(CONCEPTS);
        let rules = |prompt: &str| -> Vec<String> {
            p.evaluate(prompt)
                .matches
                .into_iter()
                .filter(|m| m.category == "review")
                .flat_map(|m| m.rules)
                .collect()
        };
        assert_eq!(rules("a drawing of a child"), vec!["review/image-of-minor"]);
        assert_eq!(rules("a photo of a child"), vec!["review/image-of-minor"]);
        assert!(rules("a child").is_empty());
        assert!(rules("a photo and a drawing").is_empty());
    }

    #[test]
    fn flag_reports_a_score_and_changes_nothing() {
        let p = policy(CONCEPTS);
        let Verdict::Modify(mods) = p.verdict("a photo of a child") else {
            panic!("expected a flag");
        };
        assert_eq!(
            mods[0].change,
            Change::AddScores(BTreeMap::from([("review".to_owned(), 1.0)]))
        );
        assert_eq!(mods[0].category.as_deref(), Some("review"));
        assert_eq!(mods[0].rules, vec!["review/image-of-minor".to_owned()]);
    }

    #[test]
    fn block_verdict_carries_audit_ids_not_prompt_text() {
        let p = policy(DEMO);
        let Verdict::Block(block) = p.verdict("secret words: a purple cat, forbidden thing") else {
            panic!("expected a block");
        };
        assert_eq!(block.category, "demo_block");
        assert_eq!(
            block.rules,
            vec![
                "demo_block/term:forbidden thing".to_owned(),
                "demo_block/purple-animal".to_owned()
            ]
        );
        assert!(!block.reason.contains("secret"));
        assert_eq!(block.scores.get("demo_block"), Some(&1.0));
    }

    #[test]
    fn rewrite_replaces_the_original_text() {
        let p = policy(DEMO);
        let Verdict::Modify(mods) = p.verdict("a SCARY house, very c.r.e.e.p.y attic") else {
            panic!("expected a rewrite");
        };
        assert_eq!(mods.len(), 1);
        assert_eq!(
            mods[0].change,
            Change::RewritePrompt("a friendly house, very friendly attic".into())
        );
        assert_eq!(mods[0].category.as_deref(), Some("demo_rewrite"));
    }

    #[test]
    fn force_negative_appends_terms() {
        let p = policy(DEMO);
        let Verdict::Modify(mods) = p.verdict("an epic battle scene") else {
            panic!("expected a modification");
        };
        assert_eq!(
            mods[0].change,
            Change::AppendNegative(vec!["blood".into(), "gore".into()])
        );
        assert_eq!(mods[0].rules, vec!["demo_negative/term:battle".to_owned()]);
    }

    #[test]
    fn block_wins_over_rewrite() {
        let p = policy(DEMO);
        assert!(p.verdict("scary forbidden thing").is_block());
        assert_eq!(p.verdict("a calm lake"), Verdict::Continue);
    }

    #[test]
    fn rewrite_helper_merges_overlaps_and_tidies_spaces() {
        assert_eq!(rewrite("a b c", &[(2..3, "")]), "a c");
        assert_eq!(rewrite("abcdef", &[(1..3, "X"), (2..5, "Y")]), "aXf");
        assert_eq!(rewrite("x y", &[(0..1, "")]), "y");
        assert_eq!(rewrite("xy", &[(5..9, "z")]), "xy");
    }

    #[test]
    fn compile_errors_name_file_line_and_category() {
        let mut b = PolicyBuilder::new();
        b.add_source(
            "bad.toml",
            "[[category]]\nid = \"c\"\naction = \"block\"\n\n[[category.rule]]\nid = \"r\"\nregex = '(unclosed'\n",
        )
        .expect("parses");
        let err = b.build().expect_err("invalid regex");
        let text = err.to_string();
        assert!(
            text.starts_with("bad.toml:6: category `c`: rule `r`: invalid regex"),
            "{text}"
        );

        let mut b = PolicyBuilder::new();
        b.add_source("s.toml", "[[category]]\nid = \"c\"\naction = \"block\"\n[[category.rule]]\nid = \"r\"\nall_of = [\"nope\"]\n")
            .expect("parses");
        let text = b.build().expect_err("unknown set").to_string();
        assert!(
            text.contains("s.toml:5: category `c`: rule `r`: unknown set `nope`"),
            "{text}"
        );

        let mut b = PolicyBuilder::new();
        b.add_source(
            "n.toml",
            "[[category]]\nid = \"c\"\naction = \"force_negative\"\nterms = [\"x\"]\n",
        )
        .expect("parses");
        let text = b.build().expect_err("no negative").to_string();
        assert!(
            text.contains("n.toml:2: category `c`: action `force_negative` needs"),
            "{text}"
        );

        let mut b = PolicyBuilder::new();
        b.add_source(
            "e.toml",
            "[[category]]\nid = \"c\"\naction = \"block\"\nterms = [\"ok\", \" !! \"]\n",
        )
        .expect("parses");
        let text = b.build().expect_err("empty term").to_string();
        assert!(
            text.contains("e.toml:4: category `c`: term ` !! ` is empty"),
            "{text}"
        );

        assert!(matches!(
            PolicyBuilder::new().build(),
            Err(PolicyError::Empty)
        ));
    }
}
