//! Who may say what on the bus (SPEC §4): the leases that tie a worker's `started` and result to
//! the dispatch the host made, the clock the host keeps, and the count of what it refused.
//!
//! # Why leases, and why a MAC
//!
//! Anyone who can publish on the result subject could once finish any job: the host took a
//! result's `job_id` and `worker_id` at their word. Now every job message a host sends carries
//! a **lease**, `{attempt}.{issued_at}.{nonce}.{mac}`, where the MAC is HMAC-SHA256 (truncated
//! to 128 bits) over the job id, the attempt, the worker id, the time of the dispatch and a
//! random nonce, under a secret all `serve` replicas share (made once, in the store:
//! `coretex_store::Locks::shared_secret`). The worker echoes the lease in its `started` and
//! result messages, unchanged. The host then checks two things:
//!
//! 1. *The lease is one a host minted for this job and this worker* ([`LeaseKey::verify`]): a
//!    pure computation, under a microsecond (`cargo bench --bench bus_auth`), with no read of
//!    the store. Any replica can check a lease any other replica minted — including one that
//!    died before it wrote the dispatch down, whose job is still PENDING in the store.
//! 2. *It is the job's current assignment*: the store's atomic transition takes the claim
//!    (worker and lease, `coretex_store::Claim`) and applies the transition only if the job
//!    records that lease (or records none yet), in the same step as the state change. A
//!    worker holding a genuine lease for a dispatch that has since been superseded is turned
//!    away as surely as a stranger.
//!
//! A MAC rather than a random token stored per dispatch: the token would have to be written
//! before the job is sent (the hot path writes a quick job's dispatch together with its result,
//! see the host's `scheduler`) or be unknown to the replica that takes the result. The attempt is
//! in the MAC although each attempt has a job id of its own: a lease names the one dispatch it
//! was made for, whatever ids future versions give attempts. The dispatch time is in it so that
//! the host knows, from the message alone, the earliest a worker can have started: times a
//! worker reports are clamped between that and the host's own clock ([`Lease::clamp`]), so a
//! worker's clock, however wrong, decides no time the host keeps (RUNNING, the running
//! timeout, the deadlines).
//!
//! What a lease does not do: keep a secret from whoever reads the job's subject. On a NATS
//! server where anyone may subscribe to `worker.*.jobs`, anyone can read every lease (and every
//! job). The leases make the bus safe together with NATS permissions — a worker may read only
//! its own subject (see the README's permission layout) — and, without them, still stop every
//! peer that has not seen the dispatch: a stranger, a worker reporting on another's job, one
//! reporting on another attempt.
//!
//! # What is refused
//!
//! A refused message is logged at warn, counted in `coretex_bus_rejected_total{reason}`
//! ([`Rejection`]) and otherwise ignored (acked, so it is not delivered again).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::time::Millis;

/// Bytes of the MAC a lease carries (HMAC-SHA256 truncated, as RFC 2104 allows, to 128 bits).
const MAC_BYTES: usize = 16;

/// Separates this use of the shared secret from any other.
const DOMAIN: &[u8] = b"coretex-lease-v1";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// Mints and verifies leases under the replicas' shared secret.
#[derive(Clone)]
pub struct LeaseKey {
    /// Keyed once: each lease clones the keyed state instead of hashing the key again.
    keyed: Hmac<Sha256>,
}

/// What a verified lease says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub attempt: u32,
    /// When the host dispatched the job (its clock).
    pub issued_at: Millis,
}

impl LeaseKey {
    /// A key from the shared secret (HMAC takes a key of any length: the error is the MAC
    /// crate's signature, never met).
    pub fn new(secret: &[u8]) -> Result<Self, hmac::digest::InvalidLength> {
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(secret)?;
        Ok(LeaseKey { keyed })
    }

