//! [`JobId`]: the producer-chosen UUID that names a job and makes it idempotent.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's identity: a UUID chosen by the producer.
///
/// It is the idempotency key: redelivering or republishing a job with the same id writes the same
/// output keys and yields the same result. On the wire it is the canonical form only: 36
/// characters, lowercase hex, hyphens at 8-4-4-4-12 (`0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a`).
///
/// One rule for both sides: the parser accepts exactly the strings the schema's `pattern`
/// accepts, and [`JobId`]'s `Display` writes that same string back, so every result and output
/// key carries the `job_id` byte for byte as the producer sent it. Other UUID spellings (upper
/// case, no hyphens, braces, `urn:uuid:`) are refused rather than silently rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    /// Wraps a UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// A fresh random (v4) id, for producers and tests.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// Why a string is not a [`JobId`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "job_id must be a UUID in canonical form (36 characters: lowercase hex and hyphens, \
     8-4-4-4-12, e.g. 0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a), got {got:?}"
)]
pub struct JobIdError {
    /// The refused text, cut to 64 characters.
    pub got: String,
}

/// Where the canonical form has its hyphens.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// Whether `s` is a canonical UUID: the schema's [`UUID_PATTERN`], checked by hand.
fn is_canonical(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if HYPHENS.contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
            }
        })
}

impl FromStr for JobId {
    type Err = JobIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let refuse = || JobIdError {
            got: s.chars().take(64).collect(),
        };
        if !is_canonical(s) {
            return Err(refuse());
        }
        Uuid::try_parse(s).map(Self).map_err(|_| refuse())
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl From<Uuid> for JobId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

/// The pattern of a canonical (lowercase, hyphenated) UUID: the only form a job id takes.
pub(crate) const UUID_PATTERN: &str =
    "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

impl JsonSchema for JobId {
    fn schema_name() -> Cow<'static, str> {
        "JobId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A job's identity: a UUID chosen by the producer, in canonical form \
                (lowercase hex, hyphenated 8-4-4-4-12). It is the idempotency key: the same id \
                always maps to the same output keys, and results carry it unchanged.",
            "type": "string",
            "format": "uuid",
            "pattern": UUID_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_a_hyphenated_string() {
        let text = "0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a";
        let id: JobId = text.parse().expect("valid uuid");
        assert_eq!(id.to_string(), text);
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, format!("\"{text}\""));
        let back: JobId = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, id);
    }

    #[test]
    fn rejects_non_uuids() {
        assert!("not-a-uuid".parse::<JobId>().is_err());
        assert!(serde_json::from_str::<JobId>("\"1234\"").is_err());
        assert!(serde_json::from_str::<JobId>("42").is_err());
    }
}
