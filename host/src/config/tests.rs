//! Loading, validation and the client configurations derived from a [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::{X509Builder, X509NameBuilder};
use tempfile::TempDir;

use super::*;

const KAFKA_PASSWORD: &str = "kafka-pass-Zq81";
const PG_PASSWORD: &str = "pg-pass-Wx47";

/// Files a valid configuration names: a CA certificate, a guest, and password files.
struct Files {
    _dir: TempDir,
    ca: PathBuf,
    guest: PathBuf,
    kafka_password: PathBuf,
    pg_password: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    Files {
        ca: write("ca.pem", &ca_pem()),
        guest: write("guest.wasm", b"\0asm"),
        kafka_password: write("kafka.password", format!("{KAFKA_PASSWORD}\n").as_bytes()),
        pg_password: write("pg.password", format!("{PG_PASSWORD}\r\n").as_bytes()),
        _dir: dir,
    }
}

/// A self-signed CA certificate, PEM.
fn ca_pem() -> Vec<u8> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "config test CA").unwrap();
    let name = name.build();
    let mut cert = X509Builder::new().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    cert.build().to_pem().unwrap()
}

fn quoted(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// The required keys only, PLAINTEXT Kafka; the PostgreSQL password comes from `env()`.
fn minimal(f: &Files) -> String {
    format!(
        r#"
        [kafka]
        bootstrap_servers = "k1:9092"
        input_topic = "in"
        output_topic = "out"
        dead_letter_topic = "dead"
        security = {{ protocol = "PLAINTEXT" }}

        [postgres]
        host = "db"
        user = "svc"

        [guest]
        path = {}
        "#,
        quoted(&f.guest)
    )
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([(
            "CAMPAIGN_PUSH__POSTGRES__PASSWORD".to_owned(),
            PG_PASSWORD.to_owned(),
        )])
        .collect()
}

fn load(toml: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load(Some(toml), env(pairs))
}

/// The problems of a failed load, as `key: message` lines (with the variable, if any).
fn problems(result: Result<Config, ConfigError>) -> Vec<String> {
    match result {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

fn assert_problem(result: Result<Config, ConfigError>, expected: &str) {
    let found = problems(result);
    assert!(
        found.iter().any(|p| p == expected),
        "no problem {expected:?} in {found:#?}"
    );
}

#[test]
fn defaults_fill_everything_optional() {
    let f = files();
    let config = load(&minimal(&f), &[]).unwrap();
    let kafka = &config.kafka;
    assert_eq!(kafka.bootstrap_servers, "k1:9092");
    assert_eq!(
        (
            &*kafka.input_topic,
            &*kafka.output_topic,
            &*kafka.dead_letter_topic
        ),
        ("in", "out", "dead")
    );
    assert_eq!(kafka.consumer_group, "campaign-push");
    assert_eq!(kafka.transactional_id, default_transactional_id());
    assert!(kafka.transactional_id.starts_with("campaign-push-"));
    assert!(matches!(kafka.security, KafkaSecurity::Plaintext));
    assert!(kafka.properties.is_empty());

    let pg = &config.postgres;
    assert_eq!(
        (&*pg.host, pg.port, &*pg.database, &*pg.user),
        ("db", 5432, "de", "svc")
    );
    assert_eq!(pg.password.expose(), PG_PASSWORD);
    assert_eq!(pg.tls, PostgresTls::Prefer, "TLS when offered, by default");
    assert_eq!(pg.connect_timeout, Duration::from_secs(10));

    assert_eq!(
        config.pipeline,
        PipelineConfig {
            batch_max_events: 2000,
            batch_linger: Duration::from_millis(1),
            sink_retry_initial_backoff: Duration::from_millis(100),
            sink_retry_max_backoff: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            batch_max_outputs: 20_000,
            batch_max_bytes: 32 << 20,
            stall_timeout: Duration::from_secs(60),
        }
    );
    assert_eq!(
        config.ledger,
        LedgerConfig {
            retention: Duration::from_secs(7 * 24 * 3600),
            purge_interval: Duration::from_secs(3600),
        }
    );
    assert_eq!(
        config.subscribers,
        SubscribersConfig {
            resync_interval: Duration::from_secs(300),
            notify_channel: "campaign_push_subscribers".into(),
        }
    );
    assert_eq!(config.guest.path, f.guest);
    assert_eq!(config.http.listen.to_string(), "127.0.0.1:9464");
    assert_eq!(
        config.log,
        LogConfig {
            format: LogFormat::Human,
            filter: "info".into()
        }
    );
}

#[test]
fn file_values_replace_defaults() {
    let f = files();
    let toml = format!(
        "{}\n[pipeline]\nbatch_max_events = 7\nbatch_linger = \"0ms\"\n\
         [log]\nformat = \"json\"\nfilter = \"warn,campaign_push=debug\"\n\
         [http]\nlisten = \"0.0.0.0:9000\"\n",
        minimal(&f)
    );
    let config = load(&toml, &[]).unwrap();
    assert_eq!(config.pipeline.batch_max_events, 7);
    assert_eq!(config.pipeline.batch_linger, Duration::ZERO);
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.filter, "warn,campaign_push=debug");
    assert_eq!(config.http.listen.to_string(), "0.0.0.0:9000");
}

#[test]
fn environment_overrides_the_file_case_insensitively() {
    let f = files();
    let toml = format!("{}\n[pipeline]\nbatch_max_events = 7\n", minimal(&f));
    let config = load(
        &toml,
        &[
            ("CAMPAIGN_PUSH__KAFKA__BOOTSTRAP_SERVERS", "env-broker:9091"),
            ("campaign_push__pipeline__batch_max_events", "42"),
            ("CAMPAIGN_PUSH__PIPELINE__SINK_RETRY_MAX_BACKOFF", "1m"),
            ("CAMPAIGN_PUSH__Postgres__Port", "6432"),
            ("CAMPAIGN_PUSH_CACHE", "/not/configuration"),
            ("PATH", "/usr/bin"),
        ],
    )
    .unwrap();
    assert_eq!(config.kafka.bootstrap_servers, "env-broker:9091");
    assert_eq!(config.pipeline.batch_max_events, 42);
    assert_eq!(
        config.pipeline.sink_retry_max_backoff,
        Duration::from_secs(60)
    );
    assert_eq!(config.postgres.port, 6432);
}

#[test]
fn environment_alone_can_configure_everything() {
    let f = files();
    let guest = f.guest.display().to_string();
    let config = Config::load(
        None,
        env(&[
            ("CAMPAIGN_PUSH__KAFKA__BOOTSTRAP_SERVERS", "k:9092"),
            ("CAMPAIGN_PUSH__KAFKA__INPUT_TOPIC", "a"),
            ("CAMPAIGN_PUSH__KAFKA__OUTPUT_TOPIC", "b"),
            ("CAMPAIGN_PUSH__KAFKA__DEAD_LETTER_TOPIC", "c"),
            ("CAMPAIGN_PUSH__KAFKA__SECURITY__PROTOCOL", "plaintext"),
            ("CAMPAIGN_PUSH__POSTGRES__HOST", "db"),
            ("CAMPAIGN_PUSH__POSTGRES__USER", "u"),
            ("CAMPAIGN_PUSH__GUEST__PATH", &guest),
        ]),
    )
    .unwrap();
    assert_eq!(config.kafka.input_topic, "a");
    assert_eq!(config.guest.path, f.guest);
}

#[test]
fn unknown_keys_are_errors_naming_them() {
    let f = files();
    let toml = format!("{}\n[kafka.tls]\n[pipeline]\nbatch_size = 5\n", minimal(&f));
    let found = problems(load(
        &toml,
        &[("CAMPAIGN_PUSH__POSTGRES__PASWORD", "typo-secret-9")],
    ));
    assert_eq!(
        found,
        [
            "kafka.tls: unknown section",
            "pipeline.batch_size: unknown key",
            "postgres.pasword (set by CAMPAIGN_PUSH__POSTGRES__PASWORD): unknown key",
        ]
    );
}

#[test]
fn malformed_environment_names_are_errors() {
    let f = files();
    assert_problem(
        load(
            &minimal(&f),
            &[("CAMPAIGN_PUSH__KAFKA____INPUT_TOPIC", "x")],
        ),
        "kafka..input_topic (set by CAMPAIGN_PUSH__KAFKA____INPUT_TOPIC): empty level in the \
         name; separate levels with exactly two underscores",
    );
    assert_problem(
        load(
            &minimal(&f),
            &[
                ("CAMPAIGN_PUSH__LOG__FILTER", "debug"),
                ("campaign_push__log__filter", "warn"),
            ],
        ),
        "log.filter (set by campaign_push__log__filter): also set by CAMPAIGN_PUSH__LOG__FILTER; \
         set it once",
    );
    assert_problem(
        load(&minimal(&f), &[("CAMPAIGN_PUSH__KAFKA", "x")]),
        "kafka (set by CAMPAIGN_PUSH__KAFKA): this is a section; set its keys instead",
    );
}

#[test]
fn type_errors_name_the_key_and_variable() {
    let f = files();
    let found = problems(load(
        &minimal(&f),
        &[
            ("CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_EVENTS", "many"),
            ("CAMPAIGN_PUSH__POSTGRES__PORT", "70000"),
            ("CAMPAIGN_PUSH__PIPELINE__BATCH_LINGER", "50"),
            ("CAMPAIGN_PUSH__LOG__FORMAT", "xml"),
        ],
    ));
    assert_eq!(
        found,
        [
            "postgres.port (set by CAMPAIGN_PUSH__POSTGRES__PORT): 70000 is out of range (at \
             least 1)",
            "pipeline.batch_max_events (set by CAMPAIGN_PUSH__PIPELINE__BATCH_MAX_EVENTS): \
             expected an integer, got \"many\"",
            "pipeline.batch_linger (set by CAMPAIGN_PUSH__PIPELINE__BATCH_LINGER): \"50\": \
             missing unit after 50; use ms, s, m or h (e.g. \"50s\")",
            "log.format (set by CAMPAIGN_PUSH__LOG__FORMAT): expected one of \"human\", \
             \"json\", got \"xml\"",
        ]
    );
    let toml = minimal(&f).replace("host = \"db\"", "host = 5");
    assert_problem(
        load(&toml, &[]),
        "postgres.host: expected a string, got an integer",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let found = problems(Config::load(
        Some(
            "[kafka]\ninput_topic = \"same\"\noutput_topic = \"same\"\n[pipeline]\nbatch_max_events = 0\nsink_retry_initial_backoff = \"1s\"\nsink_retry_max_backoff = \"500ms\"\n[subscribers]\nnotify_channel = \"x; DROP TABLE y\"\n[log]\nfilter = \"=[\"\n",
        ),
        Vec::new(),
    ));
    let keys: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "kafka.bootstrap_servers",
            "kafka.dead_letter_topic",
            "kafka.output_topic",
            "kafka.security.protocol",
            "postgres.host",
            "postgres.user",
            "postgres.password",
            "pipeline.sink_retry_max_backoff",
            "pipeline.batch_max_events",
            "subscribers.notify_channel",
            "guest.path",
            "log.filter",
        ],
        "{found:#?}"
    );
    assert!(found.contains(
        &"kafka.output_topic: must differ from kafka.input_topic (both are \"same\")".into()
    ));
    assert!(found.contains(&"kafka.bootstrap_servers: required key is missing".into()));
}

#[test]
fn named_files_must_be_readable() {
    let f = files();
    let missing = f.ca.with_file_name("absent.pem");
    let toml = minimal(&f)
        .replace(
            r#"security = { protocol = "PLAINTEXT" }"#,
            &format!(
                r#"security = {{ protocol = "SSL", ca_file = {} }}"#,
                quoted(&missing)
            ),
        )
        .replace(&quoted(&f.guest), &quoted(f.guest.parent().unwrap()));
    let found = problems(load(&toml, &[]));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with(&format!(
        "kafka.security.ca_file: cannot open {}: No such file",
        missing.display()
    )));
    assert_eq!(
        found[1],
        format!(
            "guest.path: {} is not a regular file",
            f.guest.parent().unwrap().display()
        )
    );
    // A CA file must hold a certificate, not e.g. a password.
    let toml = minimal(&f).replace(
        r#"security = { protocol = "PLAINTEXT" }"#,
        &format!(
            r#"security = {{ protocol = "SSL", ca_file = {} }}"#,
            quoted(&f.kafka_password)
        ),
    );
    assert_problem(
        load(&toml, &[]),
        &format!(
            "kafka.security.ca_file: {} holds no PEM certificate (expected -----BEGIN \
             CERTIFICATE-----)",
            f.kafka_password.display()
        ),
    );
}

