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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use inpaint_engine::{DeviceSpec, Precision};
use inpaint_queue::BrokerConfig;
use inpaint_stages::StageConfig;
use inpaint_storage::StorageConfig;
use serde::{Deserialize, Serialize};

use crate::topology::TopologyConfig;

/// The value of `engine.model` that names the tiny random-weight test model compiled into the
/// binary (`tests/parity/fixtures/models/tiny-sd-a`; it paints noise).
pub const EMBEDDED_TINY: &str = "embedded-tiny";

/// The warning logged on every start on [`EMBEDDED_TINY`].
pub const EMBEDDED_TINY_WARNING: &str = "engine.model = \"embedded-tiny\": serving the tiny \
     random-weight test model, which paints noise; name a real stable-diffusion-inpainting folder \
     for production";

/// Generates the table of embedded tiny-model files from their paths inside the model folder.
macro_rules! embedded_tiny_files {
    ($($path:literal),* $(,)?) => {
        &[$((
            $path,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/parity/fixtures/models/tiny-sd-a/",
                $path
            )) as &[u8],
        )),*]
    };
}

/// Every file of the tiny model, by its path inside the model folder (2.6 MB in all). A test
/// checks that this list is exactly the fixture folder's files, byte for byte.
pub const EMBEDDED_TINY_FILES: &[(&str, &[u8])] = embedded_tiny_files![
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
];

/// Writes the embedded tiny model to a folder the engine can load and returns it:
/// `$INPAINT_CACHE_DIR` (or the system temporary folder, `$TMPDIR`) `/inpaint-worker-embedded-tiny-<hash>`,
/// where `<hash>` is a digest of the files. A folder that is already there with exactly these
/// bytes is reused (concurrent workers on one machine share it); one with other bytes (partly
/// written, edited) is replaced. Files are written to a private sibling folder first and renamed
/// into place, so a reader never sees a half-written model.
pub fn embedded_tiny_folder() -> Result<PathBuf, SettingsError> {
    let base = std::env::var_os("INPAINT_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    materialise_embedded_tiny(&base)
}

fn embedded_tiny_digest() -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (path, bytes) in EMBEDDED_TINY_FILES {
        hasher.update((path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `folder` holds every embedded file with exactly the embedded bytes.
fn holds_embedded_tiny(folder: &Path) -> bool {
    EMBEDDED_TINY_FILES.iter().all(|(path, bytes)| {
        std::fs::read(folder.join(path)).is_ok_and(|on_disk| on_disk == *bytes)
    })
}

fn materialise_embedded_tiny(base: &Path) -> Result<PathBuf, SettingsError> {
    let failed = |what: &str, path: &Path, e: std::io::Error| {
        invalid(
            "engine.model",
            format!(
                "embedded-tiny: {what} {} failed: {e} (set INPAINT_CACHE_DIR or TMPDIR to a \
                 writable folder)",
                path.display()
            ),
        )
    };
    let folder = base.join(format!(
        "inpaint-worker-embedded-tiny-{}",
        embedded_tiny_digest()
    ));
    if holds_embedded_tiny(&folder) {
        return Ok(folder);
    }
    std::fs::create_dir_all(base).map_err(|e| failed("creating", base, e))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let staging = base.join(format!(
        ".inpaint-worker-embedded-tiny-{}-{nanos}",
        std::process::id()
    ));
    for (path, bytes) in EMBEDDED_TINY_FILES {
        let file = staging.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| failed("creating", parent, e))?;
        }
        std::fs::write(&file, bytes).map_err(|e| failed("writing", &file, e))?;
    }
    if folder.exists() {
        // Another process may have finished the same folder meanwhile; otherwise it is stale.
        if holds_embedded_tiny(&folder) {
            let _ = std::fs::remove_dir_all(&staging);
            return Ok(folder);
        }
        std::fs::remove_dir_all(&folder).map_err(|e| failed("removing stale", &folder, e))?;
    }
    match std::fs::rename(&staging, &folder) {
        Ok(()) => Ok(folder),
        // Lost a race with another worker renaming its identical copy into place.
        Err(_) if holds_embedded_tiny(&folder) => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(folder)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(failed("renaming into", &folder, e))
        }
    }
}

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
    /// `f32`, `f16` or `bf16`.
    pub precision: Precision,
    /// Weights variant file suffix (`fp16` reads `*.fp16.safetensors`); empty: none.
    pub variant: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            backend: EngineBackend::Tch,
            model: String::new(),
            model_id: String::new(),
            device: DeviceSpec::Auto,
            precision: Precision::F32,
            variant: String::new(),
        }
    }
}

