//! Clusters under the host (issue 17).
//!
//! A three-node JetStream cluster, the worker-event stream kept on all three: the host is given
//! one node as its seed and learns the others from it; the worker is given all three. That one
//! node is killed between two bursts of jobs; the host and the worker move to the survivors and
//! every accepted job succeeds.
//!
//! Both clusters at once: two hosts on a Redis Cluster (three masters, a replica each) and the
//! NATS cluster, two workers; a Redis master and a NATS node are killed while jobs are in
//! flight, and every job a host accepted succeeds.

mod common;

use std::sync::Arc;
use std::time::Duration;

use coretex::bus::Subjects;
use coretex::bus::nats::NatsBus;
use coretex::worker::{Mode, Worker, WorkerOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use common::servers::{NatsCluster, RedisCluster};
use common::{Api, Backend, Host, options, unique};

const JOBS: usize = 150;

/// Starts a host seeded with the cluster's first node, retrying while the cluster elects its
/// JetStream leader; answers it with its subject prefix.
async fn host_on(cluster: &NatsCluster) -> (Host, String) {
    host_with(cluster, |_| {}).await
}

/// [`host_on`], with options changed by `tune` first.
async fn host_with(
    cluster: &NatsCluster,
    tune: impl Fn(&mut coretex::serve::ServeOptions),
) -> (Host, String) {
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut o = options(Backend::Real);
        o.nats_url = Some(cluster.urls[0].clone());
        o.nats_stream_replicas = 3;
        tune(&mut o);
        let subject_prefix = o.subject_prefix.clone();
        match coretex::serve::start(o).await {
            Ok(running) => {
                let api = Api::new(running.addr);
                let host = Host {
                    running,
                    api,
                    workers: CancellationToken::new(),
                };
                return (host, subject_prefix);
            }
            Err(e) if tokio::time::Instant::now() < until => {
                eprintln!("cluster not ready yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("no host on the NATS cluster within 30 s: {e:#}"),
        }
    }
}

async fn submit_all(h: &Host, topic: &str, tag: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(JOBS);
    for i in 0..JOBS {
        ids.push(
            h.api
                .submit(json!({"topic": topic, "payload": {"tag": tag, "i": i}}))
                .await,
        );
    }
    ids
}

/// A worker of its own NATS client, seeded with every node.
async fn cluster_worker(h: &Host, cluster: &NatsCluster, prefix: &str, id: &str, topic: &str) {
    let worker_bus = NatsBus::connect(&cluster.seeds(), Subjects::new(prefix))
        .await
        .expect("the worker connects to the cluster");
    let worker = Worker::new(
        Arc::new(worker_bus),
        WorkerOptions {
            id: id.into(),
            pool: "p".into(),
            topics: vec![topic.into()],
            max_parallel: 16,
            labels: Default::default(),
            mode: Mode::Echo,
            heartbeat_interval: Duration::from_millis(200),
            report_cpu: false,
            started_delay: coretex::worker::STARTED_DELAY,
        },
    );
    let stop = h.workers.child_token();
    tokio::spawn(async move { worker.run(stop).await });
    h.wait_worker(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_lose_no_job_when_a_redis_master_and_a_nats_node_die() {
    let nats = NatsCluster::start(3);
    let redis = RedisCluster::start(3, 1);
    let url = redis.url();
    let (key_prefix, subject_prefix) = (format!("{}:", unique("k")), unique("s"));
    let (a, prefix) = host_with(&nats, |o| {
        o.redis_url = Some(url.clone());
        o.store.wait_replicas = 1;
        o.key_prefix = key_prefix.clone();
        o.subject_prefix = subject_prefix.clone();
    })
    .await;
    let (b, _) = host_with(&nats, |o| {
        o.redis_url = Some(url.clone());
        o.store.wait_replicas = 1;
        o.key_prefix = key_prefix.clone();
        o.subject_prefix = subject_prefix.clone();
        // Seeded with another node than the host that loses its own.
        o.nats_url = Some(nats.urls[1].clone());
    })
    .await;
    let topic = "job.clusters";
    cluster_worker(&a, &nats, &prefix, "cluster-worker-a", topic).await;
    cluster_worker(&b, &nats, &prefix, "cluster-worker-b", topic).await;

    // Jobs through both hosts, then a Redis master and the first host's NATS node die while
    // the jobs are in flight, and more are submitted while the slots and the stream move.
    let mut accepted = Vec::new();
    let mut refused = 0;
    for round in 0..3 {
        if round == 1 {
            redis.kill(redis.masters()[0]);
            nats.kill(0);
        }
        for i in 0..JOBS {
            let host = if i % 2 == 0 { &a } else { &b };
            let (status, body) = host
                .api
                .post(
                    "/api/v1/jobs",
                    json!({"topic": topic, "payload": {"round": round, "i": i}}),
                )
                .await;
            match status {
                201 => accepted.push(body["job_id"].as_str().unwrap().to_string()),
                // Refused while a slot had no master: not accepted, nothing to keep.
                503 => refused += 1,
                other => panic!("submit answered {other}: {body}"),
            }
        }
    }
    for id in &accepted {
        a.api
            .wait_state(id, "SUCCEEDED", Duration::from_secs(90))
            .await;
    }
    println!(
        "{} jobs accepted and succeeded, {refused} refused during the failover",
        accepted.len()
    );
    assert!(accepted.len() >= JOBS * 2, "most submits are accepted");
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_the_loss_of_the_node_the_host_is_on() {
    let cluster = NatsCluster::start(3);
    let (h, prefix) = host_on(&cluster).await;

    // The worker is a client of its own, as a worker process would be, seeded with every node.
    let topic = "job.cluster";
    cluster_worker(&h, &cluster, &prefix, "cluster-worker", topic).await;

    let before = submit_all(&h, topic, "before").await;
    for id in &before {
        h.api
            .wait_state(id, "SUCCEEDED", Duration::from_secs(30))
            .await;
    }

    // Kill the host's one seed, the node it is connected to; then keep submitting.
    cluster.kill(0);
    let after = submit_all(&h, topic, "after").await;
    for id in before.iter().chain(&after) {
        h.api
            .wait_state(id, "SUCCEEDED", Duration::from_secs(60))
            .await;
    }
    h.stop().await;
}
