//! Running the real service binary against the local stack, on topics and a consumer group of
//! its own, and observing what it wrote: Kafka read with `read_committed`, PostgreSQL rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{StackEnv, TempTopic, poll_until, psql, run, unique_name};

pub const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_campaign-push");

/// The guest built by `make guest`: `$GUEST_WASM`, or its place beside the binary's target dir.
pub fn guest_wasm() -> PathBuf {
    let path = std::env::var_os("GUEST_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target_dir = Path::new(SERVICE_BIN).parent().unwrap().parent().unwrap();
            target_dir.join("wasm32-wasip2/release-guest/guest_transform.wasm")
        });
    assert!(
        path.exists(),
        "guest component {} not found: run `make guest` (or `make test`) first",
        path.display()
    );
    path
}

/// One record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Record {
    pub fn key_text(&self) -> &str {
        std::str::from_utf8(self.key.as_deref().unwrap_or_default()).unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("the value is JSON")
    }
}

/// A record to produce to the input topic: partition, key, value.
pub type InputRecord<'a> = (i32, Option<&'a [u8]>, &'a [u8]);

/// An idempotent producer to one deployment's input topic.
pub struct InputProducer {
    producer: BaseProducer,
    topic: String,
}

impl InputProducer {
    /// Queues one record, waiting while the producer's queue is full.
    pub fn send(&self, (partition, key, value): InputRecord<'_>) {
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic)
            .partition(partition)
            .payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        while let Err((_, returned)) = self.producer.send(record) {
            record = returned;
            self.producer.poll(Duration::from_millis(50));
        }
    }

    /// Waits until every queued record is acknowledged.
    pub fn flush(&self) {
        self.producer
            .flush(Duration::from_secs(30))
            .expect("produced");
    }
}

/// Topics, consumer group and transactional id that only one test uses.
pub struct Deployment {
    pub input: TempTopic,
    pub output: TempTopic,
    pub dead_letter: TempTopic,
    pub group: String,
    pub transactional_id: String,
    plaintext: String,
}

impl Deployment {
    pub fn new(env: &StackEnv, name: &str) -> Self {
        Self::with_input_partitions(env, name, 3)
    }

    /// As [`Deployment::new`], with an input topic of `partitions` partitions.
    pub fn with_input_partitions(env: &StackEnv, name: &str, partitions: i32) -> Self {
        Self {
            input: TempTopic::with_partitions(env, &format!("{name}-in"), partitions),
            output: TempTopic::with_partitions(env, &format!("{name}-out"), 3),
            dead_letter: TempTopic::with_partitions(env, &format!("{name}-dlq"), 3),
            group: unique_name(&format!("{name}-group")),
            transactional_id: unique_name(&format!("{name}-txn")),
            plaintext: env.get("KAFKA_PLAINTEXT_BOOTSTRAP").to_owned(),
        }
    }

    /// Starts the service binary for this deployment and waits until it is ready.
    pub fn start(&self, env: &StackEnv) -> Service {
        self.start_with(env, &[])
    }

    /// As [`Deployment::start`], with extra `CAMPAIGN_PUSH__…` overrides.
    pub fn start_with(&self, env: &StackEnv, overrides: &[(&str, &str)]) -> Service {
        let mut service = self.spawn_with(env, overrides);
        service.wait_ready();
        service
    }

    /// Starts the service without waiting for it to be ready: for runs that may end before (a
    /// crash point, see `host/src/failpoint.rs`, set by a `FAILPOINTS` override).
    pub fn spawn_with(&self, env: &StackEnv, overrides: &[(&str, &str)]) -> Service {
        self.spawn_command(self.command(env, "run"), overrides)
    }

    /// Spawns `command` (a `run` of this deployment, see [`Deployment::command`]) on free ports,
    /// with an admin token of its own, its log captured, and `overrides` set last.
    pub fn spawn_command(&self, mut command: Command, overrides: &[(&str, &str)]) -> Service {
        let http_port = free_port();
        let admin_port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        // Created readable by its owner only, as the service demands of a token file.
        let admin_token = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            admin_token.path(),
            format!("{}\n", unique_name("admin-token")),
        )
        .unwrap();
        command
            .env(
                "CAMPAIGN_PUSH__HTTP__LISTEN",
                format!("127.0.0.1:{http_port}"),
            )
            .env(
                "CAMPAIGN_PUSH__ADMIN__LISTEN",
                format!("127.0.0.1:{admin_port}"),
            )
            .env("CAMPAIGN_PUSH__ADMIN__TOKEN_FILE", admin_token.path())
            .env("CAMPAIGN_PUSH__PIPELINE__BATCH_LINGER", "20ms")
            .env("CAMPAIGN_PUSH__LOG__FILTER", "info,librdkafka=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap());
        for (key, value) in overrides {
            command.env(key, value);
        }
        let child = command.spawn().expect("the service starts");
        Service {
            child: Mutex::new(child),
            http_port,
            admin_port,
            admin_token,
            log,
        }
    }

