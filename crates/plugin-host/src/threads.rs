//! Where the scheduler's plugin calls run: a few threads of their own, never the async runtime's.
//!
//! # Why
//!
//! `serve` runs all of its tasks on one thread on a machine of up to two cores (a few threads on
//! larger ones). A plugin call is synchronous — the sandbox has nothing to wait for, so a call
//! runs on its caller's stack until it answers or its deadline stops it — and made on that
//! thread it held everything else for as long as it ran: HTTP, workers' results and heartbeats.
//! A legal strategy that spun 3 ms per pick, under its 10 ms deadline, kept `/health` waiting
//! 254–298 ms while a few hundred jobs were placed. So the calls the scheduler makes — a
//! dispatch strategy's pick, a retry policy's decision — are handed to these threads, and the
//! task that needs the answer awaits it; the runtime's thread goes on with everything else
//! meanwhile. (The workflow engine's conditions, templates and `for_each` run on Tokio's
//! blocking pool instead, one advance of a run at a time: see `workflow::engine`.)
//!
//! # Why threads, not wasmtime's async calls
//!
//! The other way off the runtime's thread would be wasmtime's async support: each call on a
//! fiber of its own, yielding to the runtime at every epoch tick. It costs on every call (a
//! fiber entered and left, an async call path, measured in the README's "Where plugin calls
//! run"), and it does not isolate: a call that yields every tick still takes the runtime's
//! thread for a tick at a time, and a few hundred of them in flight share it with the HTTP
//! server tick by tick. A thread of their own costs a hand-over per call — a queue push, and an
//! answer through a oneshot channel — and wakes a sleeping thread only when none is awake.
//!
//! # How
//!
//! One queue, first come first served, behind a mutex, and a condition variable the idle
//! threads sleep on. A caller pushes its call and wakes a thread only if one sleeps: under load,
//! when calls queue up, the threads go from one call to the next without sleeping, so a burst of
//! picks costs no wakeup per pick — several picks per hop, for free. A thread takes one call at a
//! time, so a slow call holds up only the calls queued behind it while the other threads go on;
//! and a plugin that stays slow has its breaker opened by its latency budget (see
//! [`Plugin::call`](super::registry::Plugin::call)), after which its calls are answered by the
//! built-in default at once.
//!
//! How many threads is `--plugin-threads`: half the cores by default, at least one — on two
//! cores, one thread, beside the runtime's. A call that panics (a host bug: a plugin's own
//! failure is an error, never an unwind) is caught, and its caller is told the call did not
//! complete. Dropped with the runtime that owns them, the threads finish what is queued and exit.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

/// A call handed to the threads, with the sender of its answer inside.
type Call = Box<dyn FnOnce() + Send>;

/// The threads the scheduler's plugin calls run on.
pub struct PluginThreads {
    shared: Arc<Shared>,
    count: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a call is queued for a sleeping thread, or the queue closes.
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    calls: VecDeque<Call>,
    /// Threads waiting on `ready`: a caller wakes one only when some are.
    sleeping: usize,
    /// No more calls: the threads finish the queue and exit.
    closed: bool,
}

/// A call handed to the plugin threads did not complete: it panicked, or the threads were
/// stopping.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the plugin call did not complete (the plugin threads are stopping, or the call panicked)")]
pub struct Stopped;

impl PluginThreads {
    /// Starts `count` threads (at least one).
    pub fn start(count: usize) -> std::io::Result<Self> {
        let count = count.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        let threads = PluginThreads {
            shared: shared.clone(),
            count,
        };
        for i in 0..count {
            let shared = shared.clone();
            // A thread that fails to start leaves the others (and `threads`, dropped here on
            // the error, closes the queue for those started).
            std::thread::Builder::new()
                .name(format!("coretex-plugin-{i}"))
                // What `max_wasm_stack` in `runtime` is sized against.
                .stack_size(2 << 20)
                .spawn(move || shared.serve())?;
        }
        Ok(threads)
    }

    /// How many threads there are.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Runs `call` on a plugin thread and awaits its answer. Dropping the future does not stop
    /// the call: it runs, and its answer is dropped.
    pub async fn run<R: Send + 'static>(
        &self,
        call: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(call());
        }))?;
        rx.await.map_err(|_| Stopped)
    }

    fn submit(&self, call: Call) -> Result<(), Stopped> {
        let mut queue = self.shared.queue.lock();
        if queue.closed {
            return Err(Stopped);
        }
        queue.calls.push_back(call);
        let wake = queue.sleeping > 0;
        drop(queue);
        if wake {
            self.shared.ready.notify_one();
        }
        Ok(())
    }
}

impl Drop for PluginThreads {
    fn drop(&mut self) {
        // Not joined: the last owner may be dropped on a plugin thread itself (a call's answer
        // held the last reference), and the threads exit on their own once the queue is empty.
        self.shared.queue.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

impl Shared {
    /// A thread's life: the next call, until the queue is closed and empty.
    fn serve(&self) {
        while let Some(call) = self.next() {
            if std::panic::catch_unwind(AssertUnwindSafe(call)).is_err() {
                tracing::error!("a plugin call panicked; its caller decides without it");
            }
        }
    }

    fn next(&self) -> Option<Call> {
        let mut queue = self.queue.lock();
        loop {
            if let Some(call) = queue.calls.pop_front() {
                return Some(call);
            }
            if queue.closed {
                return None;
            }
            queue.sleeping += 1;
            self.ready.wait(&mut queue);
            queue.sleeping -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_call_runs_on_a_plugin_thread_and_answers() {
        let threads = PluginThreads::start(1).unwrap();
        let name = threads
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("coretex-plugin-0"));
    }

    #[tokio::test]
    async fn a_slow_call_holds_up_only_its_own_thread() {
        let threads = PluginThreads::start(2).unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let blocked = threads.run(move || held.recv().is_ok());
        tokio::pin!(blocked);
        // The other thread answers while the first is held.
        tokio::select! {
            _ = &mut blocked => panic!("the held call answered before its release"),
            answer = threads.run(|| 42) => assert_eq!(answer.unwrap(), 42),
        }
        release.send(()).unwrap();
        assert!(blocked.await.unwrap());
    }

    #[tokio::test]
    async fn a_panicking_call_is_reported_and_the_thread_goes_on() {
        let threads = PluginThreads::start(1).unwrap();
        let panicked = threads.run(|| -> u32 { panic!("a host bug") }).await;
        assert!(panicked.is_err());
        assert_eq!(threads.run(|| 7).await.unwrap(), 7);
    }

    #[test]
    fn dropped_threads_finish_what_is_queued_and_exit() {
        let threads = PluginThreads::start(2).unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..10 {
            let done = done.clone();
            threads
                .submit(Box::new(move || {
                    std::thread::sleep(Duration::from_millis(1));
                    done.fetch_add(1, Ordering::SeqCst);
                }))
                .unwrap();
        }
        let shared = Arc::downgrade(&threads.shared);
        drop(threads);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        // Each thread holds the shared queue until it exits.
        while shared.strong_count() > 0 {
            assert!(
                std::time::Instant::now() < until,
                "the threads did not exit"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(done.load(Ordering::SeqCst), 10, "every queued call ran");
    }
}
