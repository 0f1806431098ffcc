//! inpaint-stages: the closed set of built-in plugin stages, as the worker's configuration
//! names them.
//!
//! Why a crate of its own: [`StageConfig`] has one variant per plugin crate, and every plugin
//! crate depends on `inpaint-plugin-api` for the `Stage` trait. Putting the enum in the API
//! crate would make the API depend on every plugin (a dependency cycle); a cargo feature does
//! not break the cycle. So the API stays small and this crate, which depends on all built-in
//! plugins, owns the enum. The worker depends on this crate and on the API.
//!
//! Every kind sits behind a cargo feature of this crate named like its tag (all on by default), so
//! a build can leave out what it does not run (the safety checker's libtorch, the HTTP client); a
//! kind that is compiled out is an unknown `type` in configuration and refused at start-up.
//!
//! Adding a built-in stage:
//! 1. add the plugin crate as an optional dependency here, and a feature for it (in `default`);
//! 2. add a variant `Name(NameConfig)` to [`StageConfig`] (the serde tag is the kebab-case
//!    variant name), behind the feature;
//! 3. add its kind to `inpaint_plugin_api::StageKind` (the same kebab-case name), and its arms
//!    to [`StageConfig::kind`] (a test checks the name against the serde tag) and to
//!    [`StageConfig::build`].
//!
//! The compiler's exhaustive matches point at every place that needs the new variant.

#[cfg(feature = "exec")]
use inpaint_external_stages::ExecStageConfig;
#[cfg(feature = "http")]
use inpaint_external_stages::HttpStageConfig;
use inpaint_plugin_api::{
    Chain, ChainPolicyError, Stage, StageError, check_required_kinds, missing_required_kinds,
};
#[cfg(feature = "prompt-policy")]
use inpaint_prompt_policy::PromptPolicyConfig;
#[cfg(feature = "provenance")]
use inpaint_provenance::ProvenanceConfig;
#[cfg(feature = "safety-checker")]
use inpaint_safety_checker::SafetyCheckerConfig;
#[cfg(feature = "watermark")]
use inpaint_watermark::WatermarkConfig;
use serde::{Deserialize, Serialize};

pub use inpaint_plugin_api::{REQUIRED_STAGE_KINDS, StageKind};
/// The provenance crate (file embedding, XMP, C2PA), for the worker's encoder: the worker
/// reaches it only through this crate, so a build without the `provenance` feature does not
/// link it.
#[cfg(feature = "provenance")]
pub use inpaint_provenance as provenance;
/// The watermark crate (the `watermark` subcommand embeds and detects in files): reached only
/// through this crate, so a build without the `watermark` feature does not link it.
#[cfg(feature = "watermark")]
pub use inpaint_watermark as watermark;

/// One configured stage of the plugin chain, tagged by `type`:
///
/// ```toml
/// [[chain.stages]]
/// type = "prompt-policy"
/// load_defaults = true
/// files = []
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum StageConfig {
    /// Prompt policy before inference (OpenRAIL-M Attachment A categories).
    #[cfg(feature = "prompt-policy")]
    PromptPolicy(PromptPolicyConfig),
    /// CLIP safety checker (diffusers' `StableDiffusionSafetyChecker`) on each output image:
    /// blocks (default), blacks out or blurs flagged images and reports every score. Put it
    /// before the watermark. Needs libtorch: cargo feature `safety-checker` (default).
    #[cfg(feature = "safety-checker")]
    SafetyChecker(SafetyCheckerConfig),
    /// Invisible watermark (invisible-watermark `dwtDct`) on each output image. Put it after
    /// every stage that changes pixels and before provenance.
    #[cfg(feature = "watermark")]
    Watermark(WatermarkConfig),
    /// Provenance metadata on each output image (AI-generated marker, IPTC digital source
    /// type, OpenRAIL-M licence, job id, seed, parameters; the prompt only on request). Put it
    /// last, after the watermark.
    #[cfg(feature = "provenance")]
    Provenance(ProvenanceConfig),
    /// An operator's check behind an HTTP endpoint: each hook call is POSTed as JSON
    /// (protocol `inpaint-stage.v1`, see `ops/plugins/README.md`) and the response is the
    /// verdict. Timeouts, attempts with backoff, and `on_failure` (requeue or block).
    #[cfg(feature = "http")]
    Http(HttpStageConfig),
    /// An operator's check as a long-lived subprocess speaking the same protocol as
    /// line-delimited JSON on stdin/stdout; killed and restarted when it hangs or crashes.
    #[cfg(feature = "exec")]
    Exec(ExecStageConfig),
}

