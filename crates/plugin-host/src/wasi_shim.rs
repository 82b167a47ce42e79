//! WASI 0.2 with nothing behind it, synchronous: what a plugin's standard library imports,
//! answered from the host without any I/O and without Tokio.
//!
//! Rust's `std` for `wasm32-wasip2` (and wasi-libc under it) imports WASI whether a plugin uses
//! it or not: the environment and arguments at start-up, stderr for a panic message, random
//! bytes for `HashMap`'s keys, the clocks for `Instant`. This shim answers those and nothing
//! more:
//!
//! * environment and arguments empty, no initial directory, no preopened directory;
//! * stdin empty (closed); stdout and stderr accept every write and discard it, at once;
//! * the clocks are the host's real clocks, random bytes the host's (a CSPRNG seeded by the
//!   OS); both kinds of `wasi:random` get the same real randomness;
//! * `exit` traps (a plugin has no process to end);
//! * a pollable is ready at once, except a clock's before its time: waiting on that (a
//!   `sleep`) traps with [`Blocked`], since nothing a plugin can reach is worth waiting for.
//!
//! Everything else a component may import under `wasi:` — filesystem operations (there is no
//! descriptor to call them on), sockets, the terminal — is defined as a function that traps
//! ([`Linker::define_unknown_imports_as_traps`]), so a plugin that uses them loads and fails
//! at the call, as a trap, never reaching the host.
//!
//! Nothing here is async and nothing blocks: unlike `wasmtime_wasi`'s synchronous bindings,
//! whose blocking stream operations enter a Tokio runtime with `block_on` (and panic when the
//! caller is itself a Tokio task, as the scheduler is), a write here is a no-op and a read is
//! end-of-stream. So plugins are called synchronously, on the caller's thread.
//!
//! # Versions
//!
//! The shim is defined per component, under the exact names the component imports
//! (`wasi:io/streams@0.2.4`, say), read from the component's type: whatever 0.2.x its
//! toolchain targeted (another major version — 0.3's functions are async — is not answered,
//! only trapped). WASI 0.2 only ever adds functions, and what this shim defines has not
//! changed since 0.2.0; anything newer is trapped like the rest. Defining one version and
//! relying on the linker's semver matching would not do: trapping the unknown imports opens an
//! instance by its exact name, and would shadow a shim defined under another patch version.
//!
//! # Resources
//!
//! Every resource type in an imported `wasi:` interface is defined here, before the unknown
//! imports are trapped: a resource `use`d by one interface from another (`streams` uses
//! `poll.pollable`) must be the same host type in both, and the trap stubs would define it as a
//! different one. Streams and errors carry no state (every stream is a sink or an empty
//! source), so their handles are plain numbers; a pollable's handle indexes its deadline.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use rand::Rng as _;
use wasmtime::component::Linker;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{
    Component, ComponentType, Lift, LinkerInstance, Lower, Resource, ResourceType, WasmList,
};
use wasmtime::{Engine, Result, StoreContextMut};

/// The state the shim keeps in a store: the deadlines of the clock pollables the plugin holds.
#[derive(Debug, Default)]
pub struct WasiShim {
    /// Deadlines by pollable handle − 1 (handle 0 is the always-ready pollable); `None` is a
    /// free slot.
    deadlines: Vec<Option<Instant>>,
}

/// The most clock pollables a plugin may hold at once: a plugin has no use for more than one,
/// and each costs host memory.
const MAX_POLLABLES: usize = 64;

/// The most random bytes one call may ask for (the standard library asks for 16).
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// How much a stream says it can take: every write is discarded, so any amount would do.
const WRITE_BUDGET: u64 = 1 << 20;

/// Store data that holds a [`WasiShim`].
pub trait HasWasiShim: 'static {
    fn wasi_shim(&mut self) -> &mut WasiShim;
}

/// A plugin waited on something that will not be ready during its call (a sleep, a poll on a
/// clock): a trap, reported as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked;

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the plugin waited on a clock; plugins have nothing to wait for")
    }
}

impl std::error::Error for Blocked {}

/// `wasi:io/poll.pollable`: ready at once (rep 0), or at a deadline (rep = slot + 1).
pub struct Pollable;
/// `wasi:io/streams.input-stream`: always at its end.
pub struct InputStream;
/// `wasi:io/streams.output-stream`: a sink.
pub struct OutputStream;
/// `wasi:io/error.error`: never made, since no operation fails with one.
pub struct IoError;
/// Any other WASI resource (a file descriptor, a terminal, a socket): never made, since
/// nothing here hands one out and whatever would is a trap.
pub enum Unavailable {}

#[derive(ComponentType, Lift, Lower)]
#[component(variant)]
enum StreamError {
    #[component(name = "last-operation-failed")]
    #[allow(dead_code, reason = "nothing here fails but by closing")]
    LastOperationFailed(Resource<IoError>),
    #[component(name = "closed")]
    Closed,
}

