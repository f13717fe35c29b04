//! Workers (`kinesis-worker run`) and test apps (`record-app`) as separate processes on one
//! stream, as they run in pods, and what the apps received.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{Proc, binary};
use crate::{TestEnv, unique_name, wait_for};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Worker settings that keep tests short.
const TEST_TIMINGS: &[&str] = &[
    "--failover-time-ms",
    "3000",
    "--scan-interval-ms",
    "250",
    "--handoff-timeout-ms",
    "2000",
    "--shard-sync-interval-ms",
    "500",
    "--idle-time-ms",
    "100",
    "--idle-time-max-ms",
    "250",
    // kinesis-mock never ends a fan-out shard with its children: the safety-net listing
    // is what ends one here.
    "--fan-out-end-check-ms",
    "1000",
    "--checkpoint-interval-ms",
    "1000",
];

/// One record as a test app received it.
#[derive(Debug, Clone, Deserialize)]
pub struct Received {
    /// Shard.
    pub shard: String,
    /// Partition key.
    pub key: String,
    /// Sequence number.
    pub seq: String,
    /// Sub-sequence number.
    pub sub: u64,
    /// A KPL sub-record?
    pub agg: bool,
    /// Explicit hash key of a KPL sub-record.
    pub ehk: String,
    /// The data (UTF-8, lossy).
    pub data: String,
    /// Delivery attempt of its batch.
    pub attempt: u32,
    /// The lease's owner it was delivered under (fencing token).
    #[serde(default)]
    pub owner: String,
    /// The lease's counter it was delivered under (fencing token).
    #[serde(default)]
    pub counter: u64,
    /// When the app received it (ns since the epoch, as a string).
    pub recv: String,
    /// The call that delivered it (`record-app`'s process and call number); an [`Ack`] with
    /// this id says the app answered that call successfully.
    #[serde(default)]
    pub call: String,
    /// The lease validity the call carried (`kinesis-lease-valid-until-ms`, ms since the
    /// epoch), if any.
    #[serde(default)]
    pub valid_until: Option<i64>,
}

impl Received {
    /// Receive time in ns.
    pub fn recv_ns(&self) -> u128 {
        self.recv.parse().unwrap_or(0)
    }
}

/// A test app's acknowledgement of a `ProcessRecords` call: it answered the call successfully,
/// which acknowledges every record it wrote for that call (with `--fail-from`, only the records
/// before the failed one are written). Written after the call's records, before the answer.
/// Its line has no `key`, `seq` nor `data`, so [`received`] skips it.
#[derive(Debug, Clone, Deserialize)]
pub struct Ack {
    /// The call's id (as in [`Received::call`]).
    pub ack: String,
    /// Shard.
    pub shard: String,
    /// The lease's owner the call came under.
    #[serde(default)]
    pub owner: String,
    /// The lease's counter the call came under.
    #[serde(default)]
    pub counter: u64,
    /// Delivery attempt of the call's batch.
    #[serde(default)]
    pub attempt: u32,
    /// Records the call acknowledged.
    #[serde(default)]
    pub n: usize,
    /// When the app received the call (ns since the epoch, as a string).
    pub recv: String,
}

/// How a test app's tenure of a shard ended, as it wrote it: `shutdown-requested` (with its
/// `reason`), `lease-lost` or `shard-ended`, with the fencing token of the app's last
/// `ProcessRecords` call for the shard since its `Initialize` (empty owner, counter 0: none).
/// Its line has no `key`, `seq` nor `data`, so [`received`] skips it.
#[derive(Debug, Clone, Deserialize)]
pub struct AppEvent {
    /// `shutdown-requested`, `lease-lost` or `shard-ended`.
    pub event: String,
    /// The reason of a `shutdown-requested` (`REASON_HANDOFF`, `REASON_WORKER_SHUTDOWN`).
    #[serde(default)]
    pub reason: String,
    /// Shard.
    pub shard: String,
    /// The lease's owner of the app's last call for the shard.
    #[serde(default)]
    pub owner: String,
    /// The lease's counter of the app's last call for the shard.
    #[serde(default)]
    pub counter: u64,
    /// When the app got the call (ns since the epoch, as a string).
    pub recv: String,
}

impl AppEvent {
    /// Time of the call in ns.
    pub fn recv_ns(&self) -> u128 {
        self.recv.parse().unwrap_or(0)
    }
}

/// A stream, an application name, and a folder for sockets and app output.
pub struct Pipeline {
    /// The environment.
    pub env: TestEnv,
    /// Stream name.
    pub stream: String,
    /// Application name (lease table).
    pub app: String,
    /// Sockets, outputs and logs.
    pub dir: PathBuf,
    /// Start workers with short test timings (failover 3 s, idle 100 ms, checkpoint 1 s);
    /// false: the worker's production defaults (benchmarks).
    pub test_timings: bool,
    /// A command the worker runs under (e.g. `valgrind --tool=callgrind …`); empty: none.
    pub worker_wrapper: Vec<String>,
}