    /// The lease of a dispatch of `job_id`'s attempt `attempt` to `worker_id` at `issued_at`.
    pub fn mint(&self, job_id: &str, attempt: u32, worker_id: &str, issued_at: Millis) -> String {
        use rand::Rng as _;
        let nonce = rand::rng().next_u64();
        let tag = self.tag(job_id, attempt, worker_id, issued_at, nonce);
        let mac = tag.get(..MAC_BYTES).unwrap_or(&tag);
        format!("{attempt}.{issued_at}.{nonce:016x}.{}", b64().encode(mac))
    }

    /// The lease `lease` if a host minted it for `job_id` and `worker_id`.
    pub fn verify(
        &self,
        job_id: &str,
        worker_id: &str,
        lease: Option<&str>,
    ) -> Result<Lease, Rejection> {
        let lease = lease.ok_or(Rejection::Unsigned)?;
        let mut parts = lease.splitn(4, '.');
        let mut next = || parts.next().ok_or(Rejection::BadLease);
        let attempt: u32 = next()?.parse().map_err(|_| Rejection::BadLease)?;
        let issued_at: Millis = next()?.parse().map_err(|_| Rejection::BadLease)?;
        let nonce = next()?;
        let nonce = u64::from_str_radix(nonce, 16)
            .ok()
            .filter(|_| nonce.len() == 16)
            .ok_or(Rejection::BadLease)?;
        let mac = b64()
            .decode(next()?)
            .ok()
            .filter(|m| m.len() == MAC_BYTES)
            .ok_or(Rejection::BadLease)?;
        let mut check = self.keyed.clone();
        feed(&mut check, job_id, attempt, worker_id, issued_at, nonce);
        // Compares in constant time.
        check
            .verify_truncated_left(&mac)
            .map_err(|_| Rejection::BadLease)?;
        Ok(Lease { attempt, issued_at })
    }

    fn tag(
        &self,
        job_id: &str,
        attempt: u32,
        worker_id: &str,
        issued_at: Millis,
        nonce: u64,
    ) -> Vec<u8> {
        let mut mac = self.keyed.clone();
        feed(&mut mac, job_id, attempt, worker_id, issued_at, nonce);
        mac.finalize().into_bytes().to_vec()
    }
}

/// The MAC's input: each field length-prefixed, so no two tuples feed the same bytes.
fn feed(
    mac: &mut Hmac<Sha256>,
    job_id: &str,
    attempt: u32,
    worker_id: &str,
    issued_at: Millis,
    nonce: u64,
) {
    mac.update(DOMAIN);
    for field in [job_id.as_bytes(), worker_id.as_bytes()] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field);
    }
    mac.update(&attempt.to_be_bytes());
    mac.update(&issued_at.to_be_bytes());
    mac.update(&nonce.to_be_bytes());
}

impl Lease {
    /// When the job was dispatched, as the host may record it at `now`: the lease's time, or
    /// `now` should another replica's clock have run ahead of this one's.
    pub fn dispatched_at(&self, now: Millis) -> Millis {
        self.issued_at.min(now)
    }

    /// A time a worker reports (a start) as the host keeps it: not before the dispatch, not
    /// after `now` (the host's clock when the report arrived).
    pub fn clamp(&self, at: Millis, now: Millis) -> Millis {
        at.max(self.dispatched_at(now)).min(now)
    }

    /// A duration a worker reports (its execution time): no longer than the job has been out.
    pub fn clamp_duration(&self, ms: u64, now: Millis) -> u64 {
        let out = (now - self.dispatched_at(now)).max(0) as u64;
        ms.min(out)
    }
}

