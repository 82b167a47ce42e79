//! How requests are read: the extractors every route uses ([`Body`], [`RawBody`], [`Query`],
//! [`Path`]), whose rejections are problem+json naming the field, and the parsing of bodies
//! within the limits of [`crate::limits`].
//!
//! A body is checked before a recursive parser sees it: its size by the body limit (413), its
//! nesting by [`MAX_JSON_DEPTH`] (422), measured over its bytes without recursion. YAML is read
//! into JSON through a visitor that counts what it builds, so a few bytes of aliases cannot
//! expand past the body limit (413) and nesting stops at the same depth.

use std::cell::Cell;
use std::fmt;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, header};
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::limits::{JsonMeasure, MAX_JSON_DEPTH, too_deep};

/// A JSON body (`Content-Type: application/json`), within the size and depth limits, parsed so
/// that an error names its field.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::unsupported_media_type(
                "the body must be JSON (`Content-Type: application/json`)",
            ));
        }
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        json(&bytes).map(Body)
    }
}

/// A raw body (for routes whose body is optional, or not JSON), within the size limit.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(RawBody(axum::body::Bytes::from_request(req, state).await?))
    }
}

/// A query string whose rejection is a problem+json naming the parameter.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Path parameters whose rejection (one that is not UTF-8, say) is a problem+json naming the
/// parameter.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `application/json`, or another `application/*+json`, whatever its parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or_default().trim();
    let mime = mime.to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Refuses a JSON text nested deeper than [`MAX_JSON_DEPTH`], before it is parsed.
fn check_depth(bytes: &[u8]) -> Result<(), ApiError> {
    let depth = JsonMeasure::of(bytes).depth;
    if depth > MAX_JSON_DEPTH {
        return Err(ApiError::field("body", too_deep(depth)));
    }
    Ok(())
}

/// Parses a JSON body within the depth limit; an error names the field where it is.
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    check_depth(bytes)?;
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(ApiError::malformed)
}

/// A body that may be absent (an empty body means the defaults). One that is there is JSON:
/// a body of blanks is not (a 400, as any other malformed body).
pub fn optional_body<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Ok(T::default());
    }
    json(bytes)
}

/// Parses a YAML body into `T`, its aliases expanded to at most `budget` (one per value, a
/// string's bytes too) and its nesting within [`MAX_JSON_DEPTH`].
pub fn yaml<T: DeserializeOwned>(bytes: &[u8], budget: usize) -> Result<T, ApiError> {
    let limits = YamlLimits {
        left: Cell::new(budget),
        exceeded: Cell::new(None),
    };
    let seed = Bounded {
        limits: &limits,
        depth: 0,
    };
    let value = seed
        .deserialize(serde_norway::Deserializer::from_slice(bytes))
        .map_err(|e| match limits.exceeded.get() {
            Some(Exceeded::Depth) => ApiError::field("body", too_deep(MAX_JSON_DEPTH + 1)),
            Some(Exceeded::Expansion) => ApiError::too_large(
                "body",
                format!(
                    "with its aliases expanded the YAML is over {budget} bytes, the body limit"
                ),
            ),
            None => ApiError::malformed_text("body", e.to_string()),
        })?;
    serde_path_to_error::deserialize(value).map_err(ApiError::malformed)
}

#[derive(Clone, Copy)]
enum Exceeded {
    Depth,
    Expansion,
}

/// What a YAML document may still build, and which limit stopped it.
struct YamlLimits {
    left: Cell<usize>,
    exceeded: Cell<Option<Exceeded>>,
}

/// A JSON value read from YAML, `depth` levels down, within [`YamlLimits`].
#[derive(Clone, Copy)]
struct Bounded<'a> {
    limits: &'a YamlLimits,
    depth: usize,
}