    /// `campaign-push <subcommand> --config config/local.toml` for this deployment: the local
    /// stack's addresses and secrets, this deployment's topics, group and transactional id, and
    /// the guest of `make guest`, as environment overrides (and no other `CAMPAIGN_PUSH…`
    /// variable of the test's own environment).
    pub fn command(&self, env: &StackEnv, subcommand: &str) -> Command {
        let mut command = Command::new(SERVICE_BIN);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CAMPAIGN_PUSH") {
                command.env_remove(key);
            }
        }
        command
            .args([subcommand, "--config"])
            .arg(super::repo_root().join("config/local.toml"))
            .env(
                "CAMPAIGN_PUSH__KAFKA__BOOTSTRAP_SERVERS",
                env.get("KAFKA_SASL_BOOTSTRAP"),
            )
            .env(
                "CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD",
                env.get("KAFKA_SASL_PASSWORD"),
            )
            .env(
                "CAMPAIGN_PUSH__KAFKA__SECURITY__CA_FILE",
                env.get("KAFKA_CA_FILE"),
            )
            .env("CAMPAIGN_PUSH__KAFKA__INPUT_TOPIC", &self.input.name)
            .env("CAMPAIGN_PUSH__KAFKA__OUTPUT_TOPIC", &self.output.name)
            .env(
                "CAMPAIGN_PUSH__KAFKA__DEAD_LETTER_TOPIC",
                &self.dead_letter.name,
            )
            .env("CAMPAIGN_PUSH__KAFKA__CONSUMER_GROUP", &self.group)
            .env(
                "CAMPAIGN_PUSH__KAFKA__TRANSACTIONAL_ID",
                &self.transactional_id,
            )
            .env("CAMPAIGN_PUSH__POSTGRES__HOST", env.get("PGHOST"))
            .env("CAMPAIGN_PUSH__POSTGRES__PORT", env.get("PGPORT"))
            .env("CAMPAIGN_PUSH__POSTGRES__DATABASE", env.test_database())
            .env("CAMPAIGN_PUSH__POSTGRES__PASSWORD", env.get("PGPASSWORD"))
            .env(
                "CAMPAIGN_PUSH__POSTGRES__TLS__CA_FILE",
                env.get("PGSSLROOTCERT"),
            )
            .env("CAMPAIGN_PUSH__GUEST__PATH", guest_wasm());
        command
    }

    /// A producer to the input topic, for tests that produce while they observe.
    pub fn input_producer(&self) -> InputProducer {
        self.input_producer_with(&[])
    }

    /// As [`Deployment::input_producer`], with further librdkafka properties.
    pub fn input_producer_with(&self, properties: &[(&str, &str)]) -> InputProducer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.plaintext)
            .set("enable.idempotence", "true");
        for (name, value) in properties {
            config.set(*name, *value);
        }
        InputProducer {
            producer: config.create().unwrap(),
            topic: self.input.name.clone(),
        }
    }

    /// Produces `(partition, key, value)` records to the input topic, in order, and flushes.
    pub fn produce(&self, records: &[InputRecord<'_>]) {
        let producer = self.input_producer();
        for record in records {
            producer.send(*record);
        }
        producer.flush();
    }

    /// Produces `values` without keys, spread over the input topic's partitions in turn.
    pub fn produce_spread(&self, values: &[String]) {
        let partitions = self.input.partitions as usize;
        let records: Vec<InputRecord> = values
            .iter()
            .enumerate()
            .map(|(i, value)| ((i % partitions) as i32, None, value.as_bytes()))
            .collect();
        self.produce(&records);
    }

    pub fn admin_consumer(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.plaintext)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap()
    }

    /// Waits until the service's consumer group has committed every input record produced so far.
    #[track_caller]
    pub fn wait_consumed(&self, deadline: Duration) {
        self.wait_consumed_checking(deadline, || {});
    }

    /// As [`Deployment::wait_consumed`], calling `check` (which may panic, e.g. when the service
    /// exited) at every poll, so that a failure shows at once instead of at the deadline.
    #[track_caller]
    pub fn wait_consumed_checking(&self, deadline: Duration, mut check: impl FnMut()) {
        let consumer = self.admin_consumer(&self.group);
        let topic = &self.input.name;
        let partitions = self.input.partitions;
        let high: Vec<i64> = (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .collect();
        poll_until("the service commits all input", deadline, || {
            check();
            let mut list = TopicPartitionList::new();
            for p in 0..partitions {
                list.add_partition(topic, p);
            }
            let committed = consumer
                .committed_offsets(list, Duration::from_secs(10))
                .ok()?;
            let all = (0..partitions).all(|p| {
                let offset = committed
                    .find_partition(topic, p)
                    .map(|e| e.offset())
                    .unwrap_or(Offset::Invalid);
                match offset {
                    Offset::Offset(o) => o >= high[p as usize],
                    _ => high[p as usize] == 0,
                }
            });
            all.then_some(())
        });
    }

    /// A `read_committed` consumer of `topic` (3 partitions) positioned at its current end, to
    /// watch what arrives from now on.
    pub fn tail(&self, topic: &str) -> BaseConsumer {
        let consumer = self.admin_consumer(&unique_name("tail"));
        let mut list = TopicPartitionList::new();
        for p in 0..3 {
            list.add_partition_offset(topic, p, Offset::End).unwrap();
        }
        consumer.assign(&list).unwrap();
        consumer
    }

    /// Every committed record of `topic` (3 partitions), read from the beginning to the end.
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        let consumer = self.admin_consumer(&unique_name("reader"));
        let mut list = TopicPartitionList::new();
        for p in 0..3 {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        let mut at_end = [false; 3];
        let mut records = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !at_end.iter().all(|&end| end) {
            assert!(
                std::time::Instant::now() < deadline,
                "reading {topic} to its end: not done after 120 s"
            );
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    at_end[message.partition() as usize] = false;
                    let headers = message
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|header| {
                                    (
                                        header.key.to_owned(),
                                        String::from_utf8_lossy(header.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    records.push(Record {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        value: message.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => at_end[p as usize] = true,
                Some(Err(error)) => panic!("reading {topic}: {error}"),
                None => {}
            }
        }
        records
    }
}

/// A running service process; killed when dropped.
pub struct Service {
    /// Behind a lock so that a test can check it is alive through a shared reference, while the
    /// service is borrowed elsewhere.
    child: Mutex<Child>,
    http_port: u16,
    admin_port: u16,
    admin_token: tempfile::NamedTempFile,
    log: tempfile::NamedTempFile,
}

impl Service {
    /// Waits until the process exits by itself, e.g. at a crash point.
    #[track_caller]
    pub fn wait_exit(&self, deadline: Duration) -> std::process::ExitStatus {
        poll_until("the service exits", deadline, || self.exit_status())
    }

    #[track_caller]
    pub fn wait_ready(&mut self) {
        poll_until("the service is ready", Duration::from_secs(90), || {
            if let Some(status) = self.exit_status() {
                panic!(
                    "the service exited with {status} before becoming ready:\n{}",
                    self.log_text()
                );
            }
            (self
                .get("/readyz")
                .is_some_and(|r| r.starts_with("HTTP/1.1 200")))
            .then_some(())
        });
    }

    /// The response to `GET path` on the service's public endpoint, status line included.
    pub fn get(&self, path: &str) -> Option<String> {
        request(self.http_port, "GET", path, &[])
    }

    /// The response to `POST path` (no body) on the admin API, with the service's token; status
    /// line included; `None` if nothing answered.
    pub fn post(&self, path: &str) -> Option<String> {
        let token = std::fs::read_to_string(self.admin_token.path()).unwrap();
        let authorization = format!("Bearer {}", token.trim_end());
        self.admin_request("POST", path, &[("Authorization", &authorization)])
    }

    /// A request to the admin API with exactly `headers` (besides `Host`), status line included.
    pub fn admin_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        request(self.admin_port, method, path, headers)
    }

    /// The service's admin token file.
    pub fn admin_token_file(&self) -> &Path {
        self.admin_token.path()
    }

    /// The SHA-256 of the guest in service, from the `campaign_push_guest` metric.
    pub fn guest_sha256(&self) -> Option<String> {
        let text = self.get("/metrics")?;
        let line = text
            .lines()
            .find(|l| l.starts_with("campaign_push_guest{"))?;
        let (_, rest) = line.split_once("sha256=\"")?;
        Some(rest.split('"').next()?.to_owned())
    }

    /// The value of a counter or gauge in `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics")?;
        text.lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
    }

    /// Panics, showing the service's log, if the process has exited.
    #[track_caller]
    pub fn assert_running(&self) {
        if let Some(status) = self.exit_status() {
            panic!(
                "the service exited with {status}; its log:\n{}",
                self.log_text()
            );
        }
    }

    /// The process's resident memory from `/proc`: `(VmRSS, VmHWM)` in bytes, now and at its
    /// peak since the start or the last [`Service::reset_peak_memory`]; `None` once it has
    /// exited.
    pub fn memory(&self) -> Option<(u64, u64)> {
        let pid = self.child.lock().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|line| line.starts_with(name))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// The CPU time the process has used so far, user and system, from `/proc` (in USER_HZ
    /// ticks, 100 per second on Linux whatever the kernel's tick rate); `None` once it has
    /// exited.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.child.lock().unwrap().id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces; the fields after its ')' do not.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |index: usize| fields.get(index)?.parse::<f64>().ok();
        // utime and stime: fields 14 and 15 of the line, the 12th and 13th after the name.
        Some((ticks(11)? + ticks(12)?) / 100.0)
    }

    /// Starts measuring the peak resident memory afresh (Linux: `clear_refs` 5).
    pub fn reset_peak_memory(&self) {
        let pid = self.child.lock().unwrap().id();
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    }

    /// Whether the process still runs (it has not exited, for whatever reason).
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().try_wait().expect("try_wait")
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let child = self.child.get_mut().unwrap();
        child.kill().ok();
        child.wait().ok();
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.lock().unwrap().id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.get_mut().unwrap().id().to_string()])
            .status()
            .unwrap();
        poll_until(
            "the service exits after SIGTERM",
            Duration::from_secs(60),
            || self.exit_status(),
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        child.kill().ok();
        child.wait().ok();
    }
}

