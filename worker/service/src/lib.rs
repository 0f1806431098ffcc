//! inpaint-worker: the service around the inpainting engine.
//!
//! Layout:
//! - [`smoke`]: `inpaint-worker smoke`, one round trip through every external dependency the
//!   worker has (RabbitMQ with publisher confirms and manual ack, S3, libtorch), for checking a
//!   deployment before it takes jobs.
//!
//! The job loop (`inpaint-worker run`) builds on the same crates: `inpaint-queue`,
//! `inpaint-storage` and `inpaint-engine`.

pub mod smoke;
