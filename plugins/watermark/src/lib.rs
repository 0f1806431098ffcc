//! inpaint-watermark: the invisible watermark of Stable Diffusion's scripts, in pure Rust.
//!
//! Stable Diffusion's reference scripts mark every output with the `invisible-watermark` Python
//! package (`imwatermark`), method `dwtDct`. This crate reimplements that method so that, on the
//! same 8-bit pixels, its reference-exact output is byte-identical to the package's and each reads the other's
//! marks (parity fixtures in `tests/parity/watermark/`). Its default [`encode`] writes the same
//! mark without the package's pixel corruption (values wrapping past 0 and 255, chroma swapped
//! across edges): every pixel changes by at most [`MAX_PIXEL_CHANGE`] levels;
//! [`encode_reference_exact`] keeps the package's bytes for the parity tests. The scheme is weak: it survives
//! lossless storage and mild 4:4:4 JPEG, not chroma subsampling, resizing or cropping; see
//! `README.md` for measurements. It marks outputs as machine-made for cooperative readers; it
//! is no proof against removal.
//!
//! Layout:
//! - [`dwt_dct`]: [`encode`], [`decode`], [`votes`], [`detect`] (the algorithm).
//! - [`payload`]: [`Payload`] (bytes MSB first, hex, bit strings) and [`DEFAULT_PAYLOAD`].
//! - [`stage`]: [`WatermarkConfig`] and [`WatermarkStage`], the plugin stage.
//! - [`file`](mod@file): [`embed_file`] and [`detect_file`], for the worker's `watermark` subcommands.
//! - `color` and `haar` (private): OpenCV's fixed-point YUV and PyWavelets' Haar transform.
//! - [`error`](mod@error): [`WatermarkError`].

mod color;
pub mod dwt_dct;
pub mod error;
pub mod file;
mod haar;
pub mod payload;
pub mod stage;

pub use dwt_dct::{
    BitVotes, DEFAULT_DETECT_THRESHOLD, Detection, MAX_CHANNEL_CHANGE, MAX_PIXEL_CHANGE,
    MIN_PIXELS, capacity, decode, detect, encode, encode_reference_exact, votes,
};
pub use error::WatermarkError;
pub use file::{FileDetection, detect_file, embed_file};
pub use payload::{DEFAULT_PAYLOAD, Payload, TXT2IMG_PAYLOAD};
pub use stage::{PayloadSpec, SmallImages, WatermarkConfig, WatermarkStage};