impl StageConfig {
    /// The stage kind, equal to the `type` tag in configuration.
    pub fn kind(&self) -> StageKind {
        // `*self`: with every feature off the enum is empty, and only a match on the value
        // (not on a reference) may then have no arms.
        match *self {
            #[cfg(feature = "prompt-policy")]
            StageConfig::PromptPolicy(_) => StageKind::PromptPolicy,
            #[cfg(feature = "safety-checker")]
            StageConfig::SafetyChecker(_) => StageKind::SafetyChecker,
            #[cfg(feature = "watermark")]
            StageConfig::Watermark(_) => StageKind::Watermark,
            #[cfg(feature = "provenance")]
            StageConfig::Provenance(_) => StageKind::Provenance,
            #[cfg(feature = "http")]
            StageConfig::Http(_) => StageKind::Http,
            #[cfg(feature = "exec")]
            StageConfig::Exec(_) => StageKind::Exec,
        }
    }

    /// The kind's name ([`StageKind::as_str`]), as the `type` tag writes it.
    pub fn kind_name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Whether this stage fails a job whose outputs are too small for it: a watermark stage
    /// with `small_images = "refuse"` (the default) needs at least 256 × 256 pixels, so the
    /// worker refuses such jobs at admission instead of after inference.
    pub fn refuses_small_images(&self) -> bool {
        match *self {
            #[cfg(feature = "watermark")]
            StageConfig::Watermark(ref config) => {
                config.small_images == inpaint_watermark::SmallImages::Refuse
            }
            #[allow(unreachable_patterns, reason = "the only arm when `watermark` is off")]
            _ => false,
        }
    }

    /// Builds the running stage.
    pub fn build(&self) -> Result<Box<dyn Stage>, StageError> {
        let kind = self.kind_name();
        #[allow(unused_variables, reason = "unused when every stage feature is off")]
        let build_error = |source: Box<dyn std::error::Error + Send + Sync>| StageError::Build {
            stage: kind.to_owned(),
            source,
        };
        match *self {
            #[cfg(feature = "prompt-policy")]
            StageConfig::PromptPolicy(ref config) => Ok(Box::new(
                config.build().map_err(|e| build_error(Box::new(e)))?,
            )),
            #[cfg(feature = "watermark")]
            StageConfig::Watermark(ref config) => Ok(Box::new(
                config.build().map_err(|e| build_error(Box::new(e)))?,
            )),
            #[cfg(feature = "provenance")]
            StageConfig::Provenance(ref config) => Ok(Box::new(
                config.build().map_err(|e| build_error(Box::new(e)))?,
            )),
            #[cfg(feature = "safety-checker")]
            StageConfig::SafetyChecker(ref config) => Ok(Box::new(
                config.build().map_err(|e| build_error(Box::new(e)))?,
            )),
            #[cfg(feature = "http")]
            StageConfig::Http(ref config) => Ok(Box::new(
                config.build().map_err(|e| build_error(Box::new(e)))?,
            )),
            #[cfg(feature = "exec")]
            StageConfig::Exec(ref config) => Ok(Box::new(
                config.build().map_err(|e| build_error(Box::new(e)))?,
            )),
        }
    }
}

/// Refuses a chain without the required stage kinds ([`REQUIRED_STAGE_KINDS`]) unless
/// `override_` is set; returns the warnings to log at warn on every start.
pub fn check_required(
    stages: &[StageConfig],
    override_: bool,
) -> Result<Vec<String>, ChainPolicyError> {
    check_required_kinds(stages.iter().map(StageConfig::kind), override_)
}

/// The required stage kinds ([`REQUIRED_STAGE_KINDS`]) that `stages` lacks: what results report
/// as `worker.missing_required_stages` when the operator's override let the worker start.
pub fn missing_required(stages: &[StageConfig]) -> Vec<StageKind> {
    missing_required_kinds(stages.iter().map(StageConfig::kind))
}

