//! [`C2paConfig`] (plain serde data) and [`C2paSigner`]: signs an encoded, already-annotated
//! PNG, JPEG or WebP with a C2PA manifest (Content Credentials), offline, with an
//! operator-provided certificate chain and private key. Only with the `c2pa` cargo feature.
//!
//! **Offline by construction.** The `c2pa` crate is built without its HTTP features and with
//! its pure-Rust crypto backend (no OpenSSL): it has no HTTP client to call, so signing and
//! reading never touch the network (no OCSP, no remote manifests, no time-stamp authority).
//! The price: signatures carry no trusted time stamp, so validators judge the certificate's
//! validity at validation time; once it expires, manifests report
//! `signingCredential.expired`. A time-stamp authority (`tsa_url`) needs an HTTP client and
//! is refused by [`C2paConfig::build`].
//!
//! **What the manifest says.**
//! - `c2pa.actions.v2`: one `c2pa.created` action whose `digitalSourceType` is the provenance
//!   fields' IPTC source type (`compositeWithTrainedAlgorithmicMedia` for inpainting,
//!   `trainedAlgorithmicMedia` for text-only jobs) and whose `softwareAgent` is
//!   [`creator_tool`] (worker, version, model id);
//! - `cawg.training-mining`: the configured use for AI training, generative AI training, AI
//!   inference and data mining (default `constrained`, pointing at the licence's use
//!   restrictions);
//! - `c2pa.hash.data`: a hash of every byte of the file outside the manifest, so the EXIF and
//!   XMP written by [`embed_png`](crate::embed_png), [`embed_jpeg`](crate::embed_jpeg) and
//!   [`embed_webp`](crate::embed_webp) are covered by the signature too. Sign last.
//!
//! The schema.org `CreativeWork` assertion is deprecated for C2PA 2 claims (which this crate
//! writes), so the licence travels in the training-mining constraint and the XMP.

use std::fmt;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use ::c2pa::{Builder, BuilderIntent, Context, DigitalSourceType, Reader, Settings, SigningAlg};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::ProvenanceError;
use crate::png::crc32;
use crate::stage::{
    DIGITAL_SOURCE_TYPE_COMPOSITE, DIGITAL_SOURCE_TYPE_TRAINED, LICENCE, LICENCE_RESTRICTIONS,
    creator_tool, field,
};

/// Signature algorithm of the signing key (C2PA's list, lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum C2paAlgorithm {
    /// ECDSA P-256 with SHA-256 (default).
    #[default]
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// ECDSA P-521 with SHA-512.
    Es512,
    /// RSASSA-PSS with SHA-256 (RSA key of 2048 bits or more).
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// Ed25519.
    Ed25519,
}

impl From<C2paAlgorithm> for SigningAlg {
    fn from(algorithm: C2paAlgorithm) -> Self {
        match algorithm {
            C2paAlgorithm::Es256 => SigningAlg::Es256,
            C2paAlgorithm::Es384 => SigningAlg::Es384,
            C2paAlgorithm::Es512 => SigningAlg::Es512,
            C2paAlgorithm::Ps256 => SigningAlg::Ps256,
            C2paAlgorithm::Ps384 => SigningAlg::Ps384,
            C2paAlgorithm::Ps512 => SigningAlg::Ps512,
            C2paAlgorithm::Ed25519 => SigningAlg::Ed25519,
        }
    }
}

/// The `use` value of a CAWG training-and-data-mining entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TrainingMiningUse {
    /// Use is allowed.
    Allowed,
    /// Use is not allowed.
    NotAllowed,
    /// Use is allowed under the terms in `training_mining_constraint` (default).
    #[default]
    Constrained,
}

