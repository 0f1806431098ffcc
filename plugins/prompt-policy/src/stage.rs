//! [`PromptPolicyConfig`] (plain serde data) and [`PromptPolicy`], the running stage.

use std::path::PathBuf;

use inpaint_plugin_api::{JobContext, Stage, StageError, Verdict};
use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::policy::{Policy, PolicyBuilder};

/// Configuration of the prompt-policy stage.
///
/// ```toml
/// [[plugins]]
/// type = "prompt-policy"
/// load_defaults = true                         # built-in lists from ops/policy/ (embedded)
/// files = ["/etc/inpaint/policy/local.toml"]   # loaded after them, extending or adding
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptPolicyConfig {
    /// Load the built-in lists (the files of `ops/policy/`, embedded in the binary). Set to
    /// `false` to **replace** them: only `files` are loaded then.
    pub load_defaults: bool,
    /// Policy files loaded after the built-in lists, in order, to **extend** them: categories
    /// and sets with a known name gain terms and rules, new names add categories and sets.
    /// Relative paths are resolved against the worker's working directory.
    pub files: Vec<PathBuf>,
}

impl Default for PromptPolicyConfig {
    fn default() -> Self {
        Self {
            load_defaults: true,
            files: Vec::new(),
        }
    }
}

impl PromptPolicyConfig {
    /// Loads and compiles the configured lists.
    pub fn build(&self) -> Result<PromptPolicy, PolicyError> {
        let mut builder = if self.load_defaults {
            PolicyBuilder::with_defaults()?
        } else {
            PolicyBuilder::new()
        };
        for file in &self.files {
            builder.add_file(file)?;
        }
        let policy = builder.build()?;
        tracing::info!(
            categories = policy.categories().count(),
            terms = policy.phrase_count(),
            regexes = policy.regex_count(),
            defaults = self.load_defaults,
            files = self.files.len(),
            "prompt policy loaded"
        );
        Ok(PromptPolicy { policy })
    }
}

/// The prompt-policy stage: evaluates the prompt before inference and blocks, rewrites it or
/// appends to the negative prompt (see [`Policy::verdict`]). It never looks at output images.
#[derive(Debug, Clone)]
pub struct PromptPolicy {
    policy: Policy,
}

impl PromptPolicy {
    /// The stage's name in logs and audit entries.
    pub const NAME: &'static str = "prompt-policy";

    /// A stage around an already compiled policy.
    pub fn new(policy: Policy) -> Self {
        Self { policy }
    }

    /// The compiled policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

impl Stage for PromptPolicy {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn before_inference(&self, ctx: &JobContext) -> Result<Verdict, StageError> {
        Ok(self.policy.verdict(&ctx.prompt))
    }
}

#[cfg(test)]
mod tests {
    use inpaint_plugin_api::Chain;

    use super::*;

    #[test]
    fn default_config_loads_the_builtin_lists() {
        let config = PromptPolicyConfig::default();
        let stage = config.build().expect("built-in lists compile");
        let ids: Vec<&str> = stage.policy().categories().map(|(id, _)| id).collect();
        for expected in [
            "sexual_minors",
            "minors_exploitation",
            "harassment_defamation",
            "personal_data",
            "violence_gore",
        ] {
            assert!(ids.contains(&expected), "missing {expected} in {ids:?}");
        }
    }

    #[test]
    fn config_is_strict_serde_data() {
        let config: PromptPolicyConfig =
            serde_json::from_str(r#"{"files": ["a.toml"]}"#).expect("json");
        assert!(config.load_defaults);
        assert_eq!(config.files, vec![PathBuf::from("a.toml")]);
        assert!(serde_json::from_str::<PromptPolicyConfig>(r#"{"load_default": false}"#).is_err());
    }

    #[test]
    fn replacing_defaults_without_files_is_an_error() {
        let config = PromptPolicyConfig {
            load_defaults: false,
            files: Vec::new(),
        };
        assert!(matches!(config.build(), Err(PolicyError::Empty)));
    }

    #[test]
    fn missing_file_is_named() {
        let config = PromptPolicyConfig {
            load_defaults: true,
            files: vec![PathBuf::from("/nonexistent/policy.toml")],
        };
        let err = config.build().expect_err("missing file");
        assert!(
            err.to_string()
                .starts_with("/nonexistent/policy.toml: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn stage_blocks_inside_a_chain() {
        let stage = PromptPolicyConfig::default().build().expect("build");
        let chain = Chain::new(vec![Box::new(stage)]);
        let ctx = JobContext::new(uuid::Uuid::nil(), "a decapitated statue");
        let outcome = chain.before_inference(ctx).expect("runs");
        let block = outcome.block.expect("blocked");
        assert_eq!(block.stage, "prompt-policy");
        assert_eq!(block.block.category, "violence_gore");
        assert_eq!(
            outcome.audit[0].rules,
            vec!["violence_gore/gore-term".to_owned()]
        );
    }
}
