//! The `[kafka]` section: brokers, topics, security, and the librdkafka properties they become.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::ClientConfig;

use super::secret::Secret;
use super::source::{self, Source, ca_file, one_of, text};

/// librdkafka properties the service sets itself, from `[kafka]` keys or because exactly-once
/// delivery depends on them, each with why; `kafka.properties` may not name them.
pub const SERVICE_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.bootstrap_servers"),
    ("metadata.broker.list", "set kafka.bootstrap_servers"),
    ("group.id", "set kafka.consumer_group"),
    (
        "group.instance.id",
        "set kafka.transactional_id (the consumer's static membership)",
    ),
    ("transactional.id", "set kafka.transactional_id"),
    (
        "enable.idempotence",
        "the transactional producer needs it on",
    ),
    (
        "isolation.level",
        "read_committed, so that events of aborted transactions never reach the service",
    ),
    (
        "enable.auto.commit",
        "offsets are committed only inside the output transaction",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed only inside the output transaction",
    ),
    (
        "auto.offset.reset",
        "earliest, so that a new consumer group starts at the first event and skips none",
    ),
];

/// Producer properties the service sets unless `kafka.properties` names them: defaults tuned
/// for this workload, not conditions of its guarantees.
/// - `linger.ms` 0: a batch enqueues all its messages at once and then waits for them, so lingering
///   only delays the last request; at 1,000 events/s it cost a small batch 5 ms and more (the
///   Kafka stage's median went from 27 to 12 ms with `make bench`'s latency phase).
/// - `retry.backoff.ms` 1: a transaction that starts while the previous one's markers are being
///   written is refused with CONCURRENT_TRANSACTIONS and retried after this backoff. The markers
///   take a few ms here, so every backoff step is waited in full: librdkafka's 100 ms showed as
///   100 ms steps in the latency tail, and at 10 ms a small transaction took 14.5 ms where it takes
///   6 at 1 ms (`make bench`'s "one small transaction"). Produce retries back off exponentially
///   from it, up to `retry.backoff.max.ms`.
/// - lz4 because a batch's messages are alike (one event's offer to many clients): the broker then
///   stores, and TLS encrypts, a fraction of the bytes; `make bench-pipeline` measured 28% less
///   time in the Kafka stage.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("linger.ms", "0"),
    ("retry.backoff.ms", "1"),
    ("compression.type", "lz4"),
];

/// librdkafka's default `message.max.bytes`, which the producer applies unless
/// `kafka.properties` sets it.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// `campaign-push-<host name>`: distinct for hosts with distinct names, stable across restarts.
pub fn default_transactional_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        "campaign-push-0".to_owned()
    } else {
        format!("campaign-push-{host}")
    }
}

/// Prefixes of librdkafka's security properties, which only `[kafka.security]` may set, so that
/// there is one place to read how the service authenticates.
const SECURITY_PREFIXES: &[&str] = &[
    "security.",
    "sasl.",
    "ssl.",
    "ssl_",
    "enable.ssl.",
    "enable.sasl.",
    "https.",
];

/// `[kafka]`: where the brokers are, which topics the service reads and writes, and how it logs in.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `kafka.bootstrap_servers` (required): comma-separated `host:port` list used to discover the
    /// cluster, e.g. `"broker.example.net:9091"`.
    pub bootstrap_servers: String,
    /// `kafka.input_topic` (required): the topic the campaign events are consumed from.
    pub input_topic: String,
    /// `kafka.output_topic` (required): the topic the per-client notification messages go to.
    pub output_topic: String,
    /// `kafka.dead_letter_topic` (required): where bad events go, with the reason and their origin.
    pub dead_letter_topic: String,
    /// `kafka.consumer_group` (default `"campaign-push"`): the consumer group whose committed
    /// offsets say how far the input topic has been processed.
    pub consumer_group: String,
    /// `kafka.transactional_id` (default `"campaign-push-<host name>"`): the output producer is
    /// transactional, and the id is also the consumer's static group membership
    /// (`group.instance.id`). A restarted instance keeps its id, so that it fences off its
    /// predecessor; every concurrently running instance needs its own, which the default gives
    /// hosts with distinct names. Two live instances with one id are refused at start-up.
    pub transactional_id: String,
    /// `[kafka.security]`: TLS and login, see [`KafkaSecurity`].
    pub security: KafkaSecurity,
    /// `[kafka.properties]` (default empty): further librdkafka properties, passed unchanged to
    /// both the consumer and the producer, e.g. `"statistics.interval.ms" = "5000"`. Properties in
    /// [`SERVICE_PROPERTIES`] and security properties are refused; [`PRODUCER_DEFAULTS`] may be
    /// overridden.
    pub properties: BTreeMap<String, String>,
}

