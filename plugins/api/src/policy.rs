//! The chain-policy check: a chain must contain a safety checker and a watermark stage.
//!
//! OpenRAIL-M paragraph 5 makes the operator responsible for keeping the model's uses within
//! Attachment A. A chain without an output safety checker or an invisible watermark is a
//! configuration mistake far more often than a decision, so the worker refuses it unless the
//! operator sets an explicit override, and then warns on every start.
//!
//! The check works on stage kinds ([`StageKind`], the `type` tag of each stage's
//! configuration), so it needs no knowledge of the configuration enum: `inpaint-stages` calls
//! it with `StageConfig::kind()` of each configured stage.

use crate::error::ChainPolicyError;
use crate::report::StageKind;

/// Stage kinds every production chain must contain.
pub const REQUIRED_STAGE_KINDS: [StageKind; 2] = [StageKind::SafetyChecker, StageKind::Watermark];

/// The kinds of [`REQUIRED_STAGE_KINDS`] that `kinds` lacks, in that order.
pub fn missing_required_kinds<I>(kinds: I) -> Vec<StageKind>
where
    I: IntoIterator<Item = StageKind>,
{
    let present: Vec<StageKind> = kinds.into_iter().collect();
    REQUIRED_STAGE_KINDS
        .into_iter()
        .filter(|required| !present.contains(required))
        .collect()
}

/// Checks that every kind in [`REQUIRED_STAGE_KINDS`] occurs in `kinds`.
///
/// Returns the warnings to log (at warn, on every start): none when the chain is complete, one
/// per missing kind when `override_` is set. Errors when kinds are missing and `override_` is
/// not set.
pub fn check_required_kinds<I>(kinds: I, override_: bool) -> Result<Vec<String>, ChainPolicyError>
where
    I: IntoIterator<Item = StageKind>,
{
    let missing = missing_required_kinds(kinds);
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    if !override_ {
        return Err(ChainPolicyError::MissingRequired { missing });
    }
    Ok(missing
        .iter()
        .map(|kind| {
            format!(
                "plugin chain runs WITHOUT a `{kind}` stage because the override is set; \
                 outputs are not covered by it (OpenRAIL-M paragraph 5 / Attachment A)"
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use StageKind::{PromptPolicy, Provenance, SafetyChecker, Watermark};

    #[test]
    fn complete_chain_passes_without_warnings() {
        let kinds = [PromptPolicy, SafetyChecker, Watermark, Provenance];
        assert_eq!(check_required_kinds(kinds, false), Ok(Vec::new()));
        assert_eq!(check_required_kinds(kinds, true), Ok(Vec::new()));
    }

    #[test]
    fn missing_stages_are_refused_without_override() {
        let err = check_required_kinds([PromptPolicy, Watermark], false);
        assert_eq!(
            err,
            Err(ChainPolicyError::MissingRequired {
                missing: vec![SafetyChecker]
            })
        );
        assert_eq!(
            missing_required_kinds([Provenance]),
            vec![SafetyChecker, Watermark]
        );
        let err = check_required_kinds([], false).expect_err("empty chain must be refused");
        let text = err.to_string();
        assert!(
            text.contains("safety-checker") && text.contains("watermark"),
            "{text}"
        );
    }

    #[test]
    fn override_turns_each_missing_stage_into_a_warning() {
        let warnings = check_required_kinds([PromptPolicy], true).expect("override");
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("safety-checker"));
        assert!(warnings[1].contains("watermark"));
    }
}