/// A running worker and its admin address.
pub struct Worker {
    /// The process.
    pub proc: Proc,
    /// `127.0.0.1:PORT` of its admin HTTP port.
    pub admin: String,
    /// `127.0.0.1:PORT` of its local admin port (`POST /drain`).
    pub local: String,
}

impl Worker {
    /// Waits until the process has exited (after a drain or a signal); its exit code.
    ///
    /// # Errors
    /// It did not exit within `timeout`.
    pub async fn until_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let started = std::time::Instant::now();
        loop {
            if let Some(code) = self.proc.exited() {
                return Ok(code);
            }
            if started.elapsed() > timeout {
                return Err(format!("the worker did not exit within {timeout:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (a graceful stop: every lease handed over, checkpoints flushed), then waits
    /// until it has exited.
    ///
    /// # Errors
    /// As [`Worker::until_exit`].
    pub async fn stop(mut self, timeout: Duration) -> Result<Option<i32>> {
        self.proc.signal("TERM");
        self.until_exit(timeout).await
    }
}

/// A running test app.
pub struct App {
    /// The process (its stdout: the lifecycle calls it got, `overlap …` lines).
    pub proc: Proc,
    /// Its socket (`unix://…`).
    pub address: String,
    /// Where it writes what it received.
    pub out: PathBuf,
}

impl App {
    /// The lines the app printed so far that start with `prefix` (`initialize `,
    /// `shard-ended `, `overlap`: two calls for one shard in flight at once).
    pub fn said(&self, prefix: &str) -> Vec<String> {
        self.proc
            .lines()
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }
}

impl Pipeline {
    /// Creates a stream with `shards` shards.
    ///
    /// # Errors
    /// The stream could not be created.
    pub async fn new(shards: i32) -> Result<Self> {
        let env = TestEnv::require();
        let stream = unique_name("pipe");
        env.create_stream(&stream, shards).await?;
        // Short: Unix socket paths are limited to 108 bytes.
        let dir = std::env::temp_dir().join(unique_name("ko"));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            env,
            app: unique_name("app"),
            stream,
            dir,
            test_timings: true,
            worker_wrapper: Vec::new(),
        })
    }

    /// Starts a test app `name` with `extra` arguments (`--fail-first N`, …).
    ///
    /// # Errors
    /// It could not be built or started, or did not create its socket in time.
    pub async fn app(&self, name: &str, extra: &[&str]) -> Result<App> {
        self.app_with(name, true, extra).await
    }

    /// Starts a test app that writes what it receives (`record`) or acknowledges and drops
    /// every batch (a do-nothing app, for benchmarks).
    ///
    /// # Errors
    /// As [`Pipeline::app`].
    pub async fn app_with(&self, name: &str, record: bool, extra: &[&str]) -> Result<App> {
        let socket = self.dir.join(format!("{name}.sock"));
        let address = format!("unix://{}", socket.display());
        let out = self.dir.join(format!("{name}.jsonl"));
        let mut cmd = Command::new(binary("record-app")?);
        cmd.args(["--address", &address]);
        if record {
            cmd.arg("--out").arg(&out);
        }
        cmd.args(extra);
        let _ = std::fs::remove_file(&socket);
        let proc = Proc::spawn(cmd, self.dir.join(format!("{name}.log")))?;
        wait_for(
            "the app's socket",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || async { socket.exists().then_some(()) },
        )
        .await?;
        Ok(App { proc, address, out })
    }

    /// Starts `kinesis-worker run` as worker `id` delivering to `app_address`.
    ///
    /// # Errors
    /// It could not be built or started.
    pub fn worker(&self, id: &str, app_address: &str, extra: &[&str]) -> Result<Worker> {
        self.worker_for(&self.app, id, app_address, extra)
    }

    /// Starts `kinesis-worker run` as worker `id` of application `application`.
    ///
    /// # Errors
    /// It could not be built or started.
    pub fn worker_for(
        &self,
        application: &str,
        id: &str,
        app_address: &str,
        extra: &[&str],
    ) -> Result<Worker> {
        let admin = format!("127.0.0.1:{}", crate::free_port()?);
        let local = format!("127.0.0.1:{}", crate::free_port()?);
        let mut cmd = match self.worker_wrapper.split_first() {
            None => Command::new(binary("kinesis-worker")?),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary("kinesis-worker")?);
                c
            }
        };
        for (k, v) in self.env.worker_env() {
            cmd.env(k, v);
        }
        let level = if self.test_timings {
            "info,kinesis_worker=debug,kinesis_lease=debug"
        } else {
            "info"
        };
        cmd.env("LOG_LEVEL", level).args([
            "run",
            "--application",
            application,
            "--stream",
            &self.stream,
            "--worker-id",
            id,
            "--app-address",
            app_address,
            "--admin-address",
            &admin,
            "--local-admin-address",
            &local,
        ]);
        if self.test_timings {
            // A timing `extra` sets itself overrides the test timing's.
            for pair in TEST_TIMINGS.chunks(2) {
                if !extra.contains(&pair[0]) {
                    cmd.args(pair);
                }
            }
        }
        cmd.args(extra);
        let proc = Proc::spawn(cmd, self.dir.join(format!("worker-{application}-{id}.log")))?;
        Ok(Worker { proc, admin, local })
    }

