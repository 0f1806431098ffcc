//! Scores the built-in lists on the labelled corpus (`tests/corpus/`, `tests/ordinary_prompts.txt`)
//! and, separately, on the held-out set (`tests/corpus/heldout.tsv`), and prints recall and false-positive rates per category, language and evasion kind, as
//! Markdown; `--failures` also lists every missed or falsely matched prompt.
//!
//! ```sh
//! cargo run --release -p inpaint-prompt-policy --example corpus_table [-- --failures]
//! ```
#![allow(clippy::print_stdout)]

use inpaint_prompt_policy::PolicyBuilder;
use inpaint_prompt_policy::eval::{builtin_corpus, evaluate, heldout_corpus};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let policy = PolicyBuilder::with_defaults()?.build()?;
    let corpus = builtin_corpus()?;
    let report = evaluate(&policy, &corpus);
    println!(
        "{} prompts: {} violations, {} evasions, {} ordinary\n",
        corpus.len(),
        report.violations.total,
        report.evasions.total,
        report.false_positives.total
    );
    print!("{}", report.table());
    let mut exact = PolicyBuilder::with_defaults()?;
    let exact = evaluate(&exact.fuzzy(false).build()?, &corpus);
    println!(
        "\nWithout the fuzzy matcher (fixed form off): violations {:.1}%, evasions {:.1}%, \
         false positives {:.1}% ({}/{})",
        100.0 * exact.violations.rate(),
        100.0 * exact.evasions.rate(),
        100.0 * exact.false_positives.rate(),
        exact.false_positives.hits,
        exact.false_positives.total
    );
    let heldout = heldout_corpus()?;
    let held = evaluate(&policy, &heldout);
    println!(
        "\nHeld-out set (written after tuning, never tuned against): {} violations, {} evasions, {} ordinary\n",
        held.violations.total, held.evasions.total, held.false_positives.total
    );
    print!("{}", held.table());
    if std::env::args().any(|a| a == "--failures") {
        println!();
        for failure in report.failures.iter().chain(&held.failures) {
            println!("{failure}");
        }
    }
    Ok(())
}
