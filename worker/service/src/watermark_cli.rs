//! `inpaint-worker watermark`: embed or detect the invisible watermark (dwtDct, as the
//! invisible-watermark package) in local files. The watermark crate is reached through
//! `inpaint-stages`; a build without the `stage-watermark` feature refuses the command.

use std::path::PathBuf;

use clap::Subcommand;
#[cfg(feature = "stage-watermark")]
use inpaint_stages::watermark::{DEFAULT_PAYLOAD, Payload, detect_file, embed_file};

/// What `watermark` does.
#[derive(Subcommand, Debug)]
pub enum WatermarkAction {
    /// Read the watermark of IMAGE and compare it with the expected payload.
    Detect {
        image: PathBuf,
        #[command(flatten)]
        payload: PayloadArgs,
        /// Fraction of payload bits that must match for a "watermarked" verdict.
        #[arg(long, default_value_t = 0.65)]
        threshold: f64,
    },
    /// Write INPUT with the watermark embedded to OUTPUT (PNG or lossless WebP; JPEG is refused).
    Embed {
        input: PathBuf,
        output: PathBuf,
        #[command(flatten)]
        payload: PayloadArgs,
    },
}

/// The payload options of both actions.
#[derive(clap::Args, Debug)]
#[cfg_attr(
    not(feature = "stage-watermark"),
    allow(dead_code, reason = "read only where the watermark is built in")
)]
pub struct PayloadArgs {
    /// Payload as text (default: "StableDiffusionV1-Inpainting", the SD inpainting demo's).
    #[arg(long, conflicts_with = "payload_hex")]
    payload_text: Option<String>,
    /// Payload as hex bytes.
    #[arg(long)]
    payload_hex: Option<String>,
}

#[cfg(feature = "stage-watermark")]
impl PayloadArgs {
    fn payload(&self) -> anyhow::Result<Payload> {
        Ok(match (&self.payload_text, &self.payload_hex) {
            (_, Some(hex)) => Payload::from_hex(hex)?,
            (Some(text), None) => Payload::from_bytes(text.as_bytes())?,
            (None, None) => Payload::from_bytes(DEFAULT_PAYLOAD)?,
        })
    }
}

/// Runs one `watermark` action; prints what it found or wrote.
#[allow(
    clippy::print_stdout,
    reason = "the command's output is its result on stdout"
)]
pub fn run(action: WatermarkAction) -> anyhow::Result<()> {
    #[cfg(not(feature = "stage-watermark"))]
    {
        let _ = action;
        anyhow::bail!(
            "this build has no watermark support: rebuild with --features stage-watermark"
        )
    }
    #[cfg(feature = "stage-watermark")]
    {
        match action {
            WatermarkAction::Detect {
                image,
                payload,
                threshold,
            } => {
                let found = detect_file(&image, &payload.payload()?, threshold)?;
                let d = &found.detection;
                println!(
                    "{}: {} of {} bits match ({:.1} %): {}",
                    image.display(),
                    d.bits_matched,
                    d.total,
                    100.0 * d.bits_matched as f64 / d.total.max(1) as f64,
                    if d.verdict {
                        "watermarked"
                    } else {
                        "not watermarked"
                    }
                );
                println!(
                    "payload read: {}",
                    found.text.as_deref().unwrap_or(&found.hex)
                );
            }
            WatermarkAction::Embed {
                input,
                output,
                payload,
            } => {
                let check = embed_file(&input, &output, &payload.payload()?)?;
                println!(
                    "{}: written; read back {} of {} bits",
                    output.display(),
                    check.bits_matched,
                    check.total
                );
            }
        }
        Ok(())
    }
}
