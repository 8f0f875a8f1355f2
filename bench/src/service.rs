//! The real service binary as a child process (as `tests/support/service.rs` runs it): its
//! configuration, readiness, counters from `/metrics`, and its CPU time and memory from `/proc`,
//! sampled in the background so that rates are taken from what the service itself counted.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cpu::{Tree, own_cpu, proc_usage, tree};
use crate::stack::Stack;

/// How often the sampler reads `/metrics` and `/proc`: fine enough to time each batch's commit
/// (the counters step once per batch), cheap enough (one small HTTP request) not to disturb the
/// service.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What one service process is deployed on.
pub struct Deployment {
    pub binary: PathBuf,
    pub guest: PathBuf,
    pub input: String,
    pub output: String,
    pub dead_letter: String,
    pub group: String,
    pub transactional_id: String,
    pub database: String,
    /// Where the process's standard error goes.
    pub log: PathBuf,
    /// Further settings of this deployment, set last (e.g. `CAMPAIGN_PUSH__GUEST__ENGINE`).
    pub extra: Vec<(String, String)>,
}

/// One counter reading of the service and its process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Seconds since the bench's epoch.
    pub t: f64,
    pub outputs: f64,
    pub rows: f64,
    pub events_in: f64,
    /// utime + stime of the process, in seconds.
    pub cpu: f64,
    pub rss: u64,
    /// CPU seconds of the stack's broker, of PostgreSQL (the server and its backends, live and
    /// exited), and of the bench itself (its generator and reader): who else used the cores.
    pub kafka_cpu: f64,
    pub pg_cpu: f64,
    pub bench_cpu: f64,
    /// PostgreSQL's autovacuum workers running (NaN: not sampled).
    pub autovacuum_workers: f64,
    pub stages: StageSums,
}

/// What the service's stage histograms (`campaign_push_stage_seconds`) have summed so far: the
/// batches committed, the seconds spent deciding and storing them (stages that run one after the
/// other) and in their Kafka transactions (which run beside the next batch's).
#[derive(Debug, Clone, Copy, Default)]
pub struct StageSums {
    pub batches: f64,
    pub decide: f64,
    pub store: f64,
    pub deliver: f64,
}

/// The other processes whose CPU time each sample records.
#[derive(Debug, Clone, Copy)]
pub struct Others {
    pub kafka: Option<u32>,
    pub postgres: Option<u32>,
}

pub struct Service {
    child: Child,
    http_port: u16,
    pub spawned: Instant,
    sampler: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    samples: Arc<Mutex<Vec<Sample>>>,
    others: Others,
}

/// `CAMPAIGN_PUSH__…` settings of the bench's own environment that are passed on to the service
/// (e.g. `CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_EVENTS=5000 make bench`), so that a setting can be
/// tried without a code change; the ones that place the service on the bench's topics and
/// database are the bench's.
pub fn passed_settings() -> Vec<(String, String)> {
    let mut settings: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CAMPAIGN_PUSH__"))
        .collect();
    settings.sort();
    settings
}

