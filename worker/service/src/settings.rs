//! [`Settings`]: everything `inpaint-worker run` is configured with, as plain serde data, loaded
//! from a TOML file plus `INPAINT__SECTION__KEY` environment overrides and checked at start-up.
//!
//! The `[c2pa]` section exists in every build so that a build without the `c2pa` cargo feature
//! refuses it at start-up ([`NO_C2PA_SUPPORT`]) instead of ignoring it and publishing unsigned
//! outputs: with the feature it is `inpaint_provenance::C2paConfig`, checked by serde;
//! without, any table, refused by [`Settings::validate`].
//!
//! `engine.model` has no default: a start without it is refused, so a production worker never
//! silently serves the random-weight tiny model. `embedded-tiny` names that model explicitly; its
//! files are compiled into the binary ([`embedded_tiny_folder`]) so that a copied binary (a
//! container image, another machine) runs it without the source tree, and every start on it logs
//! a warning.

use std::path::{Path, PathBuf};
use std::time::Duration;

use inpaint_engine::{DeviceSpec, PrecisionSpec};
use inpaint_queue::BrokerConfig;
use inpaint_stages::StageConfig;
use inpaint_storage::StorageConfig;
use serde::{Deserialize, Serialize};

use crate::topology::TopologyConfig;

use embedded_model::embedded_tiny_digest;
pub use embedded_model::{
    EMBEDDED_TINY, EMBEDDED_TINY_FILES, EMBEDDED_TINY_WARNING, embedded_tiny_folder,
};

mod embedded_model;
mod validate;
pub(crate) use validate::MAX_BATCH_WAIT_MS;

/// Why a `[c2pa]` section is refused by a build without the `c2pa` cargo feature.
pub const NO_C2PA_SUPPORT: &str =
    "this build has no C2PA support: rebuild with --features c2pa, or remove the section";

/// The `[c2pa]` section: C2PA signing of every output (paths of a PEM certificate chain and a
/// PKCS#8 key, never key material; algorithm; training-and-mining statement).
#[cfg(feature = "c2pa")]
pub type C2paSettings = inpaint_provenance::C2paConfig;

/// The `[c2pa]` section in a build without the `c2pa` feature: any table, so that
/// [`Settings::validate`] can refuse it with [`NO_C2PA_SUPPORT`] rather than serde reporting
/// an unknown field (or, worse, nothing).
#[cfg(not(feature = "c2pa"))]
pub type C2paSettings = serde_json::Value;

/// The worker's whole configuration. Every section and key has a default; see
/// `ops/worker.example.toml` for a file that sets each one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// How to reach RabbitMQ.
    pub broker: BrokerConfig,
    /// Queue and exchange names, delivery limit.
    pub topology: TopologyConfig,
    /// Where input and output objects live (credentials from the environment).
    pub storage: StorageConfig,
    /// Which buckets (and key prefixes) jobs may read from and write to.
    pub allow: AllowConfig,
    /// Size limits on inputs and outputs.
    pub limits: LimitsConfig,
    /// The inference engine.
    pub engine: EngineConfig,
    /// The plugin chain (prompt policy, safety checker, watermark, ...).
    pub chain: ChainConfig,
    /// Prefetch and in-flight limits.
    pub concurrency: ConcurrencyConfig,
    /// Retries of transient failures through the delay queue.
    pub retry: RetryConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// The metrics and health endpoint.
    pub http: HttpConfig,
    /// Log output.
    pub logging: LoggingConfig,
    /// C2PA signing of every output; None (no section): outputs are not signed. Needs the
    /// `c2pa` cargo feature and a `provenance` stage in the chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2pa: Option<C2paSettings>,
}

/// Allow-lists. A job naming any other bucket (or a key outside the prefixes) is `rejected`
/// before anything is downloaded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllowConfig {
    /// Buckets image and mask may be read from. Must not be empty.
    pub read_buckets: Vec<String>,
    /// Buckets outputs may be written to. Must not be empty.
    pub write_buckets: Vec<String>,
    /// Key prefixes inputs must start with (any of them); empty: any key.
    pub read_prefixes: Vec<String>,
    /// Key prefixes outputs must start with (any of them); empty: any key.
    pub write_prefixes: Vec<String>,
}