    /// Puts `data` with partition `key`; returns its sequence number.
    ///
    /// # Errors
    /// The put failed.
    pub async fn put(
        &self,
        kinesis: &aws_sdk_kinesis::Client,
        key: &str,
        data: &[u8],
    ) -> Result<String> {
        let out = kinesis
            .put_record()
            .stream_name(&self.stream)
            .partition_key(key)
            .data(aws_sdk_kinesis::primitives::Blob::new(data))
            .send()
            .await?;
        Ok(out.sequence_number().to_string())
    }

    /// Puts `n` records per key for `keys` keys, data `key:index` (index from `from`),
    /// round-robin over the keys.
    ///
    /// # Errors
    /// A put failed.
    pub async fn put_sequence(&self, keys: usize, from: usize, n: usize) -> Result<()> {
        let kinesis = self.env.kinesis().await;
        let entries: Vec<_> = (from..from + n)
            .flat_map(|i| (0..keys).map(move |k| (format!("key-{k}"), i)))
            .collect();
        for batch in entries.chunks(100) {
            let mut req = kinesis.put_records().stream_name(&self.stream);
            for (key, i) in batch {
                req = req.records(
                    aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                        .partition_key(key)
                        .data(aws_sdk_kinesis::primitives::Blob::new(format!("{key}:{i}")))
                        .build()?,
                );
            }
            let out = req.send().await?;
            if out.failed_record_count().unwrap_or(0) > 0 {
                return Err(format!(
                    "{} records failed to put",
                    out.failed_record_count().unwrap_or(0)
                )
                .into());
            }
        }
        Ok(())
    }

    /// Deletes the stream, the lease table and the folder.
    ///
    /// # Errors
    /// A delete failed.
    pub async fn cleanup(self) -> Result<()> {
        self.env
            .kinesis()
            .await
            .delete_stream()
            .stream_name(&self.stream)
            // Fan-out tests register consumers.
            .enforce_consumer_deletion(true)
            .send()
            .await?;
        let _ = self
            .env
            .dynamodb()
            .await
            .delete_table()
            .table_name(&self.app)
            .send()
            .await;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Waits until the apps' outputs hold `n` distinct records; returns them all.
///
/// # Errors
/// Not within [`crate::fleet::DEADLINE`] (with how many arrived).
pub async fn until_received(outs: &[&std::path::Path], n: usize) -> Result<Vec<Received>> {
    let start = std::time::Instant::now();
    let res = crate::wait_for(
        &format!("{n} records received"),
        crate::fleet::DEADLINE,
        crate::fleet::POLL,
        || async {
            let all = received(outs);
            let distinct: std::collections::HashSet<_> =
                all.iter().map(|r| (r.seq.clone(), r.sub)).collect();
            (distinct.len() >= n).then_some(all)
        },
    )
    .await;
    match res {
        Ok(all) => {
            eprintln!("{n} records received in {:?}", start.elapsed());
            Ok(all)
        }
        Err(e) => {
            let got = received(outs).len();
            Err(format!("{e} (got {got})").into())
        }
    }
}

/// Waits until the Unix socket `path` exists (an app is serving).
///
/// # Errors
/// Not within 60 s.
pub async fn until_socket(path: &Path) -> Result<()> {
    wait_for(
        &format!("socket {}", path.display()),
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async { path.exists().then_some(()) },
    )
    .await?;
    Ok(())
}

/// Waits until something accepts TCP connections on `address` (`host:port`): the worker's
/// Lambda Runtime API, for instance.
pub async fn until_listening(address: &str) -> Result<()> {
    wait_for(
        &format!("a listener on {address}"),
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async { tokio::net::TcpStream::connect(address).await.ok().map(drop) },
    )
    .await?;
    Ok(())
}

/// Every record in the apps' output files (not their [`Ack`] and [`AppEvent`] lines), merged in
/// the order the apps received them (receive time, then file order).
pub fn received(outs: &[&Path]) -> Vec<Received> {
    let mut all: Vec<(u128, usize, Received)> = Vec::new();
    for out in outs {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        for line in text.lines() {
            if let Ok(r) = serde_json::from_str::<Received>(line) {
                let n = all.len();
                all.push((r.recv_ns(), n, r));
            }
        }
    }
    all.sort_by_key(|(t, n, _)| (*t, *n));
    all.into_iter().map(|(_, _, r)| r).collect()
}

/// Every line of kind `T` in the apps' output files, file by file in file order (lines of
/// other kinds skipped).
fn lines_of<T: serde::de::DeserializeOwned>(outs: &[&Path]) -> Vec<T> {
    let mut all = Vec::new();
    for out in outs {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        all.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<T>(l).ok()),
        );
    }
    all
}

