//! Hostile, or at least rude: a dispatch strategy that uses what its standard library offers —
//! stdout, stderr, stdin, the environment, files, the clocks, randomness — as a plugin written
//! without the sandbox in mind would. The host's WASI shim must answer all of it without
//! blocking, without touching the host, and without a Tokio runtime, and must turn what cannot
//! be had (a sleep, `exit`) into a failed call.
//!
//! The `dispatch.noisy_mode` setting chooses what it does:
//!
//! * absent: prints a lot to stdout and stderr, then picks the first candidate;
//! * `"report"`: answers `no-worker` with what it saw of its world, for the host to check;
//! * `"sleep"`: sleeps (waits on a clock), which the host must refuse;
//! * `"exit"`: calls `std::process::exit`, which the host must refuse;
//! * `"net"`: connects to a TCP port, which the host must refuse (the socket imports trap).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime};

use coretex_plugin_sdk::dispatch::{Candidates, Context, Decision, DispatchStrategy, Job};

#[derive(Default)]
pub struct Noisy;

impl DispatchStrategy for Noisy {
    fn pick(
        &self,
        _: &Job,
        candidates: Candidates<'_>,
        ctx: &dyn Context,
    ) -> Result<Decision, String> {
        let mode: Option<String> = ctx.setting_as("noisy_mode")?;
        match mode.as_deref() {
            None => {
                for i in 0..200 {
                    println!("stdout line {i}: {}", "x".repeat(100));
                    eprintln!("stderr line {i}: {}", "y".repeat(100));
                }
                std::io::stdout().flush().map_err(|e| e.to_string())?;
                if candidates.is_empty() {
                    return Ok(Decision::NoWorker("none".into()));
                }
                Ok(Decision::Worker(0))
            }
            Some("report") => Ok(Decision::NoWorker(report())),
            Some("sleep") => {
                std::thread::sleep(Duration::from_millis(5));
                Ok(Decision::Worker(0))
            }
            Some("exit") => std::process::exit(3),
            Some("net") => match std::net::TcpStream::connect("127.0.0.1:6379") {
                Ok(_) => Ok(Decision::NoWorker("net=connected".into())),
                Err(e) => Ok(Decision::NoWorker(format!("net=refused: {e}"))),
            },
            Some(other) => Err(format!("unknown noisy_mode {other}")),
        }
    }
}

/// What the plugin sees of its world, as `key=value` pairs separated by spaces.
fn report() -> String {
    let mut stdin = Vec::new();
    let stdin = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(n) => n.to_string(),
        Err(e) => format!("error:{:?}", e.kind()),
    };
    let file = match std::fs::File::open("/etc/passwd") {
        Ok(_) => "opened".to_string(),
        Err(_) => "refused".to_string(),
    };
    let started = Instant::now();
    let mut keys: HashMap<u64, u64> = HashMap::new();
    keys.insert(1, 2);
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "env={} args={} cwd={} stdin={stdin} file={file} wall_after_2020={} monotonic={} hashmap={}",
        std::env::vars().count(),
        std::env::args().count(),
        std::env::current_dir().is_ok(),
        wall > 1_577_836_800,
        started.elapsed() < Duration::from_secs(1),
        keys.len(),
    )
}

coretex_plugin_sdk::export_dispatch_strategy!(Noisy);