/// Builds every configured stage, in order, into a [`Chain`].
pub fn build_chain(stages: &[StageConfig]) -> Result<Chain, StageError> {
    stages
        .iter()
        .map(StageConfig::build)
        .collect::<Result<Vec<_>, _>>()
        .map(Chain::new)
}

// The tests name every kind; they run with the default features (all kinds). CI checks that the
// crate also builds with none of them (`cargo check -p inpaint-stages --no-default-features`).
#[cfg(all(
    test,
    feature = "prompt-policy",
    feature = "watermark",
    feature = "provenance",
    feature = "http",
    feature = "exec"
))]
mod tests {
    use inpaint_external_stages::OnFailure;
    use inpaint_plugin_api::JobContext;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Settings {
        plugins: Vec<StageConfig>,
    }

    #[test]
    fn configuration_is_a_tagged_list() {
        let settings: Settings = toml::from_str(
            r#"
[[plugins]]
type = "prompt-policy"

[[plugins]]
type = "prompt-policy"
load_defaults = false
files = ["local.toml"]
"#,
        )
        .expect("valid settings");
        assert_eq!(settings.plugins.len(), 2);
        assert_eq!(
            settings.plugins[0],
            StageConfig::PromptPolicy(PromptPolicyConfig::default())
        );
        let StageConfig::PromptPolicy(second) = &settings.plugins[1] else {
            panic!("expected a prompt-policy stage");
        };
        assert!(!second.load_defaults);
    }

    #[test]
    fn unknown_types_and_fields_are_refused() {
        assert!(toml::from_str::<Settings>("[[plugins]]\ntype = \"nope\"\n").is_err());
        assert!(
            toml::from_str::<Settings>("[[plugins]]\ntype = \"prompt-policy\"\nfile = []\n")
                .is_err()
        );
    }

    #[test]
    // One entry per variant: the list grows with the enum.
    fn kind_name_matches_the_serde_tag() {
        for config in [
            StageConfig::PromptPolicy(PromptPolicyConfig::default()),
            StageConfig::Watermark(WatermarkConfig::default()),
            StageConfig::Provenance(ProvenanceConfig::default()),
            StageConfig::Http(HttpStageConfig::default()),
            StageConfig::Exec(ExecStageConfig::default()),
        ] {
            let json = serde_json::to_value(&config).expect("serialize");
            assert_eq!(json["type"], config.kind_name());
            assert_eq!(json["type"], config.kind().as_str());
        }
    }

    #[test]
    fn only_a_refusing_watermark_refuses_small_images() {
        assert!(StageConfig::Watermark(WatermarkConfig::default()).refuses_small_images());
        let skip = WatermarkConfig {
            small_images: inpaint_watermark::SmallImages::Skip,
            ..WatermarkConfig::default()
        };
        assert!(!StageConfig::Watermark(skip).refuses_small_images());
        assert!(!StageConfig::Provenance(ProvenanceConfig::default()).refuses_small_images());
    }

    #[test]
    fn chain_policy_applies_to_configured_kinds() {
        let stages = vec![StageConfig::PromptPolicy(PromptPolicyConfig::default())];
        let err = check_required(&stages, false).expect_err("no safety checker, no watermark");
        assert_eq!(
            err,
            ChainPolicyError::MissingRequired {
                missing: vec![StageKind::SafetyChecker, StageKind::Watermark]
            }
        );
        assert_eq!(
            missing_required(&stages),
            vec![StageKind::SafetyChecker, StageKind::Watermark]
        );
        let warnings = check_required(&stages, true).expect("override");
        assert_eq!(warnings.len(), 2);
    }

    #[test]
    fn watermark_stage_is_configured_and_built() {
        let settings: Settings = toml::from_str(
            r#"
[[plugins]]
type = "watermark"
payload = { text = "operator-42" }
small_images = "skip"
"#,
        )
        .expect("valid settings");
        let StageConfig::Watermark(config) = &settings.plugins[0] else {
            panic!("expected a watermark stage");
        };
        assert_eq!(
            config.payload,
            inpaint_watermark::PayloadSpec::Text("operator-42".into())
        );
        let chain = build_chain(&settings.plugins).expect("build");
        assert_eq!(chain.names().collect::<Vec<_>>(), vec!["watermark"]);
        let bad: Settings =
            toml::from_str("[[plugins]]\ntype = \"watermark\"\npayload = { hex = \"abc\" }\n")
                .expect("parses");
        let err = build_chain(&bad.plugins).expect_err("odd hex");
        assert!(
            err.to_string()
                .starts_with("cannot build stage `watermark`"),
            "{err}"
        );
    }