/// `method path` (no body) to the service on loopback `port`, response with status line.
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    // A reload compiles a component before it answers.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// A port for a service under test to listen on, different on every call in this process, and
/// below the kernel's ephemeral range (32768–60999 here). A port from `bind(0)` is ephemeral:
/// between the test releasing it and the service binding it, an outgoing connection of another
/// test (a Kafka client, psql) could take it, and once did ("http.listen: cannot bind …: Address
/// already in use"). Ports something already listens on are skipped.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // A start of its own for each test process, so that consecutive runs do not reuse ports that
    // may still be in TIME_WAIT.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % COUNT,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An active campaign event (valid until 2054) of `restaurant`, with `content` as its offer.
pub fn campaign_event(campaign: &str, restaurant: &str, content: &str) -> String {
    format!(
        r#"{{"restaurant_id":"{restaurant}","adv_campaign_id":"{campaign}","adv_campaign_content":"{content}","adv_campaign_owner":"Ivanov Ivan Ivanovich","adv_campaign_owner_contact":"iiivanov@restaurant.ru","adv_campaign_datetime_start":1678615562,"adv_campaign_datetime_end":2659207116,"datetime_created":1678879362}}"#
    )
}

/// A (campaign id, client id) pair: what the contract delivers at most once.
pub type Pair = (String, String);

