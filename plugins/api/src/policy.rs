//! The chain-policy check: a chain must contain a safety checker and a watermark stage.
//!
//! OpenRAIL-M paragraph 5 makes the operator responsible for keeping the model's uses within
//! Attachment A. A chain without an output safety checker or an invisible watermark is a
//! configuration mistake far more often than a decision, so the worker refuses it unless the
//! operator sets an explicit override, and then warns on every start.
//!
//! The check works on stage *kind names* (the `type` tag of each stage's configuration), so it
//! needs no knowledge of the configuration enum: `inpaint-stages` calls it with
//! `StageConfig::kind_name()` of each configured stage.

use crate::error::ChainPolicyError;

/// Stage kinds every production chain must contain.
pub const REQUIRED_STAGE_KINDS: [&str; 2] = ["safety-checker", "watermark"];

/// Checks that every kind in [`REQUIRED_STAGE_KINDS`] occurs in `kinds`.
///
/// Returns the warnings to log (at warn, on every start): none when the chain is complete, one
/// per missing kind when `override_` is set. Errors when kinds are missing and `override_` is
/// not set.
pub fn check_required_kinds<'a, I>(
    kinds: I,
    override_: bool,
) -> Result<Vec<String>, ChainPolicyError>
where
    I: IntoIterator<Item = &'a str>,
{
    let present: Vec<&str> = kinds.into_iter().collect();
    let missing: Vec<String> = REQUIRED_STAGE_KINDS
        .iter()
        .filter(|required| !present.contains(required))
        .map(|required| (*required).to_owned())
        .collect();
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

    #[test]
    fn complete_chain_passes_without_warnings() {
        let kinds = ["prompt-policy", "safety-checker", "watermark", "provenance"];
        assert_eq!(check_required_kinds(kinds, false), Ok(Vec::new()));
        assert_eq!(check_required_kinds(kinds, true), Ok(Vec::new()));
    }

    #[test]
    fn missing_stages_are_refused_without_override() {
        let err = check_required_kinds(["prompt-policy", "watermark"], false);
        assert_eq!(
            err,
            Err(ChainPolicyError::MissingRequired {
                missing: vec!["safety-checker".into()]
            })
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
        let warnings = check_required_kinds(["prompt-policy"], true).expect("override");
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("safety-checker"));
        assert!(warnings[1].contains("watermark"));
    }
}
