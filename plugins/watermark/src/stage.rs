//! [`WatermarkConfig`] (plain serde data) and [`WatermarkStage`], the running stage.
//!
//! **Order.** The stage must come after every stage that changes pixels (the safety checker may
//! black out an image; anything after the watermark that changes pixels damages it) and before
//! a provenance stage, which signs the final pixels. In the default chain it is the last stage.
//! The worker runs stages in the configured order and does not reorder them.
//!
//! **Pixels.** The stage embeds with [`dwt_dct::encode`]: every pixel changes by at most
//! [`crate::MAX_CHANNEL_CHANGE`] levels, saturating. The package's byte-exact embedding (which
//! wraps values around) is not reachable from configuration.

use std::collections::BTreeMap;

use inpaint_plugin_api::{
    Change, Finding, JobContext, Modification, OutputImage, Stage, StageError, Verdict,
    WatermarkFinding, WatermarkOutcome,
};
use serde::{Deserialize, Serialize};

use crate::dwt_dct::{self, DEFAULT_DETECT_THRESHOLD, MIN_PIXELS};
use crate::error::WatermarkError;
use crate::payload::{DEFAULT_PAYLOAD, Payload};

/// Configuration of the watermark stage.
///
/// ```toml
/// [[plugins]]
/// type = "watermark"
/// payload = { text = "StableDiffusionV1-Inpainting" }  # or { hex = "..." } or { bits = "0101..." }
/// small_images = "refuse"                              # or "skip"
/// verify = true
/// detect_threshold = 0.65
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatermarkConfig {
    /// What the watermark carries. Default: the text `StableDiffusionV1-Inpainting` (224 bits),
    /// the payload of Stable Diffusion's inpainting scripts. Set an operator id to tell your
    /// outputs apart; short payloads are repeated more often and so read back more reliably.
    pub payload: PayloadSpec,
    /// What to do with an image the reference refuses (fewer than 256×256 pixels) or one too
    /// narrow to hold every payload bit. Default `refuse`: the job fails, as the reference does.
    pub small_images: SmallImages,
    /// Read the watermark back after embedding and report `bits_matched` and `bit_error_rate`
    /// (about one extra millisecond per 512×512 image). A result under `detect_threshold` is
    /// logged at warn; it does not fail the job. Default `true`.
    pub verify: bool,
    /// Fraction of payload bits (0..=1) that must match for the verification to count as
    /// detected. Default 0.65 ([`DEFAULT_DETECT_THRESHOLD`]).
    pub detect_threshold: f64,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        Self {
            payload: PayloadSpec::default(),
            small_images: SmallImages::default(),
            verify: true,
            detect_threshold: DEFAULT_DETECT_THRESHOLD,
        }
    }
}

/// How a payload is written in configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadSpec {
    /// UTF-8 text; its bytes, MSB first.
    Text(String),
    /// Bytes in hex, MSB first.
    Hex(String),
    /// A string of `0` and `1`.
    Bits(String),
}

impl Default for PayloadSpec {
    fn default() -> Self {
        PayloadSpec::Text(String::from_utf8_lossy(DEFAULT_PAYLOAD).into_owned())
    }
}

impl PayloadSpec {
    /// The payload's bits.
    pub fn payload(&self) -> Result<Payload, WatermarkError> {
        match self {
            PayloadSpec::Text(text) => Payload::from_bytes(text.as_bytes()),
            PayloadSpec::Hex(hex) => Payload::from_hex(hex),
            PayloadSpec::Bits(bits) => Payload::from_bit_str(bits),
        }
    }
}

/// What the stage does with an image it cannot watermark fully.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmallImages {
    /// Fail the job, like the reference (`image too small`). The default.
    #[default]
    Refuse,
    /// Pass the image through unmarked, with `watermark.status = skipped` in its metadata, a
    /// `skipped = 1` score in the stage's report and a warning in the log.
    Skip,
}

