//! The service's one configuration: a TOML file, environment overrides on top, validated as a
//! whole at start-up.
//!
//! # Environment overrides
//!
//! Any key can be set or overridden by a variable named [`ENV_PREFIX`] (`CAMPAIGN_PUSH__`) plus
//! the key's path in upper case with `__` between levels: `kafka.bootstrap_servers` is
//! `CAMPAIGN_PUSH__KAFKA__BOOTSTRAP_SERVERS`, `postgres.tls.ca_file` is
//! `CAMPAIGN_PUSH__POSTGRES__TLS__CA_FILE`. Names are case-insensitive; values are strings,
//! converted to the key's type. Under `kafka.properties` the rest of the name is a librdkafka
//! property with `_` for `.`: `CAMPAIGN_PUSH__KAFKA__PROPERTIES__STATISTICS_INTERVAL_MS`. A
//! variable that names no key is an error. Other variables (e.g. `CAMPAIGN_PUSH_CACHE`, with one
//! underscore) are not configuration.
//!
//! Secrets (`kafka.security.password`, `postgres.password`) belong in the environment or in
//! files named by `…password_file`, never in a committed file. Relative paths are relative to the
//! working directory.
//!
//! # Validation
//!
//! Loading reports every problem at once, each naming its dotted key (and the variable that set
//! it), and never a secret's value: missing required keys, unknown keys, wrong types, values out of
//! range, keys that do not apply (e.g. a CA file with `PLAINTEXT`), and named files that cannot
//! be read.

mod duration;
mod kafka;
mod postgres;
mod secret;
mod source;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::{DurationError, parse_duration};
pub use kafka::{
    KafkaConfig, KafkaSecurity, PRODUCER_DEFAULTS, SERVICE_PROPERTIES, SaslLogin, SaslMechanism,
    default_transactional_id,
};
pub use postgres::{PgConnectError, PgConnection, PostgresConfig, PostgresTls, tls_connector};
pub use secret::Secret;
pub use source::ENV_PREFIX;

use source::{Source, duration, integer, one_of, readable_file, text};

/// Everything the service is told from outside. `Debug` shows no secret.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[kafka]`: brokers, topics, security, librdkafka pass-through properties.
    pub kafka: KafkaConfig,
    /// `[postgres]`: the database with the subscriber and feedback tables.
    pub postgres: PostgresConfig,
    /// `[pipeline]`: batching, sink retries, shutdown.
    pub pipeline: PipelineConfig,
    /// `[ledger]`: how long the delivery ledger remembers a campaign.
    pub ledger: LedgerConfig,
    /// `[subscribers]`: refreshing the in-memory subscriber table.
    pub subscribers: SubscribersConfig,
    /// `[guest]`: the transform component.
    pub guest: GuestConfig,
    /// `[http]`: metrics and health endpoint.
    pub http: HttpConfig,
    /// `[admin]`: the admin API (guest reload and rollback).
    pub admin: AdminConfig,
    /// `[log]`: log format and filter.
    pub log: LogConfig,
}

/// `[pipeline]`: batching, retries and shutdown of the event flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// `pipeline.batch_max_events` (default 2000, at least 1): the most input events handed to
    /// the guest in one call and committed in one output transaction.
    pub batch_max_events: usize,
    /// `pipeline.batch_linger` (default `"1ms"`, may be `"0ms"`): how long a batch that is not
    /// full waits for more events; bounds the latency added by batching. Under a backlog batches
    /// fill anyway; at 1,000 events/s `make bench`'s median latency was 22–27 ms at 1 ms and
    /// 27–36 ms at 5 ms, on the same stack and binary (2026-11-30).
    pub batch_linger: Duration,
    /// `pipeline.sink_retry_initial_backoff` (default `"100ms"`): the first wait before retrying
    /// a failed Kafka or PostgreSQL write; it doubles on each further failure.
    pub sink_retry_initial_backoff: Duration,
    /// `pipeline.sink_retry_max_backoff` (default `"10s"`, at least the initial backoff): the
    /// ceiling of that doubling.
    pub sink_retry_max_backoff: Duration,
    /// `pipeline.shutdown_timeout` (default `"10s"`): how long a stop signal waits for the batch
    /// in flight to be written before the service exits anyway (it is then re-read on restart).
    pub shutdown_timeout: Duration,
    /// `pipeline.batch_max_outputs` (default 20000, at least 1): the most output messages (and
    /// feedback rows) one batch decides; an event whose fan-out is larger is delivered in parts,
    /// over as many batches as it takes. Bounds a batch's memory and transaction sizes.
    pub batch_max_outputs: u32,
    /// `pipeline.batch_max_bytes` (default 33554432, i.e. 32 MiB, at least 1, at most 1 GiB):
    /// the same bound on the outputs' bytes (client ids and messages).
    pub batch_max_bytes: u64,
    /// `pipeline.stall_timeout` (default `"60s"`, at least `"1s"`): a batch in work for longer
    /// than this (a sink failing again and again) makes `/readyz` answer 503 with the last error.
    pub stall_timeout: Duration,
}

