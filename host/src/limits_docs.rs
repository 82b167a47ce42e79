//! The bounds in `coretex_core::limits` are stated where users read them, the README's Limits
//! table and the OpenAPI document; these tests keep the three in step.

use crate::limits::*;

/// The README's Limits table: each row's value cell holds each of the numbers.
#[test]
fn the_readme_table_states_these_limits() {
    let readme = include_str!("../../README.md");
    let rows: [(&str, &[u64]); 26] = [
        ("Request body", &[MAX_BODY_BYTES as u64]),
        (
            "Nesting of a body (JSON or YAML), a payload, a run input, a worker's result",
            &[MAX_JSON_DEPTH as u64],
        ),
        ("Job payload", &[MAX_PAYLOAD_BYTES as u64]),
        (
            "Job message to a worker (payload, env, labels, ids)",
            &[EMBEDDED_BUS_MAX_PAYLOAD as u64],
        ),
        (
            "Ids (job, trace, tenant, team, principal, topic, workflow, run)",
            &[MAX_ID_LEN as u64],
        ),
        ("`Idempotency-Key`", &[MAX_IDEMPOTENCY_KEY_LEN as u64]),
        (
            "Labels (a job's `labels`, a step's `route_labels`)",
            &[
                MAX_LABELS as u64,
                MAX_ID_LEN as u64,
                MAX_LABEL_VALUE_BYTES as u64,
            ],
        ),
        ("Env variables per job", &[MAX_ENV_VARS as u64]),
        ("Env value", &[MAX_ENV_VALUE_BYTES as u64]),
        ("Env, names and values together", &[MAX_ENV_BYTES as u64]),
        ("`deadline_ms`", &[MAX_DEADLINE_MS]),
        ("`heartbeat_timeout_sec` (job, step)", &[MAX_TIMEOUT_SEC]),
        ("Jobs per batch", &[MAX_BATCH_JOBS as u64]),
        ("Page size (`limit`)", &[MAX_PAGE_ITEMS as u64]),
        (
            "Dead letters per bulk retry (`max`)",
            &[MAX_BULK_RETRY as u64],
        ),
        (
            "Cancel `reason`, approval `comment`",
            &[MAX_REASON_BYTES as u64],
        ),
        ("Steps per workflow", &[MAX_STEPS as u64]),
        ("Dependencies per step", &[MAX_DEPENDENCIES as u64]),
        ("Step id", &[MAX_STEP_ID_LEN as u64]),
        ("Workflow `name`", &[MAX_NAME_BYTES as u64]),
        (
            "Expression (`condition`, `for_each`)",
            &[MAX_EXPRESSION_BYTES as u64],
        ),
        ("`output_path`", &[MAX_OUTPUT_PATH_SEGMENTS as u64]),
        ("`for_each` items", &[MAX_FOR_EACH_ITEMS as u64]),
        ("`timeout_sec` (workflow, step)", &[MAX_TIMEOUT_SEC]),
        ("`retry.max_retries`", &[MAX_RETRIES as u64]),
        ("Request headers", &[HEADER_READ_TIMEOUT.as_secs()]),
    ];
    for (label, values) in rows {
        let prefix = format!("| {label} | ");
        let row = readme
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("the README's Limits table has no row `{label}`"));
        let value = row[prefix.len()..].split(" | ").next().unwrap_or_default();
        for v in values {
            assert!(
                value.contains(&v.to_string()),
                "README row `{label}` says `{value}`, not {v}"
            );
        }
    }
    let backoff = format!("0–{MAX_BACKOFF_SEC} s");
    let multiplier = format!("1–{MAX_BACKOFF_MULTIPLIER} |");
    assert!(readme.contains(&backoff) && readme.contains(&multiplier));
}

