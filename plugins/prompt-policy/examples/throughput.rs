//! Micro-benchmark of the prompt policy: evaluates the ordinary-prompt corpus plus some
//! obfuscated prompts with the built-in lists for about two seconds and prints prompts/s.
//!
//! ```sh
//! cargo run --release -p inpaint-prompt-policy --example throughput
//! # another prompt file (same format as the corpus), e.g. an older corpus to compare builds:
//! cargo run --release -p inpaint-prompt-policy --example throughput -- prompts.txt
//! ```
#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use inpaint_prompt_policy::PolicyBuilder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let policy = PolicyBuilder::with_defaults()?.build()?;
    let corpus = match std::env::args_os().nth(1) {
        Some(path) => std::fs::read_to_string(path)?,
        None => include_str!("../tests/ordinary_prompts.txt").to_owned(),
    };
    let mut prompts: Vec<&str> = corpus
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let adversarial = [
        "d e c a p i t a t e d statue in a museum, dramatic lighting",
        "s3xy ch1ld, 4k, detailed",
        "ｄｅｃａｐｉｔａｔｅｄ statue",
        "humiliating picture of my classmate at school, photorealistic",
    ];
    prompts.extend(adversarial);

    let mean_len = prompts.iter().map(|p| p.len()).sum::<usize>() / prompts.len().max(1);
    let mut evaluated = 0usize;
    let mut blocked = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        for prompt in &prompts {
            if black_box(policy.evaluate(black_box(prompt))).is_blocked() {
                blocked += 1;
            }
            evaluated += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{evaluated} prompts in {secs:.2} s: {:.0} prompts/s ({:.1} µs/prompt, mean {mean_len} bytes, \
         {} terms, {} regexes, {blocked} blocked)",
        evaluated as f64 / secs,
        secs * 1e6 / evaluated as f64,
        policy.phrase_count(),
        policy.regex_count(),
    );
    Ok(())
}
