//! Helpers shared by the integration tests that use the local stack (`make up`): its settings
//! from `.stack/local.env`, running external commands (kcat, psql, openssl) with a deadline, and
//! throw-away Kafka topics.
//!
//! Passwords never appear in a panic message: commands are described with their secrets
//! redacted (a `Command`'s `Debug` output would show them, environment included).
#![allow(dead_code)] // each test file uses its own subset

pub mod guests;
pub mod service;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;

/// How long any single external command may run before the test fails.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// The repository's root folder (the workspace root, parent of `host/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("CARGO_MANIFEST_DIR has a parent")
        .to_path_buf()
}

/// The local stack's settings: `$STACK_ENV_FILE` if set, else `<repo root>/.stack/local.env`.
pub struct StackEnv {
    path: PathBuf,
    vars: HashMap<String, String>,
}

impl StackEnv {
    pub fn load() -> Self {
        let path = std::env::var_os("STACK_ENV_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".stack/local.env"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the local stack's settings {}: {e}. Run `make up` first.",
                path.display()
            )
        });
        Self {
            vars: parse_env_file(&text),
            path,
        }
    }

    /// The value of `key`; panics with a hint when the env file lacks it.
    pub fn get(&self, key: &str) -> &str {
        self.vars.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "{} has no {key}; it is written by `make up` (run `make reset && make up` if it is from an older version)",
                self.path.display()
            )
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database the tests write into: `make up` makes it beside the service's `de`, with the
    /// same schema and sample rows, so that a user's walkthrough after `make test` finds in `de`
    /// only what the user put there.
    pub fn test_database(&self) -> &str {
        self.get("PGDATABASE_TESTS")
    }
}

/// `KEY=VALUE` lines; blank lines and `#` comments are skipped.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// What a finished command left behind.
pub struct Finished {
    /// The command line, secrets redacted: for messages.
    pub what: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Finished {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Panics, showing the output, unless the command exited with status 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "`{}` failed ({})\n--- stdout:\n{}\n--- stderr:\n{}",
            self.what,
            self.status,
            self.stdout_text(),
            self.stderr_text()
        );
        self
    }

    /// Panics, showing the output, if the command exited with status 0.
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        assert!(
            !self.status.success(),
            "`{}` succeeded but was expected to fail\n--- stdout:\n{}\n--- stderr:\n{}",
            self.what,
            self.stdout_text(),
            self.stderr_text()
        );
        self
    }
}

/// The command line with the value of anything that looks like a password replaced.
pub fn describe(cmd: &Command) -> String {
    let redact = |arg: &OsStr| {
        let arg = arg.to_string_lossy();
        match arg.find("password=") {
            Some(at) => format!("{}password=<redacted>", &arg[..at]),
            None => arg.into_owned(),
        }
    };
    std::iter::once(redact(cmd.get_program()))
        .chain(cmd.get_args().map(redact))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with `stdin` as its input, capturing stdout and stderr, and fails the test if it
/// has not exited within `deadline` (the process is killed first). Polls; never a fixed sleep.
#[track_caller]
pub fn run_with_deadline(cmd: &mut Command, stdin: Option<&[u8]>, deadline: Duration) -> Finished {
    let what = describe(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start `{what}`: {e} (is it installed? `make up` installs it)")
    });

    // Feed stdin and drain both pipes on their own threads, so a chatty child never blocks.
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let bytes = bytes.to_vec();
        thread::spawn(move || {
            // A child that exits early closes its end: that is its business, not an error here.
            let _ = pipe.write_all(&bytes);
        })
    });
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));

    let Some(status) = wait_with_deadline(&mut child, deadline) else {
        let _ = child.kill();
        let _ = child.wait();
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        panic!(
            "`{what}` did not finish within {deadline:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        )
    };
    if let Some(writer) = writer {
        writer.join().expect("stdin writer thread");
    }
    Finished {
        what,
        status,
        stdout: stdout.join().expect("stdout reader thread"),
        stderr: stderr.join().expect("stderr reader thread"),
    }
}

/// `run_with_deadline` with the default deadline.
#[track_caller]
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Finished {
    run_with_deadline(cmd, stdin, COMMAND_DEADLINE)
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if started.elapsed() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20)); // poll interval
    }
}

/// The number in environment variable `key`, if it is set; panics naming the key if it is not a
/// number (tests and benchmarks take their knobs, e.g. `CHAOS_CYCLES`, this way).
pub fn env_number<T: std::str::FromStr>(key: &str) -> Option<T> {
    let value = std::env::var(key).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{key}={value} is not a number")),
    )
}

/// Polls `check` until it returns `Some`, failing the test after `deadline`.
#[track_caller]
pub fn poll_until<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "{what}: not reached within {deadline:?}"
        );
        thread::sleep(Duration::from_millis(100)); // poll interval
    }
}