/// Limits checked before work is spent on a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest image or mask object, in bytes (checked from the object's size, before download).
    pub max_object_bytes: u64,
    /// Largest decoded image, in pixels (checked from the image header, before decoding).
    pub max_decoded_pixels: u64,
    /// Largest side in pixels (a multiple of 8) the model runs at: a job asking for a larger
    /// width or height is refused; an input with a longer side (and no explicit size) is
    /// inpainted through crop-to-mask around its mask and pasted back, at full size.
    pub max_output_side: u32,
    /// Longest a job may run on this worker, in seconds, from pick-up to its stored result;
    /// past it the job ends with status `failed`, error code `timeout` (checked at the same
    /// points as `expires_at`: after the slot wait, before inference, between denoising steps,
    /// before storing). Keep it below RabbitMQ's `consumer_timeout` (30 min by default): a
    /// delivery unacknowledged for that long closes the worker's channel, and the job is
    /// redelivered instead of answered.
    pub job_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_object_bytes: 32 << 20,
            max_decoded_pixels: 4096 * 4096,
            max_output_side: 1024,
            job_timeout_secs: 25 * 60,
        }
    }
}

/// Which engine runs the jobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineBackend {
    /// The Stable Diffusion pipeline on libtorch.
    #[default]
    Tch,
    /// Returns the input image unchanged (text-only jobs: a grey canvas). For tests and for
    /// measuring the worker's own overhead; never for production.
    PassThrough,
}

/// The inference engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `tch` (the model) or `pass-through` (benchmarks and tests).
    pub backend: EngineBackend,
    /// A diffusers model folder, or `embedded-tiny` for the tiny random-weight test model
    /// compiled into the binary (for demos and tests: it paints noise; every start on it logs a
    /// warning). Required: no default, so that no worker serves the test model by accident.
    pub model: String,
    /// The model id reported in results; empty: the folder's name.
    pub model_id: String,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceSpec,
    /// `auto` (f16 on CUDA, f32 on the CPU), `f32`, `f16` or `bf16`: the text encoder's and
    /// the UNet's format.
    pub precision: PrecisionSpec,
    /// The VAE's format: `auto` (the same as `precision`, as diffusers runs it), or `f32`
    /// (the upcast choice: no f16 overflow, at about twice the VAE's memory and time on a GPU),
    /// `f16`, `bf16`.
    pub vae_precision: PrecisionSpec,
    /// Convolution kernels in channels-last (NHWC) layout, which cuDNN's tensor-core kernels
    /// prefer (oneDNN on the CPU too: the tiny model's UNet step ran 1.2x faster in f32 here).
    /// Off by default until measured on a GPU (`ops/gpu/check.sh` does) and at full size.
    pub channels_last: bool,
    /// cuDNN benchmark mode on CUDA: times the convolution algorithms once per input shape and
    /// keeps the fastest (the UNet's shapes repeat every step; the first job of each new size
    /// pays the search). No effect on the CPU.
    pub cudnn_benchmark: bool,
    /// Weights variant file suffix (`fp16` reads `*.fp16.safetensors`); empty: none.
    pub variant: String,
    /// Images one denoising loop may hold, gathered across jobs that share its shape (size,
    /// steps, scheduler, strength, eta). 1: one job at a time. A GPU needs batches to be busy
    /// (8 is a good start); `concurrency.in_flight` must be at least this for batches to fill.
    pub max_batch: usize,
    /// How long the first job of a batch waits for company, in milliseconds. 0: a batch takes
    /// only the jobs already waiting.
    pub batch_wait_ms: u64,
    /// Device memory a batch may use beyond the weights, in MiB, by the engine's estimate. 0: no
    /// limit of its own; on CUDA a batch is also held to 90 % of the memory free after loading.
    /// A batch that still runs out of memory is split and retried, not failed.
    pub batch_memory_mib: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            backend: EngineBackend::Tch,
            model: String::new(),
            model_id: String::new(),
            device: DeviceSpec::Auto,
            precision: PrecisionSpec::Auto,
            vae_precision: PrecisionSpec::Auto,
            channels_last: false,
            cudnn_benchmark: true,
            variant: String::new(),
            max_batch: 1,
            batch_wait_ms: 0,
            batch_memory_mib: 0,
        }
    }
}