/// Configuration of C2PA signing.
///
/// ```toml
/// cert_chain = "/etc/inpaint/c2pa/chain.pem"   # signing certificate, then intermediates
/// private_key = "/etc/inpaint/c2pa/signer.key" # PKCS#8 PEM
/// algorithm = "es256"
/// training_mining = "constrained"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct C2paConfig {
    /// PEM file with the end-entity signing certificate first, then its intermediates (the
    /// root stays with the validators). C2PA wants an X.509 v3 end-entity certificate (not a
    /// CA, not self-signed) with key usage `digitalSignature`, an extended key usage such as
    /// `emailProtection` or `documentSigning` (1.3.6.1.5.5.7.3.36), and an authority key
    /// identifier; [`C2paConfig::build`] checks this by signing a test image.
    pub cert_chain: PathBuf,
    /// PEM file with the signing certificate's private key (PKCS#8, `BEGIN PRIVATE KEY`).
    pub private_key: PathBuf,
    /// Algorithm of the key. Default `es256`.
    #[serde(default)]
    pub algorithm: C2paAlgorithm,
    /// Time-stamp authority URL. Must stay unset: this build has no HTTP client (see the
    /// module documentation), so a URL is refused rather than silently ignored.
    #[serde(default)]
    pub tsa_url: Option<String>,
    /// What the `cawg.training-mining` assertion says about AI training, generative AI
    /// training, AI inference and data mining on the output. Default `constrained`.
    #[serde(default)]
    pub training_mining: TrainingMiningUse,
    /// The constraint text when `training_mining` is `constrained`. Default: the licence and
    /// where its use restrictions are.
    #[serde(default)]
    pub training_mining_constraint: Option<String>,
}

impl C2paConfig {
    /// Reads the certificate chain and key, builds the signer, and signs and validates a
    /// one-pixel PNG with it, so that a credential C2PA would reject fails at startup rather
    /// than on the first job.
    pub fn build(&self) -> Result<C2paSigner, ProvenanceError> {
        if let Some(url) = &self.tsa_url {
            return Err(c2pa_error(format!(
                "tsa_url {url:?}: time-stamping needs an HTTP client, and this build of the c2pa \
                 feature has none (signing is offline); leave tsa_url unset"
            )));
        }
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path)
                .map_err(|e| c2pa_error(format!("reading the {what} {}: {e}", path.display())))
        };
        let cert_chain = read(&self.cert_chain, "certificate chain")?;
        let private_key = read(&self.private_key, "private key")?;
        let constraint = self
            .training_mining_constraint
            .clone()
            .unwrap_or_else(|| format!("{LICENCE}. {LICENCE_RESTRICTIONS}."));
        let signer = C2paSigner {
            cert_chain,
            private_key,
            algorithm: self.algorithm,
            training_mining: self.training_mining,
            constraint,
            context: offline_context(None)?,
        };
        signer.self_test()?;
        Ok(signer)
    }
}

/// Signs encoded images with a C2PA manifest. Built by [`C2paConfig::build`].
pub struct C2paSigner {
    cert_chain: Vec<u8>,
    private_key: Vec<u8>,
    algorithm: C2paAlgorithm,
    training_mining: TrainingMiningUse,
    constraint: String,
    context: Arc<Context>,
}

impl fmt::Debug for C2paSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("C2paSigner")
            .field("algorithm", &self.algorithm)
            .field("training_mining", &self.training_mining)
            .finish_non_exhaustive()
    }
}