/// Every call acknowledgement in the apps' output files (see [`Ack`]).
pub fn acks(outs: &[&Path]) -> Vec<Ack> {
    lines_of(outs)
}

/// Every lifecycle line in the apps' output files (see [`AppEvent`]), in time order.
pub fn app_events(outs: &[&Path]) -> Vec<AppEvent> {
    let mut all: Vec<AppEvent> = lines_of(outs);
    all.sort_by_key(AppEvent::recv_ns);
    all
}

/// For data `key:index` records: every index of `0..per_key` for each of `keys` keys seen,
/// and per key in increasing order (a retry may repeat the last ones). Returns the
/// duplicates (records seen more than once).
///
/// # Errors
/// A record is missing or out of order, with the first offender named.
pub fn check_sequence(records: &[Received], keys: usize, per_key: usize) -> Result<usize, String> {
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut dups = 0;
    let mut unique = std::collections::HashSet::new();
    for r in records {
        let Some((key, i)) = r.data.split_once(':') else {
            return Err(format!("unexpected record data {:?}", r.data));
        };
        let i: usize = i
            .parse()
            .map_err(|_| format!("bad index in {:?}", r.data))?;
        if !unique.insert((r.seq.clone(), r.sub)) {
            dups += 1;
            continue;
        }
        let list = seen.entry(key.to_string()).or_default();
        if let Some(last) = list.last()
            && i <= *last
        {
            return Err(format!(
                "key {key}: index {i} (shard {}, seq {}) after {last}: out of order",
                r.shard, r.seq
            ));
        }
        list.push(i);
    }
    for k in 0..keys {
        let key = format!("key-{k}");
        let got = seen.get(&key).map_or(0, Vec::len);
        if got != per_key {
            let missing: Vec<usize> = (0..per_key)
                .filter(|i| !seen.get(&key).is_some_and(|l| l.contains(i)))
                .take(5)
                .collect();
            return Err(format!(
                "key {key}: {got} of {per_key} records, missing e.g. {missing:?}"
            ));
        }
    }
    Ok(dups)
}

/// `GET http://{addr}{path}`: the status and body.
///
/// # Errors
/// The connection failed or the answer was not HTTP.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    http_request(addr, "GET", path).await
}

/// `METHOD path` on `addr` (HTTP/1.1, no body): status and body.
///
/// # Errors
/// The connection failed or the answer is not HTTP.
pub async fn http_request(addr: &str, method: &str, path: &str) -> Result<(u16, String)> {
    let (status, _, body) = http_exchange(addr, method, path).await?;
    Ok((status, body))
}

/// `METHOD path` on `addr` (HTTP/1.1, no body): status, the header block and the body.
///
/// # Errors
/// The connection failed or the answer is not HTTP.
pub async fn http_exchange(addr: &str, method: &str, path: &str) -> Result<(u16, String, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:.100}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    Ok((status, head.to_string(), body.to_string()))
}

/// The sum of every sample in a `/metrics` page whose line contains `label` (e.g.
/// `api="ListShards"`: the worker's AWS calls of that API).
pub fn metric_with(page: &str, label: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#') && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the `/metrics` page of the worker at `admin` shows at least `min` for the
/// samples whose line contains `selector` (a metric name, or a label such as
/// `reason="attempts_exhausted"`; as [`metric_with`]), and returns that page.
///
/// # Errors
/// Not within [`crate::fleet::DEADLINE`]: the error names `what`.
pub async fn until_metric(admin: &str, what: &str, selector: &str, min: f64) -> Result<String> {
    let page = crate::wait_for(what, crate::fleet::DEADLINE, crate::fleet::POLL, || async {
        let (s, page) = http_get(admin, "/metrics").await.ok()?;
        (s == 200 && metric_with(&page, selector) >= min).then_some(page)
    })
    .await?;
    Ok(page)
}

/// The value of metric `name` (the sum over its label sets) in a `/metrics` page.
pub fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            let base = n.split('{').next()?;
            (base == name).then(|| v.parse::<f64>().ok()).flatten()
        })
        .sum()
}
