//! [`Settings::validate`]: what serde cannot check — ranges, non-empty lists, the chain
//! policy, key combinations — each problem reported with its dotted key.

use std::net::SocketAddr;

#[cfg(not(feature = "c2pa"))]
use super::NO_C2PA_SUPPORT;
use super::{C2paSettings, EngineBackend, Settings, SettingsError, invalid};

/// The largest `engine.max_batch`: past this a UNet batch gains nothing on any GPU.
const MAX_BATCH: usize = 64;
/// The longest `engine.batch_wait_ms`.
pub(crate) const MAX_BATCH_WAIT_MS: u64 = 10_000;

impl Settings {
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
        if self.engine.max_batch == 0 || self.engine.max_batch > MAX_BATCH {
            return Err(invalid(
                "engine.max_batch",
                format!("must be 1 to {MAX_BATCH}, got {}", self.engine.max_batch),
            ));
        }
        if self.engine.batch_wait_ms > MAX_BATCH_WAIT_MS {
            return Err(invalid(
                "engine.batch_wait_ms",
                format!(
                    "must be at most {MAX_BATCH_WAIT_MS} (every job of a batch waits this long \
                     at worst), got {}",
                    self.engine.batch_wait_ms
                ),
            ));
        }
        if self.engine.max_batch > 1 && self.concurrency.in_flight < self.engine.max_batch {
            return Err(invalid(
                "concurrency.in_flight",
                format!(
                    "must be at least engine.max_batch ({}) for batches to fill (and \
                     concurrency.prefetch at least that), got {}",
                    self.engine.max_batch, self.concurrency.in_flight
                ),
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
            .any(|stage| stage.kind() == inpaint_plugin_api::report::StageKind::Provenance)
        {
            return Err(invalid(
                "c2pa",
                "signing needs a `provenance` stage in chain.stages (the manifest describes \
                 its record)",
            ));
        }
        Ok(())
    }
}