impl C2paSigner {
    /// Returns `image` (an encoded PNG, JPEG or WebP, as `mime_type` says: `image/png`,
    /// `image/jpeg`, `image/webp`) with a signed C2PA manifest embedded, describing it with
    /// the provenance `fields` (as [`png_fields`](crate::png_fields) returns them; the IPTC
    /// digital source type among them is required). Pixels and existing metadata are kept;
    /// the manifest goes into a PNG `caBX` chunk, JPEG `APP11` segments or a WebP `C2PA`
    /// chunk.
    pub fn sign(
        &self,
        image: &[u8],
        mime_type: &str,
        fields: &[(String, String)],
    ) -> Result<Vec<u8>, ProvenanceError> {
        if !matches!(mime_type, "image/png" | "image/jpeg" | "image/webp") {
            return Err(c2pa_error(format!(
                "unsupported format {mime_type:?}: PNG, JPEG or WebP"
            )));
        }
        let source = match field(fields, "digital_source_type") {
            Some(DIGITAL_SOURCE_TYPE_COMPOSITE) => {
                DigitalSourceType::CompositeWithTrainedAlgorithmicMedia
            }
            Some(DIGITAL_SOURCE_TYPE_TRAINED) => DigitalSourceType::TrainedAlgorithmicMedia,
            other => {
                return Err(c2pa_error(format!(
                    "the provenance fields name no known digital source type ({other:?})"
                )));
            }
        };
        let signer = ::c2pa::create_signer::from_keys(
            &self.cert_chain,
            &self.private_key,
            self.algorithm.into(),
            None,
        )
        .map_err(|e| c2pa_error(format!("loading the signing credentials: {e}")))?;

        let title = field(fields, "job_id").unwrap_or("inpaint-worker output");
        let mut builder = Builder::from_shared_context(&self.context)
            .with_definition(json!({
                "title": title,
                "claim_generator_info": [{
                    "name": "inpaint-worker",
                    "version": env!("CARGO_PKG_VERSION"),
                }],
            }))
            .map_err(|e| c2pa_error(format!("manifest definition: {e}")))?;
        builder.set_intent(BuilderIntent::Create(source.clone()));
        builder
            .add_action(json!({
                "action": "c2pa.created",
                "digitalSourceType": source,
                "softwareAgent": { "name": creator_tool(fields) },
            }))
            .map_err(|e| c2pa_error(format!("actions assertion: {e}")))?;
        let mut entry = json!({ "use": self.training_mining });
        if self.training_mining == TrainingMiningUse::Constrained {
            entry["constraint_info"] = json!(self.constraint);
        }
        builder
            .add_assertion(
                "cawg.training-mining",
                &json!({ "entries": {
                    "cawg.ai_generative_training": entry,
                    "cawg.ai_training": entry,
                    "cawg.ai_inference": entry,
                    "cawg.data_mining": entry,
                }}),
            )
            .map_err(|e| c2pa_error(format!("training-mining assertion: {e}")))?;

        let mut source_stream = Cursor::new(image);
        let mut dest = Cursor::new(Vec::with_capacity(image.len() + 32 * 1024));
        builder
            .sign(signer.as_ref(), mime_type, &mut source_stream, &mut dest)
            .map_err(|e| c2pa_error(format!("signing: {e}")))?;
        Ok(dest.into_inner())
    }

    /// Signs a one-pixel PNG and reads it back: the credentials must give a manifest whose
    /// signature and certificate profile validate (trust in the root is the validator's
    /// business, so an untrusted root is accepted here).
    fn self_test(&self) -> Result<(), ProvenanceError> {
        let fields = [(
            "provenance.digital_source_type".to_owned(),
            DIGITAL_SOURCE_TYPE_TRAINED.to_owned(),
        )];
        let signed = self.sign(&one_pixel_png(), "image/png", &fields)?;
        let reader = read_manifest(&signed, "image/png", None)?;
        let failures: Vec<String> = reader
            .validation_results()
            .and_then(|results| results.active_manifest())
            .map(|manifest| {
                manifest
                    .failure()
                    .iter()
                    .map(|status| status.code().to_owned())
                    .filter(|code| code != "signingCredential.untrusted")
                    .collect()
            })
            .unwrap_or_default();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(c2pa_error(format!(
                "a test signature does not validate: {}",
                failures.join(", ")
            )))
        }
    }
}