impl Bounded<'_> {
    fn spend<E: de::Error>(self, cost: usize) -> Result<(), E> {
        match self.limits.left.get().checked_sub(cost) {
            Some(left) => {
                self.limits.left.set(left);
                Ok(())
            }
            None => self.stop(Exceeded::Expansion),
        }
    }

    fn stop<E: de::Error>(self, why: Exceeded) -> Result<(), E> {
        self.limits.exceeded.set(Some(why));
        Err(E::custom("over a limit"))
    }

    /// One level further down, if the depth limit allows it.
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_JSON_DEPTH {
            self.stop(Exceeded::Depth)?;
        }
        self.spend(1)?;
        Ok(Bounded {
            limits: self.limits,
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value JSON can hold")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Value::from(v))
    }

    // Whole numbers past 64 bits become floats, as they do in a JSON body.
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        self.visit_f64(v as f64)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        self.visit_f64(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.spend(1)?;
        // As serde_json reads them: a number JSON cannot hold (NaN, ±∞) is null.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.spend(1 + v.len())?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            inner.spend(key.len())?;
            let value = map.next_value_seed(inner)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_reads_as_json_does() {
        let v: Value = yaml(
            b"a: 1\nb: [true, ~, 2.5, \"s\"]\nc: {d: -3}\nanchor: &x {k: v}\nalias: *x\n",
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": 1, "b": [true, null, 2.5, "s"], "c": {"d": -3},
                               "anchor": {"k": "v"}, "alias": {"k": "v"}})
        );
    }

    #[test]
    fn yaml_aliases_stop_at_the_budget() {
        let bomb =
            b"a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n\
                     c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n";
        let e = yaml::<Value>(bomb, 10_000).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::PAYLOAD_TOO_LARGE, "{e:?}");
        assert!(yaml::<Value>(bomb, 100_000).is_ok());
    }

    #[test]
    fn yaml_and_json_past_the_depth_limit_name_it() {
        for (text, is_yaml) in [
            (
                format!(
                    "{}{}",
                    "[".repeat(MAX_JSON_DEPTH + 1),
                    "]".repeat(MAX_JSON_DEPTH + 1)
                ),
                false,
            ),
            (
                format!(
                    "{}{}",
                    "[".repeat(MAX_JSON_DEPTH + 1),
                    "]".repeat(MAX_JSON_DEPTH + 1)
                ),
                true,
            ),
        ] {
            let e = if is_yaml {
                yaml::<Value>(text.as_bytes(), 1 << 20).unwrap_err()
            } else {
                json::<Value>(text.as_bytes()).unwrap_err()
            };
            assert_eq!(e.status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(e.errors[0].field, "body");
            assert!(e.detail.contains(&MAX_JSON_DEPTH.to_string()), "{e:?}");
        }
        let at_limit = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        assert!(json::<Value>(at_limit.as_bytes()).is_ok());
        assert!(yaml::<Value>(at_limit.as_bytes(), 1 << 20).is_ok());
    }

    #[test]
    fn parse_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            n: u32,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outer {
            topic: String,
            inner: Option<Inner>,
        }
        let field = |text: &str| {
            json::<Outer>(text.as_bytes()).unwrap_err().errors[0]
                .field
                .clone()
        };
        assert_eq!(field(r#"{}"#), "topic");
        assert_eq!(field(r#"{"topic": 1}"#), "topic");
        assert_eq!(field(r#"{"topic": "t", "bogus": 1}"#), "bogus");
        assert_eq!(field(r#"{"topic": "t", "inner": {}}"#), "inner.n");
        assert_eq!(field(r#"{"topic": "t", "inner": {"n": -1}}"#), "inner.n");
        assert_eq!(
            field(r#"{"topic": "t", "inner": {"n": 1, "m": 2}}"#),
            "inner.m"
        );
        assert_eq!(field(r#"{"topic": "#), "topic");
        assert_eq!(field("not json"), "body");
        assert_eq!(field(r#"{"topic": "t", "": 1}"#), "body");
        assert_eq!(
            field(r#"{"topic": "t", "inner": {"n": 1, "": 2}}"#),
            "inner"
        );
        let yaml_field = |text: &str| {
            yaml::<Outer>(text.as_bytes(), 1 << 20).unwrap_err().errors[0]
                .field
                .clone()
        };
        assert_eq!(yaml_field("topic: t\ninner: {n: x}\n"), "inner.n");
        assert_eq!(yaml_field("topic: [\n"), "body");
    }
}