    #[test]
    fn provenance_stage_is_configured_and_built() {
        let settings: Settings = toml::from_str(
            r#"
[[plugins]]
type = "provenance"
include_prompt = true
model_id = "sd-inpainting"
"#,
        )
        .expect("valid settings");
        let StageConfig::Provenance(config) = &settings.plugins[0] else {
            panic!("expected a provenance stage");
        };
        assert!(config.include_prompt);
        assert!(config.include_parameters, "default kept");
        assert_eq!(config.model_id.as_deref(), Some("sd-inpainting"));
        let chain = build_chain(&settings.plugins).expect("build");
        assert_eq!(chain.names().collect::<Vec<_>>(), vec!["provenance"]);
        assert!(
            toml::from_str::<Settings>("[[plugins]]\ntype = \"provenance\"\nprompt = true\n")
                .is_err()
        );
        let bad: Settings =
            toml::from_str("[[plugins]]\ntype = \"provenance\"\nweights_sha256 = \"abc\"\n")
                .expect("parses");
        let err = build_chain(&bad.plugins).expect_err("short digest");
        assert!(
            err.to_string()
                .starts_with("cannot build stage `provenance`"),
            "{err}"
        );
    }

    #[test]
    fn http_stage_is_configured_and_built() {
        let settings: Settings = toml::from_str(
            r#"
[[plugins]]
type = "http"
name = "word-filter"
url = "http://127.0.0.1:8085/verdict"
hooks = ["before-inference", "after-output"]
send_input_image = true
connect_timeout_ms = 500
timeout_ms = 2000
attempts = 3
backoff_ms = 200
on_failure = "block"
headers = { "X-Team" = "trust-safety" }
headers_from_env = { Authorization = "PATH" }
max_response_bytes = 1048576
"#,
        )
        .expect("valid settings");
        let StageConfig::Http(config) = &settings.plugins[0] else {
            panic!("expected an http stage");
        };
        assert_eq!(config.url, "http://127.0.0.1:8085/verdict");
        assert_eq!(
            config.hooks,
            vec![
                inpaint_plugin_api::Hook::BeforeInference,
                inpaint_plugin_api::Hook::AfterOutput
            ]
        );
        assert_eq!(config.on_failure, OnFailure::Block);
        assert_eq!(config.headers_from_env["Authorization"], "PATH");
        // Building makes the client; nothing is contacted until a job comes.
        let chain = build_chain(&settings.plugins).expect("build");
        assert_eq!(chain.names().collect::<Vec<_>>(), vec!["word-filter"]);
        assert!(
            check_required(&settings.plugins, false).is_err(),
            "an external stage is no substitute for the required stages"
        );

        for typo in [
            "urls = []",
            "timeout = 5",
            "on_failure = \"ignore\"",
            "hooks = [\"after\"]",
        ] {
            let text = format!("[[plugins]]\ntype = \"http\"\nurl = \"http://x/\"\n{typo}\n");
            assert!(toml::from_str::<Settings>(&text).is_err(), "{typo}");
        }
        let bad: Settings =
            toml::from_str("[[plugins]]\ntype = \"http\"\nurl = \"http://127.0.0.1:1/\"\n")
                .expect("parses");
        let err = build_chain(&bad.plugins).expect_err("no hooks");
        assert!(
            err.to_string().starts_with("cannot build stage `http`")
                && err.to_string().contains("`hooks` is empty"),
            "{err}"
        );
    }