/// `[ledger]`: the delivery ledger (`campaign_push_ledger`), which remembers every
/// (campaign, client) pair delivered so that no pair is delivered twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// `ledger.retention` (default `"168h"`, a week): how long after a campaign's
    /// `adv_campaign_datetime_end` its pairs are kept. An event of a campaign that has ended is
    /// not delivered anyway; the margin covers a campaign whose end an event moves later, and
    /// clocks that disagree.
    pub retention: Duration,
    /// `ledger.purge_interval` (default `"1h"`, at least `"1s"`): how often the pairs of
    /// campaigns past their retention are deleted.
    pub purge_interval: Duration,
}

/// `[subscribers]`: the in-memory copy of `subscribers_restaurants`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribersConfig {
    /// `subscribers.resync_interval` (default `"5m"`, at least `"1s"`): how often the whole table
    /// is re-read, which bounds how long a change can go unseen if a notification is lost.
    pub resync_interval: Duration,
    /// `subscribers.notify_channel` (default `"campaign_push_subscribers"`): the channel the
    /// service `LISTEN`s on for change notifications; a plain lower-case SQL identifier.
    pub notify_channel: String,
}

/// `[guest]`: the transform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// `guest.path` (required): the transform's WebAssembly component (`.wasm`) file.
    pub path: PathBuf,
    /// `guest.call_timeout` (default `"2s"`): CPU time one batch call may take before it is
    /// interrupted; the batch is then split to find and dead-letter the event that stalls it.
    pub call_timeout: Duration,
    /// `guest.max_memory_mib` (default 256): linear memory one guest instance may grow to; a
    /// guest that asks for more traps, and the event that caused it is dead-lettered.
    pub max_memory_mib: usize,
    /// `guest.rollback_window` (default `"60s"`): how long after a swap the new guest is watched
    /// for a regression.
    pub rollback_window: Duration,
    /// `guest.rollback_margin_percent` (default 20): how many percentage points more of its
    /// events the new guest may reject than its predecessor did before it is rolled back.
    pub rollback_margin_percent: u32,
    /// `guest.rollback_min_events` (default 20): events the new guest must have seen before it
    /// is judged.
    pub rollback_min_events: u64,
    /// `guest.allowed_sha256` (default: any): the SHA-256s (hex) of the only components the
    /// service loads, at start-up or in a reload; any other is refused before it is compiled, and
    /// the guest in service keeps serving. A TOML array, or in the environment a comma-separated
    /// list. `make guest` and `make dist` print the hash of the component they build.
    pub allowed_sha256: Option<BTreeSet<String>>,
    /// `guest.engine` (default `"wasm"`): `"native"` runs the same transform compiled into the
    /// host instead of the component, for `make bench` to measure what the Wasm boundary costs.
    /// The component is still loaded and checked, but swaps do not take effect, and outputs say
    /// `native` as the guest's SHA-256. Not for production.
    pub engine: GuestEngine,
}

/// `guest.engine`: what transforms the batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEngine {
    /// The WebAssembly component of `guest.path`.
    Wasm,
    /// The same logic compiled into the host: for measuring only.
    Native,
}

/// `[http]`: the service's public endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// `http.listen` (default `"127.0.0.1:9464"`): address of `/metrics`, `/healthz` and
    /// `/readyz`, which change nothing and may be exposed to a scraper or a load balancer.
    pub listen: SocketAddr,
}

/// `[admin]`: the admin API, `POST /admin/reload` and `POST /admin/rollback`, on a listener of
/// its own so that exposing the public endpoint never exposes it.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `admin.listen` (default `"127.0.0.1:9465"`): the admin API's address; loopback unless
    /// the operators' tools run elsewhere.
    pub listen: SocketAddr,
    /// The bearer token every admin request must carry (`Authorization: Bearer <token>`): the
    /// content of the file named by `admin.token_file`, without its trailing line break, at least
    /// 16 characters. The file must not be readable by other users. Without the key the admin API
    /// is not served (SIGHUP and the guest file's watch still reload).
    pub token: Option<Secret>,
}

