//! [`Storage`]: get, put and head objects named by [`ObjectRef`], whatever the backend.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
};

use crate::{ObjectRef, S3Config, StorageConfig, StorageError};

/// What to write, besides the bytes.
#[derive(Clone, Debug, Default)]
pub struct PutRequest {
    /// `Content-Type` of the object, e.g. `image/png`.
    pub content_type: Option<String>,
    /// User metadata (S3 `x-amz-meta-*`). Dropped by the local-folder backend, which has no place
    /// for it.
    pub metadata: Vec<(String, String)>,
}

/// An object read back, with what the store knows about it.
#[derive(Clone, Debug)]
pub struct StoredObject {
    /// The object's bytes.
    pub bytes: Bytes,
    /// Its `Content-Type`, when the backend keeps one.
    pub content_type: Option<String>,
}

/// The running store: one `object_store` client per bucket, made on first use and then reused.
pub struct Storage {
    config: StorageConfig,
    buckets: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl StorageConfig {
    /// Checks the configuration and makes the store. Connections are made lazily, per bucket.
    pub fn build(&self) -> Result<Storage, StorageError> {
        match self {
            Self::S3(s3) => {
                if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
                    return Err(StorageError::Config(
                        "access_key_id and secret_access_key must be set together".into(),
                    ));
                }
                // Builds a client for a dummy bucket now so that a bad endpoint or region fails
                // at start-up rather than on the first job.
                s3_client(s3, "config-check")?;
            }
            Self::Local { root } => {
                std::fs::create_dir_all(root).map_err(|e| {
                    StorageError::Config(format!("cannot create {}: {e}", root.display()))
                })?;
            }
            Self::Memory => {}
        }
        Ok(Storage {
            config: self.clone(),
            buckets: Mutex::new(HashMap::new()),
        })
    }
}

fn s3_client(s3: &S3Config, bucket: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(!s3.path_style)
        .with_allow_http(s3.allow_http);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &s3.region {
        builder = builder.with_region(region);
    }
    if let (Some(id), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
        builder = builder
            .with_access_key_id(id)
            .with_secret_access_key(secret);
    }
    if s3.connect_timeout_ms == 0 || s3.request_timeout_ms == 0 {
        return Err(StorageError::Config(
            "connect_timeout_ms and request_timeout_ms must be above 0".into(),
        ));
    }
    // Set key by key rather than with `with_client_options`, which would drop client settings
    // that `from_env` read (a proxy, say).
    let client_key = |key| object_store::aws::AmazonS3ConfigKey::Client(key);
    builder = builder
        .with_config(
            client_key(object_store::ClientConfigKey::ConnectTimeout),
            format!("{}ms", s3.connect_timeout_ms),
        )
        .with_config(
            client_key(object_store::ClientConfigKey::Timeout),
            format!("{}ms", s3.request_timeout_ms),
        )
        .with_retry(object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: s3.max_retries,
            retry_timeout: Duration::from_millis(s3.retry_timeout_ms),
        });
    let client = builder
        .build()
        .map_err(|e| StorageError::Config(e.to_string()))?;
    Ok(Arc::new(client))
}