impl WatermarkConfig {
    /// Parses the payload and checks the threshold.
    pub fn build(&self) -> Result<WatermarkStage, WatermarkError> {
        if !(0.0..=1.0).contains(&self.detect_threshold) {
            return Err(WatermarkError::InvalidThreshold(self.detect_threshold));
        }
        let payload = self.payload.payload()?;
        tracing::info!(
            bits = payload.len(),
            payload = %payload.to_hex(),
            small_images = ?self.small_images,
            verify = self.verify,
            "watermark stage ready (dwtDct)"
        );
        Ok(WatermarkStage {
            payload,
            small_images: self.small_images,
            verify: self.verify,
            detect_threshold: self.detect_threshold,
        })
    }
}

/// The watermark stage: after output, embeds the payload into each image with the `dwtDct`
/// method and records what it did: a typed report ([`Finding::Watermark`], what the job result
/// reads), and the same in the image's metadata and scores (what external stages see).
///
/// Metadata: `watermark.method = dwtDct`, `watermark.payload` (hex, MSB first, last byte
/// zero-padded), `watermark.bits` (payload length), `watermark.status` (`embedded` or
/// `skipped`), and `watermark.skipped_reason` when skipped. Scores: `bits_total`, and with
/// `verify` `bits_matched` and `bit_error_rate`; `skipped = 1` when skipped.
#[derive(Debug, Clone)]
pub struct WatermarkStage {
    payload: Payload,
    small_images: SmallImages,
    verify: bool,
    detect_threshold: f64,
}

impl WatermarkStage {
    /// The stage's name in logs, audit entries and metadata.
    pub const NAME: &'static str = "watermark";
    /// The method name recorded in metadata (invisible-watermark's name for it).
    pub const METHOD: &'static str = "dwtDct";

    /// The payload it embeds.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    fn metadata(key: &str, value: impl Into<String>) -> Modification {
        Modification::new(Change::AddMetadata {
            key: format!("watermark.{key}"),
            value: value.into(),
        })
    }

    /// The stage's typed report on one image ([`Finding::Watermark`], what the job result
    /// reads).
    pub fn finding(&self, outcome: WatermarkOutcome) -> WatermarkFinding {
        WatermarkFinding {
            method: Self::METHOD.to_owned(),
            payload_hex: self.payload.to_hex(),
            bits: self.payload.len(),
            outcome,
        }
    }

    /// The report, then the same in metadata words (what external stages see):
    /// `watermark.method`, `.payload`, `.bits`, `.status` and, when skipped, `.skipped_reason`.
    fn describe(&self, outcome: WatermarkOutcome) -> Vec<Modification> {
        let report = self.finding(outcome);
        let mut mods = vec![
            Self::metadata("method", report.method.clone()),
            Self::metadata("payload", report.payload_hex.clone()),
            Self::metadata("bits", report.bits.to_string()),
        ];
        match &report.outcome {
            WatermarkOutcome::Embedded { .. } => mods.push(Self::metadata("status", "embedded")),
            WatermarkOutcome::Skipped { reason } => {
                mods.push(Self::metadata("status", "skipped"));
                mods.push(Self::metadata("skipped_reason", reason.clone()));
            }
        }
        mods.insert(
            0,
            Modification::new(Change::Report(Finding::Watermark(report))),
        );
        mods
    }

    /// Why `image` cannot carry the whole payload, if it cannot.
    fn unfit(&self, width: u32, height: u32) -> Option<WatermarkError> {
        if u64::from(width) * u64::from(height) < MIN_PIXELS {
            return Some(WatermarkError::TooSmall { width, height });
        }
        let capacity = dwt_dct::capacity(width, height);
        (capacity < self.payload.len()).then_some(WatermarkError::PayloadTooLong {
            width,
            height,
            capacity,
            bits: self.payload.len(),
        })
    }
}

impl Stage for WatermarkStage {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn after_output(&self, _ctx: &JobContext, output: &OutputImage) -> Result<Verdict, StageError> {
        let (width, height) = output.image.dimensions();
        if let Some(problem) = self.unfit(width, height) {
            return match self.small_images {
                SmallImages::Refuse => Err(StageError::Failed(problem.to_string())),
                SmallImages::Skip => {
                    tracing::warn!(image = output.index, %problem, "image left without watermark");
                    let mut mods = self.describe(WatermarkOutcome::Skipped {
                        reason: problem.to_string(),
                    });
                    mods.push(Modification::new(Change::AddScores(BTreeMap::from([(
                        "skipped".to_owned(),
                        1.0,
                    )]))));
                    Ok(Verdict::Modify(mods))
                }
            };
        }

