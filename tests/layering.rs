//! The workspace's layering, checked over `cargo metadata`: each crate depends only on crates
//! below it, and the domain crate on no I/O at all. An upward arrow fails here, naming it.
//!
//! The layers, bottom up (README, "Layout"): `coretex-core` (domain, no I/O) → `coretex-store`,
//! `coretex-bus`, `coretex-plugin-host`, `coretex-builtins` and `coretex-supervisor` (side by
//! side: none uses another) → `coretex-scheduler` (with the services on it: config, reconciler,
//! dead letters, plugin uploads) → `coretex-workflow` → `coretex-gateway` (the API and the
//! dashboard) → `coretex` (the binary and its composition).
//!
//! A foreign API is narrowed in one crate: only `coretex-store` may depend on `redis`, only
//! `coretex-bus` on `async-nats`, only `coretex-plugin-host` on `wasmtime` (tests may use them
//! to set up or inspect what they check).

use std::process::Command;

use serde_json::Value;

/// Workspace crates by layer: a crate may depend only on crates of a lower layer.
const LAYERS: &[(&str, u32)] = &[
    ("coretex-core", 0),
    ("coretex-store", 1),
    ("coretex-bus", 1),
    ("coretex-plugin-host", 1),
    ("coretex-builtins", 1),
    ("coretex-supervisor", 1),
    ("coretex-scheduler", 2),
    ("coretex-workflow", 3),
    ("coretex-gateway", 4),
    ("coretex", 5),
];

/// Foreign crates that exactly one workspace crate may depend on (outside its tests).
const OWNED_BY: &[(&str, &str)] = &[
    ("redis", "coretex-store"),
    ("async-nats", "coretex-bus"),
    ("wasmtime", "coretex-plugin-host"),
];

/// What the domain crate must never reach: runtimes, backends, the sandbox, HTTP.
const IO_CRATES: &[&str] = &[
    "tokio",
    "redis",
    "async-nats",
    "wasmtime",
    "axum",
    "hyper",
    "reqwest",
];

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

fn layer(name: &str) -> Option<u32> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

#[test]
fn workspace_crates_depend_only_downward() {
    let meta = metadata();
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut seen = Vec::new();
    for package in meta["packages"].as_array().expect("packages") {
        let id = package["id"].as_str().unwrap_or_default();
        if !members.contains(&id) {
            continue;
        }
        let name = package["name"].as_str().expect("a package name");
        let Some(own) = layer(name) else {
            panic!("workspace crate `{name}` has no layer in tests/layering.rs: give it one");
        };
        seen.push(name.to_string());
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            let normal = dep["kind"].is_null();
            if let Some(theirs) = layer(dep_name) {
                assert!(
                    !normal || theirs < own,
                    "`{name}` (layer {own}) depends on `{dep_name}` (layer {theirs}): \
                     dependencies run downward only"
                );
            }
            if own == 0 && normal {
                assert!(
                    !IO_CRATES.contains(&dep_name),
                    "the domain crate `{name}` depends on `{dep_name}`: it does no I/O"
                );
            }
            if let Some((_, owner)) = OWNED_BY.iter().find(|(d, _)| *d == dep_name) {
                assert!(
                    !normal || name == *owner,
                    "`{name}` depends on `{dep_name}`, which only `{owner}` may use"
                );
            }
        }
    }
    for (name, _) in LAYERS {
        assert!(
            seen.iter().any(|s| s == name),
            "tests/layering.rs names `{name}`, which is not a workspace crate"
        );
    }
}
