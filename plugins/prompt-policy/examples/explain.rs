//! Prints, for each prompt given (arguments, or stdin one per line), its normalised forms and
//! the categories and rules it matches with the built-in lists: the tool for finding out why a
//! prompt is blocked or passes.
//!
//! ```sh
//! cargo run -p inpaint-prompt-policy --example explain -- "a na ked chyld"
//! ```
#![allow(clippy::print_stdout)]

use std::io::BufRead;

use inpaint_prompt_policy::PolicyBuilder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let policy = PolicyBuilder::with_defaults()?.build()?;
    let mut prompts: Vec<String> = std::env::args().skip(1).collect();
    if prompts.is_empty() {
        prompts = std::io::stdin().lock().lines().collect::<Result<_, _>>()?;
    }
    for prompt in &prompts {
        println!("{prompt}");
        for form in policy.forms(prompt).forms() {
            println!("  {:?}: {}", form.kind(), form.text());
        }
        for m in policy.evaluate(prompt).matches {
            println!(
                "  -> {} ({}): {}",
                m.category,
                m.action.as_str(),
                m.rules.join(", ")
            );
        }
    }
    Ok(())
}
