//! [`StorageConfig`]: which object store to use, as plain serde data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where objects live. `build()` turns it into a [`crate::Storage`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum StorageConfig {
    /// Amazon S3 or any S3-compatible service (Garage, MinIO, Ceph RGW, R2, ...).
    S3(S3Config),
    /// A local folder: bucket `b`, key `k` is the file `root/b/k`. For single-host use and demos.
    Local {
        /// The folder that holds one sub-folder per bucket.
        root: PathBuf,
    },
    /// Process memory, empty at start. For tests and the embedded default.
    Memory,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self::S3(S3Config::default())
    }
}

/// How to reach an S3-compatible service.
///
/// Credentials come from the environment the standard way (`AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, web identity through
/// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, ECS container credentials, then the EC2 instance
/// role), never from job messages. `access_key_id`/`secret_access_key` here override that, for
/// development stores only; prefer the environment in production.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:3900`. None: AWS's endpoint for the region
    /// (or `AWS_ENDPOINT_URL` from the environment).
    pub endpoint: Option<String>,
    /// Region name; None: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted ones
    /// (`bucket.endpoint/key`). Most self-hosted stores want true.
    pub path_style: bool,
    /// Allow plain-HTTP endpoints. Off by default so a typo cannot send credentials in clear.
    pub allow_http: bool,
    /// Static access key id (development only; see the type's documentation).
    pub access_key_id: Option<String>,
    /// Static secret access key (development only).
    pub secret_access_key: Option<String>,
    /// Retries of one request inside the client (connection refused, 5xx, timeouts) before the
    /// error reaches the worker. Kept small: the worker's own retries go through the delay queue,
    /// which frees the in-flight slot and survives a restart; long in-process retries (the
    /// client's default is 10 over 3 minutes) would hold a job and its GPU slot hostage.
    pub max_retries: usize,
    /// Time budget for those retries, from the first attempt, in milliseconds.
    pub retry_timeout_ms: u64,
    /// Time allowed to open a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time allowed for a whole request, body included, in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            path_style: false,
            allow_http: false,
            access_key_id: None,
            secret_access_key: None,
            max_retries: 2,
            retry_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
        }
    }
}
