#!/usr/bin/env node
// BullMQ baseline for benches/e2e.sh: the same load as `coretex loadgen`, against BullMQ, so the
// two can be compared side by side on the same machine at the same moment.
//
//   node bench.mjs worker                       # a Worker on queue `bench`, concurrency CONC (50)
//   node bench.mjs producer                     # throughput: N jobs, addBulk batches, C in flight
//   node bench.mjs producer --rate 1000         # open-loop latency: single adds at R jobs/s
//
// Redis at REDIS_HOST:REDIS_PORT (default 127.0.0.1:6379). Producer flags (env defaults):
//   --jobs (N=20000, or RATE_JOBS=5000 with --rate)  --concurrency (C=50)  --batch (BATCH=1000)
//   --rate (1000 when given without a value)  --timeout seconds (TIMEOUT_S=60)
//
// The producer prints one line in loadgen's format, and exits non-zero if any job failed or was
// lost, or if QueueEvents missed a completion (the timings would then be wrong):
//   loadgen jobs=… ok=… failed=… submit_per_s=… e2e_per_s=… p50_ms=… p99_ms=…
import { performance } from 'node:perf_hooks';
import { Queue, QueueEvents, Worker } from 'bullmq';

const QUEUE = 'bench';
const connection = {
  host: process.env.REDIS_HOST ?? '127.0.0.1',
  port: Number(process.env.REDIS_PORT ?? 6379),
};
// Blocking connections (Worker, QueueEvents) want ioredis to retry forever.
const blockingConnection = { ...connection, maxRetriesPerRequest: null };

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function parseArgs(argv) {
  const opts = {};
  for (let i = 0; i < argv.length; i++) {
    if (!argv[i].startsWith('--')) throw new Error(`unexpected argument ${argv[i]}`);
    const key = argv[i].slice(2);
    if (argv[i + 1] !== undefined && !argv[i + 1].startsWith('--')) opts[key] = argv[++i];
    else opts[key] = true;
  }
  return opts;
}

