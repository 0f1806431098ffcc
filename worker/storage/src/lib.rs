//! inpaint-storage: where job inputs come from and outputs go.
//!
//! Layout:
//! - [`object_ref`]: [`ObjectRef`], the validated `s3://bucket/key` a job names.
//! - [`config`]: [`StorageConfig`], plain serde data; [`StorageConfig::build`] makes a [`Storage`].
//! - [`store`]: [`Storage`], get/put/head over S3 (any S3-compatible endpoint), a local folder or
//!   memory, all through Apache Arrow's `object_store`.
//!
//! No libtorch here: this crate builds and tests on any machine.

pub mod config;
pub mod error;
pub mod object_ref;
pub mod store;

pub use config::{S3Config, StorageConfig};
pub use error::StorageError;
pub use object_ref::ObjectRef;
pub use store::{PutRequest, Storage, StoredObject};