/// Why a message from the bus was refused: the `reason` of `coretex_bus_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A `started` or result without a lease.
    #[error("it carries no lease")]
    Unsigned,
    /// A lease no host minted for this job and worker (forged, or another job's or attempt's).
    #[error("its lease was not issued for this job and worker")]
    BadLease,
    /// A genuine lease, but not the job's current assignment (a superseded dispatch).
    #[error("the job is not assigned to this worker under this lease")]
    NotAssigned,
    /// A submit carrying a safety clearance: only the stored job says what a human approved.
    #[error("a submit on the bus cannot carry a clearance; the stored job decides")]
    Clearance,
    /// A submit for a job that is not stored: the bus creates no jobs.
    #[error("a submit on the bus names a job that is not stored")]
    UnknownJob,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::BadLease => "bad_lease",
            Rejection::NotAssigned => "not_assigned",
            Rejection::Clearance => "clearance",
            Rejection::UnknownJob => "unknown_job",
        }
    }

    /// Logs the refusal of a `kind` message about `job_id` from `worker_id`, and counts it.
    pub fn record(self, kind: &str, job_id: &str, worker_id: &str) {
        tracing::warn!(
            kind,
            job_id,
            worker_id,
            reason = self.as_str(),
            "bus message refused: {self}"
        );
        metrics::counter!("coretex_bus_rejected_total", "reason" => self.as_str()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LeaseKey {
        LeaseKey::new(&[7u8; 32]).unwrap()
    }

    #[test]
    fn a_minted_lease_verifies_for_its_job_and_worker_only() {
        let k = key();
        let lease = k.mint("acme~j1", 2, "w-1", 1_000);
        assert_eq!(
            k.verify("acme~j1", "w-1", Some(&lease)),
            Ok(Lease {
                attempt: 2,
                issued_at: 1_000
            })
        );
        for (job, worker) in [("acme~j2", "w-1"), ("acme~j1", "w-2"), ("acme~j1w", "-1")] {
            assert_eq!(
                k.verify(job, worker, Some(&lease)),
                Err(Rejection::BadLease),
                "{job} {worker}"
            );
        }
        assert_eq!(
            LeaseKey::new(&[8u8; 32])
                .unwrap()
                .verify("acme~j1", "w-1", Some(&lease)),
            Err(Rejection::BadLease),
            "another deployment's secret"
        );
        assert_eq!(k.verify("acme~j1", "w-1", None), Err(Rejection::Unsigned));
    }

    #[test]
    fn every_field_of_a_lease_is_covered_by_its_mac() {
        let k = key();
        let lease = k.mint("j", 1, "w", 1_000);
        let parts: Vec<&str> = lease.split('.').collect();
        let [attempt, issued, nonce, mac] = parts.as_slice() else {
            panic!("four parts: {lease}");
        };
        let altered = [
            format!("2.{issued}.{nonce}.{mac}"),
            format!("{attempt}.999.{nonce}.{mac}"),
            format!("{attempt}.{issued}.{:016x}.{mac}", 1u64),
            format!("{attempt}.{issued}.{nonce}.AAAAAAAAAAAAAAAAAAAAAA"),
            format!("{attempt}.{issued}.{nonce}.{mac}A"),
            format!("{attempt}.{issued}.{nonce}"),
            String::new(),
            "x.y.z.w".into(),
        ];
        for a in altered {
            assert_eq!(
                k.verify("j", "w", Some(&a)),
                Err(Rejection::BadLease),
                "{a}"
            );
        }
    }

    #[test]
    fn two_dispatches_get_two_leases() {
        let k = key();
        assert_ne!(k.mint("j", 1, "w", 5), k.mint("j", 1, "w", 5));
    }

    #[test]
    fn reported_times_stay_between_the_dispatch_and_now() {
        let lease = Lease {
            attempt: 1,
            issued_at: 1_000,
        };
        assert_eq!(lease.clamp(500, 2_000), 1_000, "before the dispatch");
        assert_eq!(lease.clamp(1_500, 2_000), 1_500);
        assert_eq!(lease.clamp(9_000, 2_000), 2_000, "after the host's now");
        // Another replica minted it with a clock ahead of this one's: now wins.
        assert_eq!(lease.clamp(500, 800), 800);
        assert_eq!(lease.clamp_duration(5_000, 2_000), 1_000);
        assert_eq!(lease.clamp_duration(300, 2_000), 300);
        assert_eq!(lease.clamp_duration(300, 800), 0);
    }
}