#[derive(ComponentType, Lift, Lower, Clone, Copy)]
#[component(record)]
struct Datetime {
    seconds: u64,
    nanoseconds: u32,
}

/// Defines the shim under the names `component` imports, then traps every import still
/// undefined. `linker` is the component's own (a clone of the shared one): the names differ
/// from one component to another.
pub fn link<T: HasWasiShim>(
    linker: &mut Linker<T>,
    engine: &Engine,
    component: &Component,
) -> Result<()> {
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        // WASI 0.2 only: another version's functions may differ (0.3's are async), so its
        // imports are left to the traps below.
        let Some((interface, version)) = name.split_once('@') else {
            continue;
        };
        if !interface.starts_with("wasi:") || !version.starts_with("0.2.") {
            continue;
        }
        let mut li = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            if let ComponentItem::Resource(_) = item.ty {
                define_resource(&mut li, export)?;
            }
        }
        match interface {
            "wasi:io/error" => io_error(&mut li)?,
            "wasi:io/poll" => io_poll(&mut li)?,
            "wasi:io/streams" => io_streams(&mut li)?,
            "wasi:cli/environment" => cli_environment(&mut li)?,
            "wasi:cli/exit" => cli_exit(&mut li)?,
            "wasi:cli/stdin" => li.func_wrap("get-stdin", |_, ()| {
                Ok((Resource::<InputStream>::new_own(0),))
            })?,
            "wasi:cli/stdout" => li.func_wrap("get-stdout", |_, ()| {
                Ok((Resource::<OutputStream>::new_own(0),))
            })?,
            "wasi:cli/stderr" => li.func_wrap("get-stderr", |_, ()| {
                Ok((Resource::<OutputStream>::new_own(0),))
            })?,
            // Not a terminal: the standard library then neither colours nor asks its size.
            "wasi:cli/terminal-stdin" => li.func_wrap("get-terminal-stdin", no_terminal)?,
            "wasi:cli/terminal-stdout" => li.func_wrap("get-terminal-stdout", no_terminal)?,
            "wasi:cli/terminal-stderr" => li.func_wrap("get-terminal-stderr", no_terminal)?,
            "wasi:clocks/monotonic-clock" => monotonic_clock(&mut li)?,
            "wasi:clocks/wall-clock" => wall_clock(&mut li)?,
            "wasi:random/random" => {
                li.func_wrap("get-random-bytes", random_bytes)?;
                li.func_wrap("get-random-u64", random_u64)?;
            }
            "wasi:random/insecure" => {
                li.func_wrap("get-insecure-random-bytes", random_bytes)?;
                li.func_wrap("get-insecure-random-u64", random_u64)?;
            }
            "wasi:random/insecure-seed" => li.func_wrap("insecure-seed", |_, ()| {
                let mut rng = rand::rng();
                Ok(((rng.next_u64(), rng.next_u64()),))
            })?,
            "wasi:filesystem/preopens" => li.func_wrap("get-directories", |_, ()| {
                Ok((Vec::<(Resource<Unavailable>, String)>::new(),))
            })?,
            _ => {}
        }
    }
    linker.define_unknown_imports_as_traps(component)
}

/// Defines a resource type of an imported interface as the host type the shim uses for it.
fn define_resource<T: HasWasiShim>(li: &mut LinkerInstance<'_, T>, name: &str) -> Result<()> {
    let ty = match name {
        "pollable" => ResourceType::host::<Pollable>(),
        "input-stream" => ResourceType::host::<InputStream>(),
        "output-stream" => ResourceType::host::<OutputStream>(),
        "error" => ResourceType::host::<IoError>(),
        _ => ResourceType::host::<Unavailable>(),
    };
    if name == "pollable" {
        li.resource(name, ty, |mut store, rep| {
            release_pollable(store.data_mut().wasi_shim(), rep);
            Ok(())
        })
    } else {
        li.resource(name, ty, |_, _| Ok(()))
    }
}

fn no_terminal<T>(_: StoreContextMut<'_, T>, (): ()) -> Result<(Option<Resource<Unavailable>>,)> {
    Ok((None,))
}

fn io_error<T: HasWasiShim>(li: &mut LinkerInstance<'_, T>) -> Result<()> {
    li.func_wrap(
        "[method]error.to-debug-string",
        |_, (_,): (Resource<IoError>,)| Ok((String::from("no error"),)),
    )
}

