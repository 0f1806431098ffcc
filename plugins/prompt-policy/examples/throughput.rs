//! Micro-benchmark of the prompt policy: evaluates the ordinary-prompt corpus plus some
//! obfuscated prompts with the built-in lists for about two seconds and prints prompts per
//! wall-clock second and per CPU-second of this process (Linux: from /proc/self/stat, so a
//! busy machine does not lower the figure).
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
    let cpu_start = cpu_seconds();
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
    let cpu = cpu_seconds().zip(cpu_start).map(|(end, begin)| end - begin);
    if let Some(cpu) = cpu.filter(|c| *c > 0.0) {
        println!(
            "{:.0} prompts per CPU-second ({cpu:.2} CPU-s)",
            evaluated as f64 / cpu
        );
    }
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

/// User + system CPU time of this process, in seconds (Linux only; `None` elsewhere).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Clock ticks per second: 100 on every Linux configuration in practice.
    Some((utime + stime) / 100.0)
}