        let marked = dwt_dct::encode(&output.image, self.payload.bits())
            .map_err(|e| StageError::Failed(e.to_string()))?;
        let mut scores = BTreeMap::from([("bits_total".to_owned(), self.payload.len() as f32)]);
        let mut bits_matched = None;
        if self.verify {
            let detection = dwt_dct::detect(&marked, self.payload.bits(), self.detect_threshold)
                .map_err(|e| StageError::Failed(e.to_string()))?;
            if !detection.verdict {
                tracing::warn!(
                    image = output.index,
                    bits_matched = detection.bits_matched,
                    total = detection.total,
                    "watermark reads back below the detection threshold right after embedding"
                );
            }
            bits_matched = Some(detection.bits_matched);
            scores.insert("bits_matched".to_owned(), detection.bits_matched as f32);
            scores.insert(
                "bit_error_rate".to_owned(),
                (1.0 - detection.matched_fraction()) as f32,
            );
        }
        let mut mods = vec![Modification::new(Change::ReplaceImage(marked))];
        mods.extend(self.describe(WatermarkOutcome::Embedded { bits_matched }));
        mods.push(Modification::new(Change::AddScores(scores)));
        Ok(Verdict::Modify(mods))
    }
}

#[cfg(test)]
mod tests {
    use inpaint_plugin_api::{Chain, RgbImage};

    use super::*;