fn io_poll<T: HasWasiShim>(li: &mut LinkerInstance<'_, T>) -> Result<()> {
    li.func_wrap(
        "[method]pollable.ready",
        |mut store: StoreContextMut<'_, T>, (this,): (Resource<Pollable>,)| {
            Ok((is_ready(store.data_mut().wasi_shim(), this.rep()),))
        },
    )?;
    li.func_wrap(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, T>, (this,): (Resource<Pollable>,)| {
            if is_ready(store.data_mut().wasi_shim(), this.rep()) {
                Ok(())
            } else {
                Err(Blocked.into())
            }
        },
    )?;
    li.func_wrap(
        "poll",
        |mut store: StoreContextMut<'_, T>, (these,): (Vec<Resource<Pollable>>,)| {
            let shim = store.data_mut().wasi_shim();
            let ready: Vec<u32> = (0u32..)
                .zip(&these)
                .filter(|(_, p)| is_ready(shim, p.rep()))
                .map(|(i, _)| i)
                .collect();
            // `poll` returns when at least one is ready: with none, it would wait.
            if ready.is_empty() && !these.is_empty() {
                return Err(Blocked.into());
            }
            Ok((ready,))
        },
    )
}

fn io_streams<T: HasWasiShim>(li: &mut LinkerInstance<'_, T>) -> Result<()> {
    type In = Resource<InputStream>;
    type Out = Resource<OutputStream>;
    type Done = Result<(), StreamError>;
    // stdin: at its end.
    li.func_wrap("[method]input-stream.read", |_, (_, _): (In, u64)| {
        Ok((Err::<Vec<u8>, _>(StreamError::Closed),))
    })?;
    li.func_wrap(
        "[method]input-stream.blocking-read",
        |_, (_, _): (In, u64)| Ok((Err::<Vec<u8>, _>(StreamError::Closed),)),
    )?;
    li.func_wrap("[method]input-stream.skip", |_, (_, _): (In, u64)| {
        Ok((Err::<u64, _>(StreamError::Closed),))
    })?;
    li.func_wrap(
        "[method]input-stream.blocking-skip",
        |_, (_, _): (In, u64)| Ok((Err::<u64, _>(StreamError::Closed),)),
    )?;
    li.func_wrap("[method]input-stream.subscribe", |_, (_,): (In,)| {
        Ok((Resource::<Pollable>::new_own(0),))
    })?;
    // stdout and stderr: every write taken and dropped.
    li.func_wrap("[method]output-stream.check-write", |_, (_,): (Out,)| {
        Ok((Ok::<u64, StreamError>(WRITE_BUDGET),))
    })?;
    li.func_wrap(
        "[method]output-stream.write",
        |_, (_, _): (Out, WasmList<u8>)| Ok((Done::Ok(()),)),
    )?;
    li.func_wrap(
        "[method]output-stream.blocking-write-and-flush",
        |_, (_, _): (Out, WasmList<u8>)| Ok((Done::Ok(()),)),
    )?;
    li.func_wrap("[method]output-stream.flush", |_, (_,): (Out,)| {
        Ok((Done::Ok(()),))
    })?;
    li.func_wrap("[method]output-stream.blocking-flush", |_, (_,): (Out,)| {
        Ok((Done::Ok(()),))
    })?;
    li.func_wrap("[method]output-stream.subscribe", |_, (_,): (Out,)| {
        Ok((Resource::<Pollable>::new_own(0),))
    })?;
    li.func_wrap(
        "[method]output-stream.write-zeroes",
        |_, (_, _): (Out, u64)| Ok((Done::Ok(()),)),
    )?;
    li.func_wrap(
        "[method]output-stream.blocking-write-zeroes-and-flush",
        |_, (_, _): (Out, u64)| Ok((Done::Ok(()),)),
    )?;
    // A splice reads from an input stream, and every input stream is at its end.
    li.func_wrap(
        "[method]output-stream.splice",
        |_, (_, _, _): (Out, In, u64)| Ok((Err::<u64, _>(StreamError::Closed),)),
    )?;
    li.func_wrap(
        "[method]output-stream.blocking-splice",
        |_, (_, _, _): (Out, In, u64)| Ok((Err::<u64, _>(StreamError::Closed),)),
    )
}

fn cli_environment<T: HasWasiShim>(li: &mut LinkerInstance<'_, T>) -> Result<()> {
    li.func_wrap("get-environment", |_, ()| {
        Ok((Vec::<(String, String)>::new(),))
    })?;
    li.func_wrap("get-arguments", |_, ()| Ok((Vec::<String>::new(),)))?;
    li.func_wrap("initial-cwd", |_, ()| Ok((None::<String>,)))
}

fn cli_exit<T: HasWasiShim>(li: &mut LinkerInstance<'_, T>) -> Result<()> {
    li.func_wrap("exit", |_, (status,): (Result<(), ()>,)| -> Result<()> {
        wasmtime::bail!(
            "the plugin called exit ({}); a plugin has no process to end",
            if status.is_ok() { "success" } else { "failure" }
        )
    })?;
    li.func_wrap("exit-with-code", |_, (code,): (u8,)| -> Result<()> {
        wasmtime::bail!("the plugin called exit ({code}); a plugin has no process to end")
    })
}