impl Service {
    pub fn spawn(stack: &Stack, deployment: &Deployment) -> Result<Self> {
        let http_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(&deployment.log)
            .with_context(|| format!("creating {}", deployment.log.display()))?;
        let mut command = Command::new(&deployment.binary);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CAMPAIGN_PUSH") {
                command.env_remove(key);
            }
        }
        command.envs(passed_settings());
        let env = [
            (
                "KAFKA__BOOTSTRAP_SERVERS",
                stack.get("KAFKA_SASL_BOOTSTRAP")?,
            ),
            (
                "KAFKA__SECURITY__PASSWORD",
                stack.get("KAFKA_SASL_PASSWORD")?,
            ),
            ("KAFKA__SECURITY__CA_FILE", stack.get("KAFKA_CA_FILE")?),
            ("KAFKA__INPUT_TOPIC", &deployment.input),
            ("KAFKA__OUTPUT_TOPIC", &deployment.output),
            ("KAFKA__DEAD_LETTER_TOPIC", &deployment.dead_letter),
            ("KAFKA__CONSUMER_GROUP", &deployment.group),
            ("KAFKA__TRANSACTIONAL_ID", &deployment.transactional_id),
            ("POSTGRES__HOST", stack.get("PGHOST")?),
            ("POSTGRES__PORT", stack.get("PGPORT")?),
            ("POSTGRES__DATABASE", &deployment.database),
            ("POSTGRES__PASSWORD", stack.get("PGPASSWORD")?),
            ("POSTGRES__TLS__CA_FILE", stack.get("PGSSLROOTCERT")?),
            ("HTTP__LISTEN", &format!("127.0.0.1:{http_port}")),
        ];
        for (key, value) in env {
            command.env(format!("CAMPAIGN_PUSH__{key}"), value);
        }
        command
            .env("CAMPAIGN_PUSH__GUEST__PATH", &deployment.guest)
            .args(["run", "--config"])
            .arg(stack.root.join("config/local.toml"))
            .envs(deployment.extra.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let (kafka, postgres) = crate::stack::server_pids(&stack.root);
        let spawned = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", deployment.binary.display()))?;
        Ok(Self {
            child,
            http_port,
            spawned,
            sampler: None,
            samples: Arc::default(),
            others: Others { kafka, postgres },
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for `/readyz` to answer 200 (polled every 10 ms, so the figure is not rounded up to
    /// a coarse poll) and returns the time since the process was spawned.
    pub fn wait_ready(&mut self, timeout: Duration, log: &Path) -> Result<Duration> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the service exited with {status} before it was ready; see {}",
                    log.display()
                );
            }
            if self
                .get("/readyz")
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return Ok(self.spawned.elapsed());
            }
            if self.spawned.elapsed() > timeout {
                bail!(
                    "the service was not ready within {timeout:?}; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn get(&self, path: &str) -> Option<String> {
        http_get(self.http_port, path)
    }

    /// Starts sampling counters and `/proc` every [`SAMPLE_EVERY`], with times from `epoch`.
    pub fn start_sampler(&mut self, epoch: Instant) {
        let stop = Arc::new(AtomicBool::new(false));
        let (port, pid, samples, others) = (
            self.http_port,
            self.pid(),
            self.samples.clone(),
            self.others,
        );
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if let Some(sample) = sample(port, pid, others, epoch) {
                    samples.lock().unwrap().push(sample);
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        self.sampler = Some((stop, handle));
    }

    /// The samples taken so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// The latest sample, taken now.
    pub fn sample_now(&self, epoch: Instant) -> Option<Sample> {
        sample(self.http_port, self.pid(), self.others, epoch)
    }

    /// SIGTERM, then the exit (SIGKILL after 30 s).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some((stop, handle)) = self.sampler.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
        if !self.is_running() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn sample(port: u16, pid: u32, others: Others, epoch: Instant) -> Option<Sample> {
    let metrics = http_get(port, "/metrics")?;
    let t = epoch.elapsed().as_secs_f64();
    let (cpu, rss) = proc_usage(pid)?;
    let kafka = others.kafka.map_or(Tree::UNKNOWN, tree);
    let postgres = others.postgres.map_or(Tree::UNKNOWN, tree);
    Some(Sample {
        t,
        outputs: metric(&metrics, "campaign_push_outputs_total").unwrap_or(0.0),
        rows: metric(&metrics, "campaign_push_feedback_rows_total").unwrap_or(0.0),
        events_in: metric(&metrics, "campaign_push_events_in_total").unwrap_or(0.0),
        cpu,
        rss,
        kafka_cpu: kafka.cpu,
        pg_cpu: postgres.cpu,
        bench_cpu: own_cpu(),
        autovacuum_workers: postgres.autovacuum_workers,
        stages: StageSums {
            batches: stage_metric(&metrics, "count", "postgres").unwrap_or(0.0),
            decide: stage_metric(&metrics, "sum", "decide").unwrap_or(0.0),
            store: stage_metric(&metrics, "sum", "postgres").unwrap_or(0.0),
            deliver: stage_metric(&metrics, "sum", "kafka").unwrap_or(0.0),
        },
    })
}

/// `campaign_push_stage_seconds_<what>` (`sum` or `count`) of one stage.
fn stage_metric(text: &str, what: &str, stage: &str) -> Option<f64> {
    metric(
        text,
        &format!("campaign_push_stage_seconds_{what}{{stage=\"{stage}\"}}"),
    )
}

/// The value of a counter or gauge without labels in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}
