//! The policy file format (TOML) and the merge of several files into one policy definition.
//!
//! ```toml
//! # Term sets, shared by `all_of` rules of any category.
//! [sets.minor]
//! terms = ["child", "kid"]                     # whole words or phrases, after normalisation
//! regex = ['\b(?:[1-9]|1[0-7]) ?years? old\b'] # run on the normalised text
//!
//! [[category]]
//! id = "sexual_minors"          # [a-z0-9_]+
//! description = "..."           # optional
//! action = "block"              # block | rewrite | force_negative
//! replacement = ""              # rewrite only: what matched text becomes (default: removed)
//! negative = ["..."]            # force_negative only: appended to the negative prompt
//! terms = ["lolicon"]           # any of these, as a whole word/phrase, matches
//!
//! [[category.rule]]
//! id = "minor-and-sexual"       # unique within the category; audit id `<category>/<id>`
//! all_of = ["minor", "sexual"]  # matches when every named set matches somewhere in the prompt
//!
//! [[category.rule]]
//! id = "graphic-gore"
//! all_of = ["gore_intensifier", "gore"]
//! window = 3                    # optional: the matches must lie within 3 words (see below)
//!
//! [[category.rule]]
//! id = "ssn"
//! regex = '\b\d{3} \d{2} \d{4}\b'
//!
//! [[category.rule]]
//! id = "image-of-minor"
//! all_of = ["minor"]            # every one of these sets...
//! any_of = ["photo", "drawing"] # ...and at least one of these (either list may be alone)
//!
//! # Words the fuzzy matcher (crate::lexicon) never corrects, joins or splits.
//! [lexicon]
//! known_words = ["baked"]
//! ```
//!
//! A term ending in `*` is a prefix term (`ребен*`): it matches any word that starts with the
//! stem. Terms in CJK scripts match as substrings. The `flag` action reports a match without
//! changing anything.
//!
//! Normalised text is lower-case, with words separated by single spaces and punctuation gone
//! (see [`crate::normalize`]); write terms naturally (they are normalised the same way) and
//! regexes against that form.
//!
//! **Windows.** Without `window` an `all_of` rule matches when each set matches anywhere in the
//! prompt. With `window = N` (1 to [`MAX_WINDOW`]) it needs one match of each set such that the
//! last of them starts at most `N` words after the first of them ends: `1` means next to each
//! other (`extreme gore`), `2` allows one word between (`extreme, bloody gore`), and so on;
//! overlapping matches are at distance 0 and order does not matter (`gore, extreme` counts).
//! Words are the words of the plain normalised prompt ([`crate::normalize::Words`]), so
//! punctuation never counts and spaced-out letters count as one word.
//!
//! Merging: files load in order. A set or category whose name was seen before is **extended**:
//! terms, regexes, rules and negative terms are appended; `action`, `replacement` and
//! `description` replace the earlier value when given. A new category must have an `action`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::error::PolicyError;

/// The largest co-occurrence window, in words. The text encoder reads 77 tokens, about 50 to 60
/// words, so a larger window is "anywhere" in all but name: such a value is more likely a typo
/// than a policy, and leaving `window` out says "anywhere" plainly.
pub const MAX_WINDOW: u32 = 32;

/// What a category does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The job is refused before inference.
    Block,
    /// Matched text is replaced by the category's `replacement`.
    Rewrite,
    /// The category's `negative` terms are appended to the negative prompt.
    ForceNegative,
    /// Nothing changes; the match is reported (a score of 1.0 under the category's id, in the
    /// audit log with its rule ids) for review. For categories whose false positives would
    /// hurt ordinary users.
    Flag,
}

