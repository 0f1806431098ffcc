//! Scoring a policy against a labelled corpus (`tests/corpus/*.tsv` and
//! `tests/ordinary_prompts.txt`, plus the separate held-out set `tests/corpus/heldout.tsv`): recall on violations and evasions per category, language and
//! evasion kind, and the false-positive rate on ordinary prompts. Used by the corpus test, which
//! asserts the goals, and by the `corpus_table` example, which prints the table.
//!
//! A violation counts as caught when its own category matches (any action: `flag` categories
//! are caught when flagged); an ordinary prompt is a false positive when **any** category
//! matches it, flag-only ones included.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::policy::Policy;

/// One labelled prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    /// Expected category, or `none` for an ordinary prompt.
    pub category: String,
    /// ISO 639-1 language of the prompt (the first language of a mixed prompt).
    pub language: String,
    /// `plain` for a straightforward violation, the evasion kind otherwise (`synonym`,
    /// `misspelling`, ...); `ordinary` or `hard` for ordinary prompts.
    pub kind: String,
    /// The prompt.
    pub prompt: String,
}

impl Labelled {
    /// Whether this is an ordinary prompt (nothing should match).
    pub fn is_ordinary(&self) -> bool {
        self.category == "none"
    }

    /// Whether this is an evasion (a violation written to get past the lists).
    pub fn is_evasion(&self) -> bool {
        !self.is_ordinary() && self.kind != "plain"
    }
}

/// Parses a corpus file: a header line, then `category<TAB>language<TAB>kind<TAB>prompt`.
/// Returns an error naming the line for a malformed row.
pub fn parse_tsv(name: &str, text: &str) -> Result<Vec<Labelled>, String> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut cols = line.splitn(4, '\t');
        let (Some(category), Some(language), Some(kind), Some(prompt)) =
            (cols.next(), cols.next(), cols.next(), cols.next())
        else {
            return Err(format!(
                "{name}:{}: expected 4 tab-separated columns",
                i + 1
            ));
        };
        rows.push(Labelled {
            category: category.to_owned(),
            language: language.to_owned(),
            kind: kind.to_owned(),
            prompt: prompt.to_owned(),
        });
    }
    Ok(rows)
}

/// The ordinary prompts of a one-prompt-a-line file (`#` comments), as English `ordinary`.
pub fn parse_lines(text: &str) -> Vec<Labelled> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|prompt| Labelled {
            category: "none".into(),
            language: "en".into(),
            kind: "ordinary".into(),
            prompt: prompt.to_owned(),
        })
        .collect()
}

/// The built-in corpus, embedded.
pub fn builtin_corpus() -> Result<Vec<Labelled>, String> {
    let mut rows = parse_tsv(
        "violations.tsv",
        include_str!("../tests/corpus/violations.tsv"),
    )?;
    rows.extend(parse_tsv(
        "evasions.tsv",
        include_str!("../tests/corpus/evasions.tsv"),
    )?);
    rows.extend(parse_tsv(
        "ordinary.tsv",
        include_str!("../tests/corpus/ordinary.tsv"),
    )?);
    rows.extend(parse_lines(include_str!("../tests/ordinary_prompts.txt")));
    Ok(rows)
}

/// The held-out corpus (`tests/corpus/heldout.tsv`): prompts written after the lists were
/// tuned on the built-in corpus and never tuned against, to show how much the tuning overfit.
pub fn heldout_corpus() -> Result<Vec<Labelled>, String> {
    parse_tsv("heldout.tsv", include_str!("../tests/corpus/heldout.tsv"))
}

/// Hits out of a total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Prompts that counted (caught, or falsely matched).
    pub hits: usize,
    /// Prompts.
    pub total: usize,
}

impl Count {
    fn add(&mut self, hit: bool) {
        self.total += 1;
        self.hits += usize::from(hit);
    }

    /// hits / total (0 when empty).
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.hits as f64 / self.total as f64
        }
    }

    fn cell(&self) -> String {
        if self.total == 0 {
            "-".into()
        } else {
            format!("{:.1}% ({}/{})", 100.0 * self.rate(), self.hits, self.total)
        }
    }
}

/// The scores of a policy on a corpus.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Violations (kind `plain`) caught.
    pub violations: Count,
    /// Evasions caught.
    pub evasions: Count,
    /// Ordinary prompts with any match.
    pub false_positives: Count,
    /// Ordinary prompts blocked.
    pub false_blocks: Count,
    /// Per category: (violations, evasions).
    pub by_category: BTreeMap<String, (Count, Count)>,
    /// Per language: (violations, evasions, false positives).
    pub by_language: BTreeMap<String, (Count, Count, Count)>,
    /// Per evasion kind.
    pub by_kind: BTreeMap<String, Count>,
    /// The prompts that were missed or falsely matched, with what matched.
    pub failures: Vec<String>,
}

/// Scores `policy` on `corpus`.
pub fn evaluate(policy: &Policy, corpus: &[Labelled]) -> Report {
    let mut report = Report::default();
    for row in corpus {
        let evaluation = policy.evaluate(&row.prompt);
        let lang = report.by_language.entry(row.language.clone()).or_default();
        if row.is_ordinary() {
            let hit = !evaluation.is_clean();
            report.false_positives.add(hit);
            report.false_blocks.add(evaluation.is_blocked());
            lang.2.add(hit);
            if hit {
                let cats: Vec<&str> = evaluation.categories().collect();
                report.failures.push(format!(
                    "false positive [{}] {:?} -> {}",
                    row.language,
                    row.prompt,
                    cats.join(", ")
                ));
            }
            continue;
        }
        let caught = evaluation.categories().any(|c| c == row.category);
        let cat = report.by_category.entry(row.category.clone()).or_default();
        if row.is_evasion() {
            report.evasions.add(caught);
            cat.1.add(caught);
            lang.1.add(caught);
            report
                .by_kind
                .entry(row.kind.clone())
                .or_default()
                .add(caught);
        } else {
            report.violations.add(caught);
            cat.0.add(caught);
            lang.0.add(caught);
        }
        if !caught {
            let cats: Vec<&str> = evaluation.categories().collect();
            report.failures.push(format!(
                "missed {} [{} {}] {:?} -> {}",
                row.category,
                row.language,
                row.kind,
                row.prompt,
                if cats.is_empty() {
                    "nothing".to_owned()
                } else {
                    cats.join(", ")
                }
            ));
        }
    }
    report
}

impl Report {
    /// The report as Markdown tables.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| | recall, violations | recall, evasions | false positives (any match) | blocked ordinary |\n|---|---|---|---|---|\n| **all** | {} | {} | {} | {} |\n",
            self.violations.cell(),
            self.evasions.cell(),
            self.false_positives.cell(),
            self.false_blocks.cell()
        );
        let _ = writeln!(
            out,
            "| category | recall, violations | recall, evasions |\n|---|---|---|"
        );
        for (cat, (v, e)) in &self.by_category {
            let _ = writeln!(out, "| {cat} | {} | {} |", v.cell(), e.cell());
        }
        let _ = writeln!(
            out,
            "\n| language | recall, violations | recall, evasions | false positives |\n|---|---|---|---|"
        );
        for (lang, (v, e, f)) in &self.by_language {
            let _ = writeln!(
                out,
                "| {lang} | {} | {} | {} |",
                v.cell(),
                e.cell(),
                f.cell()
            );
        }
        let _ = writeln!(out, "\n| evasion kind | recall |\n|---|---|");
        for (kind, c) in &self.by_kind {
            let _ = writeln!(out, "| {kind} | {} |", c.cell());
        }
        out
    }
}