/// How the clients reach and authenticate to the brokers: `[kafka.security]`.
///
/// Keys that do not apply to the chosen `protocol` are refused, so a validated value is always
/// one of these four complete shapes.
#[derive(Debug, Clone)]
pub enum KafkaSecurity {
    /// `protocol = "PLAINTEXT"`: no TLS, no login. For a trusted local network only.
    Plaintext,
    /// `protocol = "SSL"`: TLS, broker certificate and host name verified against `ca_file`.
    Ssl { ca_file: PathBuf },
    /// `protocol = "SASL_PLAINTEXT"`: login without TLS (with `PLAIN` the password crosses the
    /// network readable).
    SaslPlaintext(SaslLogin),
    /// `protocol = "SASL_SSL"`: TLS verified against `ca_file`, then login. Production uses this.
    SaslSsl { ca_file: PathBuf, login: SaslLogin },
}

/// The SASL part of `[kafka.security]`.
#[derive(Debug, Clone)]
pub struct SaslLogin {
    /// `kafka.security.mechanism` (required for SASL): production uses `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    /// `kafka.security.username` (required for SASL).
    pub username: String,
    /// `kafka.security.password`, normally set as `CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD`, or
    /// the content of the file named by `kafka.security.password_file` (without its trailing line
    /// break). Exactly one of the two is required for SASL.
    pub password: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    ScramSha256,
    ScramSha512,
    Plain,
}

impl SaslMechanism {
    const NAMES: &[(&str, Self)] = &[
        ("SCRAM-SHA-256", Self::ScramSha256),
        ("SCRAM-SHA-512", Self::ScramSha512),
        ("PLAIN", Self::Plain),
    ];

    /// The name librdkafka's `sasl.mechanisms` expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::Plain => "PLAIN",
        }
    }
}

impl KafkaConfig {
    /// The configuration every client of the service starts from: bootstrap servers, security
    /// and the pass-through properties. The consumer adds `group.id` and its offset settings, the
    /// producer `transactional.id`.
    /// The largest message the producer sends (key, value and headers): librdkafka's
    /// `message.max.bytes` as `kafka.properties` sets it, or its default.
    pub fn message_max_bytes(&self) -> usize {
        self.properties
            .get("message.max.bytes")
            .and_then(|value| value.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config.set("bootstrap.servers", &self.bootstrap_servers);
        self.security.apply(&mut config);
        config
    }

    pub(super) fn read(src: &mut Source) -> Self {
        let bootstrap_servers = src
            .req("kafka.bootstrap_servers", bootstrap_servers)
            .unwrap_or_default();
        let input_topic = src.req("kafka.input_topic", topic).unwrap_or_default();
        let output_topic = src.req("kafka.output_topic", topic).unwrap_or_default();
        let dead_letter_topic = src
            .req("kafka.dead_letter_topic", topic)
            .unwrap_or_default();
        let topics = [
            ("kafka.input_topic", &input_topic),
            ("kafka.output_topic", &output_topic),
            ("kafka.dead_letter_topic", &dead_letter_topic),
        ];
        for (i, (key, name)) in topics.iter().enumerate() {
            if let Some((other, _)) = topics[..i].iter().find(|(_, n)| !n.is_empty() && n == name) {
                src.problem(key, format!("must differ from {other} (both are {name:?})"));
            }
        }
        Self {
            consumer_group: src.or("kafka.consumer_group", "campaign-push".into(), text),
            transactional_id: src.or("kafka.transactional_id", default_transactional_id(), text),
            security: KafkaSecurity::read(src),
            properties: read_properties(src),
            bootstrap_servers,
            input_topic,
            output_topic,
            dead_letter_topic,
        }
    }
}

impl KafkaSecurity {
    /// Sets librdkafka's security properties: the one place where this mapping is made.
    pub fn apply(&self, config: &mut ClientConfig) {
        let (protocol, ca_file, login) = match self {
            Self::Plaintext => ("PLAINTEXT", None, None),
            Self::Ssl { ca_file } => ("SSL", Some(ca_file), None),
            Self::SaslPlaintext(login) => ("SASL_PLAINTEXT", None, Some(login)),
            Self::SaslSsl { ca_file, login } => ("SASL_SSL", Some(ca_file), Some(login)),
        };
        config.set("security.protocol", protocol);
        if let Some(ca_file) = ca_file {
            config
                .set("ssl.ca.location", ca_file.display().to_string())
                .set("ssl.endpoint.identification.algorithm", "https");
        }
        if let Some(login) = login {
            config
                .set("sasl.mechanisms", login.mechanism.as_str())
                .set("sasl.username", &login.username)
                .set("sasl.password", login.password.expose());
        }
    }