/// Reads and validates the C2PA manifest store of `image` offline, trusting the PEM roots in
/// `trust_anchors` (none: every signer is `signingCredential.untrusted`). For tests and tools;
/// the worker only signs.
pub fn read_manifest(
    image: &[u8],
    mime_type: &str,
    trust_anchors: Option<&str>,
) -> Result<Reader, ProvenanceError> {
    Reader::from_shared_context(&offline_context(trust_anchors)?)
        .with_stream(mime_type, Cursor::new(image))
        .map_err(|e| c2pa_error(format!("reading the manifest: {e}")))
}

/// A c2pa context that fetches nothing (no OCSP, no remote manifests; the crate has no HTTP
/// client anyway) and trusts `trust_anchors`.
fn offline_context(trust_anchors: Option<&str>) -> Result<Arc<Context>, ProvenanceError> {
    let mut settings = json!({
        "verify": { "ocsp_fetch": false, "remote_manifest_fetch": false },
    });
    if let Some(anchors) = trust_anchors {
        settings["trust"] = json!({ "user_anchors": anchors });
    }
    let settings = Settings::new()
        .with_json(&settings.to_string())
        .map_err(|e| c2pa_error(format!("c2pa settings: {e}")))?;
    Ok(Context::new()
        .with_settings(settings)
        .map_err(|e| c2pa_error(format!("c2pa settings: {e}")))?
        .into_shared())
}

fn c2pa_error(message: String) -> ProvenanceError {
    ProvenanceError::C2pa(message)
}

