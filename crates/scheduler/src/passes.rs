//! Which heartbeats register a worker. A heartbeat says who sent it, and anyone who may publish
//! on `sys.heartbeat` could say anything: heartbeat under another worker's id with a new
//! `instance` (the hosts would requeue that worker's jobs as lost), or under an id nobody reads
//! (jobs sent there wait for their dispatch timeout), or change a live worker's pool and labels.
//!
//! So a heartbeat counts only with the worker's **pass**: a MAC, under the secret the replicas
//! share ([`LeaseKey::worker_pass`]), of the worker id and its instance. A heartbeat without
//! one (a worker that just started) or with a wrong one (forged, or minted before the secret
//! was rotated) is answered with the pass on `worker.<id>.pass`, which only that worker may
//! read (the README's permission layout); the worker echoes it from then on. Proof of identity
//! is thus the same as for a lease: reading the worker's own subjects. Any replica can check a
//! pass any other sent, with no state and no store read; a pass is bound to one instance, so a
//! restart needs (and gets) a new one.
//!
//! Answers are rate-limited per replica (a flood of heartbeats under made-up ids costs the
//! hosts at most [`PASSES_PER_SEC`] publishes a second); a worker whose answer was dropped
//! gets one for a later heartbeat.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::bus::auth::{LeaseKey, Rejection};
use crate::job::{FieldError, check_ident};
use crate::protocol::{HeartbeatMsg, PassMsg, VERSION};

/// Passes one replica sends a second, at most (and in a burst).
pub const PASSES_PER_SEC: u32 = 500;

/// The longest `instance` a heartbeat may carry.
const MAX_INSTANCE_LEN: usize = 128;

/// What to do with a heartbeat.
#[derive(Debug, PartialEq)]
pub enum Admission {
    /// It carries the worker's pass: register it.
    Counted(HeartbeatMsg),
    /// No pass yet (or a wrong one, `refused`): send the worker its pass, register nothing.
    Challenge {
        pass: PassMsg,
        refused: Option<Rejection>,
    },
    /// Not even a worker id a subject can carry; or the answers' budget is spent.
    Dropped(&'static str),
}

pub struct Passes {
    key: LeaseKey,
    answers: DefaultDirectRateLimiter,
}

impl Passes {
    pub fn new(key: LeaseKey) -> Self {
        let per_sec = NonZeroU32::new(PASSES_PER_SEC).unwrap_or(NonZeroU32::MIN);
        Passes {
            key,
            answers: RateLimiter::direct(Quota::per_second(per_sec)),
        }
    }

    pub fn admit(&self, hb: HeartbeatMsg) -> Admission {
        let mut errors: Vec<FieldError> = Vec::new();
        check_ident("worker_id", &hb.worker_id, &mut errors);
        let instance = hb.instance.as_deref().unwrap_or_default();
        if !errors.is_empty() || instance.len() > MAX_INSTANCE_LEN {
            return Admission::Dropped("malformed worker id or instance");
        }
        let refused = match self
            .key
            .verify_pass(&hb.worker_id, instance, hb.pass.as_deref())
        {
            Ok(()) => return Admission::Counted(hb),
            Err(Rejection::Unsigned) => None,
            Err(e) => Some(e),
        };
        if self.answers.check().is_err() {
            return Admission::Dropped("too many workers asking for a pass");
        }
        Admission::Challenge {
            pass: PassMsg {
                v: VERSION,
                pass: self.key.worker_pass(&hb.worker_id, instance),
                instance: instance.to_string(),
                worker_id: hb.worker_id,
            },
            refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::hb;

    fn passes() -> Passes {
        Passes::new(LeaseKey::new(&[3u8; 32]).unwrap())
    }

    fn with(mut beat: HeartbeatMsg, instance: &str, pass: Option<String>) -> HeartbeatMsg {
        beat.instance = Some(instance.into());
        beat.pass = pass;
        beat
    }

    #[test]
    fn a_new_worker_is_challenged_then_counted_with_its_pass() {
        let p = passes();
        let first = with(hb("w-1", "p", &["t"], 0, 4), "run-a", None);
        let Admission::Challenge { pass, refused } = p.admit(first.clone()) else {
            panic!("a heartbeat without a pass registers nothing");
        };
        assert_eq!(refused, None, "a worker that just started is not refused");
        assert_eq!(
            (pass.worker_id.as_str(), pass.instance.as_str()),
            ("w-1", "run-a")
        );
        let second = with(first, "run-a", Some(pass.pass));
        assert_eq!(p.admit(second.clone()), Admission::Counted(second));
    }

    #[test]
    fn a_pass_is_worth_nothing_to_another_worker_or_instance() {
        let p = passes();
        let Admission::Challenge { pass, .. } =
            p.admit(with(hb("w-1", "p", &["t"], 0, 4), "run-a", None))
        else {
            panic!("challenged");
        };
        for (id, instance) in [("w-2", "run-a"), ("w-1", "run-b")] {
            let forged = with(hb(id, "p", &["t"], 0, 4), instance, Some(pass.pass.clone()));
            match p.admit(forged) {
                Admission::Challenge {
                    pass: answer,
                    refused,
                } => {
                    assert_eq!(refused, Some(Rejection::BadPass), "{id} {instance}");
                    // The answer goes to the id's own subject, for the instance named.
                    assert_eq!(
                        (answer.worker_id.as_str(), answer.instance.as_str()),
                        (id, instance)
                    );
                }
                other => panic!("{id} {instance}: {other:?}"),
            }
        }
    }

    #[test]
    fn ids_no_subject_can_carry_are_dropped() {
        let p = passes();
        for id in ["", "w.>", "w *", "w\n", &"w".repeat(300)] {
            assert!(
                matches!(
                    p.admit(with(hb(id, "p", &["t"], 0, 1), "i", None)),
                    Admission::Dropped(_)
                ),
                "{id:?}"
            );
        }
        let long = "i".repeat(MAX_INSTANCE_LEN + 1);
        assert!(matches!(
            p.admit(with(hb("w", "p", &["t"], 0, 1), &long, None)),
            Admission::Dropped(_)
        ));
    }

    #[test]
    fn answers_are_rate_limited() {
        let p = passes();
        let began = std::time::Instant::now();
        let answered = (0..PASSES_PER_SEC * 2)
            .filter(|i| {
                matches!(
                    p.admit(with(hb(&format!("w-{i}"), "p", &["t"], 0, 1), "i", None)),
                    Admission::Challenge { .. }
                )
            })
            .count() as u32;
        // The budget refills as time passes (a loaded machine may take a while over the loop).
        let refilled = (began.elapsed().as_secs_f64() * PASSES_PER_SEC as f64).ceil() as u32;
        assert!(answered <= PASSES_PER_SEC + refilled + 1, "{answered}");
        assert!(
            answered < PASSES_PER_SEC * 2,
            "{answered}: nothing was dropped"
        );
        assert!(answered >= PASSES_PER_SEC / 2, "{answered}");
    }
}