async function worker() {
  const concurrency = Number(process.env.CONC ?? 50);
  // The counterpart of `coretex worker --echo`: a no-op that returns the job's data.
  const w = new Worker(QUEUE, async (job) => job.data, {
    connection: blockingConnection,
    concurrency,
  });
  w.on('error', (e) => console.error('worker error:', e.message));
  await w.waitUntilReady();
  console.error(`bullmq worker: queue=${QUEUE} concurrency=${concurrency}`);
  const stop = () => {
    setTimeout(() => process.exit(0), 2000).unref();
    w.close().finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

async function producer(args) {
  const rate = args.rate === undefined ? null : args.rate === true ? 1000 : Number(args.rate);
  const jobs = Number(args.jobs ?? (rate ? process.env.RATE_JOBS ?? 5000 : process.env.N ?? 20000));
  const conc = Number(args.concurrency ?? process.env.C ?? 50);
  const batch = Number(args.batch ?? process.env.BATCH ?? 1000);
  const timeoutMs = 1000 * Number(args.timeout ?? process.env.TIMEOUT_S ?? 60);
  if (!(jobs >= 1 && conc >= 1 && batch >= 1 && timeoutMs > 0) || (rate !== null && !(rate > 0))) {
    throw new Error('--jobs, --concurrency, --batch, --timeout and --rate must be positive');
  }

  // Default job options, as BullMQ users get them: no removeOnComplete / removeOnFail, so finished
  // jobs stay in Redis (as Coretex keeps its job records), and one attempt per job.
  //
  // One setting differs from the defaults: the events stream's length. BullMQ trims it to about
  // 10,000 events, and a job makes four (added, waiting, active, completed), so while 20,000 jobs
  // are added in bulk the producer's QueueEvents falls more than 10,000 events behind and misses
  // completions (seen in practice: hundreds per run). Room for 5 events per job keeps every one;
  // trimming still runs on every event, only to a larger length.
  const queue = new Queue(QUEUE, {
    connection,
    streams: { events: { maxLen: Math.max(10000, 5 * jobs) } },
  });
  await queue.waitUntilReady();

  // Completions come from QueueEvents (the events stream), not from polling jobs. QueueEvents
  // starts reading at '$' only after its connection is ready and named, so an add made right after
  // waitUntilReady() could complete unseen; starting from the stream's current tail closes that gap.
  const client = await queue.client;
  const tail = await client.xrevrange(queue.keys.events, '+', '-', 'COUNT', 1);
  const events = new QueueEvents(QUEUE, {
    connection: blockingConnection,
    lastEventId: tail.length ? tail[0][0] : '0-0',
  });
  events.on('error', (e) => console.error('queue events error:', e.message));
  await events.waitUntilReady();

  // Job ids are ours (`<run>-<i>`), so an event is matched to its job even if it arrives before the
  // add call returns; the send time is recorded before the call.
  const prefix = `${process.pid.toString(36)}${Date.now().toString(36)}-`;
  const sent = new Float64Array(jobs);
  const end = new Float64Array(jobs);
  const state = new Uint8Array(jobs); // 0 not yet terminal, 1 completed, 2 failed
  const added = new Uint8Array(jobs);
  let done = 0;
  let accepted = 0;
  let rejected = 0;
  const finished = (jobId, ok) => {
    const at = performance.now();
    if (typeof jobId !== 'string' || !jobId.startsWith(prefix)) return; // not this run's
    const i = Number(jobId.slice(prefix.length));
    if (!(Number.isInteger(i) && i >= 0 && i < jobs) || state[i]) return;
    state[i] = ok ? 1 : 2;
    end[i] = at;
    done++;
  };
  events.on('completed', ({ jobId }) => finished(jobId, true));
  events.on('failed', ({ jobId }) => finished(jobId, false));
  // Like loadgen: let the subscription settle before the first job can finish.
  await sleep(200);

  const started = performance.now();
  if (rate === null) {
    // Throughput: `conc` submitters take the next batch of `batch` jobs until all are added.
    let next = 0;
    const submitter = async () => {
      for (;;) {
        const from = next;
        next += batch;
        if (from >= jobs) return;
        const to = Math.min(from + batch, jobs);
        const list = [];
        for (let i = from; i < to; i++) list.push({ name: 'echo', data: { i }, opts: { jobId: prefix + i } });
        const t = performance.now();
        sent.fill(t, from, to);
        try {
          const got = await queue.addBulk(list);
          for (const j of got) added[Number(j.id.slice(prefix.length))] = 1;
          accepted += got.length;
          rejected += to - from - got.length;
        } catch (e) {
          console.error('addBulk failed:', e.message);
          rejected += to - from;
        }
      }
    };
    await Promise.all(Array.from({ length: conc }, submitter));
  } else {
    // Open loop: one add every 1/rate s on a fixed schedule (late ticks fire at once, to catch
    // up), whatever the answers' pace, with at most `conc` adds in flight.
    const period = 1000 / rate;
    let inFlight = 0;
    let wake = null;
    const tasks = [];
    for (let i = 0; i < jobs; i++) {
      const wait = started + i * period - performance.now();
      if (wait > 0) await sleep(wait);
      while (inFlight >= conc) await new Promise((resolve) => (wake = resolve));
      inFlight++;
      sent[i] = performance.now();
      tasks.push(
        queue
          .add('echo', { i }, { jobId: prefix + i })
          .then(
            () => {
              added[i] = 1;
              accepted++;
            },
            (e) => {
              console.error('add failed:', e.message);
              rejected++;
            },
          )
          .finally(() => {
            inFlight--;
            if (wake) {
              const w = wake;
              wake = null;
              w();
            }
          }),
      );
    }
    await Promise.all(tasks);
  }
  const submitMs = performance.now() - started;

  const deadline = performance.now() + timeoutMs;
  while (done < accepted && performance.now() < deadline) await sleep(20);

  // Jobs whose completion the events stream never reported: ask for them once, as loadgen does.
  let lost = 0;
  let lateOk = 0;
  let lateFailed = 0;
  for (let i = 0; i < jobs; i++) {
    if (!added[i] || state[i]) continue;
    const s = await queue.getJobState(prefix + i);
    if (s === 'completed') lateOk++;
    else if (s === 'failed') lateFailed++;
    else lost++;
  }
  // A completion the events stream did not deliver makes the timings wrong (the run waited for
  // the timeout, and the last completion is unknown), so such a run fails even if no job did.
  const missed = lateOk + lateFailed;
  if (missed > 0) console.error(`${missed} jobs finished without their event reaching QueueEvents`);

  const latencies = [];
  let failedEvents = 0;
  let last = started;
  for (let i = 0; i < jobs; i++) {
    if (!added[i] || !state[i]) continue;
    if (end[i] > last) last = end[i];
    if (state[i] === 1) latencies.push(end[i] - sent[i]);
    else failedEvents++;
  }
  latencies.sort((a, b) => a - b);
  const percentile = (q) => (latencies.length ? latencies[Math.round((latencies.length - 1) * q)] : 0);
  const ok = latencies.length + lateOk;
  const failed = rejected + lateFailed + failedEvents + lost;
  const e2eSecs = Math.max(last - started, 1e-6) / 1000;
  let line =
    `loadgen jobs=${jobs} ok=${ok} failed=${failed}` +
    ` submit_per_s=${(accepted / Math.max(submitMs / 1000, 1e-9)).toFixed(0)}` +
    ` e2e_per_s=${(ok / e2eSecs).toFixed(0)}` +
    ` p50_ms=${percentile(0.5).toFixed(2)} p99_ms=${percentile(0.99).toFixed(2)}`;
  if (lost > 0) line += ` lost=${lost}`;
  if (missed > 0) line += ` missed=${missed}`;
  console.log(line);

  await Promise.race([Promise.all([events.close(), queue.close()]), sleep(2000)]);
  return ok === jobs && failed === 0 && missed === 0 ? 0 : 1;
}

const [role, ...rest] = process.argv.slice(2);
try {
  if (role === 'worker') await worker();
  else if (role === 'producer') process.exit(await producer(parseArgs(rest)));
  else {
    console.error('usage: node bench.mjs worker | producer [--jobs N] [--concurrency C] [--batch B] [--rate R]');
    process.exit(2);
  }
} catch (e) {
  console.error(e);
  process.exit(2);
}