impl Action {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "block" => Some(Action::Block),
            "rewrite" => Some(Action::Rewrite),
            "force_negative" => Some(Action::ForceNegative),
            "flag" => Some(Action::Flag),
            _ => None,
        }
    }

    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Rewrite => "rewrite",
            Action::ForceNegative => "force_negative",
            Action::Flag => "flag",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    sets: BTreeMap<String, RawSet>,
    lexicon: Option<RawLexicon>,
    #[serde(default)]
    category: Vec<RawCategory>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLexicon {
    #[serde(default)]
    known_words: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSet {
    #[serde(default)]
    terms: Vec<Spanned<String>>,
    #[serde(default)]
    regex: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategory {
    id: Spanned<String>,
    description: Option<String>,
    action: Option<Spanned<String>>,
    replacement: Option<String>,
    #[serde(default)]
    negative: Vec<String>,
    #[serde(default)]
    terms: Vec<Spanned<String>>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    regex: Option<Spanned<String>>,
    all_of: Option<Vec<Spanned<String>>>,
    any_of: Option<Vec<Spanned<String>>>,
    // i64, not u32, so that 0, negative and huge values reach our validation and get an error
    // that names the rule, instead of a bare deserialisation error.
    window: Option<Spanned<i64>>,
}

/// Where something was defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub file: Arc<str>,
    pub line: usize,
}

/// A value with the place it came from.
#[derive(Debug, Clone)]
pub(crate) struct Located<T> {
    pub value: T,
    pub at: Location,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SetDef {
    pub terms: Vec<Located<String>>,
    pub regex: Vec<Located<String>>,
    pub at: Option<Location>,
}

#[derive(Debug, Clone)]
pub(crate) enum RuleKind {
    Regex(String),
    AllOf {
        sets: Vec<String>,
        /// At least one of these must match too (empty: no such condition).
        any: Vec<String>,
        /// Maximum distance in words between the sets' matches; `None`: anywhere.
        window: Option<u32>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct RuleDef {
    pub id: String,
    pub kind: RuleKind,
    pub at: Location,
}

#[derive(Debug, Clone)]
pub(crate) struct CategoryDef {
    pub id: String,
    pub description: Option<String>,
    pub action: Action,
    pub replacement: String,
    pub negative: Vec<String>,
    pub terms: Vec<Located<String>>,
    pub rules: Vec<RuleDef>,
    pub at: Location,
}

/// The merged content of all loaded files, not yet compiled.
#[derive(Debug, Clone, Default)]
pub(crate) struct PolicyDef {
    pub sets: BTreeMap<String, SetDef>,
    pub categories: Vec<CategoryDef>,
    /// Words the fuzzy matcher never changes (see [`crate::lexicon`]).
    pub known_words: Vec<String>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |head| head.matches('\n').count() + 1)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl PolicyDef {
    /// Parses one file and merges it into the definition.
    pub fn merge_source(&mut self, file: &str, text: &str) -> Result<(), PolicyError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let file: Arc<str> = Arc::from(file);
        let at = |span: std::ops::Range<usize>| Location {
            file: file.clone(),
            line: line_of(text, span.start),
        };
        let located = |s: Spanned<String>| {
            let at = at(s.span());
            Located {
                value: s.into_inner(),
                at,
            }
        };

        if let Some(lexicon) = raw.lexicon {
            self.known_words.extend(lexicon.known_words);
        }
        for (name, raw_set) in raw.sets {
            let first_at = raw_set
                .terms
                .first()
                .or(raw_set.regex.first())
                .map(|s| at(s.span()))
                .unwrap_or(Location {
                    file: file.clone(),
                    line: 1,
                });
            if !valid_name(&name) {
                return Err(PolicyError::Set {
                    file: file.to_string(),
                    line: first_at.line,
                    set: name,
                    message: "set names may only use a-z, 0-9, `_` and `-`".into(),
                });
            }
            let set = self.sets.entry(name).or_default();
            set.at.get_or_insert(first_at);
            set.terms.extend(raw_set.terms.into_iter().map(located));
            set.regex.extend(raw_set.regex.into_iter().map(located));
        }

        for raw_cat in raw.category {
            let cat_at = at(raw_cat.id.span());
            let id = raw_cat.id.into_inner();
            let err = |line: usize, message: String| PolicyError::Category {
                file: file.to_string(),
                line,
                category: id.clone(),
                message,
            };
            if !valid_name(&id) {
                return Err(err(
                    cat_at.line,
                    "category ids may only use a-z, 0-9, `_` and `-`".into(),
                ));
            }
            let action = match &raw_cat.action {
                None => None,
                Some(spanned) => {
                    let line = line_of(text, spanned.span().start);
                    Some(Action::parse(spanned.get_ref()).ok_or_else(|| {
                        err(
                            line,
                            format!(
                                "unknown action `{}` (expected `block`, `rewrite`, `force_negative` or `flag`)",
                                spanned.get_ref()
                            ),
                        )
                    })?)
                }
            };
            let mut rules = Vec::with_capacity(raw_cat.rule.len());
            for raw_rule in raw_cat.rule {
                let rule_at = at(raw_rule.id.span());
                let rule_id = raw_rule.id.into_inner();
                if !valid_name(&rule_id) {
                    return Err(err(
                        rule_at.line,
                        format!("rule id `{rule_id}` may only use a-z, 0-9, `_` and `-`"),
                    ));
                }
                let window = match raw_rule.window {
                    None => None,
                    Some(spanned) => {
                        let line = line_of(text, spanned.span().start);
                        let value = spanned.into_inner();
                        let window = u32::try_from(value)
                            .ok()
                            .filter(|w| (1..=MAX_WINDOW).contains(w))
                            .ok_or_else(|| {
                                err(
                                    line,
                                    format!(
                                        "rule `{rule_id}`: `window` must be 1 to {MAX_WINDOW} \
                                         words, got {value} (leave it out to match anywhere in \
                                         the prompt)"
                                    ),
                                )
                            })?;
                        Some((window, line))
                    }
                };
                let any: Vec<String> = raw_rule
                    .any_of
                    .unwrap_or_default()
                    .into_iter()
                    .map(Spanned::into_inner)
                    .collect();
                let kind = match (raw_rule.regex, raw_rule.all_of) {
                    (Some(_), _) if !any.is_empty() => {
                        return Err(err(
                            rule_at.line,
                            format!("rule `{rule_id}`: `any_of` goes with `all_of`, not `regex`"),
                        ));
                    }
                    (Some(_), None) if window.is_some() => {
                        let line = window.map_or(rule_at.line, |(_, line)| line);
                        return Err(err(
                            line,
                            format!(
                                "rule `{rule_id}`: `window` applies to `all_of` rules only \
                                 (a regex states its own distances)"
                            ),
                        ));
                    }
                    (Some(regex), None) => RuleKind::Regex(regex.into_inner()),
                    (None, Some(sets)) if window.is_some() && sets.len() < 2 => {
                        let line = window.map_or(rule_at.line, |(_, line)| line);
                        return Err(err(
                            line,
                            format!(
                                "rule `{rule_id}`: `window` needs at least two sets in `all_of`"
                            ),
                        ));
                    }
                    (None, all)
                        if window.is_none()
                            && all.as_ref().is_none_or(Vec::is_empty)
                            && !any.is_empty() =>
                    {
                        RuleKind::AllOf {
                            sets: Vec::new(),
                            any,
                            window: None,
                        }
                    }
                    (None, Some(sets)) if !sets.is_empty() => RuleKind::AllOf {
                        sets: sets.into_iter().map(Spanned::into_inner).collect(),
                        any,
                        window: window.map(|(w, _)| w),
                    },
                    _ => {
                        return Err(err(
                            rule_at.line,
                            format!(
                                "rule `{rule_id}` needs exactly one of `regex` or a non-empty `all_of`/`any_of`"
                            ),
                        ));
                    }
                };
                rules.push(RuleDef {
                    id: rule_id,
                    kind,
                    at: rule_at,
                });
            }
            let terms: Vec<Located<String>> = raw_cat.terms.into_iter().map(located).collect();

            match self.categories.iter_mut().find(|c| c.id == id) {
                Some(existing) => {
                    if let Some(action) = action {
                        existing.action = action;
                    }
                    if let Some(replacement) = raw_cat.replacement {
                        existing.replacement = replacement;
                    }
                    if raw_cat.description.is_some() {
                        existing.description = raw_cat.description;
                    }
                    existing.negative.extend(raw_cat.negative);
                    existing.terms.extend(terms);
                    existing.rules.extend(rules);
                }
                None => {
                    let action = action.ok_or_else(|| {
                        err(cat_at.line, "a new category needs an `action`".into())
                    })?;
                    self.categories.push(CategoryDef {
                        id: id.clone(),
                        description: raw_cat.description,
                        action,
                        replacement: raw_cat.replacement.unwrap_or_default(),
                        negative: raw_cat.negative,
                        terms,
                        rules,
                        at: cat_at,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(sources: &[(&str, &str)]) -> Result<PolicyDef, PolicyError> {
        let mut def = PolicyDef::default();
        for (name, text) in sources {
            def.merge_source(name, text)?;
        }
        Ok(def)
    }

    #[test]
    fn later_files_extend_categories_and_sets() {
        let def = merged(&[
            (
                "a.toml",
                r#"
[sets.s]
terms = ["one"]

[[category]]
id = "c"
action = "block"
terms = ["x"]
"#,
            ),
            (
                "b.toml",
                r#"
[sets.s]
terms = ["two"]

[[category]]
id = "c"
action = "force_negative"
negative = ["n"]
terms = ["y"]

[[category.rule]]
id = "r"
all_of = ["s"]
"#,
            ),
        ])
        .expect("valid");
        let c = &def.categories[0];
        assert_eq!(c.action, Action::ForceNegative);
        assert_eq!(c.terms.len(), 2);
        assert_eq!(c.terms[1].at.file.as_ref(), "b.toml");
        assert_eq!(c.rules.len(), 1);
        assert_eq!(def.sets["s"].terms.len(), 2);
    }

    #[test]
    fn unknown_action_names_file_line_and_category() {
        let err = merged(&[(
            "ops/x.toml",
            "\n[[category]]\nid = \"c1\"\naction = \"blok\"\n",
        )])
        .expect_err("bad action");
        assert_eq!(
            err.to_string(),
            "ops/x.toml:4: category `c1`: unknown action `blok` (expected `block`, `rewrite`, `force_negative` or `flag`)"
        );
    }

    #[test]
    fn new_category_without_action_is_refused() {
        let err =
            merged(&[("f", "[[category]]\nid = \"c\"\nterms = [\"x\"]\n")]).expect_err("no action");
        assert!(
            err.to_string()
                .starts_with("f:2: category `c`: a new category needs"),
            "{err}"
        );
    }

    #[test]
    fn rule_needs_exactly_one_matcher() {
        let text = "[[category]]\nid = \"c\"\naction = \"block\"\n[[category.rule]]\nid = \"r\"\n";
        let err = merged(&[("f", text)]).expect_err("empty rule");
        assert!(
            err.to_string()
                .contains("f:5: category `c`: rule `r` needs exactly one"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_toml_name_the_file_and_line() {
        let err = merged(&[("f.toml", "[[category]]\nid = \"c\"\nactoin = \"block\"\n")])
            .expect_err("unknown key");
        let text = err.to_string();
        assert!(
            text.starts_with("f.toml: ") && text.contains("line 3"),
            "{text}"
        );
        let err = merged(&[("g.toml", "[[category]\n")]).expect_err("bad toml");
        assert!(err.to_string().starts_with("g.toml: "), "{err}");
    }

    fn rule_with(body: &str) -> String {
        format!(
            "[sets.a]\nterms = [\"x\"]\n[sets.b]\nterms = [\"y\"]\n\n[[category]]\nid = \"c\"\n\
             action = \"block\"\n\n[[category.rule]]\nid = \"near\"\n{body}\n"
        )
    }

    #[test]
    fn window_is_read_per_rule() {
        let def = merged(&[("f.toml", &rule_with("all_of = [\"a\", \"b\"]\nwindow = 4"))])
            .expect("valid");
        assert!(matches!(
            &def.categories[0].rules[0].kind,
            RuleKind::AllOf { sets, window: Some(4), .. } if sets.len() == 2
        ));
        let def = merged(&[("f.toml", &rule_with("all_of = [\"a\", \"b\"]"))]).expect("valid");
        assert!(matches!(
            def.categories[0].rules[0].kind,
            RuleKind::AllOf { window: None, .. }
        ));
        for edge in [1, MAX_WINDOW] {
            let body = format!("all_of = [\"a\", \"b\"]\nwindow = {edge}");
            assert!(merged(&[("f.toml", &rule_with(&body))]).is_ok(), "{edge}");
        }
    }

    #[test]
    fn out_of_range_windows_name_file_line_category_and_rule() {
        for bad in ["0", "-3", "33", "1000", "4294967297"] {
            let body = format!("all_of = [\"a\", \"b\"]\nwindow = {bad}");
            let err = merged(&[("ops/local.toml", &rule_with(&body))]).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!(
                    "ops/local.toml:13: category `c`: rule `near`: `window` must be 1 to 32 \
                     words, got {bad} (leave it out to match anywhere in the prompt)"
                )
            );
        }
    }

    #[test]
    fn window_needs_an_all_of_rule_with_two_sets() {
        let err =
            merged(&[("f.toml", &rule_with("regex = 'x'\nwindow = 2"))]).expect_err("regex rule");
        assert_eq!(
            err.to_string(),
            "f.toml:13: category `c`: rule `near`: `window` applies to `all_of` rules only \
             (a regex states its own distances)"
        );
        let err =
            merged(&[("f.toml", &rule_with("all_of = [\"a\"]\nwindow = 2"))]).expect_err("one set");
        assert_eq!(
            err.to_string(),
            "f.toml:13: category `c`: rule `near`: `window` needs at least two sets in `all_of`"
        );
        let err = merged(&[(
            "f.toml",
            &rule_with("all_of = [\"a\", \"b\"]\nwindow = \"3\""),
        )])
        .expect_err("string");
        let text = err.to_string();
        assert!(
            text.starts_with("f.toml: ") && text.contains("line 13"),
            "{text}"
        );
    }

    #[test]
    fn invalid_names_are_refused() {
        let err = merged(&[("f", "[[category]]\nid = \"Bad Name\"\naction = \"block\"\n")])
            .expect_err("bad id");
        assert!(err.to_string().contains("category `Bad Name`"), "{err}");
    }
}
