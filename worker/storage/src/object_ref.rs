//! [`ObjectRef`]: a validated `s3://bucket/key`, the only way a job names an object.

use std::fmt;
use std::str::FromStr;

use crate::StorageError;

/// A bucket and a key, parsed from `s3://bucket/key`.
///
/// Bucket names follow the S3 rules (3–63 characters of lowercase letters, digits, `-` and `.`,
/// starting and ending with a letter or digit). Keys are non-empty, at most 1024 bytes, and have
/// no empty, `.` or `..` segments, so a key can never climb out of its bucket on a filesystem
/// backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    bucket: String,
    key: String,
}

impl ObjectRef {
    /// Builds a reference from its parts, with the same checks as parsing.
    pub fn new(bucket: impl Into<String>, key: impl Into<String>) -> Result<Self, StorageError> {
        let (bucket, key) = (bucket.into(), key.into());
        let invalid = |reason: String| StorageError::InvalidRef {
            reference: format!("s3://{bucket}/{key}"),
            reason,
        };
        check_bucket(&bucket).map_err(invalid)?;
        check_key(&key).map_err(invalid)?;
        Ok(Self { bucket, key })
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key inside the bucket.
    pub fn key(&self) -> &str {
        &self.key
    }
}

fn check_bucket(bucket: &str) -> Result<(), String> {
    if !(3..=63).contains(&bucket.len()) {
        return Err(format!(
            "bucket name must be 3 to 63 characters, got {}",
            bucket.len()
        ));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("bucket name may only hold lowercase letters, digits, '-' and '.'".into());
    }
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge_ok(bucket.as_bytes()[0]) || !edge_ok(bucket.as_bytes()[bucket.len() - 1]) {
        return Err("bucket name must start and end with a letter or digit".into());
    }
    if bucket.contains("..") {
        return Err("bucket name must not contain '..'".into());
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("key is empty".into());
    }
    if key.len() > 1024 {
        return Err(format!("key is {} bytes, more than S3's 1024", key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err("key contains control characters".into());
    }
    if key
        .split('/')
        .any(|segment| matches!(segment, "" | "." | ".."))
    {
        return Err("key has an empty, '.' or '..' path segment".into());
    }
    Ok(())
}

impl FromStr for ObjectRef {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| StorageError::InvalidRef {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| invalid("must start with s3://"))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| invalid("must be s3://bucket/key"))?;
        Self::new(bucket, key)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl serde::Serialize for ObjectRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ObjectRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let r: ObjectRef = "s3://inputs-1/jobs/a b/image.png".parse().expect("valid");
        assert_eq!(r.bucket(), "inputs-1");
        assert_eq!(r.key(), "jobs/a b/image.png");
        assert_eq!(r.to_string(), "s3://inputs-1/jobs/a b/image.png");
    }

    #[test]
    fn rejects_bad_references_with_the_reason() {
        for (text, reason) in [
            ("http://bucket/key", "must start with s3://"),
            ("s3://bucket", "must be s3://bucket/key"),
            ("s3://bucket/", "key is empty"),
            ("s3://Bucket/key", "lowercase"),
            ("s3://ab/key", "3 to 63"),
            ("s3://-ab/key", "start and end"),
            ("s3://bucket/../etc/passwd", "'..'"),
            ("s3://bucket/a//b", "empty"),
            ("s3://bucket/a\nb", "control"),
        ] {
            let err = text.parse::<ObjectRef>().expect_err(text).to_string();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn serde_uses_the_uri_form() {
        let r = ObjectRef::new("bucket", "k.png").expect("valid");
        let json = serde_json::to_string(&r).expect("serialize");
        assert_eq!(json, r#""s3://bucket/k.png""#);
        let back: ObjectRef = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, r);
        assert!(serde_json::from_str::<ObjectRef>(r#""s3://x/k""#).is_err());
    }
}
