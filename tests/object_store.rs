//! Put and get objects on the real Garage through the S3 client the worker uses, including a
//! generated table of awkward keys (URL-special characters, non-ASCII, 1,024-byte keys) that must
//! be stored, read, listed and reported exactly as written.

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

/// Every character class a key may hold that a URL or `object_store`'s path encoding treats
/// specially, and non-ASCII letters of several scripts (precomposed and combining).
const AWKWARD: &[&str] = &[
    " ",
    "+",
    "%",
    "#",
    "?",
    "=",
    "&",
    "~",
    "*",
    "[",
    "]",
    "{",
    "}",
    "^",
    "`",
    "|",
    "<",
    ">",
    "\"",
    "\\",
    "'",
    "!",
    "$",
    "(",
    ")",
    ",",
    ";",
    ":",
    "@",
    "%2e%2e",
    "%20",
    "%C3%A9",
    "+%2B",
    "é",
    "e\u{301}",
    "ß",
    "Ж",
    "Ελλάδα",
    "中文",
    "日本語",
    "한국어",
    "العربية",
    "עברית",
    "हिन्दी",
    "🙂",
    "\u{a0}",
    "\u{85}",
    "\u{200b}",
    "\u{feff}",
];

/// The generated table of keys under `base/`: each class at the start, middle and end of a
/// segment and as a whole segment, all classes in one segment, classes paired, and keys of
/// exactly 1,024 and 1,023 bytes (S3's limit) in multi-byte characters.
fn awkward_keys(base: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for (i, c) in AWKWARD.iter().enumerate() {
        keys.push(format!("{base}/c{i}/{c}start.png"));
        keys.push(format!("{base}/c{i}/mid{c}dle.png"));
        keys.push(format!("{base}/c{i}/end{c}"));
        keys.push(format!("{base}/c{i}/{c}/{c}"));
        let next = AWKWARD[(i + 7) % AWKWARD.len()];
        keys.push(format!("{base}/pair{i}/{c}{next}{c}.{next}"));
    }
    keys.push(format!("{base}/all/{}", AWKWARD.concat()));
    keys.push(format!("{base}/my photo+é.png"));
    for (name, target) in [("max", 1024), ("max-1", 1023)] {
        let mut key = format!("{base}/{name}/");
        // Cycle through 1-, 2-, 3- and 4-byte characters, then pad with ASCII to the length.
        for c in ["a", "é", "中", "🙂", "+", "%", " "].iter().cycle() {
            if key.len() + c.len() > target - 4 {
                break;
            }
            key.push_str(c);
        }
        while key.len() < target {
            key.push('~');
        }
        assert_eq!(key.len(), target);
        keys.push(key);
    }
    keys
}

/// XML text → string: the five entities and numeric references ListObjectsV2 may use.
fn xml_unescape(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let end = rest[at..].find(';').expect("entity ends") + at;
        let entity = &rest[at + 1..end];
        let decoded = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16)
                } else {
                    entity.trim_start_matches('#').parse()
                };
                char::from_u32(code.unwrap_or_else(|_| panic!("entity {entity}")))
                    .unwrap_or_else(|| panic!("entity {entity}"))
            }
        };
        out.push(decoded);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// SHA-256 of the empty body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Percent-encodes everything but RFC 3986's unreserved characters (SigV4's rule).
fn strict_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The keys under `prefix` as the S3 server itself lists them: a ListObjectsV2 request signed
/// and sent by curl (`--aws-sigv4`), outside `object_store` and this workspace's code.
fn raw_listing(prefix: &str) -> Vec<String> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let endpoint = env("INPAINT_TEST_S3_ENDPOINT", "http://127.0.0.1:3900");
    let region = env("INPAINT_TEST_S3_REGION", "garage");
    let id = env(
        "INPAINT_TEST_S3_ACCESS_KEY_ID",
        inpaint_e2e::DEV_ACCESS_KEY_ID,
    );
    let secret = env(
        "INPAINT_TEST_S3_SECRET_ACCESS_KEY",
        inpaint_e2e::DEV_SECRET_ACCESS_KEY,
    );
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        // Query values strictly percent-encoded and in sorted order: curl signs the URL as
        // given, and that is the canonical form SigV4 wants.
        let mut query = vec![("list-type", "2".to_owned()), ("prefix", prefix.to_owned())];
        if let Some(token) = &token {
            query.push(("continuation-token", token.clone()));
        }
        query.sort();
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", strict_encode(v)))
            .collect();
        let args = [
            "-sS".to_owned(),
            "--fail-with-body".to_owned(),
            // Garage wants the payload hash header; the body is empty.
            "-H".to_owned(),
            format!("x-amz-content-sha256: {EMPTY_SHA256}"),
            "--aws-sigv4".to_owned(),
            format!("aws:amz:{region}:s3"),
            "--user".to_owned(),
            format!("{id}:{secret}"),
            format!("{endpoint}/{}?{}", bucket(), query.join("&")),
        ];
        let output = std::process::Command::new("curl")
            .args(&args)
            .output()
            .expect("run curl");
        assert!(
            output.status.success(),
            "curl ListObjectsV2: {} {}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        let body = String::from_utf8(output.stdout).expect("UTF-8 listing");
        for part in body.split("<Key>").skip(1) {
            let key = part.split("</Key>").next().expect("</Key>");
            keys.push(xml_unescape(key));
        }
        token = body
            .split("<NextContinuationToken>")
            .nth(1)
            .and_then(|t| t.split("</NextContinuationToken>").next())
            .map(xml_unescape);
        if token.is_none() {
            break;
        }
    }
    keys
}

#[tokio::test]
async fn awkward_keys_round_trip_exactly_as_stored() {
    let storage = s3_config().build().expect("build S3 store");
    let base = format!("e2e/keys-{}", uuid::Uuid::new_v4());
    let keys = awkward_keys(&base);
    for key in &keys {
        let object = ObjectRef::new(bucket(), key.as_str())
            .unwrap_or_else(|e| panic!("{key:?} is a valid key: {e}"));
        let body = Bytes::from(key.clone());
        if let Err(e) = storage
            .put(&object, body.clone(), &PutRequest::default())
            .await
        {
            panic!("PUT {key:?} failed ({e}); {START_SERVICES}");
        }
        assert_eq!(
            storage.size_of(&object).await.expect("head"),
            Some(key.len() as u64),
            "HEAD {key:?}"
        );
        let got = storage.get(&object, None).await.expect("get");
        assert_eq!(got.bytes, body, "GET {key:?}");
    }
    let mut want = keys.clone();
    want.sort();
    // What the server stored, listed without our code in the way.
    let mut raw = raw_listing(&format!("{base}/"));
    raw.sort();
    assert_eq!(raw, want, "keys stored on the server");
    // And what Storage::list reports.
    let mut listed: Vec<String> = storage
        .list(&bucket(), &base)
        .await
        .expect("list")
        .iter()
        .map(|o| o.key().to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, want, "keys listed by Storage::list");
}
