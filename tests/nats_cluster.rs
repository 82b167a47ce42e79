//! A NATS cluster under the host (issue 17): a three-node JetStream cluster, the worker-event
//! stream kept on all three. The host is given one node as its seed and learns the others from
//! it; the worker is given all three. That one node is killed between two bursts of jobs; the
//! host and the worker move to the survivors and every accepted job succeeds.

mod common;

use std::sync::Arc;
use std::time::Duration;

use coretex::bus::Subjects;
use coretex::bus::nats::NatsBus;
use coretex::worker::{Mode, Worker, WorkerOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use common::servers::NatsCluster;
use common::{Api, Backend, Host, options};

const JOBS: usize = 150;

/// Starts a host seeded with the cluster's first node, retrying while the cluster elects its
/// JetStream leader; answers it with its subject prefix.
async fn host_on(cluster: &NatsCluster) -> (Host, String) {
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut o = options(Backend::Real);
        o.nats_url = Some(cluster.urls[0].clone());
        o.nats_stream_replicas = 3;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_the_loss_of_the_node_the_host_is_on() {
    let cluster = NatsCluster::start(3);
    let (h, prefix) = host_on(&cluster).await;

    // The worker is a client of its own, as a worker process would be, seeded with every node.
    let subjects = Subjects::new(&prefix);
    let worker_bus = NatsBus::connect(&cluster.seeds(), subjects)
        .await
        .expect("the worker connects to the cluster");
    let topic = "job.cluster";
    let worker = Worker::new(
        Arc::new(worker_bus),
        WorkerOptions {
            id: "cluster-worker".into(),
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
    let s = stop.clone();
    tokio::spawn(async move { worker.run(s).await });
    h.wait_worker("cluster-worker").await;

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
    stop.cancel();
    h.stop().await;
}