/// The origin of `wasi:clocks/monotonic-clock` instants: the first time a plugin asked.
fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn monotonic_now() -> u64 {
    u64::try_from(clock_origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn monotonic_clock<T: HasWasiShim>(li: &mut LinkerInstance<'_, T>) -> Result<()> {
    li.func_wrap("now", |_, ()| Ok((monotonic_now(),)))?;
    li.func_wrap("resolution", |_, ()| Ok((1u64,)))?;
    li.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, T>, (when,): (u64,)| {
            let at = clock_origin().checked_add(Duration::from_nanos(when));
            Ok((subscribe(store.data_mut().wasi_shim(), at)?,))
        },
    )?;
    li.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, T>, (after,): (u64,)| {
            let at = Instant::now().checked_add(Duration::from_nanos(after));
            Ok((subscribe(store.data_mut().wasi_shim(), at)?,))
        },
    )
}

fn wall_clock<T: HasWasiShim>(li: &mut LinkerInstance<'_, T>) -> Result<()> {
    li.func_wrap("now", |_, ()| {
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Ok((Datetime {
            seconds: since.as_secs(),
            nanoseconds: since.subsec_nanos(),
        },))
    })?;
    li.func_wrap("resolution", |_, ()| {
        Ok((Datetime {
            seconds: 0,
            nanoseconds: 1,
        },))
    })
}

fn random_bytes<T>(_: StoreContextMut<'_, T>, (len,): (u64,)) -> Result<(Vec<u8>,)> {
    if len > MAX_RANDOM_BYTES {
        wasmtime::bail!("the plugin asked for {len} random bytes, more than {MAX_RANDOM_BYTES}");
    }
    let mut bytes = vec![0; len as usize];
    rand::rng().fill_bytes(&mut bytes);
    Ok((bytes,))
}

fn random_u64<T>(_: StoreContextMut<'_, T>, (): ()) -> Result<(u64,)> {
    Ok((rand::rng().next_u64(),))
}

/// A pollable ready at `at` (`None`: so far off that it never is).
fn subscribe(shim: &mut WasiShim, at: Option<Instant>) -> Result<Resource<Pollable>> {
    // Far off or not, a pollable that is never ready only traps when waited on.
    let at = at.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
    if let Some((free, deadline)) = shim
        .deadlines
        .iter_mut()
        .enumerate()
        .find(|(_, d)| d.is_none())
    {
        *deadline = Some(at);
        return Ok(Resource::new_own(free as u32 + 1));
    }
    if shim.deadlines.len() >= MAX_POLLABLES {
        wasmtime::bail!("the plugin holds more than {MAX_POLLABLES} clock pollables");
    }
    shim.deadlines.push(Some(at));
    Ok(Resource::new_own(shim.deadlines.len() as u32))
}

fn is_ready(shim: &mut WasiShim, rep: u32) -> bool {
    match rep.checked_sub(1) {
        None => true,
        Some(slot) => shim
            .deadlines
            .get(slot as usize)
            .copied()
            .flatten()
            .is_none_or(|at| Instant::now() >= at),
    }
}

fn release_pollable(shim: &mut WasiShim, rep: u32) {
    if let Some(slot) = rep
        .checked_sub(1)
        .and_then(|s| shim.deadlines.get_mut(s as usize))
    {
        *slot = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_pollable_is_always_ready_and_a_clock_one_at_its_deadline() {
        let mut shim = WasiShim::default();
        assert!(is_ready(&mut shim, 0));
        let past = subscribe(&mut shim, Some(Instant::now())).unwrap();
        assert!(is_ready(&mut shim, past.rep()));
        let future = subscribe(&mut shim, Some(Instant::now() + Duration::from_secs(60))).unwrap();
        assert!(!is_ready(&mut shim, future.rep()));
        let never = subscribe(&mut shim, None).unwrap();
        assert!(!is_ready(&mut shim, never.rep()));
    }

    #[test]
    fn a_dropped_pollable_frees_its_slot_and_there_are_only_so_many() {
        let mut shim = WasiShim::default();
        let first = subscribe(&mut shim, None).unwrap();
        release_pollable(&mut shim, first.rep());
        let again = subscribe(&mut shim, None).unwrap();
        assert_eq!(again.rep(), first.rep(), "the slot is reused");
        for _ in 1..MAX_POLLABLES {
            subscribe(&mut shim, None).unwrap();
        }
        assert!(subscribe(&mut shim, None).is_err());
        assert_eq!(shim.deadlines.len(), MAX_POLLABLES);
    }

    #[test]
    fn monotonic_time_moves_forward() {
        let before = monotonic_now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_now() >= before + 1_000_000);
    }
}
