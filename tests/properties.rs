//! Properties of the API under generated input (issue 13): whatever JSON a client sends to the
//! submit, batch and workflow-create endpoints — values of any type where a field is expected,
//! ids of any length and alphabet, unicode, numbers past every range, nesting around the depth
//! limit, unknown fields — the host never answers 5xx and never panics (a panic would drop the
//! connection), and every 4xx is problem+json whose `errors[]` names a field. One embedded host
//! per endpoint, a bounded number of cases each.

mod common;

use common::{Api, Backend, options, start};
use coretex::limits::MAX_JSON_DEPTH;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};

/// Cases per endpoint: enough to reach every field with every kind of value, few enough that
/// the three tests together take seconds.
const CASES: u32 = 256;

// ---- generators ----

/// Text of every kind: ids, near-ids, empty, long, any unicode (controls and astral planes).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._:-]{1,16}",
        "[A-Za-z0-9._:-]{120,140}",
        Just(String::new()),
        "\\PC{0,40}",
        any::<String>(),
        "[a-z${}().+ ]{0,30}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..5).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        Just(json!(1e308)),
        Just(json!(-0.0)),
        Just(json!(1.0)),
    ]
}

/// Any JSON value, a few levels deep.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Arrays nested around the depth limit, some just inside it and some just past it.
fn deep() -> impl Strategy<Value = Value> {
    (MAX_JSON_DEPTH - 3..MAX_JSON_DEPTH + 3).prop_map(|d| (0..d).fold(json!(0), |v, _| json!([v])))
}

/// A value for a field: usually the right kind of thing, often anything at all.
fn field(usual: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    proptest::option::weighted(0.6, prop_oneof![3 => usual, 1 => value(), 1 => deep()])
}

