//! Every limit on what enters the host, in one place: sizes, depths, counts, lengths and times,
//! each answered 413 (a body too large) or 422 (a field past its limit, named in `errors[]`)
//! before anything is stored. The README's `## Limits` table and the OpenAPI document state the
//! same values; a test below reads both and fails when either drifts from these constants.
//!
//! Also here, because depth is a limit too: [`JsonMeasure`], which measures the size and the
//! nesting depth of JSON text in one pass without recursion — over a body before it is parsed
//! (a body nested past the limit is never handed to a recursive parser), or over a value while it
//! is serialized (a payload a workflow template built).
//!
//! # Why the depth limit is 64
//!
//! serde_json refuses to read JSON nested deeper than 128 levels. Every document the host stores
//! or sends wraps the caller's JSON in a few levels of its own (a payload sits in a job record, a
//! DLQ entry's `request`, a page's `items`; a step's output in a run's
//! `steps.<id>.children[i].output`; a config in a job's `effective_config`), at most about 20.
//! Capping what a caller sends at 64 keeps every stored document readable with room to spare.

use std::time::Duration;

/// The largest request body, in bytes (the default of `--max-body-bytes`).
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// The largest job payload, serialized (the default of `--max-payload-bytes`).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// The deepest nesting of arrays and objects in a body (JSON or YAML), a payload, a run input
/// or a worker's result: `[]` is 1 deep, `{"a": [1]}` 2.
pub const MAX_JSON_DEPTH: usize = 64;

/// Job, trace, tenant, team, topic, workflow and other ids: 1–128 of `[A-Za-z0-9._:-]`.
pub const MAX_ID_LEN: usize = 128;
/// The `Idempotency-Key` header: 1–200 visible ASCII characters.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;
/// Labels per job (and `route_labels` per step).
pub const MAX_LABELS: usize = 64;
/// A label value's bytes (keys are ids' length, 1–128).
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;
/// Environment variables per job.
pub const MAX_ENV_VARS: usize = 128;
/// One environment value's bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 16 * 1024;
/// All of a job's environment (names and values), in bytes.
pub const MAX_ENV_BYTES: usize = 64 * 1024;
/// A job's `deadline_ms`: 1 ms to 30 days.
pub const MAX_DEADLINE_MS: u64 = 30 * 24 * 3600 * 1000;
/// Jobs per `POST /api/v1/jobs/batch`.
pub const MAX_BATCH_JOBS: usize = 1000;
/// Items per page of a list (`limit`).
pub const MAX_PAGE_ITEMS: usize = 500;
/// Dead letters one `POST /api/v1/dlq/retry` replays (`max`).
pub const MAX_BULK_RETRY: usize = 10_000;
/// A cancel `reason` or an approval `comment`, in bytes.
pub const MAX_REASON_BYTES: usize = 1000;

/// Steps per workflow.
pub const MAX_STEPS: usize = 256;
/// Entries of one step's `depends_on`.
pub const MAX_DEPENDENCIES: usize = 256;
/// A step id: 1–64 of `[A-Za-z0-9_-]`. Shorter than other ids, without `.` and `:`, because it
/// becomes part of its jobs' ids (`<run>.<step>[.<item>].<attempt>`, at most 128 characters).
pub const MAX_STEP_ID_LEN: usize = 64;
/// A workflow's `name`, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// A step's `condition` or `for_each` expression, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;
/// Dotted segments of a step's `output_path` (each an object level of the run's context).
pub const MAX_OUTPUT_PATH_SEGMENTS: usize = 16;
/// Items one `for_each` may fan out to (a step that yields more fails, naming the limit); a
/// step's `max_parallel` is 1 to this.
pub const MAX_FOR_EACH_ITEMS: usize = 1000;
/// A workflow's or a step's `timeout_sec`: 1 s to 30 days.
pub const MAX_TIMEOUT_SEC: u64 = 30 * 24 * 3600;
/// A step's `retry.max_retries`.
pub const MAX_RETRIES: u32 = 100;
/// A step's `retry.initial_backoff_sec` and `retry.max_backoff_sec`: 0 to a day.
pub const MAX_BACKOFF_SEC: f64 = 86_400.0;
/// A step's `retry.multiplier`: 1 to this.
pub const MAX_BACKOFF_MULTIPLIER: f64 = 10.0;

/// The largest message the embedded bus carries: NATS's default `max_payload`, so a job that
/// fits one fits the other. With NATS, the server's own `max_payload` is read at connect.
pub const EMBEDDED_BUS_MAX_PAYLOAD: usize = 1 << 20;
/// How long a client may take to send a request's headers before its connection is closed
/// (so that slow clients cannot hold connections open without sending a request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The size and the nesting depth of JSON text, measured in one pass over its bytes: written
/// to as an [`std::io::Write`] (serializing a value into it measures the value without keeping
/// its text), or fed a body with [`JsonMeasure::of`]. Strings are skipped, escapes included.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JsonMeasure {
    /// Bytes seen.
    pub bytes: usize,
    /// The deepest nesting seen.
    pub depth: usize,
    open: usize,
    in_string: bool,
    escaped: bool,
}

impl JsonMeasure {
    /// Measures JSON text (valid or not: brackets inside strings never count).
    pub fn of(text: &[u8]) -> JsonMeasure {
        let mut m = JsonMeasure::default();
        m.feed(text);
        m
    }

    /// Measures a value as serde_json serializes it.
    pub fn of_value<T: serde::Serialize + ?Sized>(value: &T) -> JsonMeasure {
        let mut m = JsonMeasure::default();
        // Writing into a measure cannot fail, and a value serde_json holds always serializes.
        let _ = serde_json::to_writer(&mut m, value);
        m
    }

    fn feed(&mut self, text: &[u8]) {
        self.bytes += text.len();
        for &b in text {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' | b'{' => {
                    self.open += 1;
                    self.depth = self.depth.max(self.open);
                }
                b']' | b'}' => self.open = self.open.saturating_sub(1),
                _ => {}
            }
        }
    }
}

impl std::io::Write for JsonMeasure {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a depth past [`MAX_JSON_DEPTH`] is told.
pub fn too_deep(depth: usize) -> String {
    format!("is nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `depth` nested arrays around a zero.
    fn nest(depth: usize) -> serde_json::Value {
        (0..depth).fold(json!(0), |v, _| json!([v]))
    }

    #[test]
    fn depth_counts_containers_and_skips_strings() {
        assert_eq!(JsonMeasure::of(b"0").depth, 0);
        assert_eq!(JsonMeasure::of(b"[]").depth, 1);
        assert_eq!(JsonMeasure::of(br#"{"a": [1, {"b": []}]}"#).depth, 4);
        assert_eq!(JsonMeasure::of(br#"["[[[", "\"[{", "\\"]"#).depth, 1);
        let v = json!({"s": "]]]}}}[[[", "deep": nest(70)});
        let text = serde_json::to_vec(&v).unwrap();
        assert_eq!(JsonMeasure::of(&text).depth, 71);
        assert_eq!(JsonMeasure::of_value(&v), JsonMeasure::of(&text));
        assert_eq!(JsonMeasure::of_value(&v).bytes, text.len());
    }
}
