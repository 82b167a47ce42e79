//! Wall-clock time as milliseconds since the Unix epoch, and its RFC 3339 form on the wire.
//!
//! Inside the process and in Redis scores times are integers (cheap to compare and index); every
//! JSON document a user reads carries them as RFC 3339 strings with millisecond precision.

use chrono::{DateTime, SecondsFormat, Utc};

pub type Millis = i64;

pub fn now_ms() -> Millis {
    Utc::now().timestamp_millis()
}

pub fn to_rfc3339(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_rfc3339(s: &str) -> Result<Millis, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))
}

/// `#[serde(with = "time::rfc3339")]` for a [`Millis`] field; also accepts a plain integer.
pub mod rfc3339 {
    use super::Millis;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_rfc3339(*ms))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Int(i64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        match Either::deserialize(d)? {
            Either::Int(ms) => Ok(ms),
            Either::Text(t) => super::parse_rfc3339(&t).map_err(D::Error::custom),
        }
    }
}

/// The same for `Option<Millis>`.
pub mod rfc3339_opt {
    use super::Millis;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => super::rfc3339::serialize(ms, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::rfc3339")] Millis);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_milliseconds() {
        let ms = 1_764_139_214_123;
        assert_eq!(parse_rfc3339(&to_rfc3339(ms)).unwrap(), ms);
        assert_eq!(to_rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