    fn noise(width: u32, height: u32) -> RgbImage {
        let mut state = 0x2545_f491_u32;
        RgbImage::from_fn(width, height, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let base = ((x + y) / 3) as u8;
            image::Rgb([
                base.wrapping_add((state & 15) as u8),
                (x as u8).wrapping_mul(3) / 2,
                200u8.wrapping_sub(base / 2),
            ])
        })
    }

    #[test]
    fn config_is_strict_serde_data() {
        let config: WatermarkConfig = toml::from_str(
            r#"
payload = { hex = "0a0b" }
small_images = "skip"
"#,
        )
        .expect("toml");
        assert_eq!(config.payload, PayloadSpec::Hex("0a0b".into()));
        assert_eq!(config.small_images, SmallImages::Skip);
        assert!(config.verify);
        assert_eq!(
            WatermarkConfig::default()
                .payload
                .payload()
                .expect("default")
                .len(),
            224
        );
        assert!(toml::from_str::<WatermarkConfig>("payloads = { text = \"x\" }").is_err());
        assert!(toml::from_str::<WatermarkConfig>("payload = { json = \"x\" }").is_err());
        // The package's pixel-corrupting embedding exists for parity tests only: no key of the
        // stage's configuration selects it.
        for key in ["mode", "embedding", "reference_exact", "wrap"] {
            let text = format!("{key} = \"reference-exact\"");
            assert!(toml::from_str::<WatermarkConfig>(&text).is_err(), "{key}");
        }
        let json = serde_json::to_value(WatermarkConfig::default()).expect("json");
        assert_eq!(json["payload"]["text"], "StableDiffusionV1-Inpainting");
        assert_eq!(json["small_images"], "refuse");
    }

    #[test]
    fn build_validates() {
        let bad = |config: WatermarkConfig| config.build().is_err();
        assert!(bad(WatermarkConfig {
            payload: PayloadSpec::Text(String::new()),
            ..WatermarkConfig::default()
        }));
        assert!(bad(WatermarkConfig {
            payload: PayloadSpec::Bits("01x".into()),
            ..WatermarkConfig::default()
        }));
        assert!(bad(WatermarkConfig {
            detect_threshold: 1.01,
            ..WatermarkConfig::default()
        }));
        let stage = WatermarkConfig {
            payload: PayloadSpec::Text("operator-42".into()),
            ..WatermarkConfig::default()
        }
        .build()
        .expect("build");
        assert_eq!(stage.payload().to_bytes(), b"operator-42");
    }

    #[test]
    fn embeds_inside_a_chain_and_reports() {
        let stage = WatermarkConfig::default().build().expect("build");
        let chain = Chain::new(vec![Box::new(stage)]);
        let image = noise(320, 288);
        let outcome = chain
            .after_output(
                &JobContext::default(),
                vec![OutputImage::new(0, 7, image.clone())],
            )
            .expect("chain");
        let out = &outcome.images[0];
        assert_ne!(out.image, image);
        assert_eq!(
            out.image,
            dwt_dct::encode(&image, Payload::default().bits()).expect("encode")
        );
        assert_eq!(out.metadata_value("watermark.method"), Some("dwtDct"));
        assert_eq!(
            out.metadata_value("watermark.payload"),
            Some(Payload::default().to_hex().as_str())
        );
        assert_eq!(out.metadata_value("watermark.bits"), Some("224"));
        assert_eq!(out.metadata_value("watermark.status"), Some("embedded"));
        let report = out.watermark().expect("typed report");
        assert_eq!(report.method, "dwtDct");
        assert_eq!(report.payload_hex, Payload::default().to_hex());
        assert_eq!(report.bits, 224);
        let WatermarkOutcome::Embedded {
            bits_matched: Some(read),
        } = report.outcome
        else {
            panic!("embedded and verified: {report:?}");
        };
        assert_eq!(read as f32, out.reports[0].scores["bits_matched"]);
        let scores = &out.reports[0].scores;
        assert_eq!(out.reports[0].stage, "watermark");
        assert_eq!(scores["bits_total"], 224.0);
        // The package's own embedding reads back 153 of 224 bits of this image (it loses
        // 0-bits on its own); the stage's bounded embedding must not read fewer.
        let reference =
            dwt_dct::encode_reference_exact(&image, Payload::default().bits()).expect("reference");
        let reference_read = dwt_dct::detect(&reference, Payload::default().bits(), 0.65)
            .expect("detect")
            .bits_matched;
        assert_eq!(reference_read, 153);
        assert!(scores["bits_matched"] >= 153.0, "{scores:?}");
        assert!(
            outcome
                .audit
                .iter()
                .any(|e| e.detail.starts_with("image replaced"))
        );
    }

    #[test]
    fn small_images_are_refused_or_skipped() {
        let small = OutputImage::new(1, 0, noise(255, 255));
        let refuse = WatermarkConfig::default().build().expect("build");
        let err = refuse
            .after_output(&JobContext::default(), &small)
            .expect_err("refused");
        assert!(err.to_string().contains("at least 65536 pixels"), "{err}");
        assert!(!err.is_retryable());

        let skip = WatermarkConfig {
            small_images: SmallImages::Skip,
            ..WatermarkConfig::default()
        }
        .build()
        .expect("build");
        let Verdict::Modify(mods) = skip
            .after_output(&JobContext::default(), &small)
            .expect("skip")
        else {
            panic!("expected metadata");
        };
        assert!(
            !mods
                .iter()
                .any(|m| matches!(m.change, Change::ReplaceImage(_)))
        );
        assert!(mods.iter().any(|m| m.change
            == Change::AddMetadata {
                key: "watermark.status".into(),
                value: "skipped".into()
            }));
        let Some(Change::Report(Finding::Watermark(report))) = mods.first().map(|m| &m.change)
        else {
            panic!("the typed report comes first: {mods:?}");
        };
        assert!(!report.is_embedded());
        assert!(
            matches!(&report.outcome, WatermarkOutcome::Skipped { reason } if reason.contains("65536")),
            "{report:?}"
        );

        // 1024x64 passes the reference's pixel count but holds only 8 * 128 = 1024 blocks.
        let long = WatermarkConfig {
            payload: PayloadSpec::Bits("1".repeat(1025)),
            ..WatermarkConfig::default()
        }
        .build()
        .expect("build");
        let err = long
            .after_output(
                &JobContext::default(),
                &OutputImage::new(0, 0, noise(1024, 64)),
            )
            .expect_err("too long");
        assert!(err.to_string().contains("1024 watermark blocks"), "{err}");
    }
}