/// Subscriptions that exist for one test run: `restaurants` restaurants `<run_id>-r<n>` with
/// `clients` clients `<restaurant>-c<m>` each, deleted when dropped.
pub struct Subscriptions<'a> {
    env: &'a StackEnv,
    run_id: String,
    pub restaurants: Vec<String>,
    pub clients_per_restaurant: usize,
}

impl<'a> Subscriptions<'a> {
    pub fn insert(env: &'a StackEnv, run_id: &str, restaurants: usize, clients: usize) -> Self {
        let restaurants: Vec<String> = (0..restaurants).map(|r| format!("{run_id}-r{r}")).collect();
        let rows: Vec<String> = restaurants
            .iter()
            .flat_map(|restaurant| {
                (0..clients).map(move |c| format!("('{restaurant}-c{c}', '{restaurant}')"))
            })
            .collect();
        let sql = format!(
            "INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES {}",
            rows.join(",")
        );
        run(&mut psql(env, "", &sql), None).assert_success();
        Self {
            env,
            run_id: run_id.to_owned(),
            restaurants,
            clients_per_restaurant: clients,
        }
    }

    /// `count` new campaigns `<run id>-<label>-<n>`, one restaurant after the other, as
    /// (campaign id, restaurant id).
    pub fn campaigns(&self, label: &str, count: usize) -> Vec<(String, String)> {
        (0..count)
            .map(|n| {
                let restaurant = &self.restaurants[n % self.restaurants.len()];
                (format!("{}-{label}-{n}", self.run_id), restaurant.clone())
            })
            .collect()
    }