impl Storage {
    fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(store) = buckets.get(bucket) {
            return Ok(Arc::clone(store));
        }
        let store: Arc<dyn ObjectStore> = match &self.config {
            StorageConfig::S3(s3) => s3_client(s3, bucket)?,
            StorageConfig::Local { root } => {
                let dir: PathBuf = root.join(bucket);
                std::fs::create_dir_all(&dir).map_err(|e| {
                    StorageError::Config(format!("cannot create {}: {e}", dir.display()))
                })?;
                let local = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| StorageError::Config(e.to_string()))?
                    .with_automatic_cleanup(true);
                Arc::new(local)
            }
            StorageConfig::Memory => Arc::new(InMemory::new()),
        };
        buckets.insert(bucket.to_owned(), Arc::clone(&store));
        Ok(store)
    }

    fn backend_error(object: &ObjectRef, source: object_store::Error) -> StorageError {
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                object: object.to_string(),
            },
            source => StorageError::Backend {
                object: object.to_string(),
                source,
            },
        }
    }

    /// Reads a whole object. With `max_bytes`, an object larger than that is refused from its
    /// size alone, before its body is read.
    pub async fn get(
        &self,
        object: &ObjectRef,
        max_bytes: Option<u64>,
    ) -> Result<StoredObject, StorageError> {
        let store = self.bucket(object.bucket())?;
        let result = store
            .get_opts(&object.location()?, GetOptions::default())
            .await
            .map_err(|e| Self::backend_error(object, e))?;
        if let Some(limit) = max_bytes
            && result.meta.size > limit
        {
            return Err(StorageError::TooLarge {
                object: object.to_string(),
                size: result.meta.size,
                limit,
            });
        }
        let content_type = result
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string());
        let bytes = result
            .bytes()
            .await
            .map_err(|e| Self::backend_error(object, e))?;
        Ok(StoredObject {
            bytes,
            content_type,
        })
    }

    /// Writes a whole object, replacing any object of the same name. Returns once the store
    /// reports it durable (S3: the PUT's 200).
    pub async fn put(
        &self,
        object: &ObjectRef,
        bytes: Bytes,
        request: &PutRequest,
    ) -> Result<(), StorageError> {
        let store = self.bucket(object.bucket())?;
        let mut attributes = Attributes::new();
        if !matches!(self.config, StorageConfig::Local { .. }) {
            if let Some(content_type) = &request.content_type {
                attributes.insert(Attribute::ContentType, content_type.clone().into());
            }
            for (key, value) in &request.metadata {
                attributes.insert(
                    Attribute::Metadata(key.clone().into()),
                    value.clone().into(),
                );
            }
        }
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        store
            .put_opts(&object.location()?, PutPayload::from(bytes), options)
            .await
            .map_err(|e| Self::backend_error(object, e))?;
        Ok(())
    }

    /// The objects of `bucket` whose keys start with the whole segments of `prefix` (`a/b`
    /// lists `a/b/...`, not `a/bc`; empty: the whole bucket), keys exactly as stored, in no
    /// particular order.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectRef>, StorageError> {
        let store = self.bucket(bucket)?;
        let invalid = |reason: String| StorageError::InvalidRef {
            reference: format!("s3://{bucket}/{prefix}"),
            reason,
        };
        let backend = |source| StorageError::Backend {
            object: format!("s3://{bucket}/{prefix}"),
            source,
        };
        // One delimited listing per "folder", folder by folder: the recursive `list` is a
        // stream, and this crate does without stream combinators.
        let mut pending = vec![Path::parse(prefix).map_err(|e| invalid(e.to_string()))?];
        let mut found = Vec::new();
        while let Some(folder) = pending.pop() {
            let level = store
                .list_with_delimiter(Some(&folder))
                .await
                .map_err(backend)?;
            pending.extend(level.common_prefixes);
            for meta in level.objects {
                found.push(ObjectRef::new(bucket, meta.location.as_ref())?);
            }
        }
        Ok(found)
    }

    /// The object's size in bytes, or None when it does not exist.
    pub async fn size_of(&self, object: &ObjectRef) -> Result<Option<u64>, StorageError> {
        let store = self.bucket(object.bucket())?;
        match store.head(&object.location()?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::backend_error(object, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(text: &str) -> ObjectRef {
        text.parse().expect("valid reference")
    }

    async fn round_trip(storage: &Storage) {
        let image = obj("s3://inputs/jobs/1/image.png");
        assert_eq!(storage.size_of(&image).await.expect("head"), None);
        let request = PutRequest {
            content_type: Some("image/png".into()),
            metadata: vec![("job-id".into(), "1".into())],
        };
        storage
            .put(&image, Bytes::from_static(b"\x89PNG..."), &request)
            .await
            .expect("put");
        assert_eq!(storage.size_of(&image).await.expect("head"), Some(7));
        let got = storage.get(&image, None).await.expect("get");
        assert_eq!(&got.bytes[..], b"\x89PNG...");

        let too_large = storage.get(&image, Some(6)).await.expect_err("limit");
        assert!(matches!(
            too_large,
            StorageError::TooLarge {
                size: 7,
                limit: 6,
                ..
            }
        ));

        let missing = storage
            .get(&obj("s3://inputs/nope.png"), None)
            .await
            .expect_err("missing");
        assert!(
            matches!(missing, StorageError::NotFound { .. }),
            "{missing:?}"
        );
        assert!(!missing.is_transient());
    }

    #[tokio::test]
    async fn memory_backend_round_trips_and_keeps_content_type() {
        let storage = StorageConfig::Memory.build().expect("build");
        round_trip(&storage).await;
        let got = storage
            .get(&obj("s3://inputs/jobs/1/image.png"), None)
            .await
            .expect("get");
        assert_eq!(got.content_type.as_deref(), Some("image/png"));
    }

    #[tokio::test]
    async fn local_backend_keeps_buckets_apart_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = StorageConfig::Local {
            root: dir.path().to_path_buf(),
        }
        .build()
        .expect("build");
        round_trip(&storage).await;
        assert!(dir.path().join("inputs/jobs/1/image.png").is_file());
    }

    /// Keys the schema allows that `object_store`'s `Path::from` would have re-encoded: every
    /// awkward character at the start, middle and end of a segment, as a whole segment, all of
    /// them together, and non-ASCII in several scripts.
    fn awkward_keys() -> Vec<String> {
        let classes = [
            " ", "+", "%", "#", "?", "=", "&", "~", "*", "[", "]", "{", "}", "^", "`", "|", "<",
            ">", "\"", "\\", "%2e%2e", "%C3%A9", "é", "Ж", "中文", "🙂", "\u{85}",
        ];
        let mut keys = Vec::new();
        for (i, c) in classes.iter().enumerate() {
            keys.push(format!("k{i}/{c}start.png"));
            keys.push(format!("k{i}/mid{c}dle.png"));
            keys.push(format!("k{i}/end{c}"));
            keys.push(format!("k{i}/{c}/whole-segment"));
        }
        keys.push(format!("all/{}", classes.concat()));
        keys.push("my photo+é.png".to_owned());
        keys
    }

    #[tokio::test]
    async fn awkward_keys_round_trip_verbatim_in_memory() {
        let storage = StorageConfig::Memory.build().expect("build");
        let keys = awkward_keys();
        for key in &keys {
            let object = ObjectRef::new("inputs", key.as_str()).expect(key);
            storage
                .put(&object, Bytes::from(key.clone()), &PutRequest::default())
                .await
                .expect(key);
            assert_eq!(
                storage.size_of(&object).await.expect(key),
                Some(key.len() as u64)
            );
            let got = storage.get(&object, None).await.expect(key);
            assert_eq!(got.bytes, key.as_bytes(), "{key}");
        }
        let mut listed: Vec<String> = storage
            .list("inputs", "")
            .await
            .expect("list")
            .iter()
            .map(|o| o.key().to_owned())
            .collect();
        let mut want = keys.clone();
        listed.sort();
        want.sort();
        assert_eq!(listed, want);
        let under: Vec<ObjectRef> = storage.list("inputs", "all").await.expect("list");
        assert_eq!(under.len(), 1);
    }

    #[tokio::test]
    async fn awkward_keys_round_trip_verbatim_in_a_local_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = StorageConfig::Local {
            root: dir.path().to_path_buf(),
        }
        .build()
        .expect("build");
        let mut refused = Vec::new();
        let mut stored = Vec::new();
        for key in awkward_keys() {
            let object = ObjectRef::new("inputs", key.as_str()).expect("valid key");
            match storage
                .put(&object, Bytes::from(key.clone()), &PutRequest::default())
                .await
            {
                Ok(()) => {
                    let got = storage.get(&object, None).await.expect("get");
                    assert_eq!(got.bytes, key.as_bytes(), "{key}");
                    // The file is named by the key itself, not an encoding of it.
                    assert!(dir.path().join("inputs").join(&key).is_file(), "{key}");
                    stored.push(key);
                }
                Err(e) => refused.push((key, e.to_string())),
            }
        }
        // object_store's local backend fails a file name ending in '|' (its file URL turns it
        // into something else: "Not a directory"); it errs rather than writing elsewhere. The
        // local backend is for development; S3 takes these keys (tests/object_store.rs).
        let unexpected: Vec<_> = refused.iter().filter(|(k, _)| !k.ends_with('|')).collect();
        assert!(unexpected.is_empty(), "{unexpected:#?}");
        let mut listed: Vec<String> = storage
            .list("inputs", "")
            .await
            .expect("list")
            .iter()
            .map(|o| o.key().to_owned())
            .collect();
        listed.sort();
        stored.sort();
        assert_eq!(listed, stored);
    }

    #[tokio::test]
    async fn an_unreachable_s3_endpoint_fails_fast_and_transient() {
        // A port nothing listens on: connection refused, retried within the configured budget.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let storage = StorageConfig::S3(S3Config {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: Some("garage".into()),
            path_style: true,
            allow_http: true,
            access_key_id: Some("GK1".into()),
            secret_access_key: Some("secret".into()),
            max_retries: 1,
            retry_timeout_ms: 1_000,
            ..S3Config::default()
        })
        .build()
        .expect("build");
        let started = std::time::Instant::now();
        let err = storage
            .get(&obj("s3://inputs/jobs/1/image.png"), None)
            .await
            .expect_err("nothing listens there");
        assert!(err.is_transient(), "{err:?}");
        // The client's own default would retry for up to 3 minutes.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        let zero = StorageConfig::S3(S3Config {
            request_timeout_ms: 0,
            ..S3Config::default()
        });
        assert!(
            zero.build()
                .expect_err("zero timeout")
                .to_string()
                .contains("timeout")
        );
    }

    #[test]
    fn half_a_static_credential_is_a_config_error() {
        let config = StorageConfig::S3(S3Config {
            access_key_id: Some("GK1".into()),
            ..S3Config::default()
        });
        let err = config.build().expect_err("half credentials");
        assert!(err.to_string().contains("must be set together"), "{err}");
    }

    #[test]
    fn config_reads_from_tagged_json() {
        let config: StorageConfig = serde_json::from_str(
            r#"{"backend":"s3","endpoint":"http://127.0.0.1:3900","path_style":true,"allow_http":true}"#,
        )
        .expect("parse");
        let StorageConfig::S3(s3) = config else {
            panic!("not s3: {config:?}")
        };
        assert!(s3.path_style && s3.allow_http);
        let unknown = serde_json::from_str::<StorageConfig>(r#"{"backend":"s3","endpoit":"x"}"#);
        assert!(unknown.expect_err("typo").to_string().contains("endpoit"));
    }
}