impl EngineConfig {
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

    /// Checks values that serde cannot: ranges, non-empty lists, the chain policy. Returns the
    /// first problem, naming its key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.topology.validate()?;
        if self.allow.read_buckets.is_empty() {
            return Err(invalid(
                "allow.read_buckets",
                "must name at least one bucket jobs may read from",
            ));
        }
        if self.allow.write_buckets.is_empty() {
            return Err(invalid(
                "allow.write_buckets",
                "must name at least one bucket outputs may be written to",
            ));
        }
        for (key, list) in [
            ("allow.read_buckets", &self.allow.read_buckets),
            ("allow.write_buckets", &self.allow.write_buckets),
        ] {
            if let Some(bad) = list
                .iter()
                .find(|b| inpaint_storage::ObjectRef::new(b.as_str(), "k").is_err())
            {
                return Err(invalid(key, format!("{bad:?} is not a valid bucket name")));
            }
        }
        if self.limits.max_object_bytes == 0 {
            return Err(invalid("limits.max_object_bytes", "must be above 0"));
        }
        if self.limits.max_decoded_pixels == 0 {
            return Err(invalid("limits.max_decoded_pixels", "must be above 0"));
        }
        if self.limits.job_timeout_secs == 0 {
            return Err(invalid("limits.job_timeout_secs", "must be above 0"));
        }
        let side = self.limits.max_output_side;
        if !(64..=2048).contains(&side) || !side.is_multiple_of(8) {
            return Err(invalid(
                "limits.max_output_side",
                format!("must be a multiple of 8 from 64 to 2048, got {side}"),
            ));
        }
        if self.engine.backend == EngineBackend::Tch && self.engine.model.trim().is_empty() {
            return Err(invalid(
                "engine.model",
                "must be set: a stable-diffusion-inpainting diffusers folder, or `embedded-tiny` \
                 for the random-weight test model (demos and tests only: it paints noise)",
            ));
        }
        if self.concurrency.prefetch == 0 {
            return Err(invalid("concurrency.prefetch", "must be at least 1"));
        }
        if self.concurrency.in_flight == 0 {
            return Err(invalid("concurrency.in_flight", "must be at least 1"));
        }
        if self.concurrency.in_flight > usize::from(self.concurrency.prefetch) {
            return Err(invalid(
                "concurrency.in_flight",
                format!(
                    "must not exceed concurrency.prefetch ({}), got {}",
                    self.concurrency.prefetch, self.concurrency.in_flight
                ),
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be at least 1"));
        }
        if self.retry.max_outage_attempts == 0 {
            return Err(invalid("retry.max_outage_attempts", "must be at least 1"));
        }
        if self.retry.base_delay_ms == 0 {
            return Err(invalid("retry.base_delay_ms", "must be above 0"));
        }
        if self.retry.max_delay_ms < self.retry.base_delay_ms {
            return Err(invalid(
                "retry.max_delay_ms",
                format!(
                    "must be at least retry.base_delay_ms ({}), got {}",
                    self.retry.base_delay_ms, self.retry.max_delay_ms
                ),
            ));
        }
        if !self.http.bind.is_empty() && self.http.bind.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.bind",
                format!(
                    "{:?} is not an address such as 127.0.0.1:9090",
                    self.http.bind
                ),
            ));
        }
        inpaint_stages::check_required(&self.chain.stages, self.chain.allow_unsafe_chain)
            .map_err(|e| invalid("chain.stages", e.to_string()))?;
        if let Some(c2pa) = &self.c2pa {
            self.validate_c2pa(c2pa)?;
        }
        Ok(())
    }

    #[cfg(not(feature = "c2pa"))]
    fn validate_c2pa(&self, _: &C2paSettings) -> Result<(), SettingsError> {
        Err(invalid("c2pa", NO_C2PA_SUPPORT))
    }

    /// What can be checked without reading files; the credentials themselves are checked by
    /// [`crate::images::Signer::build`], which signs a test image with them.
    #[cfg(feature = "c2pa")]
    fn validate_c2pa(&self, c2pa: &C2paSettings) -> Result<(), SettingsError> {
        for (key, path, what) in [
            (
                "c2pa.cert_chain",
                &c2pa.cert_chain,
                "the PEM file with the signing certificate, then its intermediates",
            ),
            (
                "c2pa.private_key",
                &c2pa.private_key,
                "the PEM file with the signing key (PKCS#8)",
            ),
        ] {
            if path.as_os_str().is_empty() {
                return Err(invalid(key, format!("must name {what}")));
            }
            // Key material pasted into the configuration would end up in config maps, process
            // environments and logs of the settings; only a path to a protected file is taken.
            if path.to_string_lossy().contains("-----BEGIN") {
                return Err(invalid(
                    key,
                    format!("must be a path to {what}, not PEM text"),
                ));
            }
        }
        if c2pa.tsa_url.is_some() {
            return Err(invalid(
                "c2pa.tsa_url",
                "must stay unset: signing is offline and this build has no HTTP client to reach \
                 a time-stamp authority",
            ));
        }
        if c2pa.training_mining_constraint.is_some()
            && c2pa.training_mining != inpaint_provenance::TrainingMiningUse::Constrained
        {
            return Err(invalid(
                "c2pa.training_mining_constraint",
                "is only written with training_mining = \"constrained\"",
            ));
        }
        // The manifest's digital source type and software agent come from the provenance
        // stage's record: without the stage every job would fail at signing.
        if !self
            .chain
            .stages
            .iter()
            .any(|stage| stage.kind_name() == "provenance")
        {
            return Err(invalid(
                "c2pa",
                "signing needs a `provenance` stage in chain.stages (the manifest describes \
                 its record)",
            ));
        }
        Ok(())
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
        ];
        for (key, mutate) in cases {
            let mut s = valid();
            mutate(&mut s);
            assert_eq!(key_of(&s), key);
        }
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

    /// Every file of the fixture folder is embedded with its bytes, and nothing else is: a file
    /// added to (or removed from) the tiny model breaks this test, not a container at run time.
    #[test]
    fn the_embedded_tiny_files_are_exactly_the_fixture_folder() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/parity/fixtures/models/tiny-sd-a");
        let mut on_disk = Vec::new();
        let mut pending = vec![root.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("fixture folder") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let relative = path.strip_prefix(&root).expect("inside");
                    on_disk.push((
                        relative.to_string_lossy().replace('\\', "/"),
                        std::fs::read(&path).expect("read"),
                    ));
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<(String, Vec<u8>)> = EMBEDDED_TINY_FILES
            .iter()
            .map(|(p, b)| ((*p).to_owned(), b.to_vec()))
            .collect();
        embedded.sort();
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(names(&embedded), names(&on_disk));
        assert!(
            embedded == on_disk,
            "an embedded file's bytes differ from the fixture's"
        );
    }

    #[test]
    fn embedded_tiny_is_written_once_reused_and_repaired() {
        let base = tempfile::tempdir().expect("tempdir");
        let folder = materialise_embedded_tiny(base.path()).expect("written");
        assert!(folder.starts_with(base.path()));
        assert!(holds_embedded_tiny(&folder));
        // Reused as is.
        let marker = folder.join("marker");
        std::fs::write(&marker, b"x").expect("marker");
        assert_eq!(
            materialise_embedded_tiny(base.path()).expect("again"),
            folder
        );
        assert!(marker.exists(), "an intact folder is reused, not rewritten");
        // Every damaged file is noticed and the folder replaced.
        for (path, _) in EMBEDDED_TINY_FILES {
            std::fs::write(folder.join(path), b"truncated").expect("damage");
            assert!(!holds_embedded_tiny(&folder), "{path}");
            assert_eq!(
                materialise_embedded_tiny(base.path()).expect("repaired"),
                folder
            );
            assert!(holds_embedded_tiny(&folder), "{path} repaired");
        }
        // No staging folders are left behind.
        let left: Vec<_> = std::fs::read_dir(base.path())
            .expect("base")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        // An unwritable base is an error naming the key, not a panic.
        let file = base.path().join("not-a-folder");
        std::fs::write(&file, b"").expect("file");
        match materialise_embedded_tiny(&file) {
            Err(SettingsError::Invalid { key, .. }) => assert_eq!(key, "engine.model"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
