//! [`ObjectRef`]: a validated `s3://bucket/key`, the only way a job names an object, and the
//! one place a key becomes an `object_store` path (`ObjectRef::location`, feature `store`).

use std::fmt;
use std::str::FromStr;

#[cfg(feature = "store")]
use object_store::path::Path;

use crate::StorageError;

/// A bucket and a key, parsed from `s3://bucket/key`.
///
/// Bucket names follow the S3 rules (3–63 characters of lowercase letters, digits, `-` and `.`,
/// starting and ending with a letter or digit). Keys are non-empty, at most 1024 bytes, hold no
/// ASCII control character (`\x00`–`\x1f`, `\x7f`) and have no empty, `.` or `..` segments, so a
/// key can never climb out of its bucket on a filesystem backend. These are the job schema's
/// rules (`schemas/inpaint-job.v1.schema.json`, `ObjectUri`); every other character, `%`, `+`,
/// spaces and non-ASCII letters included, is part of the key as written.
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

    /// The key as an `object_store` path whose text is the key itself, byte for byte.
    ///
    /// `Path::from(&str)` would percent-encode every non-ASCII byte and `%`, `#`, `?`, `*`, `~`,
    /// `^`, `|`, `` ` ``, `"`, `\\`, `<`, `>`, brackets and braces in each segment, so
    /// `my photo+é.png` would be stored and looked up as `my photo+%C3%A9.png` and `%2e` as
    /// `%252e`: objects written by others are "not found", and outputs land under another key
    /// than the one reported. `Path::parse` keeps the text, and the S3 client percent-encodes it
    /// once, for the URL only. It refuses what [`ObjectRef::new`] already refused (empty, `.`
    /// and `..` segments, ASCII control characters), so the error below means the two rule sets
    /// drifted apart.
    #[cfg(feature = "store")]
    pub fn location(&self) -> Result<Path, StorageError> {
        let location = Path::parse(&self.key).map_err(|e| StorageError::InvalidRef {
            reference: self.to_string(),
            reason: format!("the object store cannot name this key: {e}"),
        })?;
        // Path::parse drops one leading or trailing '/'; keys have neither (no empty segment).
        if location.as_ref() != self.key {
            return Err(StorageError::InvalidRef {
                reference: self.to_string(),
                reason: format!("the object store would name it {:?}", location.as_ref()),
            });
        }
        Ok(location)
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
    // ASCII controls only, like the schema: C1 controls (U+0080..U+009F) are valid UTF-8 key
    // characters for S3 and the schema allows them.
    if key.chars().any(|c| c.is_ascii_control()) {
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
    #[cfg(feature = "store")]
    fn the_location_is_the_key_verbatim() {
        for key in [
            "my photo+é.png",
            "sp ace+é/%2e%2e/0.png",
            "%C3%A9 #?*~^|`\"\\<>[]{}=&.png",
            "中文/日本語/한국어/عربي/🙂.png",
            "a/b\u{85}c/d",
            "...",
            ".a/..b",
        ] {
            let r = ObjectRef::new("bucket", key).expect(key);
            assert_eq!(r.location().expect(key).as_ref(), key);
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
