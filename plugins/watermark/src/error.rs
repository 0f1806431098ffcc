//! [`WatermarkError`]: why a watermark could not be embedded, read or configured.

use std::path::PathBuf;

/// Why embedding, reading or configuring the watermark failed.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    /// The image has fewer pixels than the reference accepts (`width * height < 256 * 256`).
    #[error(
        "image is {width}x{height} ({} pixels); the dwtDct watermark needs at least {} pixels \
         (256x256), as invisible-watermark requires",
        u64::from(*width) * u64::from(*height),
        crate::MIN_PIXELS
    )]
    TooSmall {
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
    },
    /// An empty payload (the reference fails with a division by zero).
    #[error("the watermark payload is empty")]
    EmptyPayload,
    /// A payload given as hex or as a bit string does not parse.
    #[error("invalid watermark payload: {0}")]
    InvalidPayload(String),
    /// A detection threshold outside `0..=1`.
    #[error("detection threshold {0} is not a fraction in 0..=1")]
    InvalidThreshold(f64),
    /// The image carries fewer blocks than the payload has bits, so some bits cannot be embedded.
    #[error(
        "image is {width}x{height}: it holds {capacity} watermark blocks, fewer than the \
         payload's {bits} bits"
    )]
    PayloadTooLong {
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
        /// Blocks the image holds ([`crate::capacity`]).
        capacity: usize,
        /// Payload bits.
        bits: usize,
    },
    /// A file could not be read, decoded or written.
    #[error("{}: {source}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's or encoder's error.
        #[source]
        source: image::ImageError,
    },
    /// Refused to write a watermarked image in a lossy format.
    #[error(
        "{}: refusing to write a watermarked image as {format}: lossy compression damages the \
         watermark; write PNG",
        path.display()
    )]
    LossyOutput {
        /// The file.
        path: PathBuf,
        /// The format its extension names.
        format: String,
    },
}
