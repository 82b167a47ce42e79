//! What the authenticated bus costs per job: minting a dispatch's lease (once per dispatch) and
//! verifying the lease a worker echoes (once per `started` and per result), with job and worker
//! ids of realistic length.
//!
//! `cargo bench --bench bus_auth -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use coretex::bus::auth::LeaseKey;
use criterion::{Criterion, criterion_group, criterion_main};

const JOB: &str = "acme~01939a7e-5b1c-7d2e-8f3a-4b5c6d7e8f90~attempt-2";
const WORKER: &str = "worker-3f2a9c1b8d7e4f60a5b4c3d2e1f0a9b8";

fn bench(c: &mut Criterion) {
    let key = LeaseKey::new(&[42u8; 32]).expect("a key");
    let lease = key.mint(JOB, 2, WORKER, 1_767_000_000_000);
    let mut g = c.benchmark_group("lease");
    g.bench_function("mint", |b| {
        b.iter(|| key.mint(black_box(JOB), 2, black_box(WORKER), 1_767_000_000_000))
    });
    g.bench_function("verify", |b| {
        b.iter(|| key.verify(black_box(JOB), black_box(WORKER), Some(black_box(&lease))))
    });
    g.bench_function("mint_and_verify", |b| {
        b.iter(|| {
            let l = key.mint(black_box(JOB), 2, black_box(WORKER), 1_767_000_000_000);
            key.verify(JOB, WORKER, Some(&l))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
