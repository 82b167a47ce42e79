//! Leadership over a store lock: the loops that must run in one replica at a time (the job
//! reconciler, the workflow reconciler) hold a named lock with an owner token and a TTL, renew it
//! on every tick, and release it when they stop. A replica that dies hands over within the TTL;
//! one that stops cleanly at once. Only the owner renews or releases (the store checks the token).

use std::future::Future;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::store::{Locks, StoreError};

/// One lock, held by this replica under its own token.
pub struct Leadership {
    store: Arc<dyn Locks>,
    lock: &'static str,
    owner: String,
    ttl: Duration,
}

impl Leadership {
    /// The lock `lock`, held as `owner`; it outlives a tick that did not renew it by `ttl`.
    pub fn new(store: Arc<dyn Locks>, lock: &'static str, owner: String, ttl: Duration) -> Self {
        Leadership {
            store,
            lock,
            owner,
            ttl,
        }
    }

    /// A TTL for a loop ticking every `interval`: three ticks, and never under three seconds, so
    /// one slow tick does not hand the lock over.
    pub fn ttl_for(interval: Duration) -> Duration {
        (interval * 3).max(Duration::from_secs(3))
    }

    /// Takes the lock when it is free, or renews it when this replica holds it: whether this
    /// replica leads for the next TTL.
    pub async fn hold(&self) -> Result<bool, StoreError> {
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        self.store.lock_acquire(self.lock, &self.owner, ttl).await
    }

    /// Lets another replica take over at once (on shutdown).
    pub async fn release(&self) {
        if let Err(e) = self.store.lock_release(self.lock, &self.owner).await {
            tracing::warn!(lock = self.lock, error = %e, "could not release a leader lock; it expires");
        }
    }

    /// Every `interval`, while this replica holds the lock, runs `tick`; and, at most every
    /// `housekeeping_every`, `housekeeping` after it. Runs until the task is cancelled.
    pub async fn lead_every<T, TF, H, HF>(
        &self,
        interval: Duration,
        mut tick: T,
        housekeeping_every: Duration,
        mut housekeeping: H,
    ) where
        T: FnMut() -> TF,
        TF: Future<Output = ()>,
        H: FnMut() -> HF,
        HF: Future<Output = ()>,
    {
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_housekeeping: Option<Instant> = None;
        loop {
            every.tick().await;
            match self.hold().await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(lock = self.lock, error = %e, "cannot reach the store to lead");
                    continue;
                }
            }
            tick().await;
            if last_housekeeping.is_none_or(|t| t.elapsed() >= housekeeping_every) {
                last_housekeeping = Some(Instant::now());
                housekeeping().await;
            }
        }
    }
}
