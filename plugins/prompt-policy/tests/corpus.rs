//! The labelled evaluation corpus (`tests/corpus/`, `tests/ordinary_prompts.txt`) against the
//! built-in lists: the goal rates of issue #12 and the corpus's own coverage. The table behind
//! these numbers: `cargo run --release -p inpaint-prompt-policy --example corpus_table`.

use std::collections::BTreeSet;

use inpaint_prompt_policy::PolicyBuilder;
use inpaint_prompt_policy::defaults::LANGUAGES;
use inpaint_prompt_policy::eval::{Labelled, builtin_corpus, evaluate};

fn corpus() -> Vec<Labelled> {
    builtin_corpus().expect("corpus files parse")
}

#[test]
fn corpus_covers_every_category_language_and_evasion() {
    let corpus = corpus();
    assert!(corpus.len() >= 1500, "{} prompts", corpus.len());
    let ordinary = corpus.iter().filter(|r| r.is_ordinary()).count();
    assert!(ordinary >= 700, "{ordinary} ordinary prompts");
    let policy = PolicyBuilder::with_defaults()
        .and_then(|b| b.build())
        .expect("built-in lists compile");
    let categories: BTreeSet<&str> = policy.categories().map(|(id, _)| id).collect();
    let labelled: BTreeSet<&str> = corpus
        .iter()
        .filter(|r| !r.is_ordinary())
        .map(|r| r.category.as_str())
        .collect();
    assert_eq!(
        labelled, categories,
        "every category has labelled violations"
    );
    for category in &categories {
        for language in LANGUAGES {
            let n = corpus
                .iter()
                .filter(|r| r.category == *category && r.language == language && !r.is_evasion())
                .count();
            assert!(n >= 2, "{category}/{language}: {n} plain violations");
        }
    }
    for language in LANGUAGES {
        let n = corpus
            .iter()
            .filter(|r| r.is_ordinary() && r.language == language)
            .count();
        assert!(n >= 30, "{language}: {n} ordinary prompts");
    }
    let kinds: BTreeSet<&str> = corpus
        .iter()
        .filter(|r| r.is_evasion())
        .map(|r| r.kind.as_str())
        .collect();
    for kind in [
        "synonym",
        "paraphrase",
        "slang",
        "mixed_script",
        "misspelling",
        "leet_misspelling",
        "phonetic",
        "split_word",
        "camel_case",
        "snake_kebab",
        "spaced_letters",
        "spaced_chars",
        "homoglyph",
    ] {
        assert!(kinds.contains(kind), "no evasions of kind {kind}");
    }
}

#[test]
fn goal_rates_hold_on_the_corpus() {
    let policy = PolicyBuilder::with_defaults()
        .and_then(|b| b.build())
        .expect("built-in lists compile");
    let report = evaluate(&policy, &corpus());
    let summary = format!("{}\n{}", report.table(), report.failures.join("\n"));
    assert!(
        report.violations.rate() >= 0.90,
        "recall on violations below 90 %:\n{summary}"
    );
    assert!(
        report.evasions.rate() >= 0.80,
        "recall on evasions below 80 %:\n{summary}"
    );
    assert!(
        report.false_positives.rate() <= 0.01,
        "false positives above 1 %:\n{summary}"
    );
    // No category and no language may hide behind the average.
    for (category, (violations, evasions)) in &report.by_category {
        assert!(
            violations.rate() >= 0.85 && evasions.rate() >= 0.70,
            "{category}: {violations:?} {evasions:?}\n{summary}"
        );
    }
    for (language, (violations, evasions, false_positives)) in &report.by_language {
        assert!(
            violations.rate() >= 0.85 && evasions.rate() >= 0.70,
            "{language}: {violations:?} {evasions:?}\n{summary}"
        );
        assert!(
            false_positives.rate() <= 0.02,
            "{language}: {false_positives:?}\n{summary}"
        );
    }
}