    fn read(src: &mut Source) -> Self {
        const PROTOCOL: &str = "kafka.security.protocol";
        const CA_FILE: &str = "kafka.security.ca_file";
        const LOGIN: [&str; 4] = [
            "kafka.security.mechanism",
            "kafka.security.username",
            "kafka.security.password",
            "kafka.security.password_file",
        ];
        let choices = &[
            ("PLAINTEXT", Protocol::Plaintext),
            ("SSL", Protocol::Ssl),
            ("SASL_SSL", Protocol::SaslSsl),
            ("SASL_PLAINTEXT", Protocol::SaslPlaintext),
        ];
        let protocol = match src.opt(PROTOCOL, one_of(choices)) {
            Ok(Some(protocol)) => protocol,
            missing_or_invalid => {
                if let Ok(None) = missing_or_invalid {
                    src.problem(
                        PROTOCOL,
                        "required key is missing; one of \"PLAINTEXT\", \"SSL\", \"SASL_SSL\", \
                         \"SASL_PLAINTEXT\"",
                    );
                }
                for key in std::iter::once(CA_FILE).chain(LOGIN) {
                    src.skip(key);
                }
                return Self::Plaintext;
            }
        };
        let (name, _) = choices
            .iter()
            .find(|(_, p)| *p == protocol)
            .expect("listed");
        let unused = format!("with protocol {name}");
        let ca_file = match protocol {
            Protocol::Ssl | Protocol::SaslSsl => src.req(CA_FILE, ca_file).unwrap_or_default(),
            Protocol::Plaintext | Protocol::SaslPlaintext => {
                src.forbid(CA_FILE, &unused);
                PathBuf::new()
            }
        };
        if let Protocol::Plaintext | Protocol::Ssl = protocol {
            for key in LOGIN {
                src.forbid(key, &unused);
            }
        }
        match protocol {
            Protocol::Plaintext => Self::Plaintext,
            Protocol::Ssl => Self::Ssl { ca_file },
            Protocol::SaslPlaintext => Self::SaslPlaintext(SaslLogin::read(src, name)),
            Protocol::SaslSsl => Self::SaslSsl {
                ca_file,
                login: SaslLogin::read(src, name),
            },
        }
    }
}

impl SaslLogin {
    fn read(src: &mut Source, protocol: &str) -> Self {
        let mechanism = src
            .req("kafka.security.mechanism", one_of(SaslMechanism::NAMES))
            .unwrap_or(SaslMechanism::ScramSha512);
        let username = src.req("kafka.security.username", text).unwrap_or_default();
        let password = source::password(src, "kafka.security").unwrap_or_else(|| {
            src.problem(
                "kafka.security.password",
                format!(
                    "required with protocol {protocol}: set it (e.g. as \
                     CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD) or kafka.security.password_file"
                ),
            );
            Secret::new("")
        });
        Self {
            mechanism,
            username,
            password,
        }
    }
}

/// `kafka.security.protocol` before the keys that go with it have been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

fn read_properties(src: &mut Source) -> BTreeMap<String, String> {
    let mut properties = src.string_table("kafka.properties");
    properties.retain(|name, _| {
        let lower = name.to_ascii_lowercase();
        let refusal = if let Some((_, why)) = SERVICE_PROPERTIES.iter().find(|(n, _)| *n == lower) {
            format!("is set by the service itself: {why}")
        } else if SECURITY_PREFIXES.iter().any(|p| lower.starts_with(p)) {
            "is a security setting; use [kafka.security]".to_owned()
        } else {
            return true;
        };
        src.problem(&format!("kafka.properties.{name}"), refusal);
        false
    });
    properties
}

/// A comma-separated list of `host:port` entries.
fn bootstrap_servers(value: toml::Value) -> Result<String, String> {
    let list = text(value)?;
    if list.split(',').any(|entry| entry.trim().is_empty()) {
        return Err(format!(
            "{list:?} has an empty entry; write host:port[,host:port...]"
        ));
    }
    Ok(list)
}

/// A legal Kafka topic name: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn topic(value: toml::Value) -> Result<String, String> {
    let name = text(value)?;
    let legal = name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !legal {
        return Err(format!(
            "{name:?} is not a legal topic name (1 to 249 of A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(name)
}