/// The OpenAPI document states the same bounds in its schemas.
#[test]
fn the_openapi_document_states_these_limits() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../crates/gateway/src/openapi.json")).unwrap();
    let job = "/components/schemas/JobRequest/properties";
    let step = "/components/schemas/Step/properties";
    let spec = "/components/schemas/WorkflowSpec/properties";
    let batch = "/paths/~1api~1v1~1jobs~1batch/post/requestBody/content/application~1json/schema/properties/jobs";
    let cancel = "/paths/~1api~1v1~1jobs~1{id}~1cancel/post/requestBody/content/application~1json/schema/properties/reason";
    let bulk = "/paths/~1api~1v1~1dlq~1retry/post/requestBody/content/application~1json/schema/properties/max";
    let numbers: [(String, f64); 23] = [
        (format!("{job}/labels/maxProperties"), MAX_LABELS as f64),
        (
            format!("{job}/labels/propertyNames/maxLength"),
            MAX_ID_LEN as f64,
        ),
        (
            format!("{job}/labels/additionalProperties/maxLength"),
            MAX_LABEL_VALUE_BYTES as f64,
        ),
        (format!("{job}/env/maxProperties"), MAX_ENV_VARS as f64),
        (
            format!("{job}/env/additionalProperties/maxLength"),
            MAX_ENV_VALUE_BYTES as f64,
        ),
        (format!("{job}/deadline_ms/maximum"), MAX_DEADLINE_MS as f64),
        (
            format!("{job}/heartbeat_timeout_sec/maximum"),
            MAX_TIMEOUT_SEC as f64,
        ),
        (format!("{batch}/maxItems"), MAX_BATCH_JOBS as f64),
        (format!("{cancel}/maxLength"), MAX_REASON_BYTES as f64),
        (format!("{bulk}/maximum"), MAX_BULK_RETRY as f64),
        (format!("{spec}/steps/maxProperties"), MAX_STEPS as f64),
        (format!("{spec}/name/maxLength"), MAX_NAME_BYTES as f64),
        (
            format!("{spec}/timeout_sec/maximum"),
            MAX_TIMEOUT_SEC as f64,
        ),
        (
            format!("{step}/heartbeat_timeout_sec/maximum"),
            MAX_TIMEOUT_SEC as f64,
        ),
        (
            format!("{step}/depends_on/maxItems"),
            MAX_DEPENDENCIES as f64,
        ),
        (
            format!("{step}/condition/maxLength"),
            MAX_EXPRESSION_BYTES as f64,
        ),
        (
            format!("{step}/for_each/maxLength"),
            MAX_EXPRESSION_BYTES as f64,
        ),
        (
            format!("{step}/max_parallel/maximum"),
            MAX_FOR_EACH_ITEMS as f64,
        ),
        (
            format!("{step}/timeout_sec/maximum"),
            MAX_TIMEOUT_SEC as f64,
        ),
        (
            format!("{step}/retry/properties/max_retries/maximum"),
            MAX_RETRIES as f64,
        ),
        (
            format!("{step}/retry/properties/initial_backoff_sec/maximum"),
            MAX_BACKOFF_SEC,
        ),
        (
            format!("{step}/retry/properties/max_backoff_sec/maximum"),
            MAX_BACKOFF_SEC,
        ),
        (
            format!("{step}/retry/properties/multiplier/maximum"),
            MAX_BACKOFF_MULTIPLIER,
        ),
    ];
    for (pointer, want) in numbers {
        let got = doc.pointer(&pointer).and_then(|v| v.as_f64());
        assert_eq!(got, Some(want), "{pointer}");
    }
    let patterns = [
        (
            format!("{job}/topic/pattern"),
            format!("{{1,{MAX_ID_LEN}}}$"),
        ),
        (
            format!("{spec}/steps/propertyNames/pattern"),
            format!("{{1,{MAX_STEP_ID_LEN}}}$"),
        ),
        (
            format!("{step}/output_path/pattern"),
            format!("{{0,{}}}$", MAX_OUTPUT_PATH_SEGMENTS - 1),
        ),
    ];
    for (pointer, tail) in patterns {
        let got = doc
            .pointer(&pointer)
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        assert!(
            got.ends_with(&tail),
            "{pointer} is `{got}`, not ending `{tail}`"
        );
    }
    let limit = doc["paths"]["/api/v1/jobs"]["get"]["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "limit"))
        .map(|p| p["schema"]["maximum"].clone());
    assert_eq!(limit, Some(serde_json::json!(MAX_PAGE_ITEMS)));
    let key = doc["paths"]["/api/v1/jobs"]["post"]["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "Idempotency-Key"))
        .map(|p| p["schema"]["maxLength"].clone());
    assert_eq!(key, Some(serde_json::json!(MAX_IDEMPOTENCY_KEY_LEN)));
}

#[test]
fn a_deep_text_is_measured_without_recursion() {
    let text = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
    assert_eq!(JsonMeasure::of(text.as_bytes()).depth, 1_000_000);
}
