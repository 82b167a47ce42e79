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
    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_rfc3339(*ms))
    }

    /// Reads the string in place (an untagged enum would buffer and copy it first: these
    /// times are on every worker message).
    struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = Millis;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an RFC 3339 time or integer milliseconds since the epoch")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
            Ok(v)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
            Millis::try_from(v).map_err(|_| E::custom(format!("{v} milliseconds is out of range")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
            super::parse_rfc3339(v).map_err(E::custom)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        d.deserialize_any(Visitor)
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
    fn rfc3339_fields_take_text_or_integers_and_name_bad_input() {
        #[derive(serde::Deserialize)]
        struct At {
            #[serde(with = "rfc3339")]
            at: Millis,
        }
        let at = |json: &str| serde_json::from_str::<At>(json).map(|a| a.at);
        assert_eq!(at(r#"{"at":"1970-01-01T00:00:01.500Z"}"#).unwrap(), 1_500);
        assert_eq!(
            at(r#"{"at":"1970-01-01T01:00:01.500+01:00"}"#).unwrap(),
            1_500
        );
        assert_eq!(at(r#"{"at":1500}"#).unwrap(), 1_500);
        assert_eq!(at(r#"{"at":-1}"#).unwrap(), -1);
        let err = at(r#"{"at":"yesterday"}"#).unwrap_err().to_string();
        assert!(err.contains("`yesterday` is not an RFC 3339 time"), "{err}");
        assert!(at(r#"{"at":true}"#).is_err());
        assert!(at(r#"{"at":18446744073709551615}"#).is_err());
    }

    #[test]
    fn rfc3339_round_trips_milliseconds() {
        let ms = 1_764_139_214_123;
        assert_eq!(parse_rfc3339(&to_rfc3339(ms)).unwrap(), ms);
        assert_eq!(to_rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