    #[test]
    fn exec_stage_is_configured_and_built() {
        let settings: Settings = toml::from_str(
            r#"
[[plugins]]
type = "exec"
name = "shell-check"
program = "sh"
args = ["-c", "while read -r line; do echo '{\"protocol\":\"inpaint-stage.v1\",\"verdict\":\"continue\"}'; done"]
working_dir = "/"
env = { POLICY_LEVEL = "strict" }
pass_env = ["HOME"]
hooks = ["before-inference"]
timeout_ms = 2000
startup_grace_ms = 3000
attempts = 2
backoff_ms = 100
on_failure = "retry"
max_response_bytes = 1048576
"#,
        )
        .expect("valid settings");
        let StageConfig::Exec(config) = &settings.plugins[0] else {
            panic!("expected an exec stage");
        };
        assert_eq!(config.program, "sh");
        assert_eq!(config.on_failure, OnFailure::Retry);
        let chain = build_chain(&settings.plugins).expect("build starts the program");
        assert_eq!(chain.names().collect::<Vec<_>>(), vec!["shell-check"]);
        let outcome = chain
            .before_inference(JobContext::new(uuid::Uuid::nil(), "a calm harbour at dawn"))
            .expect("the program answers");
        assert!(!outcome.is_blocked());

        assert!(
            toml::from_str::<Settings>("[[plugins]]\ntype = \"exec\"\ncommand = \"x\"\n").is_err()
        );
        let missing: Settings = toml::from_str(
            "[[plugins]]\ntype = \"exec\"\nprogram = \"/nonexistent/check\"\nhooks = [\"after-output\"]\n",
        )
        .expect("parses");
        let err = build_chain(&missing.plugins).expect_err("no such program");
        assert!(
            err.to_string()
                .starts_with("cannot build stage `exec`: cannot start `/nonexistent/check`"),
            "{err}"
        );
    }

    #[test]
    fn the_external_stage_examples_in_ops_plugins_readme_parse() {
        // The worker's configuration nests the stages under `[[chain.stages]]`.
        #[derive(Debug, Deserialize)]
        struct Chain {
            stages: Vec<StageConfig>,
        }
        #[derive(Debug, Deserialize)]
        struct WorkerSettings {
            chain: Chain,
        }
        let readme = include_str!("../../../ops/plugins/README.md");
        let blocks: Vec<&str> = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .collect();
        let kinds: Vec<&str> = blocks
            .iter()
            .map(|block| {
                let settings: WorkerSettings = toml::from_str(block)
                    .unwrap_or_else(|e| panic!("README example does not parse: {e}\n{block}"));
                settings.chain.stages[0].kind_name()
            })
            .collect();
        assert_eq!(kinds, vec!["http", "exec"]);
    }

    #[cfg(feature = "safety-checker")]
    #[test]
    fn safety_checker_stage_is_configured() {
        let settings: Settings = toml::from_str(
            r#"
[[plugins]]
type = "safety-checker"
model = "/nonexistent/sd-inpainting"
device = "cpu"
action = "black_out"
adjustment = 0.01
"#,
        )
        .expect("valid settings");
        let config = &settings.plugins[0];
        let StageConfig::SafetyChecker(inner) = config else {
            panic!("expected a safety-checker stage");
        };
        assert_eq!(inner.action, inpaint_safety_checker::NsfwAction::BlackOut);
        let json = serde_json::to_value(config).expect("serialize");
        assert_eq!(json["type"], config.kind_name());
        let err = build_chain(&settings.plugins).expect_err("no model there");
        assert!(
            err.to_string()
                .starts_with("cannot build stage `safety-checker`"),
            "{err}"
        );
        assert!(
            toml::from_str::<Settings>("[[plugins]]\ntype = \"safety-checker\"\nmodle = \"x\"\n")
                .is_err()
        );
    }

    #[test]
    fn build_errors_name_the_stage_kind() {
        let stages = vec![StageConfig::PromptPolicy(PromptPolicyConfig {
            load_defaults: false,
            files: Vec::new(),
        })];
        let err = build_chain(&stages).expect_err("empty policy");
        assert!(
            err.to_string()
                .starts_with("cannot build stage `prompt-policy`"),
            "{err}"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn built_chain_runs() {
        let chain = build_chain(&[StageConfig::PromptPolicy(PromptPolicyConfig::default())])
            .expect("build");
        assert_eq!(chain.names().collect::<Vec<_>>(), vec!["prompt-policy"]);
        let outcome = chain
            .before_inference(JobContext::new(uuid::Uuid::nil(), "a calm harbour at dawn"))
            .expect("runs");
        assert!(!outcome.is_blocked());
    }
}
