#!/usr/bin/env node
// BullMQ baseline for benches/e2e.sh: the same load as `coretex loadgen`, against BullMQ, so the
// two can be compared side by side on the same machine at the same moment.
//
//   node bench.mjs worker                       # a Worker on queue `bench`, concurrency CONC (50)
//   node bench.mjs producer                     # throughput: N jobs, addBulk batches, C in flight
//   node bench.mjs producer --rate 1000         # open-loop latency: single adds at R jobs/s
//
// How the producer learns of completions, chosen by COMPLETIONS (same value for both processes):
//   events (default)  from QueueEvents, the events stream, as loadgen does from Coretex's live feed;
//   worker            from the worker process, which records each job it finishes (BullMQ's best
//                     case: no process reads the events stream), and hands the records to the
//                     producer over HTTP on the Unix socket COMPLETIONS_SOCKET (default
//                     $TMPDIR/bullmq-bench-completions.sock). See the producer's worker mode below.
//
// Redis at REDIS_HOST:REDIS_PORT (default 127.0.0.1:6379). Producer flags (env defaults):
//   --jobs (N=20000, or RATE_JOBS=5000 with --rate)  --concurrency (C=50)  --batch (BATCH=1000)
//   --rate (1000 when given without a value)  --timeout seconds (TIMEOUT_S=60)
//
// The producer prints one line in loadgen's format, and exits non-zero if any job failed or was
// lost, or if a completion was missed (by QueueEvents, or by the worker's records: the timings
// would then be wrong):
//   loadgen jobs=… ok=… failed=… submit_per_s=… e2e_per_s=… p50_ms=… p99_ms=…
import { unlinkSync } from 'node:fs';
import { createServer, get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Queue, QueueEvents, Worker } from 'bullmq';