/// The shortest admin token accepted: guessing 16 random characters is out of reach.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// `[log]`: what is logged, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `log.format` (default `"human"`): `"human"` for terminals, `"json"` (one object per line)
    /// for log collectors.
    pub format: LogFormat,
    /// `log.filter` (default `"info"`): a `tracing` filter such as `"info,campaign_push=debug"`.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key, e.g. `kafka.security.ca_file`.
    pub key: String,
    /// The environment variable that set the key, if one did.
    pub env_var: Option<String>,
    /// What is wrong. Never contains a secret.
    pub message: String,
}

impl Problem {
    fn new(key: &str, env_var: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            env_var: env_var.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.env_var {
            Some(var) => write!(f, "{} (set by {var}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Why the service cannot start with this configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration is not valid TOML (line {line}, column {column}): {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid configuration:{}", list(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The individual problems (empty for a file that could not be read or parsed).
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid(problems) => problems,
            Self::Read { .. } | Self::Syntax { .. } => &[],
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

impl Config {
    /// Reads the file at `path`, then applies the process environment's overrides.
    pub fn from_file_and_env(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let env = std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        });
        Self::load(Some(&text), env)
    }

    /// Builds and validates the configuration from TOML text (or none) and environment variables
    /// (all of them may be passed; only `CAMPAIGN_PUSH__…` ones are read).
    pub fn load(
        toml_text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let tree = match toml_text {
            None => toml::Table::new(),
            Some(text) => text
                .parse::<toml::Table>()
                .map_err(|e| syntax_error(text, &e))?,
        };
        let mut src = Source::new(tree);
        src.apply_env(env);
        let config = Self {
            kafka: KafkaConfig::read(&mut src),
            postgres: PostgresConfig::read(&mut src),
            pipeline: PipelineConfig::read(&mut src),
            ledger: LedgerConfig {
                retention: src.or(
                    "ledger.retention",
                    Duration::from_secs(7 * 24 * 3600),
                    duration(Duration::ZERO),
                ),
                purge_interval: src.or(
                    "ledger.purge_interval",
                    Duration::from_secs(3600),
                    duration(Duration::from_secs(1)),
                ),
            },
            subscribers: SubscribersConfig::read(&mut src),
            guest: GuestConfig {
                path: src.req("guest.path", readable_file).unwrap_or_default(),
                call_timeout: src.or(
                    "guest.call_timeout",
                    Duration::from_secs(2),
                    duration(Duration::from_millis(10)),
                ),
                max_memory_mib: src.or("guest.max_memory_mib", 256, integer(1usize)),
                rollback_window: src.or(
                    "guest.rollback_window",
                    Duration::from_secs(60),
                    duration(Duration::from_secs(1)),
                ),
                rollback_margin_percent: src.or("guest.rollback_margin_percent", 20, integer(0u32)),
                rollback_min_events: src.or("guest.rollback_min_events", 20, integer(1u64)),
                allowed_sha256: src.opt("guest.allowed_sha256", sha256_list).ok().flatten(),
                engine: src.or(
                    "guest.engine",
                    GuestEngine::Wasm,
                    one_of(&[("wasm", GuestEngine::Wasm), ("native", GuestEngine::Native)]),
                ),
            },
            http: HttpConfig::read(&mut src),
            admin: AdminConfig::read(&mut src),
            log: LogConfig::read(&mut src),
        };
        let problems = src.finish();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// Locates a TOML error without quoting the file, which may hold a password.
fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |span| span.start).min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Syntax {
        line,
        column,
        message: error.message().to_owned(),
    }
}

impl PipelineConfig {
    fn read(src: &mut Source) -> Self {
        let ms = Duration::from_millis;
        let initial_key = "pipeline.sink_retry_initial_backoff";
        let max_key = "pipeline.sink_retry_max_backoff";
        let initial = src.or(initial_key, ms(100), duration(ms(1)));
        let max = src.or(max_key, ms(10_000), duration(ms(1)));
        if max < initial {
            src.problem(
                max_key,
                format!("{max:?} is shorter than {initial_key} ({initial:?})"),
            );
        }
        src.forbid(
            "pipeline.max_outputs_per_event",
            "any more: an event of any fan-out is delivered, in parts of at most \
             pipeline.batch_max_outputs",
        );
        Self {
            batch_max_events: src.or("pipeline.batch_max_events", 2000, integer(1usize)),
            batch_linger: src.or("pipeline.batch_linger", ms(1), duration(Duration::ZERO)),
            sink_retry_initial_backoff: initial,
            sink_retry_max_backoff: max,
            shutdown_timeout: src.or("pipeline.shutdown_timeout", ms(10_000), duration(ms(1))),
            batch_max_outputs: src.or("pipeline.batch_max_outputs", 20_000, integer(1u32)),
            batch_max_bytes: src.or("pipeline.batch_max_bytes", 32 << 20, at_most_1_gib),
            stall_timeout: src.or("pipeline.stall_timeout", ms(60_000), duration(ms(1_000))),
        }
    }
}

/// `pipeline.batch_max_bytes`: the guest's packed lists have 32-bit offsets, so a batch's outputs
/// stay well under 4 GiB.
fn at_most_1_gib(value: toml::Value) -> Result<u64, String> {
    let bytes = integer(1u64)(value)?;
    if bytes > 1 << 30 {
        return Err(format!("{bytes} is more than 1073741824 (1 GiB)"));
    }
    Ok(bytes)
}

impl SubscribersConfig {
    fn read(src: &mut Source) -> Self {
        Self {
            resync_interval: src.or(
                "subscribers.resync_interval",
                Duration::from_secs(300),
                duration(Duration::from_secs(1)),
            ),
            notify_channel: src.or(
                "subscribers.notify_channel",
                "campaign_push_subscribers".into(),
                sql_identifier,
            ),
        }
    }
}

impl HttpConfig {
    fn read(src: &mut Source) -> Self {
        let default = SocketAddr::from(([127, 0, 0, 1], 9464));
        let listen = src.or("http.listen", default, socket_address);
        Self { listen }
    }
}

impl AdminConfig {
    fn read(src: &mut Source) -> Self {
        const TOKEN_FILE: &str = "admin.token_file";
        let listen = src.or(
            "admin.listen",
            SocketAddr::from(([127, 0, 0, 1], 9465)),
            socket_address,
        );
        let token = match src.opt(TOKEN_FILE, readable_file) {
            Ok(Some(path)) => match read_token(&path) {
                Ok(token) => Some(token),
                Err(message) => {
                    src.problem(TOKEN_FILE, message);
                    None
                }
            },
            Ok(None) | Err(_) => None,
        };
        Self { listen, token }
    }
}

/// The admin token in `path`, refused if others may read it or it is too short to resist
/// guessing. No message quotes the file's content.
fn read_token(path: &Path) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        return Err(format!(
            "{shown} is open to other users (mode {:o}); `chmod o-rwx` it",
            mode & 0o777
        ));
    }
    let content =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown} as text: {e}"))?;
    let token = content.strip_suffix('\n').unwrap_or(&content);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.chars().any(char::is_whitespace) {
        return Err(format!("{shown}: the token contains white space"));
    }
    if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
        return Err(format!(
            "{shown}: the token is shorter than {MIN_ADMIN_TOKEN_CHARS} characters"
        ));
    }
    Ok(Secret::new(token))
}