fn string_map() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(text(), text().prop_map(Value::String), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// An object with each of `fields` present or not, plus sometimes a field no schema has.
fn object(
    fields: Vec<(&'static str, BoxedStrategy<Option<Value>>)>,
) -> impl Strategy<Value = Value> {
    let (names, values): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
    (values, proptest::option::weighted(0.1, (text(), value()))).prop_map(move |(vals, extra)| {
        let mut m = Map::new();
        for (name, v) in names.iter().zip(vals) {
            if let Some(v) = v {
                m.insert(name.to_string(), v);
            }
        }
        if let Some((k, v)) = extra {
            m.insert(k, v);
        }
        Value::Object(m)
    })
}

fn job() -> impl Strategy<Value = Value> {
    let id = || field(text().prop_map(Value::String)).boxed();
    object(vec![
        ("id", id()),
        ("topic", field(text().prop_map(Value::String)).boxed()),
        ("payload", field(value()).boxed()),
        (
            "priority",
            field(prop_oneof![
                Just(json!("interactive")),
                Just(json!("batch")),
                Just(json!("critical")),
                text().prop_map(Value::String),
            ])
            .boxed(),
        ),
        ("tenant_id", id()),
        ("team_id", id()),
        ("principal_id", id()),
        ("labels", field(string_map()).boxed()),
        ("env", field(string_map()).boxed()),
        ("deadline_ms", field(number()).boxed()),
        ("trace_id", id()),
        ("workflow_id", id()),
        ("run_id", id()),
        ("step_id", id()),
    ])
}

fn step() -> impl Strategy<Value = Value> {
    let s = || field(text().prop_map(Value::String)).boxed();
    object(vec![
        (
            "type",
            field(prop_oneof![Just(json!("job")), Just(json!("approval"))]).boxed(),
        ),
        ("topic", s()),
        (
            "depends_on",
            field(
                prop::collection::vec(
                    prop_oneof![
                        Just(json!("a")),
                        Just(json!("b")),
                        text().prop_map(Value::String)
                    ],
                    0..4,
                )
                .prop_map(Value::Array),
            )
            .boxed(),
        ),
        ("condition", s()),
        ("for_each", s()),
        ("max_parallel", field(number()).boxed()),
        ("input", field(value()).boxed()),
        ("output_path", s()),
        (
            "retry",
            field(object(vec![
                ("max_retries", field(number()).boxed()),
                ("initial_backoff_sec", field(number()).boxed()),
                ("max_backoff_sec", field(number()).boxed()),
                ("multiplier", field(number()).boxed()),
                ("policy", s()),
            ]))
            .boxed(),
        ),
        ("timeout_sec", field(number()).boxed()),
        ("route_labels", field(string_map()).boxed()),
        (
            "on_error",
            field(prop_oneof![Just(json!("fail")), Just(json!("continue"))]).boxed(),
        ),
    ])
}

fn workflow() -> impl Strategy<Value = Value> {
    let steps = prop::collection::btree_map(
        prop_oneof![Just("a".to_string()), Just("b".to_string()), text()],
        step(),
        0..4,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()));
    object(vec![
        ("id", field(text().prop_map(Value::String)).boxed()),
        ("name", field(text().prop_map(Value::String)).boxed()),
        ("org_id", field(text().prop_map(Value::String)).boxed()),
        ("team_id", field(text().prop_map(Value::String)).boxed()),
        ("version", field(number()).boxed()),
        ("timeout_sec", field(number()).boxed()),
        ("input_schema", field(value()).boxed()),
        ("steps", field(steps).boxed()),
    ])
}

// ---- the property ----

/// A host, and the runtime it runs on, for one endpoint's cases.
struct Host {
    rt: tokio::runtime::Runtime,
    api: Api,
    _running: coretex::serve::Running,
}

impl Host {
    fn start() -> Host {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let running = rt.block_on(start(options(Backend::Embedded)));
        let api = Api::new(running.addr);
        Host {
            rt,
            api,
            _running: running,
        }
    }

    /// Posts `body` and checks the answer: no 5xx, and a 4xx is problem+json naming a field
    /// (a batch none of whose items was stored answers its items, each naming its fields).
    fn check(&self, path: &str, body: &Value) -> Result<(), TestCaseError> {
        let (status, ctype, answer) = self.rt.block_on(self.api.send(
            "POST",
            path,
            Some("application/json"),
            serde_json::to_vec(body).expect("serializable"),
        ));
        prop_assert!(status < 500, "{status} for {body}: {answer}");
        if status < 400 {
            return Ok(());
        }
        if ctype.starts_with("application/json") && path.ends_with("/batch") {
            let items = answer["items"].as_array().cloned().unwrap_or_default();
            prop_assert!(!items.is_empty(), "{answer}");
            for item in items {
                prop_assert!(
                    named_field(&item["error"]),
                    "an item without a field: {item}"
                );
            }
            return Ok(());
        }
        prop_assert!(
            ctype.starts_with("application/problem+json"),
            "{status} `{ctype}` for {body}: {answer}"
        );
        prop_assert_eq!(answer["status"].as_u64(), Some(u64::from(status)));
        // An id taken already is a conflict about the whole resource, not a field.
        if status != 409 {
            prop_assert!(named_field(&answer), "{status} names no field: {answer}");
        }
        Ok(())
    }
}

fn named_field(problem: &Value) -> bool {
    problem["errors"].as_array().is_some_and(|e| {
        e.iter()
            .any(|e| e["field"].as_str().is_some_and(|f| !f.is_empty()))
    })
}

fn run(path: &str, body: impl Strategy<Value = Value>) {
    let host = Host::start();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&body, |b| host.check(path, &b))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let health = host.rt.block_on(async { host.api.get("/health").await.0 });
    assert_eq!(health, 200, "the host is up after every case");
}

#[test]
fn submit_answers_every_body_without_a_server_error() {
    run("/api/v1/jobs", prop_oneof![4 => job(), 1 => value()]);
}

#[test]
fn batch_answers_every_body_without_a_server_error() {
    let jobs = prop::collection::vec(prop_oneof![4 => job(), 1 => value()], 0..6)
        .prop_map(|jobs| json!({"jobs": jobs}));
    run("/api/v1/jobs/batch", prop_oneof![4 => jobs, 1 => value()]);
}

#[test]
fn workflow_create_answers_every_body_without_a_server_error() {
    run(
        "/api/v1/workflows",
        prop_oneof![4 => workflow(), 1 => value()],
    );
}
