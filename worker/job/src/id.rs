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
/// output keys and yields the same result. On the wire it is the hyphenated lowercase form
/// (`0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a`); parsing also accepts upper case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

impl FromStr for JobId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl From<Uuid> for JobId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

/// The pattern of a hyphenated UUID, for validators that do not check `format`.
pub(crate) const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

impl JsonSchema for JobId {
    fn schema_name() -> Cow<'static, str> {
        "JobId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A job's identity: a UUID chosen by the producer, in hyphenated form. \
                It is the idempotency key: the same id always maps to the same output keys.",
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
    fn upper_case_parses_to_the_same_id() {
        let lower: JobId = "0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a"
            .parse()
            .expect("lower");
        let upper: JobId = "0B9C5A52-3F0E-4D8A-9A3E-8F6F4D1C2B7A"
            .parse()
            .expect("upper");
        assert_eq!(lower, upper);
    }

    #[test]
    fn rejects_non_uuids() {
        assert!("not-a-uuid".parse::<JobId>().is_err());
        assert!(serde_json::from_str::<JobId>("\"1234\"").is_err());
        assert!(serde_json::from_str::<JobId>("42").is_err());
    }
}