impl EngineConfig {
    /// How the inference thread batches, from `max_batch`, `batch_wait_ms` and
    /// `batch_memory_mib` (the free-memory probe and metrics are added by [`crate::parts`]).
    pub fn batching(&self) -> crate::batching::BatchConfig {
        crate::batching::BatchConfig {
            max_batch: self.max_batch,
            wait: Duration::from_millis(self.batch_wait_ms),
            memory_budget: (self.batch_memory_mib > 0).then_some(self.batch_memory_mib << 20),
            ..crate::batching::BatchConfig::default()
        }
    }

    /// Whether this names the tiny random-weight test model.
    pub fn is_embedded_tiny(&self) -> bool {
        self.model.trim() == EMBEDDED_TINY
    }

    /// The model folder on disk; for `embedded-tiny`, the embedded files written out by
    /// [`embedded_tiny_folder`], with [`EMBEDDED_TINY_WARNING`] logged (this runs once per start).
    pub fn resolve_model_folder(&self) -> Result<PathBuf, SettingsError> {
        if self.is_embedded_tiny() {
            tracing::warn!("{EMBEDDED_TINY_WARNING}");
            embedded_tiny_folder()
        } else {
            Ok(PathBuf::from(&self.model))
        }
    }

    /// [`EngineConfig::resolve_model_folder`] for callers without an error path: when the
    /// embedded model cannot be written out, the reason is logged and the folder it should have
    /// been written to is returned, so that loading fails naming the missing files.
    pub fn model_folder(&self) -> PathBuf {
        self.resolve_model_folder().unwrap_or_else(|e| {
            tracing::error!("{e}");
            std::env::temp_dir().join(format!(
                "inpaint-worker-embedded-tiny-{}",
                embedded_tiny_digest()
            ))
        })
    }
}

/// The plugin chain, in order. The worker refuses to start without a `safety-checker` and a
/// `watermark` stage unless `allow_unsafe_chain` is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// The stages, run in this order (`[[chain.stages]]` tables tagged by `type`).
    pub stages: Vec<StageConfig>,
    /// Run without the required stages. Logged at warn on every start and reported in every
    /// result (`worker.missing_required_stages`). You take on OpenRAIL-M paragraph 5 yourself.
    pub allow_unsafe_chain: bool,
}

/// How much work one worker takes on at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// Unacknowledged deliveries the broker may push to this worker (AMQP prefetch).
    pub prefetch: u16,
    /// Jobs processed at once (download, inference queue, upload overlap); at most `prefetch`.
    pub in_flight: usize,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        Self {
            prefetch: 4,
            in_flight: 2,
        }
    }
}

/// Retries of transient failures (storage, broker, timeouts, out of memory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included, for transient failures other than an outage
    /// (timeouts, out of memory, inference unavailable); after the last a `failed` result is
    /// published and the message dead-lettered.
    pub max_attempts: u32,
    /// How long an outage (`storage_unavailable`, `broker_unavailable`) is retried, in seconds
    /// from the job's first failure (the `x-inpaint-first-failure-ms` header): a short outage
    /// delays jobs instead of failing them.
    pub max_elapsed_secs: u64,
    /// Upper bound on attempts of an outage-failed job within `max_elapsed_secs` (one delay
    /// queue is declared per retry up to the larger of this and `max_attempts`).
    pub max_outage_attempts: u32,
    /// Delay before the second attempt, in milliseconds; doubled for each further attempt, and
    /// each delay jittered into (half, full] of that (`crate::error::jittered`).
    pub base_delay_ms: u64,
    /// Longest delay between attempts, in milliseconds.
    pub max_delay_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_elapsed_secs: 600,
            max_outage_attempts: 20,
            base_delay_ms: 1_000,
            max_delay_ms: 60_000,
        }
    }
}

