//! inpaint-prompt-policy: the prompt-policy stage, the first line of the worker's
//! OpenRAIL-M use-restriction enforcement (paragraph 5, Attachment A).
//!
//! Before inference the stage normalises the prompt (case, Unicode compatibility forms,
//! diacritics, homoglyphs, spaced-out letters, CamelCase, leetspeak), repairs split, joined and
//! misspelled words against the lists' vocabulary, and matches it against policy categories
//! whose rules name concepts (synonym groups with terms in ten languages); each category blocks
//! the job, rewrites the matched text, appends terms to the negative prompt or flags it. Lists are TOML files: the built-in ones ship in `ops/policy/` and are
//! embedded, operators extend or replace them through [`PromptPolicyConfig`].
//!
//! Lexical rules catch intent that is spelled out; they do not understand meaning. The output
//! safety checker stays required (see `inpaint_plugin_api::policy`).
//!
//! Layout:
//! - [`normalize`]: text normalisation shared by prompts and list terms.
//! - [`file`](mod@file): the policy file format and merging of several files.
//! - [`lexicon`]: the vocabulary and the fixed form (joins, splits, misspellings).
//! - [`policy`]: compilation (one Aho-Corasick automaton, one `RegexSet`) and evaluation.
//! - [`stage`]: [`PromptPolicyConfig`] and the [`PromptPolicy`] stage.
//! - [`defaults`]: the embedded built-in lists.
//! - [`error`]: the [`PolicyError`] type.
//! - [`eval`]: scoring against the labelled corpus (recall, false positives).

pub mod defaults;
pub mod error;
pub mod eval;
pub mod file;
pub mod lexicon;
pub mod normalize;
pub mod policy;
pub mod stage;

pub use error::PolicyError;
pub use file::Action;
pub use policy::{CategoryMatch, Evaluation, Policy, PolicyBuilder};
pub use stage::{PromptPolicy, PromptPolicyConfig};
