//! The store side of the [`JobFlow`]: inputs in (the idempotency check against an earlier
//! delivery's manifest, downloads, decoding within the limits) and outputs out (encoding with
//! provenance, C2PA signing, uploads, the manifest).

use bytes::Bytes;
use inpaint_job::{
    ErrorCode, InpaintJob, InpaintResult, JobId, JobStatus, OutputObject, WorkerInfo,
};
use inpaint_storage::{ObjectRef, PutRequest};
use sha2::{Digest, Sha256};
use std::time::Instant;
use tracing::Instrument;

use super::{Fetched, Inputs, JobFlow, Timings, blocking};
use crate::error::JobFailure;
use crate::images::{self, Provenance};
use crate::inference::hex;
use crate::report;

/// The licence written into every output's metadata.
pub const LICENCE: &str = "CreativeML OpenRAIL-M";
/// Name of the per-job manifest written next to the outputs (the stored result, for
/// idempotent redeliveries).
pub const MANIFEST_NAME: &str = "result.json";

impl JobFlow {
    /// The stored result of an earlier delivery, when its manifest and every output it lists
    /// exist.
    async fn previous(&self, job: &InpaintJob) -> Result<Option<InpaintResult>, JobFailure> {
        let manifest = manifest_ref(job)?;
        let stored = match self.storage.get(&manifest, Some(1 << 20)).await {
            Ok(stored) => stored,
            Err(inpaint_storage::StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Ok(result) = InpaintResult::from_json(&stored.bytes) else {
            return Ok(None);
        };
        if result.status != JobStatus::Succeeded {
            return Ok(None);
        }
        // A job_id reused for another request is refused, not answered with the old result.
        result
            .check_same_request(job)
            .map_err(|e| JobFailure::from(&e))?;
        for output in &result.outputs {
            if self.storage.size_of(&output.uri).await?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(result))
    }

    /// The decoded inputs, or the stored result when an earlier delivery's outputs answer the
    /// job.
    ///
    /// Idempotency check and downloads at once: a first delivery (the common case) waits for
    /// one round trip to the store, not two. On a redelivery whose outputs exist the downloads
    /// are wasted, and their errors ignored: the stored result answers the job even when its
    /// inputs have since been deleted.
    pub(super) async fn inputs(
        &self,
        job: &InpaintJob,
        timings: &mut Timings,
    ) -> Result<Fetched, JobFailure> {
        let t = Instant::now();
        let max_bytes = Some(self.limits.max_object_bytes);
        let downloads = async {
            match (&job.image, &job.mask) {
                (Some(image), Some(mask)) => futures::try_join!(
                    self.storage.get(image, max_bytes),
                    self.storage.get(mask, max_bytes),
                )
                .map(Some),
                _ => Ok(None),
            }
        };
        let (previous, downloaded) = futures::future::join(self.previous(job), downloads)
            .instrument(tracing::info_span!("download"))
            .await;
        if let Some(previous) = previous? {
            return Ok(Fetched::Answered(Box::new(previous)));
        }
        let downloaded = downloaded?;
        self.timed(timings, "download", t);

        // Decode, within the limits, off the async threads; image and mask at once.
        let t = Instant::now();
        let inputs = match downloaded {
            Some((image_bytes, mask_bytes)) => {
                let max_pixels = self.limits.max_decoded_pixels;
                let image = blocking("decoding", move || {
                    images::decode_rgb(&image_bytes.bytes, "image", max_pixels)
                });
                let mask = blocking("decoding", move || {
                    images::decode_rgb(&mask_bytes.bytes, "mask", max_pixels)
                        .map(|mask| inpaint_engine::pipeline::pil_luma(&mask))
                });
                let (image, mask) = futures::try_join!(image, mask)?;
                if image.dimensions() != mask.dimensions() {
                    let (mw, mh) = mask.dimensions();
                    return Err(JobFailure::permanent(
                        ErrorCode::UndecodableImage,
                        format!(
                            "mask is {mw}x{mh} but image is {}x{}",
                            image.width(),
                            image.height()
                        ),
                    ));
                }
                // Without an explicit size or a crop the output has the input's size: only now
                // known, so only now checked against what the chain can serve.
                let p = &job.params;
                if p.width.is_none() && p.height.is_none() && p.crop_to_mask.is_none() {
                    let (w, h) = image.dimensions();
                    self.chain_limits
                        .check_size("image", w, h)
                        .map_err(|e| JobFailure::from(&e))?;
                }
                Inputs {
                    image: Some(image),
                    mask: Some(mask),
                }
            }
            None => Inputs {
                image: None,
                mask: None,
            },
        };
        self.timed(timings, "decode", t);
        Ok(Fetched::Fresh(inputs))
    }

    /// Encodes every output with its provenance, signs it when configured, and writes it to
    /// the store; the result's entries, with the sha256 of the bytes written.
    pub(super) async fn store(
        &self,
        job: &InpaintJob,
        outputs: Vec<inpaint_plugin_api::OutputImage>,
        timings: &mut Timings,
    ) -> Result<Vec<OutputObject>, JobFailure> {
        let t = Instant::now();
        let format = job.output.format;
        let model = self.inference.model();
        let uploads = outputs.into_iter().map(|out| async move {
            let index = out.index;
            let uri = job.output_key(index).map_err(|e| JobFailure::from(&e))?;
            let (width, height) = out.image.dimensions();
            let safety = report::safety_of(&out);
            let watermark = report::watermark_of(&out);
            let provenance = Provenance::of(&out);
            let image = out.image;
            let signer = self.signer.clone();
            // Signed last, so the sha256 below and the manifest's data hash are of the bytes
            // that are stored.
            let bytes = blocking("encoding", move || {
                let encoded = images::encode(&image, format, &provenance)?;
                signer.sign(encoded, format, &provenance)
            })
            .await?;
            let sha256 = hex(&Sha256::digest(&bytes));
            let request = PutRequest {
                content_type: Some(format.content_type().into()),
                metadata: vec![
                    ("job-id".into(), job.job_id.to_string()),
                    ("model".into(), model.id.clone()),
                    ("model-sha256".into(), model.weights_sha256.clone()),
                    ("licence".into(), LICENCE.into()),
                    ("seed".into(), out.seed.to_string()),
                ],
            };
            self.storage.put(&uri, Bytes::from(bytes), &request).await?;
            Ok::<_, JobFailure>(OutputObject {
                uri,
                index,
                seed: out.seed,
                sha256,
                width,
                height,
                content_type: format.content_type().into(),
                safety,
                watermark,
            })
        });
        let stored = futures::future::try_join_all(uploads)
            .instrument(tracing::info_span!("upload"))
            .await?;
        self.timed(timings, "upload", t);
        Ok(stored)
    }

    /// Writes the result beside the outputs (what a redelivery answers with) and returns it.
    pub(super) async fn write_manifest(
        &self,
        job: &InpaintJob,
        mut result: InpaintResult,
        timings: &mut Timings,
    ) -> Result<InpaintResult, JobFailure> {
        let t = Instant::now();
        result.timings_ms = timings.clone();
        let body = result
            .to_json()
            .map_err(|e| JobFailure::internal(e.to_string()))?;
        let request = PutRequest {
            content_type: Some("application/json".into()),
            metadata: vec![("job-id".into(), job.job_id.to_string())],
        };
        self.storage
            .put(&manifest_ref(job)?, Bytes::from(body), &request)
            .await?;
        // In the published result (the runner merges `timings`), not in the manifest it timed.
        self.timed(timings, "manifest", t);
        Ok(result)
    }
}

/// The manifest object of a job: `result.json` beside its outputs.
pub fn manifest_ref(job: &InpaintJob) -> Result<ObjectRef, JobFailure> {
    let first = job.output_key(0).map_err(|e| JobFailure::from(&e))?;
    let key = match first.key().rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{MANIFEST_NAME}"),
        None => MANIFEST_NAME.to_owned(),
    };
    ObjectRef::new(first.bucket(), key).map_err(|e| JobFailure::internal(e.to_string()))
}

/// The seed of image 0 when the job gives none: derived from the job id, so a redelivered job
/// makes the same images.
pub fn fallback_seed(job_id: JobId) -> u64 {
    let bytes = job_id.as_uuid().as_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(first) >> 11
}

/// This process as results name it: version and host.
pub fn worker_info() -> WorkerInfo {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    WorkerInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        host,
        missing_required_stages: vec![],
    }
}