impl RetryConfig {
    /// Whether failed attempt `attempt` of a transient failure with `code` is retried, `elapsed`
    /// after the job's first failure: outages while within `max_elapsed_secs` (and
    /// `max_outage_attempts`), anything else while `attempt < max_attempts`.
    pub fn retries(&self, code: inpaint_job::ErrorCode, attempt: u32, elapsed: Duration) -> bool {
        use inpaint_job::ErrorCode::{BrokerUnavailable, StorageUnavailable};
        if matches!(code, StorageUnavailable | BrokerUnavailable) {
            attempt < self.max_outage_attempts
                && elapsed < Duration::from_secs(self.max_elapsed_secs)
        } else {
            attempt < self.max_attempts
        }
    }

    /// Attempts the delay queues must cover: one queue per retry.
    pub fn attempt_cap(&self) -> u32 {
        self.max_attempts.max(self.max_outage_attempts)
    }

    /// The delay after failed attempt `attempt` (1-based): base × 2^(attempt−1), capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        let delay = self.base_delay_ms.saturating_mul(1u64 << exponent);
        Duration::from_millis(delay.min(self.max_delay_ms))
    }
}

/// Graceful shutdown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds in-flight jobs get to finish after SIGTERM/SIGINT; the rest are cancelled and
    /// released to the queue (nack with requeue).
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_secs: 30 }
    }
}

/// The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on; empty: no HTTP endpoint.
    pub bind: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:9090".into(),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `inpaint_worker=debug,info`; `RUST_LOG` wins when set.
    pub filter: String,
}