const QUEUE = 'bench';
const COMPLETIONS = process.env.COMPLETIONS ?? 'events';
if (COMPLETIONS !== 'events' && COMPLETIONS !== 'worker') {
  console.error(`COMPLETIONS must be events or worker, not ${COMPLETIONS}`);
  process.exit(2);
}
// In worker mode the worker serves its completion records over HTTP on this Unix socket.
const SOCKET = process.env.COMPLETIONS_SOCKET ?? join(tmpdir(), 'bullmq-bench-completions.sock');
const connection = {
  host: process.env.REDIS_HOST ?? '127.0.0.1',
  port: Number(process.env.REDIS_PORT ?? 6379),
};
// Blocking connections (Worker, QueueEvents) want ioredis to retry forever.
const blockingConnection = { ...connection, maxRetriesPerRequest: null };

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// Wall-clock ms with sub-ms precision. Both processes run on the same machine, so a time taken in
// the worker and one taken in the producer can be subtracted (each process's timeOrigin comes from
// the same system clock).
const clock = () => performance.timeOrigin + performance.now();

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
  // In worker mode: every job this worker finishes, as three parallel arrays (a push each, the
  // only work on the hot path), handed over and cleared when the producer asks (`collect`). The
  // time is taken in the 'completed' / 'failed' listener, which BullMQ calls once the job's move
  // to completed / failed has returned from Redis.
  let ids = [];
  let ats = [];
  let oks = [];
  let server = null;
  if (COMPLETIONS === 'worker') {
    try {
      unlinkSync(SOCKET); // a stale socket from an earlier worker
    } catch {}
    server = createServer((req, res) => {
      const n = ids.length;
      const lines = new Array(n);
      for (let k = 0; k < n; k++) lines[k] = `${ids[k]} ${ats[k].toFixed(3)} ${oks[k]}\n`;
      ids = [];
      ats = [];
      oks = [];
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(lines.join(''));
    });
    await new Promise((resolve, reject) => server.once('error', reject).listen(SOCKET, resolve));
  }
  // The counterpart of `coretex worker --echo`: a no-op that returns the job's data.
  const w = new Worker(QUEUE, async (job) => job.data, {
    connection: blockingConnection,
    concurrency,
  });
  w.on('error', (e) => console.error('worker error:', e.message));
  if (server) {
    w.on('completed', (job) => {
      ats.push(clock());
      ids.push(job.id);
      oks.push(1);
    });
    w.on('failed', (job) => {
      if (!job) return; // BullMQ may report a failure with no job; the producer then sees it missing
      ats.push(clock());
      ids.push(job.id);
      oks.push(0);
    });
  }
  await w.waitUntilReady();
  console.error(`bullmq worker: queue=${QUEUE} concurrency=${concurrency} completions=${COMPLETIONS}`);
  const stop = () => {
    setTimeout(() => process.exit(0), 2000).unref();
    server?.close();
    w.close().finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

// Worker mode: the worker's records since the last call, one `jobId completedAtMs ok` a line.
function fetchRecords() {
  return new Promise((resolve, reject) => {
    get({ socketPath: SOCKET, path: '/completions' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('error', reject);
      res.on('end', () =>
        res.statusCode === 200 ? resolve(body) : reject(new Error(`worker answered ${res.statusCode}`)),
      );
    }).on('error', (e) => reject(new Error(`worker's completions at ${SOCKET}: ${e.message}`)));
  });
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
  // trimming still runs on every event, only to a larger length. Worker mode keeps the setting
  // (BullMQ writes the events stream whether or not anyone reads it), so that the two modes differ
  // only in how completions reach the producer.
  const queue = new Queue(QUEUE, {
    connection,
    streams: { events: { maxLen: Math.max(10000, 5 * jobs) } },
  });
  await queue.waitUntilReady();

  // Job ids are ours (`<run>-<i>`), so a completion is matched to its job even if it is reported
  // before the add call returns; the send time is recorded before the call.
  const prefix = `${process.pid.toString(36)}${Date.now().toString(36)}-`;
  const sent = new Float64Array(jobs);
  const end = new Float64Array(jobs);
  const state = new Uint8Array(jobs); // 0 not yet terminal, 1 completed, 2 failed
  const added = new Uint8Array(jobs);
  let done = 0;
  let accepted = 0;
  let rejected = 0;
  const finished = (jobId, ok, at = clock()) => {
    if (typeof jobId !== 'string' || !jobId.startsWith(prefix)) return; // not this run's
    const i = Number(jobId.slice(prefix.length));
    if (!(Number.isInteger(i) && i >= 0 && i < jobs) || state[i]) return;
    state[i] = ok ? 1 : 2;
    end[i] = at;
    done++;
  };

  let events = null;
  let baseline = 0;
  const finishedCount = async () => {
    const c = await queue.getJobCounts('completed', 'failed');
    return c.completed + c.failed;
  };
  if (COMPLETIONS === 'events') {
    // Completions come from QueueEvents (the events stream), not from polling jobs. QueueEvents
    // starts reading at '$' only after its connection is ready and named, so an add made right
    // after waitUntilReady() could complete unseen; starting from the stream's current tail closes
    // that gap. A completion's time is when its event reaches this process.
    const client = await queue.client;
    const tail = await client.xrevrange(queue.keys.events, '+', '-', 'COUNT', 1);
    events = new QueueEvents(QUEUE, {
      connection: blockingConnection,
      lastEventId: tail.length ? tail[0][0] : '0-0',
    });
    events.on('error', (e) => console.error('queue events error:', e.message));
    events.on('completed', ({ jobId }) => finished(jobId, true));
    events.on('failed', ({ jobId }) => finished(jobId, false));
    await events.waitUntilReady();
  } else {
    // Worker mode: nothing is read during the run. The worker keeps, in memory, the id, time and
    // outcome of every job it finishes, and serves them (then forgets them) over HTTP on a Unix
    // socket; a completion's time is when the worker saw it. After the last add, the producer
    // polls Redis for the queue's completed + failed counts every 20 ms (one cheap script call)
    // until they have grown by the number of jobs added, then asks the worker for its records.
    // Counts are per queue and earlier runs' jobs stay, so the growth is measured from a baseline
    // taken before the first add. BullMQ emits 'completed' just after the job's move to completed
    // returns, so the last few records can trail the counts: the producer asks again every 20 ms
    // until every job has its record (or the timeout). Records of other runs are ignored (by id),
    // and this first call clears any that an earlier, failed run left behind.
    await fetchRecords();
    baseline = await finishedCount();
  }
  // Like loadgen: let the subscription settle before the first job can finish (worker mode waits
  // too, to keep the runs' shape the same).
  await sleep(200);

  const started = clock();
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
        const t = clock();
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
      const wait = started + i * period - clock();
      if (wait > 0) await sleep(wait);
      while (inFlight >= conc) await new Promise((resolve) => (wake = resolve));
      inFlight++;
      sent[i] = clock();
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
  const submitMs = clock() - started;

  const deadline = clock() + timeoutMs;
  if (events) {
    while (done < accepted && clock() < deadline) await sleep(20);
  } else {
    while ((await finishedCount()) - baseline < accepted && clock() < deadline) await sleep(20);
    for (;;) {
      for (const line of (await fetchRecords()).split('\n')) {
        if (!line) continue;
        const [jobId, at, ok] = line.split(' ');
        finished(jobId, ok === '1', Number(at));
      }
      if (done >= accepted || clock() >= deadline) break;
      await sleep(20);
    }
  }

  // Jobs whose completion was never reported: ask for them once, as loadgen does.
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
  // A completion that was not reported makes the timings wrong (the run waited for the timeout,
  // and the last completion is unknown), so such a run fails even if no job did.
  const missed = lateOk + lateFailed;
  if (missed > 0) {
    const how = events ? 'their event reaching QueueEvents' : 'the worker recording them';
    console.error(`${missed} jobs finished without ${how}`);
  }

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

  await Promise.race([Promise.all([events?.close(), queue.close()]), sleep(2000)]);
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