/// A name no other test run uses: prefix, process id and a timestamp.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The arguments of the users' kcat commands (see the contract) for the local SASL_SSL listener,
/// with the given password and CA file.
pub fn kcat_sasl_args(env: &StackEnv, password: &str, ca_file: &str) -> Vec<String> {
    [
        "-b".to_owned(),
        env.get("KAFKA_SASL_BOOTSTRAP").to_owned(),
        "-X".to_owned(),
        "security.protocol=SASL_SSL".to_owned(),
        "-X".to_owned(),
        "sasl.mechanisms=SCRAM-SHA-512".to_owned(),
        "-X".to_owned(),
        format!("sasl.username={}", env.get("KAFKA_SASL_USERNAME")),
        "-X".to_owned(),
        format!("sasl.password={password}"),
        "-X".to_owned(),
        format!("ssl.ca.location={ca_file}"),
    ]
    .into()
}

/// A `kcat` command that ignores any kcat configuration file of the person running the tests.
pub fn kcat() -> Command {
    let mut cmd = Command::new("kcat");
    cmd.env_remove("KCAT_CONFIG")
        .env("HOME", std::env::temp_dir());
    cmd
}

/// A `psql` command for the tests' database ([`StackEnv::test_database`]); see [`psql_in`].
pub fn psql(env: &StackEnv, extra: &str, sql: &str) -> Command {
    psql_in(env, env.test_database(), extra, sql)
}

/// A `psql` command for `database` over TCP, as the service user, with the password from the env
/// file and `extra` appended to the connection string (e.g. sslmode). Output is unaligned, tuples
/// only, `|`-separated; libpq variables of the caller are ignored.
pub fn psql_in(env: &StackEnv, database: &str, extra: &str, sql: &str) -> Command {
    let conninfo = format!(
        "host={} port={} dbname={database} user={} connect_timeout=10 {extra}",
        env.get("PGHOST"),
        env.get("PGPORT"),
        env.get("PGUSER"),
    );
    let mut cmd = Command::new("psql");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGPASSWORD", env.get("PGPASSWORD"))
        .args(["-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1"])
        .arg(conninfo)
        .args(["-c", sql]);
    cmd
}

/// A self-signed CA that is not the local stack's, for trust-failure tests.
#[track_caller]
pub fn foreign_ca(dir: &Path) -> PathBuf {
    let cert = dir.join("foreign-ca.pem");
    run(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args([
                OsStr::new("-keyout"),
                dir.join("foreign-ca.key").as_os_str(),
                OsStr::new("-out"),
                cert.as_os_str(),
                OsStr::new("-days"),
                OsStr::new("1"),
                OsStr::new("-subj"),
                OsStr::new("/CN=not the local stack CA"),
            ]),
        None,
    )
    .assert_success();
    cert
}

/// Sets its flag when dropped, also when the thread unwinds: the way to stop a helper thread of a
/// `std::thread::scope` that runs until told to, so that a failing test does not wait for it
/// forever.
pub struct SetOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A Kafka topic that exists for one test only: created over the PLAINTEXT listener with one
/// partition (so that reading it back is in produce order) and deleted when dropped.
pub struct TempTopic {
    pub name: String,
    pub partitions: i32,
    admin: AdminClient<DefaultClientContext>,
}

impl TempTopic {
    pub fn create(env: &StackEnv, prefix: &str) -> Self {
        Self::with_partitions(env, prefix, 1)
    }

    pub fn with_partitions(env: &StackEnv, prefix: &str, partitions: i32) -> Self {
        let name = unique_name(prefix);
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", env.get("KAFKA_PLAINTEXT_BOOTSTRAP"))
            .create()
            .expect("admin client for the PLAINTEXT listener");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = futures::executor::block_on(admin.create_topics(
            &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
            &opts,
        ))
        .unwrap_or_else(|e| panic!("creating topic {name}: {e} (is the stack up? `make up`)"));
        for result in results {
            if let Err((topic, code)) = result {
                panic!("creating topic {topic}: {code}");
            }
        }
        // Creation returns once the controller has it; wait until the broker serves it too.
        poll_until(
            &format!("topic {name} has a leader"),
            Duration::from_secs(30),
            || {
                let metadata = admin
                    .inner()
                    .fetch_metadata(Some(&name), Duration::from_secs(5))
                    .ok()?;
                let topic = metadata.topics().iter().find(|t| t.name() == name)?;
                (topic.error().is_none()
                    && topic.partitions().len() == partitions as usize
                    && topic.partitions().iter().all(|p| p.leader() >= 0))
                .then_some(())
            },
        );
        Self {
            name,
            partitions,
            admin,
        }
    }
}

impl TempTopic {
    /// Sets a configuration property of the topic, e.g. a lower `max.message.bytes`.
    pub fn set_config(&self, name: &str, value: &str) {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let change = AlterConfig::new(ResourceSpecifier::Topic(&self.name)).set(name, value);
        let results = futures::executor::block_on(self.admin.alter_configs(&[change], &opts))
            .unwrap_or_else(|e| panic!("altering topic {}: {e}", self.name));
        for result in results {
            if let Err((resource, code)) = result {
                panic!("altering {resource:?}: {code}");
            }
        }
    }
}

impl Drop for TempTopic {
    fn drop(&mut self) {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        match futures::executor::block_on(self.admin.delete_topics(&[&self.name], &opts)) {
            Ok(results) => {
                for result in results {
                    if let Err((topic, code)) = result {
                        eprintln!("note: could not delete test topic {topic}: {code}");
                    }
                }
            }
            Err(e) => eprintln!("note: could not delete test topic {}: {e}", self.name),
        }
    }
}