/// A configuration that cannot be loaded or used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or the environment could not be read or does not fit the settings' shape.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A key has a value the worker cannot use.
    #[error("configuration key `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `retry.max_attempts`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Settings {
    /// Reads `file` (TOML; None: defaults only), applies `INPAINT__SECTION__KEY` overrides from
    /// the environment (lists comma-separated) and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_from(file, None)
    }

    /// [`Settings::load`] with an explicit environment instead of the process's (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: Option<config::Map<String, String>>,
    ) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(
                config::File::from(file)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let mut environment = config::Environment::with_prefix("INPAINT")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in [
            "allow.read_buckets",
            "allow.write_buckets",
            "allow.read_prefixes",
            "allow.write_prefixes",
        ] {
            environment = environment.with_list_parse_key(key);
        }
        if env.is_some() {
            environment = environment.source(env);
        }
        let settings: Self = builder.add_source(environment).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The warnings to log at warn on every start: one per required stage the chain lacks
    /// because `chain.allow_unsafe_chain` is set.
    pub fn chain_warnings(&self) -> Vec<String> {
        inpaint_stages::check_required(&self.chain.stages, self.chain.allow_unsafe_chain)
            .unwrap_or_default()
    }

    /// The in-flight grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown.grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Settings {
        Settings {
            allow: AllowConfig {
                read_buckets: vec!["inputs".into()],
                write_buckets: vec!["outputs".into()],
                ..AllowConfig::default()
            },
            chain: ChainConfig {
                stages: Vec::new(),
                allow_unsafe_chain: true,
            },
            engine: EngineConfig {
                model: EMBEDDED_TINY.into(),
                ..EngineConfig::default()
            },
            ..Settings::default()
        }
    }

    fn key_of(settings: &Settings) -> String {
        match settings.validate() {
            Err(SettingsError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn each_rule_names_its_key() {
        valid().validate().expect("valid");
        type Mutation = fn(&mut Settings);
        let cases: Vec<(&str, Mutation)> = vec![
            ("allow.read_buckets", |s| s.allow.read_buckets.clear()),
            ("allow.write_buckets", |s| s.allow.write_buckets.clear()),
            ("allow.write_buckets", |s| {
                s.allow.write_buckets = vec!["Bad_Bucket".into()]
            }),
            ("limits.max_object_bytes", |s| s.limits.max_object_bytes = 0),
            ("limits.max_output_side", |s| s.limits.max_output_side = 500),
            ("limits.job_timeout_secs", |s| s.limits.job_timeout_secs = 0),
            ("concurrency.prefetch", |s| s.concurrency.prefetch = 0),
            ("concurrency.in_flight", |s| s.concurrency.in_flight = 9),
            ("retry.max_attempts", |s| s.retry.max_attempts = 0),
            ("retry.max_outage_attempts", |s| {
                s.retry.max_outage_attempts = 0
            }),
            ("retry.max_delay_ms", |s| s.retry.max_delay_ms = 1),
            ("http.bind", |s| s.http.bind = "localhost".into()),
            ("chain.stages", |s| s.chain.allow_unsafe_chain = false),
            ("topology.jobs_queue", |s| s.topology.jobs_queue.clear()),
            ("engine.model", |s| s.engine.model.clear()),
            ("engine.model", |s| s.engine.model = "  ".into()),
            ("engine.max_batch", |s| s.engine.max_batch = 0),
            ("engine.max_batch", |s| s.engine.max_batch = 65),
            ("engine.batch_wait_ms", |s| s.engine.batch_wait_ms = 10_001),
            ("concurrency.in_flight", |s| s.engine.max_batch = 3),
        ];
        for (key, mutate) in cases {
            let mut s = valid();
            mutate(&mut s);
            assert_eq!(key_of(&s), key);
        }
    }

    #[test]
    fn batching_needs_enough_jobs_in_flight_to_fill_a_batch() {
        for max_batch in 1..=12 {
            for in_flight in 1..=12 {
                let mut s = valid();
                s.engine.max_batch = max_batch;
                s.concurrency.in_flight = in_flight;
                s.concurrency.prefetch = 12;
                let fills = max_batch == 1 || in_flight >= max_batch;
                match s.validate() {
                    Ok(()) => assert!(fills, "max_batch {max_batch}, in_flight {in_flight}"),
                    Err(SettingsError::Invalid { key, message }) => {
                        assert!(!fills, "max_batch {max_batch}, in_flight {in_flight}");
                        assert_eq!(key, "concurrency.in_flight");
                        assert!(message.contains("engine.max_batch"), "{message}");
                    }
                    Err(other) => panic!("{other}"),
                }
                let batching = s.engine.batching();
                assert_eq!(batching.max_batch, max_batch);
                assert_eq!(batching.memory_budget, None);
            }
        }
        let mut s = valid();
        s.engine.batch_memory_mib = 3;
        s.engine.batch_wait_ms = 25;
        let batching = s.engine.batching();
        assert_eq!(batching.memory_budget, Some(3 << 20));
        assert_eq!(batching.wait, Duration::from_millis(25));
    }

    #[test]
    fn unsafe_chain_is_refused_without_override_and_warned_with_it() {
        let mut s = valid();
        assert_eq!(s.chain_warnings().len(), 2);
        s.chain.allow_unsafe_chain = false;
        let message = s.validate().expect_err("refused").to_string();
        assert!(message.contains("safety-checker"), "{message}");
    }

    #[test]
    fn engine_precision_keys_take_every_spelling_from_file_and_environment() {
        use inpaint_engine::Precision;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("w.toml");
        let base = "[allow]\nread_buckets = [\"in-a\"]\nwrite_buckets = [\"out-b\"]\n\
                    [chain]\nallow_unsafe_chain = true\n";
        let spellings = [
            ("auto", PrecisionSpec::Auto),
            ("f32", PrecisionSpec::Fixed(Precision::F32)),
            ("fp32", PrecisionSpec::Fixed(Precision::F32)),
            ("float32", PrecisionSpec::Fixed(Precision::F32)),
            ("f16", PrecisionSpec::Fixed(Precision::F16)),
            ("fp16", PrecisionSpec::Fixed(Precision::F16)),
            ("float16", PrecisionSpec::Fixed(Precision::F16)),
            ("bf16", PrecisionSpec::Fixed(Precision::Bf16)),
            ("bfloat16", PrecisionSpec::Fixed(Precision::Bf16)),
        ];
        for key in ["precision", "vae_precision"] {
            for (text, expected) in spellings {
                for text in [text.to_owned(), text.to_ascii_uppercase()] {
                    std::fs::write(
                        &file,
                        format!("{base}[engine]\nmodel = \"embedded-tiny\"\n{key} = \"{text}\"\n"),
                    )
                    .expect("write");
                    let s = Settings::load_from(Some(&file), Some(config::Map::new()))
                        .unwrap_or_else(|e| panic!("{key} = {text}: {e}"));
                    let env = config::Map::from([
                        (
                            "INPAINT__ENGINE__MODEL".to_owned(),
                            "embedded-tiny".to_owned(),
                        ),
                        (
                            format!("INPAINT__ENGINE__{}", key.to_ascii_uppercase()),
                            text.clone(),
                        ),
                    ]);
                    std::fs::write(&file, base).expect("write");
                    let e = Settings::load_from(Some(&file), Some(env))
                        .unwrap_or_else(|e| panic!("env {key} = {text}: {e}"));
                    for got in [&s.engine, &e.engine] {
                        let value = if key == "precision" {
                            got.precision
                        } else {
                            got.vae_precision
                        };
                        assert_eq!(value, expected, "{key} = {text}");
                    }
                }
            }
            for bad in ["half", "f64", "int8", "", "auto16"] {
                std::fs::write(
                    &file,
                    format!("{base}[engine]\nmodel = \"embedded-tiny\"\n{key} = \"{bad}\"\n"),
                )
                .expect("write");
                let err = Settings::load_from(Some(&file), Some(config::Map::new()))
                    .expect_err(bad)
                    .to_string();
                assert!(
                    err.contains(key) && err.contains("expected auto, f32, f16 or bf16"),
                    "{key} = {bad:?}: {err}"
                );
            }
        }
        let defaults = EngineConfig::default();
        assert_eq!(defaults.precision, PrecisionSpec::Auto);
        assert_eq!(defaults.vae_precision, PrecisionSpec::Auto);
        assert!(defaults.cudnn_benchmark && !defaults.channels_last);
        let env = config::Map::from([
            (
                "INPAINT__ENGINE__MODEL".to_owned(),
                "embedded-tiny".to_owned(),
            ),
            (
                "INPAINT__ENGINE__CHANNELS_LAST".to_owned(),
                "true".to_owned(),
            ),
            (
                "INPAINT__ENGINE__CUDNN_BENCHMARK".to_owned(),
                "false".to_owned(),
            ),
        ]);
        std::fs::write(&file, base).expect("write");
        let s = Settings::load_from(Some(&file), Some(env)).expect("booleans");
        assert!(s.engine.channels_last && !s.engine.cudnn_benchmark);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let r = RetryConfig {
            max_attempts: 10,
            base_delay_ms: 100,
            max_delay_ms: 1_000,
            ..RetryConfig::default()
        };
        let delays: Vec<u128> = (1..=6).map(|a| r.backoff(a).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(r.backoff(200).as_millis(), 1_000);
    }

    #[test]
    fn environment_overrides_the_file_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("w.toml");
        std::fs::write(
            &file,
            "[allow]\nread_buckets = [\"a-in\"]\nwrite_buckets = [\"a-out\"]\n\
             [engine]\nmodel = \"embedded-tiny\"\n\
             [chain]\nallow_unsafe_chain = true\n[retry]\nmax_attempts = 3\n",
        )
        .expect("write");
        let env = config::Map::from([
            ("INPAINT__RETRY__MAX_ATTEMPTS".to_owned(), "7".to_owned()),
            (
                "INPAINT__ALLOW__WRITE_BUCKETS".to_owned(),
                "x-out,y-out".to_owned(),
            ),
        ]);
        let s = Settings::load_from(Some(&file), Some(env)).expect("load");
        assert_eq!(s.retry.max_attempts, 7);
        assert_eq!(s.allow.write_buckets, vec!["x-out", "y-out"]);
        assert_eq!(s.allow.read_buckets, vec!["a-in"]);

        std::fs::write(&file, "[retry]\nmax_atempts = 3\n").expect("write");
        let err = Settings::load_from(Some(&file), Some(config::Map::new())).expect_err("typo");
        assert!(err.to_string().contains("max_atempts"), "{err}");

        let env =
            config::Map::from([("INPAINT__RETRY__MAX_ATTEMPTS".to_owned(), "many".to_owned())]);
        std::fs::write(&file, "").expect("write");
        let err = Settings::load_from(Some(&file), Some(env)).expect_err("not a number");
        assert!(err.to_string().contains("max_attempts"), "{err}");
    }

    /// A file that would be valid but for its `[c2pa]` section.
    const WITH_C2PA: &str = "[allow]\nread_buckets = [\"inputs\"]\nwrite_buckets = [\"outputs\"]\n\
        [engine]\nmodel = \"embedded-tiny\"\n\
        [chain]\nallow_unsafe_chain = true\n[[chain.stages]]\ntype = \"provenance\"\n\
        [c2pa]\ncert_chain = \"/etc/c2pa/chain.pem\"\nprivate_key = \"/etc/c2pa/signer.key\"\n";

    fn load_toml(text: &str, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("w.toml");
        std::fs::write(&file, text).expect("write");
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_from(Some(&file), Some(env))
    }

    #[cfg(not(feature = "c2pa"))]
    #[test]
    fn a_c2pa_section_is_refused_without_the_feature() {
        let refused = |result: Result<Settings, SettingsError>| match result {
            Err(SettingsError::Invalid { key, message }) => {
                assert_eq!(key, "c2pa");
                assert!(
                    message.contains("rebuild with --features c2pa"),
                    "{message}"
                );
            }
            other => panic!("expected the c2pa section to be refused, got {other:?}"),
        };
        refused(load_toml(WITH_C2PA, &[]));
        // An empty section, and a section made only of environment overrides, too.
        let without = WITH_C2PA.split("[c2pa]").next().expect("head");
        refused(load_toml(&format!("{without}[c2pa]\n"), &[]));
        refused(load_toml(
            without,
            &[("INPAINT__C2PA__CERT_CHAIN", "/etc/c2pa/chain.pem")],
        ));
        load_toml(without, &[]).expect("no section, no refusal");
    }

    #[cfg(feature = "c2pa")]
    #[test]
    fn the_c2pa_section_parses_and_each_rule_names_its_key() {
        use inpaint_provenance::{C2paAlgorithm, TrainingMiningUse};

        let s = load_toml(
            &format!("{WITH_C2PA}algorithm = \"es384\"\ntraining_mining = \"notAllowed\"\n"),
            &[],
        )
        .expect("loads");
        let c2pa = s.c2pa.clone().expect("section");
        assert_eq!(c2pa.cert_chain, Path::new("/etc/c2pa/chain.pem"));
        assert_eq!(c2pa.algorithm, C2paAlgorithm::Es384);
        assert_eq!(c2pa.training_mining, TrainingMiningUse::NotAllowed);
        let err = load_toml(&format!("{WITH_C2PA}alg = \"es256\"\n"), &[]).expect_err("typo");
        assert!(err.to_string().contains("alg"), "{err}");

        type Mutation = fn(&mut Settings);
        let cases: Vec<(&str, Mutation)> = vec![
            ("c2pa.cert_chain", |s| {
                if let Some(c) = &mut s.c2pa {
                    c.cert_chain = PathBuf::new();
                }
            }),
            ("c2pa.private_key", |s| {
                if let Some(c) = &mut s.c2pa {
                    c.private_key = "-----BEGIN PRIVATE KEY-----\nMIGH...".into();
                }
            }),
            ("c2pa.tsa_url", |s| {
                if let Some(c) = &mut s.c2pa {
                    c.tsa_url = Some("http://timestamp.example".into());
                }
            }),
            ("c2pa.training_mining_constraint", |s| {
                if let Some(c) = &mut s.c2pa {
                    c.training_mining = TrainingMiningUse::Allowed;
                    c.training_mining_constraint = Some("ask first".into());
                }
            }),
            ("c2pa", |s| s.chain.stages.clear()),
        ];
        for (key, mutate) in cases {
            let mut settings = s.clone();
            mutate(&mut settings);
            assert_eq!(key_of(&settings), key);
        }
    }

    /// The example file documents `[c2pa]` commented out (the default build refuses it);
    /// uncommented, its keys must be the real ones.
    #[cfg(feature = "c2pa")]
    #[test]
    fn the_example_c2pa_block_parses_when_uncommented() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/worker.example.toml");
        let text = std::fs::read_to_string(file).expect("example");
        let block: String = text
            .lines()
            .skip_while(|line| *line != "# [c2pa]")
            .skip(1)
            .map_while(|line| line.strip_prefix("# "))
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(block.contains("cert_chain"), "no [c2pa] block found");
        let config: C2paSettings = toml::from_str(&block).expect("the documented keys parse");
        assert_eq!(
            config.private_key,
            Path::new("/etc/inpaint/c2pa/signer.key")
        );
        assert_eq!(config.tsa_url, None);
    }

    /// The commented-out external stages in the example file are real configuration once
    /// uncommented (the http and exec stage kinds, every documented key).
    #[test]
    fn the_example_external_stages_parse_when_uncommented() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/worker.example.toml");
        let text = std::fs::read_to_string(file).expect("example");
        let block: String = text
            .lines()
            .skip_while(|line| *line != "# [[chain.stages]]")
            .map_while(|line| line.strip_prefix("#").map(str::trim_start))
            .map(|line| format!("{line}\n"))
            .collect();
        let chain: ChainConfig = toml::from_str(&format!("[chain]\n{block}"))
            .map(|wrapper: std::collections::BTreeMap<String, ChainConfig>| {
                wrapper.into_values().next().unwrap_or_default()
            })
            .expect("the documented external stages parse");
        let kinds: Vec<&str> = chain.stages.iter().map(|s| s.kind_name()).collect();
        assert_eq!(kinds, ["http", "exec"]);
    }

    #[test]
    fn the_example_file_loads() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/worker.example.toml");
        let s = Settings::load_from(Some(&file), Some(config::Map::new())).expect("example loads");
        s.validate().expect("example is valid");
    }

    #[test]
    fn every_worker_toml_the_project_ships_loads() {
        // Every configuration file under ops/ (example, image, compose, Kubernetes, ...), with
        // the model given from the environment as their comments say.
        let ops = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops");
        let mut found = Vec::new();
        let mut dirs = vec![ops];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("ops/ readable") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.file_name().is_some_and(|n| {
                    n.to_string_lossy().ends_with(".toml")
                        && n.to_string_lossy().starts_with("worker")
                }) {
                    found.push(path);
                }
            }
        }
        assert!(found.len() >= 4, "worker*.toml files under ops/: {found:?}");
        for file in found {
            let env = config::Map::from([(
                "INPAINT__ENGINE__MODEL".to_owned(),
                "embedded-tiny".to_owned(),
            )]);
            let s = Settings::load_from(Some(&file), Some(env))
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            s.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }

    #[test]
    fn a_start_without_a_model_is_refused_and_embedded_tiny_must_be_named() {
        // The defaults (no [engine] section) name no model: refused, naming the key.
        let without = load_toml(
            "[allow]\nread_buckets = [\"inpaint-in\"]\nwrite_buckets = [\"inpaint-out\"]\n[chain]\nallow_unsafe_chain = true\n",
            &[],
        );
        match without {
            Err(SettingsError::Invalid { key, message }) => {
                assert_eq!(key, "engine.model");
                assert!(message.contains("embedded-tiny"), "{message}");
            }
            other => panic!("expected engine.model to be refused, got {other:?}"),
        }
        // Named explicitly (here from the environment) it loads; pass-through needs no model.
        let named = load_toml(
            "[allow]\nread_buckets = [\"inpaint-in\"]\nwrite_buckets = [\"inpaint-out\"]\n[chain]\nallow_unsafe_chain = true\n",
            &[("INPAINT__ENGINE__MODEL", "embedded-tiny")],
        )
        .expect("embedded-tiny named");
        assert!(named.engine.is_embedded_tiny());
        let mut pass = valid();
        pass.engine.model.clear();
        pass.engine.backend = EngineBackend::PassThrough;
        pass.validate().expect("pass-through needs no model");
    }
}