    /// The pairs one campaign of `restaurant` must produce.
    pub fn pairs(&self, campaign: &str, restaurant: &str) -> impl Iterator<Item = Pair> + '_ {
        let (campaign, restaurant) = (campaign.to_owned(), restaurant.to_owned());
        (0..self.clients_per_restaurant)
            .map(move |c| (campaign.clone(), format!("{restaurant}-c{c}")))
    }
}

impl Drop for Subscriptions<'_> {
    fn drop(&mut self) {
        let sql = format!(
            "DELETE FROM subscribers_restaurants WHERE restaurant_id LIKE '{}-%'",
            self.run_id
        );
        let finished = run(&mut psql(self.env, "", &sql), None);
        if !std::thread::panicking() {
            finished.assert_success();
        }
    }
}

impl Deployment {
    /// How many decisions for records of this deployment's input topic are stored.
    pub fn stored_decisions(&self, env: &StackEnv) -> u64 {
        let sql = format!(
            "SELECT count(*) FROM campaign_push_decisions WHERE source_topic = '{}'",
            self.input.name
        );
        let finished = run(&mut psql(env, "", &sql), None);
        finished.assert_success();
        finished.stdout_text().trim().parse().unwrap()
    }

    /// Asserts that the output topic (read with `read_committed`) holds every pair of `expected`
    /// exactly once and nothing else, and that `subscribers_feedback` holds every one exactly once
    /// among the campaigns whose id starts with `campaign_prefix`. `context` is added to failures.
    #[track_caller]
    pub fn assert_exactly_once(
        &self,
        env: &StackEnv,
        campaign_prefix: &str,
        expected: &BTreeSet<Pair>,
        context: &str,
    ) {
        let mut in_kafka: BTreeMap<Pair, usize> = BTreeMap::new();
        for record in self.read_all(&self.output.name) {
            let value = record.json();
            let pair = (
                value["adv_campaign_id"].as_str().unwrap().to_owned(),
                value["client_id"].as_str().unwrap().to_owned(),
            );
            assert_eq!(pair.1, record.key_text(), "the key is the client id");
            *in_kafka.entry(pair).or_default() += 1;
        }
        let duplicates: Vec<_> = in_kafka.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            duplicates.is_empty(),
            "duplicates in Kafka: {duplicates:?}\n{context}"
        );
        let kafka_pairs: BTreeSet<Pair> = in_kafka.into_keys().collect();
        assert_eq!(
            kafka_pairs.len(),
            expected.len(),
            "pairs in Kafka\n{context}"
        );
        assert!(
            &kafka_pairs == expected,
            "Kafka pairs differ from the expected ones\n{context}"
        );

        let sql = format!(
            "SELECT adv_campaign_id, client_id, count(*) FROM subscribers_feedback \
             WHERE adv_campaign_id LIKE '{campaign_prefix}%' GROUP BY 1, 2"
        );
        let finished = run(&mut psql(env, "", &sql), None);
        finished.assert_success();
        let mut pg_pairs = BTreeSet::new();
        for line in finished.stdout_text().lines() {
            let fields: Vec<&str> = line.split('|').collect();
            assert_eq!(fields[2], "1", "duplicate row for {line}\n{context}");
            pg_pairs.insert((fields[0].to_owned(), fields[1].to_owned()));
        }
        assert_eq!(
            pg_pairs.len(),
            expected.len(),
            "pairs in PostgreSQL\n{context}"
        );
        assert!(
            &pg_pairs == expected,
            "PostgreSQL pairs differ from the expected ones\n{context}"
        );
    }
}
