//! The local stack (`make up`) as the bench uses it: its settings from `.stack/local.env`, Kafka
//! clients (the service's SASL_SSL login, or the PLAINTEXT listener for the bench's own light
//! clients), PostgreSQL connections with TLS as the service makes them, and the things a run
//! creates for itself alone (a database, topics), removed again when dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Partitions of every topic the bench creates: as the stack's own topics (`stack/stack.sh`).
pub const PARTITIONS: i32 = 3;

/// The stack's settings (`KEY=VALUE` lines) and the repository they belong to.
pub struct Stack {
    pub root: PathBuf,
    vars: HashMap<String, String>,
}

impl Stack {
    /// `$STACK_ENV_FILE`, else `<root>/.stack/local.env`, as the tests read it.
    pub fn load(root: &Path) -> Result<Self> {
        let path = std::env::var_os("STACK_ENV_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".stack/local.env"));
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {}: start the stack first (`make up`)",
                path.display()
            )
        })?;
        let vars = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Ok(Self {
            root: root.to_owned(),
            vars,
        })
    }

    pub fn get(&self, key: &str) -> Result<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("the stack's env file has no {key}; run `make up`"))
    }

    /// A client of the PLAINTEXT listener: the bench's generator, reader and admin, which should
    /// cost the machine as little as possible.
    pub fn plaintext(&self) -> Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.get("KAFKA_PLAINTEXT_BOOTSTRAP")?);
        Ok(config)
    }

    /// A client that logs in as the service does (`KafkaSecurity::apply` in the host): SASL_SSL,
    /// SCRAM-SHA-512, the broker verified against the local CA.
    pub fn service_login(&self) -> Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.get("KAFKA_SASL_BOOTSTRAP")?)
            .set("security.protocol", "SASL_SSL")
            .set("ssl.ca.location", self.get("KAFKA_CA_FILE")?)
            .set("ssl.endpoint.identification.algorithm", "https")
            .set("sasl.mechanisms", "SCRAM-SHA-512")
            .set("sasl.username", self.get("KAFKA_SASL_USERNAME")?)
            .set("sasl.password", self.get("KAFKA_SASL_PASSWORD")?);
        Ok(config)
    }

    /// A connection to `dbname` as the service user, TLS verified against the local CA (the
    /// service's `verify-full`), its connection task spawned on the current runtime.
    pub async fn connect(&self, dbname: &str) -> Result<tokio_postgres::Client> {
        let mut builder = SslConnector::builder(SslMethod::tls())?;
        builder.set_ca_file(self.get("PGSSLROOTCERT")?)?;
        builder.set_verify(SslVerifyMode::PEER);
        let tls = MakeTlsConnector::new(builder.build());
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.get("PGHOST")?)
            .port(self.get("PGPORT")?.parse().context("PGPORT")?)
            .user(self.get("PGUSER")?)
            .password(self.get("PGPASSWORD")?)
            .dbname(dbname)
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = config
            .connect(tls)
            .await
            .with_context(|| format!("connecting to database {dbname}"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                eprintln!("bench: PostgreSQL connection ended: {error}");
            }
        });
        Ok(client)
    }

    /// Runs `sql` as PostgreSQL's superuser over the stack's unix socket (peer authentication),
    /// as `stack/stack.sh` itself does: the service user may not create databases, and the bench
    /// must not be given that right in the stack's set-up just for itself.
    pub fn admin_sql(&self, sql: &str) -> Result<()> {
        let pg_dir = std::fs::canonicalize(self.root.join(".stack/postgres"))
            .context("finding the stack's PostgreSQL directory (.stack/postgres)")?;
        let socket_dir = pg_dir.join("run");
        let port = self.get("PGPORT")?;
        let psql_args = [
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &socket_dir.to_string_lossy(),
            "-p",
            port,
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ]
        .map(str::to_owned);
        // PostgreSQL's programs refuse to run as root; the stack runs them as `postgres`.
        let is_root = std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        let mut command = if is_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "psql"]);
            c
        } else {
            Command::new("psql")
        };
        let output = command
            .args(psql_args)
            .current_dir("/")
            .env_remove("PGPASSWORD")
            .output()
            .context("running psql as PostgreSQL's superuser")?;
        if !output.status.success() {
            bail!(
                "psql as superuser failed on `{sql}`: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

/// The process ids of the stack's broker and PostgreSQL server, from their pid files, for their
/// CPU time: `None` where a pid file cannot be read (a stack run by another user, say).
pub fn server_pids(root: &Path) -> (Option<u32>, Option<u32>) {
    let first_line = |path: PathBuf| -> Option<u32> {
        std::fs::read_to_string(path)
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    };
    (
        first_line(root.join(".stack/kafka/kafka.pid")),
        first_line(root.join(".stack/postgres/data/postmaster.pid")),
    )
}

/// A database that exists for one bench run: created empty with the contract's schema, owned by
/// the service user, dropped (with any open sessions) when this is dropped, so that the stack's
/// `de` database and its other users never see the bench's rows.
pub struct BenchDatabase<'a> {
    stack: &'a Stack,
    pub name: String,
}

impl<'a> BenchDatabase<'a> {
    pub async fn create(stack: &'a Stack, name: &str) -> Result<Self> {
        let user = stack.get("PGUSER")?;
        stack.admin_sql(&format!("CREATE DATABASE {name} OWNER {user}"))?;
        let db = Self {
            stack,
            name: name.to_owned(),
        };
        let schema_path = stack.root.join("stack/contract/schema.sql");
        let schema = std::fs::read_to_string(&schema_path)
            .with_context(|| format!("reading {}", schema_path.display()))?;
        let client = stack.connect(name).await?;
        client
            .batch_execute(&schema)
            .await
            .context("applying the contract's schema.sql")?;
        Ok(db)
    }
}

impl Drop for BenchDatabase<'_> {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) = self.stack.admin_sql(&sql) {
            eprintln!("bench: could not drop database {}: {error:#}", self.name);
        }
    }
}

