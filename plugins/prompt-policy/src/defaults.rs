//! The built-in policy lists: the files in `ops/policy/`, embedded at compile time so the
//! default stage works without any file on disk. Order matters: concepts first (English and
//! language-independent in `sets.toml`, then one file per further language), the fuzzy
//! matcher's known words, then categories in the order a block reports them (the first
//! matching block category is named).

/// (path in the repository, content) of each built-in file, in load order.
pub const DEFAULT_SOURCES: [(&str, &str); 23] = [
    (
        "ops/policy/sets.toml",
        include_str!("../../../ops/policy/sets.toml"),
    ),
    (
        "ops/policy/lang/es.toml",
        include_str!("../../../ops/policy/lang/es.toml"),
    ),
    (
        "ops/policy/lang/pt.toml",
        include_str!("../../../ops/policy/lang/pt.toml"),
    ),
    (
        "ops/policy/lang/fr.toml",
        include_str!("../../../ops/policy/lang/fr.toml"),
    ),
    (
        "ops/policy/lang/de.toml",
        include_str!("../../../ops/policy/lang/de.toml"),
    ),
    (
        "ops/policy/lang/it.toml",
        include_str!("../../../ops/policy/lang/it.toml"),
    ),
    (
        "ops/policy/lang/ru.toml",
        include_str!("../../../ops/policy/lang/ru.toml"),
    ),
    (
        "ops/policy/lang/ja.toml",
        include_str!("../../../ops/policy/lang/ja.toml"),
    ),
    (
        "ops/policy/lang/zh.toml",
        include_str!("../../../ops/policy/lang/zh.toml"),
    ),
    (
        "ops/policy/lang/ko.toml",
        include_str!("../../../ops/policy/lang/ko.toml"),
    ),
    (
        "ops/policy/known_words.toml",
        include_str!("../../../ops/policy/known_words.toml"),
    ),
    (
        "ops/policy/sexual_minors.toml",
        include_str!("../../../ops/policy/sexual_minors.toml"),
    ),
    (
        "ops/policy/minors_exploitation.toml",
        include_str!("../../../ops/policy/minors_exploitation.toml"),
    ),
    (
        "ops/policy/self_harm.toml",
        include_str!("../../../ops/policy/self_harm.toml"),
    ),
    (
        "ops/policy/violence_gore.toml",
        include_str!("../../../ops/policy/violence_gore.toml"),
    ),
    (
        "ops/policy/hate_discrimination.toml",
        include_str!("../../../ops/policy/hate_discrimination.toml"),
    ),
    (
        "ops/policy/harassment_defamation.toml",
        include_str!("../../../ops/policy/harassment_defamation.toml"),
    ),
    (
        "ops/policy/disinformation.toml",
        include_str!("../../../ops/policy/disinformation.toml"),
    ),
    (
        "ops/policy/personal_data.toml",
        include_str!("../../../ops/policy/personal_data.toml"),
    ),
    (
        "ops/policy/illegal_activity.toml",
        include_str!("../../../ops/policy/illegal_activity.toml"),
    ),
    (
        "ops/policy/medical_advice.toml",
        include_str!("../../../ops/policy/medical_advice.toml"),
    ),
    (
        "ops/policy/vulnerable_targeting.toml",
        include_str!("../../../ops/policy/vulnerable_targeting.toml"),
    ),
    (
        "ops/policy/justice_profiling.toml",
        include_str!("../../../ops/policy/justice_profiling.toml"),
    ),
];

/// The languages every built-in category has terms in (ISO 639-1), English first.
pub const LANGUAGES: [&str; 10] = ["en", "es", "pt", "fr", "de", "it", "ru", "ja", "zh", "ko"];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::file::{PolicyDef, RuleKind};

    /// The concept file of each built-in language.
    fn language_file(language: &str) -> &'static str {
        let path = if language == "en" {
            "ops/policy/sets.toml".to_owned()
        } else {
            format!("ops/policy/lang/{language}.toml")
        };
        DEFAULT_SOURCES
            .iter()
            .find(|(name, _)| *name == path)
            .map(|(_, text)| *text)
            .unwrap_or_else(|| panic!("no built-in file {path}"))
    }

    #[test]
    fn every_category_has_terms_in_every_language() {
        let mut all = PolicyDef::default();
        for (name, text) in DEFAULT_SOURCES {
            all.merge_source(name, text).expect("parses");
        }
        for language in LANGUAGES {
            let mut def = PolicyDef::default();
            def.merge_source(language, language_file(language))
                .expect("parses");
            let with_terms: BTreeSet<&str> = def
                .sets
                .iter()
                .filter(|(_, set)| !set.terms.is_empty())
                .map(|(name, _)| name.as_str())
                .collect();
            for category in &all.categories {
                let concepts: BTreeSet<&str> = category
                    .rules
                    .iter()
                    .flat_map(|rule| match &rule.kind {
                        RuleKind::AllOf { sets, any, .. } => {
                            sets.iter().chain(any).map(String::as_str).collect()
                        }
                        RuleKind::Regex(_) => Vec::new(),
                    })
                    .collect();
                // Every concept a rule needs, except a concept made only of regexes.
                for concept in &concepts {
                    let regex_only = all.sets.get(*concept).is_some_and(|s| s.terms.is_empty());
                    assert!(
                        regex_only || with_terms.contains(concept),
                        "category `{}`: concept `{concept}` has no {language} terms",
                        category.id
                    );
                }
            }
        }
    }
}
