//! The built-in policy lists: the files in `ops/policy/`, embedded at compile time so the
//! default stage works without any file on disk. Order matters: sets first, then categories in
//! the order a block reports them (the first matching block category is named).

/// (path in the repository, content) of each built-in file, in load order.
pub const DEFAULT_SOURCES: [(&str, &str); 6] = [
    (
        "ops/policy/sets.toml",
        include_str!("../../../ops/policy/sets.toml"),
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
        "ops/policy/harassment_defamation.toml",
        include_str!("../../../ops/policy/harassment_defamation.toml"),
    ),
    (
        "ops/policy/personal_data.toml",
        include_str!("../../../ops/policy/personal_data.toml"),
    ),
    (
        "ops/policy/violence_gore.toml",
        include_str!("../../../ops/policy/violence_gore.toml"),
    ),
];