/// `minimal` with `[kafka.security]` replaced by `security`.
fn with_security(f: &Files, security: &str) -> String {
    minimal(f).replace(r#"security = { protocol = "PLAINTEXT" }"#, "")
        + "\n[kafka.security]\n"
        + security
}

fn client_config(f: &Files, security: &str, pairs: &[(&str, &str)]) -> rdkafka::ClientConfig {
    load(&with_security(f, security), pairs)
        .unwrap()
        .kafka
        .client_config()
}

/// Every property of a client configuration, with `sasl.password` in clear.
fn properties(config: &rdkafka::ClientConfig) -> Vec<(String, String)> {
    config
        .config_map()
        .into_keys()
        .map(|k| (k.to_owned(), config.get(k).unwrap().to_owned()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn plaintext_maps_to_librdkafka() {
    let f = files();
    let config = client_config(&f, r#"protocol = "PLAINTEXT""#, &[]);
    assert_eq!(
        properties(&config),
        pairs(&[
            ("bootstrap.servers", "k1:9092"),
            ("security.protocol", "PLAINTEXT")
        ])
    );
}

#[test]
fn ssl_maps_to_librdkafka() {
    let f = files();
    let config = client_config(
        &f,
        &format!("protocol = \"SSL\"\nca_file = {}", quoted(&f.ca)),
        &[],
    );
    assert_eq!(
        properties(&config),
        pairs(&[
            ("bootstrap.servers", "k1:9092"),
            ("security.protocol", "SSL"),
            ("ssl.ca.location", &f.ca.display().to_string()),
            ("ssl.endpoint.identification.algorithm", "https"),
        ])
    );
}

#[test]
fn sasl_plaintext_maps_to_librdkafka() {
    let f = files();
    let config = client_config(
        &f,
        "protocol = \"SASL_PLAINTEXT\"\nmechanism = \"PLAIN\"\nusername = \"alice\"",
        &[("CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD", KAFKA_PASSWORD)],
    );
    assert_eq!(
        properties(&config),
        pairs(&[
            ("bootstrap.servers", "k1:9092"),
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanisms", "PLAIN"),
            ("sasl.username", "alice"),
            ("sasl.password", KAFKA_PASSWORD),
        ])
    );
}

#[test]
fn sasl_ssl_maps_to_librdkafka() {
    let f = files();
    for (mechanism, expected) in [
        ("SCRAM-SHA-512", "SCRAM-SHA-512"),
        ("scram-sha-256", "SCRAM-SHA-256"),
    ] {
        let config = client_config(
            &f,
            &format!(
                "protocol = \"SASL_SSL\"\nmechanism = \"{mechanism}\"\nusername = \"bob\"\n\
                 password_file = {}\nca_file = {}",
                quoted(&f.kafka_password),
                quoted(&f.ca)
            ),
            &[],
        );
        assert_eq!(
            properties(&config),
            pairs(&[
                ("bootstrap.servers", "k1:9092"),
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", expected),
                ("sasl.username", "bob"),
                ("sasl.password", KAFKA_PASSWORD),
                ("ssl.ca.location", &f.ca.display().to_string()),
                ("ssl.endpoint.identification.algorithm", "https"),
            ])
        );
    }
}

#[test]
fn sasl_needs_mechanism_username_and_one_password() {
    let f = files();
    let found = problems(load(
        &with_security(&f, "protocol = \"SASL_PLAINTEXT\""),
        &[],
    ));
    assert_eq!(
        found,
        [
            "kafka.security.mechanism: required key is missing",
            "kafka.security.username: required key is missing",
            "kafka.security.password: required with protocol SASL_PLAINTEXT: set it (e.g. as \
             CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD) or kafka.security.password_file",
        ]
    );

    let both = format!(
        "protocol = \"SASL_PLAINTEXT\"\nmechanism = \"PLAIN\"\nusername = \"u\"\n\
         password_file = {}",
        quoted(&f.kafka_password)
    );
    let found = problems(load(
        &with_security(&f, &both),
        &[("CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD", KAFKA_PASSWORD)],
    ));
    assert_eq!(
        found,
        [
            "kafka.security.password (set by CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD): give \
          either kafka.security.password or kafka.security.password_file, not both"
        ]
    );
}

#[test]
fn keys_that_do_not_fit_the_protocol_are_refused() {
    let f = files();
    let found = problems(load(
        &with_security(
            &f,
            &format!(
                "protocol = \"PLAINTEXT\"\nusername = \"u\"\nca_file = {}",
                quoted(&f.ca)
            ),
        ),
        &[("CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD", KAFKA_PASSWORD)],
    ));
    assert_eq!(
        found,
        [
            "kafka.security.ca_file: not used with protocol PLAINTEXT; remove it",
            "kafka.security.username: not used with protocol PLAINTEXT; remove it",
            "kafka.security.password (set by CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD): not \
             used with protocol PLAINTEXT; remove it",
        ]
    );
    assert_problem(
        load(&with_security(&f, "protocol = \"SSL\""), &[]),
        "kafka.security.ca_file: required key is missing",
    );
    assert_problem(
        load(&with_security(&f, "protocol = \"TLS\""), &[]),
        "kafka.security.protocol: expected one of \"PLAINTEXT\", \"SSL\", \"SASL_SSL\", \
         \"SASL_PLAINTEXT\", got \"TLS\"",
    );
}

#[test]
fn properties_pass_through_but_not_security_or_service_keys() {
    let f = files();
    let toml = format!(
        "{}\n[kafka.properties]\n\"statistics.interval.ms\" = \"5000\"\nlinger.ms = 5\n",
        minimal(&f)
    );
    let config = load(
        &toml,
        &[(
            "CAMPAIGN_PUSH__KAFKA__PROPERTIES__SOCKET_KEEPALIVE_ENABLE",
            "true",
        )],
    )
    .unwrap()
    .kafka
    .client_config();
    assert_eq!(config.get("statistics.interval.ms"), Some("5000"));
    assert_eq!(config.get("linger.ms"), Some("5"));
    assert_eq!(config.get("socket.keepalive.enable"), Some("true"));
    assert_eq!(config.get("security.protocol"), Some("PLAINTEXT"));

    let toml = format!(
        "{}\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"group.id\" = \"g\"\n\
         \"auto.offset.reset\" = \"latest\"\n\"linger.ms\" = \"20\"\n",
        minimal(&f)
    );
    let found = problems(load(
        &toml,
        &[(
            "CAMPAIGN_PUSH__KAFKA__PROPERTIES__SASL_PASSWORD",
            KAFKA_PASSWORD,
        )],
    ));
    assert_eq!(
        found,
        [
            "kafka.properties.auto.offset.reset: is set by the service itself: earliest, so that \
             a new consumer group starts at the first event and skips none",
            "kafka.properties.group.id: is set by the service itself: set kafka.consumer_group",
            "kafka.properties.sasl.password (set by \
             CAMPAIGN_PUSH__KAFKA__PROPERTIES__SASL_PASSWORD): is a security setting; use \
             [kafka.security]",
            "kafka.properties.security.protocol: is a security setting; use [kafka.security]",
        ]
    );
}

#[test]
fn postgres_maps_to_a_client_config() {
    let f = files();
    let toml = minimal(&f).replace(
        "user = \"svc\"",
        &format!(
            "user = \"svc\"\nport = 6432\npassword_file = {}\nconnect_timeout = \"3s\"\n\
             tls = {{ mode = \"verify-full\", ca_file = {} }}",
            quoted(&f.pg_password),
            quoted(&f.ca)
        ),
    );
    let config = Config::load(Some(&toml), Vec::new()).unwrap().postgres;
    assert_eq!(config.password.expose(), PG_PASSWORD, "CRLF trimmed");
    assert_eq!(
        config.tls,
        PostgresTls::VerifyFull {
            ca_file: f.ca.clone()
        }
    );
    let pg = config.pg_config();
    assert_eq!(
        pg.get_hosts(),
        [tokio_postgres::config::Host::Tcp("db".into())]
    );
    assert_eq!(pg.get_ports(), [6432]);
    assert_eq!(pg.get_dbname(), Some("de"));
    assert_eq!(pg.get_user(), Some("svc"));
    assert_eq!(pg.get_password(), Some(PG_PASSWORD.as_bytes()));
    assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
    assert_eq!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    assert!(!format!("{pg:?}").contains(PG_PASSWORD));
    tls_connector(&f.ca).unwrap();
    let error = tls_connector(&f.pg_password).err().unwrap().to_string();
    let expected = format!(
        "cannot read PostgreSQL CA file {}: no PEM certificate",
        f.pg_password.display()
    );
    assert_eq!(error, expected);

    let default = load(&minimal(&f), &[]).unwrap().postgres;
    assert_eq!(
        default.pg_config().get_ssl_mode(),
        tokio_postgres::config::SslMode::Prefer
    );
    default.tls_connector().unwrap();
    let plain = load(
        &minimal(&f),
        &[("CAMPAIGN_PUSH__POSTGRES__TLS__MODE", "disable")],
    )
    .unwrap();
    assert_eq!(plain.postgres.tls, PostgresTls::Disable);
    assert_eq!(
        plain.postgres.pg_config().get_ssl_mode(),
        tokio_postgres::config::SslMode::Disable
    );
}

#[test]
fn postgres_tls_keys_must_fit_the_mode() {
    let f = files();
    let verify = minimal(&f).replace(
        "user = \"svc\"",
        "user = \"svc\"\ntls.mode = \"verify-full\"",
    );
    assert_problem(
        load(&verify, &[]),
        "postgres.tls.ca_file: required key is missing",
    );
    let disable = minimal(&f).replace(
        "user = \"svc\"",
        &format!("user = \"svc\"\ntls.ca_file = {}", quoted(&f.ca)),
    );
    assert_problem(
        load(
            &disable,
            &[("CAMPAIGN_PUSH__POSTGRES__TLS__MODE", "disable")],
        ),
        "postgres.tls.ca_file: not used with postgres.tls.mode = \"disable\"; remove it",
    );
    let prefer = problems(load(&disable, &[]));
    assert!(
        prefer.iter().any(|p| p.starts_with(
            "postgres.tls.ca_file: not used with postgres.tls.mode = \"prefer\" (the default)"
        )),
        "{prefer:#?}"
    );
    let unknown = problems(load(
        &disable,
        &[("CAMPAIGN_PUSH__POSTGRES__TLS__MODE", "allow")],
    ));
    assert!(
        unknown.iter().any(|p| p
            .starts_with("postgres.tls.mode (set by CAMPAIGN_PUSH__POSTGRES__TLS__MODE): ")
            && p.contains("prefer")),
        "{unknown:#?}"
    );
}

#[test]
fn secrets_stay_out_of_debug_and_errors() {
    let f = files();
    let toml = with_security(
        &f,
        "protocol = \"SASL_SSL\"\nmechanism = \"SCRAM-SHA-512\"\nusername = \"u\"",
    ) + &format!("\nca_file = {}\n", quoted(&f.ca));
    let secrets = [("CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD", KAFKA_PASSWORD)];

    let config = load(&toml, &secrets).unwrap();
    let debug = format!("{config:?}");
    assert!(debug.contains("password: Secret(***)"), "{debug}");
    assert!(
        !debug.contains(KAFKA_PASSWORD) && !debug.contains(PG_PASSWORD),
        "{debug}"
    );
    let client = format!("{:?}", config.kafka.client_config());
    assert!(!client.contains(KAFKA_PASSWORD), "{client}");

    // An error elsewhere, and secrets misplaced where their values would be echoed if anywhere.
    let broken = format!("{toml}\n[pipeline]\nbatch_max_events = \"x\"\n");
    let error = load(
        &broken,
        &[
            secrets[0],
            ("CAMPAIGN_PUSH__KAFKA__SECURITY__PASWORD", KAFKA_PASSWORD),
            (
                "CAMPAIGN_PUSH__KAFKA__PROPERTIES__SASL_PASSWORD",
                KAFKA_PASSWORD,
            ),
        ],
    )
    .unwrap_err();
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(text.contains("pipeline.batch_max_events"), "{text}");
        assert!(
            !text.contains(KAFKA_PASSWORD) && !text.contains(PG_PASSWORD),
            "{text}"
        );
    }

    // A syntax error on the password's own line is located, not quoted.
    let error = Config::load(
        Some(&format!("[postgres]\npassword = \"{PG_PASSWORD}\" oops\n")),
        Vec::new(),
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("configuration is not valid TOML (line 2, column"),
        "{text}"
    );
    assert!(!text.contains(PG_PASSWORD), "{text}");
}

/// The example files, with what they leave to the environment supplied as the Makefile would.
#[test]
fn example_files_load() {
    let f = files();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let ca = f.ca.display().to_string();
    let guest = f.guest.display().to_string();

    let local = std::fs::read_to_string(root.join("local.toml")).unwrap();
    let config = load(
        &local,
        &[
            ("CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD", KAFKA_PASSWORD),
            ("CAMPAIGN_PUSH__KAFKA__SECURITY__CA_FILE", &ca),
            ("CAMPAIGN_PUSH__POSTGRES__TLS__CA_FILE", &ca),
            ("CAMPAIGN_PUSH__GUEST__PATH", &guest),
        ],
    )
    .unwrap();
    let kafka = config.kafka.client_config();
    assert_eq!(kafka.get("bootstrap.servers"), Some("127.0.0.1:19093"));
    assert_eq!(kafka.get("security.protocol"), Some("SASL_SSL"));
    assert_eq!(kafka.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
    assert_eq!(kafka.get("sasl.username"), Some("campaign-push"));
    assert_eq!(kafka.get("sasl.password"), Some(KAFKA_PASSWORD));
    assert_eq!(kafka.get("ssl.ca.location"), Some(&*ca));
    assert_eq!(
        (
            &*config.kafka.input_topic,
            &*config.kafka.output_topic,
            &*config.kafka.dead_letter_topic
        ),
        (
            "campaigns",
            "campaign-notifications",
            "campaigns-dead-letter"
        )
    );
    let pg = &config.postgres;
    assert_eq!(
        (&*pg.host, pg.port, &*pg.database, &*pg.user),
        ("127.0.0.1", 15432, "de", "campaign_push")
    );
    assert_eq!(pg.password.expose(), PG_PASSWORD);
    assert_eq!(
        pg.tls,
        PostgresTls::VerifyFull {
            ca_file: f.ca.clone()
        }
    );

    let example = std::fs::read_to_string(root.join("campaign-push.example.toml")).unwrap();
    let found = problems(load(&example, &[]));
    assert!(
        found
            .iter()
            .all(|p| p.starts_with("kafka.security.ca_file: cannot open")
                || p.starts_with("kafka.security.password: required")
                || p.starts_with("postgres.tls.ca_file: cannot open")
                || p.starts_with("guest.path: cannot open")
                || p.starts_with("admin.token_file: cannot open")),
        "the example needs only its files and the Kafka password: {found:#?}"
    );
    let kafka_password_file = f.kafka_password.display().to_string();
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("admin-token");
    std::fs::write(&token_file, "an-admin-token-of-some-length").unwrap();
    let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    std::fs::set_permissions(&token_file, private).unwrap();
    let token_file = token_file.display().to_string();
    let config = load(
        &example,
        &[
            (
                "CAMPAIGN_PUSH__KAFKA__SECURITY__PASSWORD_FILE",
                &kafka_password_file,
            ),
            ("CAMPAIGN_PUSH__KAFKA__SECURITY__CA_FILE", &ca),
            ("CAMPAIGN_PUSH__POSTGRES__TLS__CA_FILE", &ca),
            ("CAMPAIGN_PUSH__GUEST__PATH", &guest),
            ("CAMPAIGN_PUSH__ADMIN__TOKEN_FILE", &token_file),
        ],
    )
    .unwrap();
    assert!(config.admin.token.is_some());
    let kafka = config.kafka.client_config();
    assert!(kafka.get("bootstrap.servers").unwrap().ends_with(":9091"));
    assert_eq!(kafka.get("security.protocol"), Some("SASL_SSL"));
    assert_eq!(kafka.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
    assert_eq!(kafka.get("sasl.password"), Some(KAFKA_PASSWORD));
    assert_eq!(
        kafka.get("ssl.endpoint.identification.algorithm"),
        Some("https")
    );
    assert_eq!(
        (config.postgres.port, &*config.postgres.database),
        (6432, "de")
    );
    assert_eq!(
        config.postgres.tls,
        PostgresTls::VerifyFull {
            ca_file: f.ca.clone()
        }
    );
}

#[test]
fn the_admin_token_file_must_be_private_and_long_enough() {
    use std::os::unix::fs::PermissionsExt;
    let f = files();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    let path = token.to_str().unwrap();
    let set = [("CAMPAIGN_PUSH__ADMIN__TOKEN_FILE", path)];
    let chmod = |mode| std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode));

    let unset = load(&minimal(&f), &[]).unwrap().admin;
    assert!(unset.token.is_none(), "no file, no admin API");
    assert_eq!(unset.listen, "127.0.0.1:9465".parse().unwrap());

    std::fs::write(&token, "0123456789abcdef-token\n").unwrap();
    chmod(0o640).unwrap();
    let admin = load(&minimal(&f), &set).unwrap().admin;
    assert!(admin.token.unwrap().matches(b"0123456789abcdef-token"));

    chmod(0o644).unwrap();
    assert_problem(
        load(&minimal(&f), &set),
        &format!(
            "admin.token_file (set by CAMPAIGN_PUSH__ADMIN__TOKEN_FILE): {path} is open to other \
             users (mode 644); `chmod o-rwx` it"
        ),
    );
    chmod(0o600).unwrap();
    std::fs::write(&token, "short\n").unwrap();
    assert_problem(
        load(&minimal(&f), &set),
        &format!(
            "admin.token_file (set by CAMPAIGN_PUSH__ADMIN__TOKEN_FILE): {path}: the token is \
             shorter than 16 characters"
        ),
    );
    std::fs::write(&token, "0123456789 abcdef-token").unwrap();
    let found = problems(load(&minimal(&f), &set));
    assert!(
        found[0].ends_with("the token contains white space"),
        "{found:?}"
    );
    assert!(!found[0].contains("abcdef"), "the token is never quoted");
}

#[test]
fn allowed_sha256_takes_an_array_or_a_comma_separated_list() {
    let f = files();
    let (a, b) = ("ab".repeat(32), "CD".repeat(32));
    let toml = minimal(&f).replace(
        "[guest]",
        &format!("[guest]\nallowed_sha256 = [\"{a}\", \"{b}\"]"),
    );
    let expected = BTreeSet::from([a.clone(), b.to_lowercase()]);
    let from_file = load(&toml, &[]).unwrap().guest.allowed_sha256;
    assert_eq!(from_file.as_ref(), Some(&expected));
    let listed = format!("{a}, {b}");
    let from_env = load(
        &minimal(&f),
        &[("CAMPAIGN_PUSH__GUEST__ALLOWED_SHA256", &listed)],
    )
    .unwrap()
    .guest
    .allowed_sha256;
    assert_eq!(from_env.as_ref(), Some(&expected));
    assert_eq!(load(&minimal(&f), &[]).unwrap().guest.allowed_sha256, None);

    let refused = [
        (
            "[]",
            "an empty list would refuse every guest; remove the key to allow any",
        ),
        (
            "[\"abc\"]",
            "\"abc\" is not a SHA-256 (64 hexadecimal digits)",
        ),
    ];
    for (value, message) in refused {
        let toml = minimal(&f).replace("[guest]", &format!("[guest]\nallowed_sha256 = {value}"));
        assert_problem(
            load(&toml, &[]),
            &format!("guest.allowed_sha256: {message}"),
        );
    }
}
