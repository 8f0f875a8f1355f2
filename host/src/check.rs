//! `campaign-push check`: whether a configuration would let the service run, without consuming
//! anything. Each part is checked on its own and every problem is reported, not just the first.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::config::Config;

/// How long the Kafka metadata request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(15);

/// The tables of the data contract that the service reads and writes.
const CONTRACT_TABLES: &[&str] = &["subscribers_restaurants", "subscribers_feedback"];

/// One part of the configuration checked against the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked: `guest`, `postgres` or `kafka`.
    pub part: &'static str,
    /// What was found: on success a summary, on failure the problem.
    pub outcome: Result<String, String>,
}

/// Loads the guest, connects to PostgreSQL and asks Kafka for the topics' metadata. Needs a
/// tokio runtime with blocking allowed.
pub async fn run(config: &Config) -> Vec<Finding> {
    let (postgres, kafka) = tokio::join!(check_postgres(config), check_kafka(config));
    vec![
        Finding {
            part: "guest",
            outcome: check_guest(config),
        },
        Finding {
            part: "postgres",
            outcome: postgres,
        },
        Finding {
            part: "kafka",
            outcome: kafka,
        },
    ]
}

fn check_guest(config: &Config) -> Result<String, String> {
    let (_, guest) = crate::guest::start(&config.guest).map_err(|e| format!("{e:#}"))?;
    let identity = guest.identity();
    Ok(format!(
        "{}: version {}, sha256 {}",
        config.guest.path.display(),
        identity.version,
        identity.sha256
    ))
}

async fn check_postgres(config: &Config) -> Result<String, String> {
    let pg = &config.postgres;
    let connection = pg.connect().await.map_err(|e| e.to_string())?;
    let mut missing = Vec::new();
    for table in CONTRACT_TABLES {
        let found: Option<String> = connection
            .client
            .query_one("SELECT to_regclass($1)::text", &[table])
            .await
            .map_err(|e| format!("asking for table {table}: {e}"))?
            .get(0);
        if found.is_none() {
            missing.push(*table);
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "connected to {}:{}/{} as {}, but table(s) {} are missing (see the data contract's \
             schema.sql)",
            pg.host,
            pg.port,
            pg.database,
            pg.user,
            missing.join(", ")
        ));
    }
    Ok(format!(
        "connected to {}:{}/{} as {}; tables {} present",
        pg.host,
        pg.port,
        pg.database,
        pg.user,
        CONTRACT_TABLES.join(", ")
    ))
}

async fn check_kafka(config: &Config) -> Result<String, String> {
    let kafka = config.kafka.clone();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = kafka
            .client_config()
            .create()
            .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
        let topics = [
            ("kafka.input_topic", &kafka.input_topic),
            ("kafka.output_topic", &kafka.output_topic),
            ("kafka.dead_letter_topic", &kafka.dead_letter_topic),
        ];
        let mut problems = Vec::new();
        let mut found = Vec::new();
        for (key, topic) in topics {
            let metadata = client
                .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
                .map_err(|e| {
                    format!(
                        "no metadata from {} (address, TLS or login wrong?): {e}",
                        kafka.bootstrap_servers
                    )
                })?;
            match metadata.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    found.push(format!("{topic} ({} partitions)", t.partitions().len()));
                }
                Some(t) => problems.push(format!(
                    "{key} = {topic:?}: {}",
                    t.error()
                        .map(|e| RDKafkaErrorCode::from(e).to_string())
                        .unwrap_or_else(|| "no partitions".into())
                )),
                None => problems.push(format!("{key} = {topic:?}: not in the metadata")),
            }
        }
        if problems.is_empty() {
            Ok(format!(
                "{}: topics {}",
                kafka.bootstrap_servers,
                found.join(", ")
            ))
        } else {
            Err(problems.join("; "))
        }
    })
    .await
    .map_err(|e| format!("the Kafka check panicked: {e}"))?
}
