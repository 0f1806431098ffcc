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