/// A valid one-pixel RGB PNG built from scratch (stored deflate block), for the self-test.
fn one_pixel_png() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    // One scanline: filter type 0, then R, G, B.
    let raw = [0u8, 0x80, 0x80, 0x80];
    let adler = {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in &raw {
            a = (a + u32::from(byte)) % 65_521;
            b = (b + a) % 65_521;
        }
        (b << 16) | a
    };
    // zlib header, one final stored block of 4 bytes, Adler-32.
    let mut zlib = vec![0x78, 0x01, 0x01, 0x04, 0x00, 0xFB, 0xFF];
    zlib.extend_from_slice(&raw);
    zlib.extend_from_slice(&adler.to_be_bytes());
    let mut png = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'];
    // 1 x 1, bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
    chunk(&mut png, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]);
    chunk(&mut png, b"IDAT", &zlib);
    chunk(&mut png, b"IEND", &[]);
    png
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use ::c2pa::ValidationState;
    use image::{ImageDecoder, ImageFormat, Rgb, RgbImage};
    use serde_json::Value;

    use super::*;

    /// Test credentials from `tests/fixtures/c2pa-test-certs.sh` (needs the `openssl` CLI).
    fn credentials() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/c2pa-test-certs.sh");
        let status = Command::new("bash")
            .arg(script)
            .arg(dir.path())
            .status()
            .expect("bash runs");
        assert!(
            status.success(),
            "generating test certificates failed; these tests need the openssl CLI"
        );
        dir
    }

    fn config(dir: &Path) -> C2paConfig {
        C2paConfig {
            cert_chain: dir.join("chain.pem"),
            private_key: dir.join("signer.key"),
            algorithm: C2paAlgorithm::Es256,
            tsa_url: None,
            training_mining: TrainingMiningUse::default(),
            training_mining_constraint: None,
        }
    }

    fn annotated(format: ImageFormat) -> (RgbImage, Vec<(String, String)>, String, Vec<u8>) {
        let image = RgbImage::from_fn(24, 16, |x, y| Rgb([x as u8 * 10, y as u8 * 15, 60]));
        let fields = crate::test_support::fields();
        let xmp = crate::xmp_packet(&fields).expect("packet");
        let mut encoded = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut encoded), format)
            .expect("encode");
        let bytes = match format {
            ImageFormat::Png => crate::embed_png(&encoded, &fields, &xmp),
            ImageFormat::Jpeg => crate::embed_jpeg(&encoded, &fields, &xmp),
            _ => crate::embed_webp(&encoded, &fields, &xmp),
        }
        .expect("embed");
        (image, fields, xmp, bytes)
    }

    fn assertion<'a>(manifest: &'a Value, label: &str) -> &'a Value {
        manifest["assertions"]
            .as_array()
            .expect("assertions")
            .iter()
            .find(|a| a["label"] == label)
            .map(|a| &a["data"])
            .unwrap_or_else(|| panic!("no {label} assertion in {manifest:#}"))
    }

    #[test]
    fn signs_every_format_offline_and_validates_as_trusted() {
        let dir = credentials();
        let signer = config(dir.path()).build().expect("build");
        let ca = std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca");
        for (format, mime) in [
            (ImageFormat::Png, "image/png"),
            (ImageFormat::Jpeg, "image/jpeg"),
            (ImageFormat::WebP, "image/webp"),
        ] {
            let (_, fields, xmp, bytes) = annotated(format);
            let signed = signer.sign(&bytes, mime, &fields).expect("sign");
            assert!(signed.len() > bytes.len(), "{mime}: a manifest was added");

            let reader = read_manifest(&signed, mime, Some(&ca)).expect("read");
            assert_eq!(
                reader.validation_state(),
                ValidationState::Trusted,
                "{mime}: {}",
                reader.json()
            );
            let store: Value = serde_json::from_str(&reader.json()).expect("JSON");
            let label = store["active_manifest"].as_str().expect("active manifest");
            let manifest = &store["manifests"][label];
            assert_eq!(manifest["title"], "4f1c-job");
            assert_eq!(
                manifest["claim_generator_info"][0]["name"],
                "inpaint-worker"
            );
            let actions = assertion(manifest, "c2pa.actions.v2")["actions"]
                .as_array()
                .expect("actions");
            let created: Vec<&Value> = actions
                .iter()
                .filter(|a| a["action"] == "c2pa.created")
                .collect();
            assert_eq!(created.len(), 1, "{mime}: {actions:?}");
            assert_eq!(
                created[0]["digitalSourceType"],
                DIGITAL_SOURCE_TYPE_COMPOSITE
            );
            assert!(
                created[0]["softwareAgent"]["name"]
                    .as_str()
                    .is_some_and(|s| s.contains("sd-inpainting")),
                "{mime}: {created:?}"
            );
            let entries = &assertion(manifest, "cawg.training-mining")["entries"];
            assert_eq!(entries["cawg.ai_generative_training"]["use"], "constrained");
            assert!(
                entries["cawg.data_mining"]["constraint_info"]
                    .as_str()
                    .is_some_and(|c| c.contains("OpenRAIL-M"))
            );

            // Pixels and the XMP written before signing survive.
            let before = image::load_from_memory(&bytes).expect("decodes").to_rgb8();
            let after = image::load_from_memory(&signed).expect("decodes").to_rgb8();
            assert_eq!(after, before, "{mime}");
            let read_xmp = match format {
                ImageFormat::Png => image::codecs::png::PngDecoder::new(Cursor::new(&signed))
                    .expect("decoder")
                    .xmp_metadata(),
                ImageFormat::Jpeg => image::codecs::jpeg::JpegDecoder::new(Cursor::new(&signed))
                    .expect("decoder")
                    .xmp_metadata(),
                _ => image::codecs::webp::WebPDecoder::new(Cursor::new(&signed))
                    .expect("decoder")
                    .xmp_metadata(),
            };
            assert_eq!(read_xmp.expect("reads"), Some(xmp.into_bytes()), "{mime}");
        }
    }

    #[test]
    fn an_unknown_root_is_untrusted_and_a_changed_byte_is_invalid() {
        let dir = credentials();
        let signer = config(dir.path()).build().expect("build");
        let (_, fields, _, bytes) = annotated(ImageFormat::Jpeg);
        let signed = signer.sign(&bytes, "image/jpeg", &fields).expect("sign");
        let reader = read_manifest(&signed, "image/jpeg", None).expect("read");
        assert_eq!(reader.validation_state(), ValidationState::Valid);
        assert!(reader.json().contains("signingCredential.untrusted"));

        // Change one byte of the scan data (near the end, before EOI): the data hash breaks.
        let ca = std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca");
        let mut tampered = signed.clone();
        let at = tampered.len() - 10;
        tampered[at] ^= 0x01;
        let reader = read_manifest(&tampered, "image/jpeg", Some(&ca)).expect("read");
        assert_eq!(
            reader.validation_state(),
            ValidationState::Invalid,
            "{}",
            reader.json()
        );
        assert!(reader.json().contains("assertion.dataHash.mismatch"));
    }

    #[test]
    fn build_refuses_bad_credentials_and_a_tsa() {
        let dir = credentials();
        let good = config(dir.path());
        let err = |config: C2paConfig| match config.build() {
            Err(ProvenanceError::C2pa(message)) => message,
            other => panic!("expected a C2PA error, got {other:?}"),
        };
        let tsa = err(C2paConfig {
            tsa_url: Some("http://timestamp.example".into()),
            ..good.clone()
        });
        assert!(tsa.contains("HTTP client"), "{tsa}");
        let missing = err(C2paConfig {
            private_key: dir.path().join("nope.key"),
            ..good.clone()
        });
        assert!(missing.contains("nope.key"), "{missing}");
        // The root CA is self-signed, not an end-entity certificate: C2PA refuses it.
        let ca_as_signer = err(C2paConfig {
            cert_chain: dir.path().join("ca.pem"),
            private_key: dir.path().join("ca.key"),
            ..good.clone()
        });
        assert!(ca_as_signer.contains("self-signed"), "{ca_as_signer}");
        // A key that does not match the certificate: only the self-test's validation sees it.
        let mismatched = err(C2paConfig {
            private_key: dir.path().join("ca.key"),
            ..good.clone()
        });
        assert!(
            mismatched.contains("claimSignature.mismatch"),
            "{mismatched}"
        );
        // Ed25519 named for an ECDSA key.
        let wrong_algorithm = err(C2paConfig {
            algorithm: C2paAlgorithm::Ed25519,
            ..good
        });
        assert!(
            wrong_algorithm.contains("signing credentials"),
            "{wrong_algorithm}"
        );
    }

    #[test]
    fn sign_refuses_unknown_formats_and_missing_source_types() {
        let dir = credentials();
        let signer = config(dir.path()).build().expect("build");
        let (_, fields, _, bytes) = annotated(ImageFormat::Png);
        assert!(matches!(
            signer.sign(&bytes, "image/gif", &fields),
            Err(ProvenanceError::C2pa(_))
        ));
        assert!(matches!(
            signer.sign(&bytes, "image/png", &[]),
            Err(ProvenanceError::C2pa(_))
        ));
        assert!(!format!("{signer:?}").contains("PRIVATE"));
    }

    #[test]
    fn config_parses_with_defaults_and_refuses_unknown_fields() {
        let config: C2paConfig =
            toml::from_str("cert_chain = \"/c.pem\"\nprivate_key = \"/k.pem\"").expect("parse");
        assert_eq!(config.algorithm, C2paAlgorithm::Es256);
        assert_eq!(config.training_mining, TrainingMiningUse::Constrained);
        assert_eq!(config.tsa_url, None);
        let config: C2paConfig = toml::from_str(
            "cert_chain = \"/c.pem\"\nprivate_key = \"/k.pem\"\nalgorithm = \"ed25519\"\n\
             training_mining = \"notAllowed\"",
        )
        .expect("parse");
        assert_eq!(config.algorithm, C2paAlgorithm::Ed25519);
        assert_eq!(config.training_mining, TrainingMiningUse::NotAllowed);
        assert!(
            toml::from_str::<C2paConfig>(
                "cert_chain = \"/c\"\nprivate_key = \"/k\"\nalg = \"es256\""
            )
            .is_err()
        );
    }
}
