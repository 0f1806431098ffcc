//! Put and get objects on the real Garage through the S3 client the worker uses.

use bytes::Bytes;
use inpaint_e2e::{START_SERVICES, bucket, s3_config};
use inpaint_storage::{ObjectRef, PutRequest, StorageError};

#[tokio::test]
async fn put_get_head_round_trip_on_garage() {
    let storage = s3_config().build().expect("build S3 store");
    let object = ObjectRef::new(bucket(), format!("e2e/{}/image.png", uuid::Uuid::new_v4()))
        .expect("valid ref");
    let body = Bytes::from((0..=255u8).cycle().take(70_000).collect::<Vec<u8>>());
    let request = PutRequest {
        content_type: Some("image/png".into()),
        metadata: vec![("job-id".into(), "e2e".into())],
    };
    if let Err(e) = storage.put(&object, body.clone(), &request).await {
        panic!("Garage PUT {object} failed ({e}); {START_SERVICES}");
    }
    assert_eq!(storage.size_of(&object).await.expect("head"), Some(70_000));
    let got = storage.get(&object, Some(1 << 20)).await.expect("get");
    assert_eq!(got.bytes, body);
    assert_eq!(got.content_type.as_deref(), Some("image/png"));

    let limited = storage
        .get(&object, Some(1000))
        .await
        .expect_err("over the limit");
    assert!(matches!(
        limited,
        StorageError::TooLarge {
            size: 70_000,
            limit: 1000,
            ..
        }
    ));
}

#[tokio::test]
async fn missing_objects_and_buckets_are_permanent_errors() {
    let storage = s3_config().build().expect("build S3 store");
    let missing = ObjectRef::new(bucket(), "e2e/does-not-exist.png").expect("valid ref");
    let err = storage
        .get(&missing, None)
        .await
        .expect_err("missing object");
    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
    assert!(!err.is_transient());

    let no_bucket = ObjectRef::new("no-such-bucket-e2e", "k.png").expect("valid ref");
    let err = storage
        .get(&no_bucket, None)
        .await
        .expect_err("missing bucket");
    assert!(
        !err.is_transient(),
        "a missing bucket is not worth retrying: {err:?}"
    );
}

#[tokio::test]
async fn wrong_credentials_are_refused() {
    let mut config = s3_config();
    if let inpaint_storage::StorageConfig::S3(s3) = &mut config {
        s3.secret_access_key = Some("0".repeat(64));
    }
    let storage = config.build().expect("build S3 store");
    let object = ObjectRef::new(bucket(), "e2e/forbidden.png").expect("valid ref");
    let err = storage
        .put(&object, Bytes::from_static(b"x"), &PutRequest::default())
        .await
        .expect_err("bad signature");
    assert!(
        !err.is_transient(),
        "bad credentials are not worth retrying: {err:?}"
    );
}
