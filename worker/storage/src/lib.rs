//! inpaint-storage: where job inputs come from and outputs go.
//!
//! Layout:
//! - [`object_ref`]: [`ObjectRef`], the validated `s3://bucket/key` a job names.
//! - [`config`]: [`StorageConfig`], plain serde data; [`StorageConfig::build`] makes a [`Storage`].
//! - [`store`]: [`Storage`], get/put/head over S3 (any S3-compatible endpoint), a local folder or
//!   memory, all through Apache Arrow's `object_store`. Cargo feature `store` (default); without
//!   it the crate is the reference and error types only, for crates that name objects but never
//!   read them (the job contract, the plugin API, the fuzz targets).
//!
//! No libtorch here: this crate builds and tests on any machine.

pub mod config;
pub mod error;
pub mod object_ref;
#[cfg(feature = "store")]
pub mod store;

pub use config::{S3Config, StorageConfig};
pub use error::StorageError;
pub use object_ref::ObjectRef;
#[cfg(feature = "store")]
pub use store::{PutRequest, Storage, StoredObject};