/// Topics that exist for one bench run, deleted when dropped.
pub struct Topics {
    admin: AdminClient<DefaultClientContext>,
    pub names: Vec<String>,
}

impl Topics {
    pub fn new(stack: &Stack) -> Result<Self> {
        Ok(Self {
            admin: stack.plaintext()?.create()?,
            names: Vec::new(),
        })
    }

    /// Creates `name` with [`PARTITIONS`] partitions and waits until every partition has a leader.
    pub fn create(&mut self, name: &str) -> Result<String> {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = futures::executor::block_on(self.admin.create_topics(
            &[NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1))],
            &opts,
        ))
        .with_context(|| format!("creating topic {name}"))?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("creating topic {topic}: {code}");
            }
        }
        self.names.push(name.to_owned());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let metadata = self
                .admin
                .inner()
                .fetch_metadata(Some(name), Duration::from_secs(5))?;
            let ready = metadata.topics().iter().any(|t| {
                t.name() == name
                    && t.error().is_none()
                    && t.partitions().len() == PARTITIONS as usize
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            });
            if ready {
                return Ok(name.to_owned());
            }
            if Instant::now() > deadline {
                bail!("topic {name} has no leader after 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Topics {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        if let Err(error) = futures::executor::block_on(self.admin.delete_topics(&names, &opts)) {
            eprintln!("bench: could not delete topics {names:?}: {error}");
        }
    }
}

/// The end offsets of `topic`'s partitions now: where a reader starts to see only what comes next
/// (an explicit offset, not `Offset::End`, which a consumer resolves only at its first fetch).
pub fn high_watermarks(stack: &Stack, topic: &str) -> Result<Vec<i64>> {
    let consumer: BaseConsumer = stack
        .plaintext()?
        .set("group.id", "campaign-bench-watermarks")
        .set("isolation.level", "read_committed")
        .create()?;
    (0..PARTITIONS)
        .map(|p| {
            Ok(consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .with_context(|| format!("watermarks of {topic}/{p}"))?
                .1)
        })
        .collect()
}