/// A non-empty set of SHA-256s: a TOML array of strings, or one string of comma-separated hashes
/// (as an environment variable gives it). Stored in lowercase, as the service prints them.
fn sha256_list(value: toml::Value) -> Result<BTreeSet<String>, String> {
    let items: Vec<String> = match value {
        toml::Value::Array(items) => items.into_iter().map(text).collect::<Result<_, _>>()?,
        other => text(other)?
            .split(',')
            .map(|item| item.trim().to_owned())
            .filter(|item| !item.is_empty())
            .collect(),
    };
    if items.is_empty() {
        return Err("an empty list would refuse every guest; remove the key to allow any".into());
    }
    items
        .into_iter()
        .map(|item| {
            let hash = item.to_ascii_lowercase();
            if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(hash)
            } else {
                Err(format!("{item:?} is not a SHA-256 (64 hexadecimal digits)"))
            }
        })
        .collect()
}

/// A `host:port` address such as `"127.0.0.1:9464"`.
fn socket_address(value: toml::Value) -> Result<SocketAddr, String> {
    let s = text(value)?;
    s.parse()
        .map_err(|_| format!("{s:?} is not an address such as \"127.0.0.1:9464\""))
}

impl LogConfig {
    fn read(src: &mut Source) -> Self {
        let formats = &[("human", LogFormat::Human), ("json", LogFormat::Json)];
        Self {
            format: src.or("log.format", LogFormat::Human, one_of(formats)),
            filter: src.or("log.filter", "info".into(), |value| {
                let filter = text(value)?;
                tracing_subscriber::EnvFilter::builder()
                    .parse(&filter)
                    .map_err(|e| format!("{filter:?} is not a tracing filter: {e}"))?;
                Ok(filter)
            }),
        }
    }
}

/// A name `LISTEN` accepts unquoted, so that it can be spliced into SQL safely.
fn sql_identifier(value: toml::Value) -> Result<String, String> {
    let name = text(value)?;
    let mut chars = name.chars();
    let legal = name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !legal {
        return Err(format!(
            "{name:?} is not a plain SQL identifier (a-z, 0-9 and _, not starting with a digit, \
             at most 63 characters)"
        ));
    }
    Ok(name)
}
