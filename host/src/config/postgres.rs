//! The `[postgres]` section and the connection it describes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use postgres_openssl::MakeTlsConnector;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, Connection, Notification};

use super::secret::Secret;
use super::source::{self, Source, ca_file, duration, integer, one_of, text};

/// `[postgres]`: the database holding `subscribers_restaurants` and `subscribers_feedback`.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres.host` (required): host name or IP address (or a Unix socket directory).
    pub host: String,
    /// `postgres.port` (default 5432; production uses 6432).
    pub port: u16,
    /// `postgres.database` (default `"de"`).
    pub database: String,
    /// `postgres.user` (required).
    pub user: String,
    /// `postgres.password`, normally set as `CAMPAIGN_PUSH__POSTGRES__PASSWORD`, or the content of
    /// the file named by `postgres.password_file` (without its trailing line break). Exactly one
    /// of the two is required.
    pub password: Secret,
    /// `[postgres.tls]`: see [`PostgresTls`].
    pub tls: PostgresTls,
    /// `postgres.connect_timeout` (default `"10s"`): how long one connection attempt may take.
    pub connect_timeout: Duration,
}

/// `postgres.tls.mode` with what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostgresTls {
    /// `mode = "disable"`: no TLS; for a database on the same host or an otherwise trusted
    /// network.
    Disable,
    /// `mode = "prefer"` (the default): TLS when the server offers it, plain otherwise, and the
    /// server certificate is not verified. As libpq's `sslmode=prefer`: it keeps passive
    /// listeners out, not an impostor; production sets `verify-full`.
    Prefer,
    /// `mode = "verify-full"`: TLS required, the server certificate must chain to a certificate
    /// in `postgres.tls.ca_file` (required; only these are trusted, not the system store) and
    /// name `postgres.host`. As libpq's `sslmode=verify-full` with `sslrootcert`.
    VerifyFull { ca_file: PathBuf },
}

/// A connection whose I/O runs on its own tokio task.
pub struct PgConnection {
    pub client: Client,
    /// `NOTIFY` payloads for every channel this client `LISTEN`s on, in arrival order.
    pub notifications: mpsc::UnboundedReceiver<Notification>,
    /// The task driving the connection. It ends when the client is dropped (`Ok`) or the
    /// connection fails (`Err`, after which the client's calls fail too).
    pub task: JoinHandle<Result<(), tokio_postgres::Error>>,
}

/// Why no connection was made. Never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum PgConnectError {
    #[error("cannot read PostgreSQL CA file {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up TLS with PostgreSQL CA file {}: {source}", path.display())]
    Tls {
        path: PathBuf,
        source: openssl::error::ErrorStack,
    },
    #[error("cannot set up TLS for PostgreSQL: {0}")]
    TlsSetup(openssl::error::ErrorStack),
    #[error(
        "cannot connect to PostgreSQL at {host}:{port} as {user}: {}",
        crate::sinks::postgres::describe(source)
    )]
    Connect {
        host: String,
        port: u16,
        user: String,
        source: tokio_postgres::Error,
    },
}

impl PostgresConfig {
    /// The client configuration, password included; TLS comes from [`Self::connect`]'s connector.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.user)
            .password(self.password.expose())
            .connect_timeout(self.connect_timeout)
            .application_name("campaign-push")
            .ssl_mode(match self.tls {
                PostgresTls::Disable => SslMode::Disable,
                PostgresTls::Prefer => SslMode::Prefer,
                PostgresTls::VerifyFull { .. } => SslMode::Require,
            });
        config
    }

    /// The TLS side of [`Self::pg_config`]'s mode: verifying against the CA file for
    /// `verify-full`, accepting any certificate for `prefer`, never used for `disable`.
    pub fn tls_connector(&self) -> Result<MakeTlsConnector, PgConnectError> {
        match &self.tls {
            PostgresTls::VerifyFull { ca_file } => tls_connector(ca_file),
            PostgresTls::Disable | PostgresTls::Prefer => {
                let unverified = || -> Result<MakeTlsConnector, openssl::error::ErrorStack> {
                    let mut builder = SslConnector::builder(SslMethod::tls_client())?;
                    builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
                    builder.set_verify(SslVerifyMode::NONE);
                    let mut connector = MakeTlsConnector::new(builder.build());
                    // Without a CA there is nothing to check the name against either.
                    connector.set_callback(|connect, _| {
                        connect.set_verify_hostname(false);
                        Ok(())
                    });
                    Ok(connector)
                };
                unverified().map_err(PgConnectError::TlsSetup)
            }
        }
    }

    /// Connects as configured (TLS per [`PostgresTls`]) and spawns the connection's task, which
    /// forwards notifications and logs server notices. Needs a tokio runtime.
    pub async fn connect(&self) -> Result<PgConnection, PgConnectError> {
        let config = self.pg_config();
        let failed = |source| PgConnectError::Connect {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            source,
        };
        let (sender, notifications) = mpsc::unbounded_channel();
        let (client, connection) = config
            .connect(self.tls_connector()?)
            .await
            .map_err(failed)?;
        let task = tokio::spawn(drive(connection, sender));
        Ok(PgConnection {
            client,
            notifications,
            task,
        })
    }

    pub(super) fn read(src: &mut Source) -> Self {
        const MODE: &str = "postgres.tls.mode";
        const CA_FILE: &str = "postgres.tls.ca_file";
        let host = src.req("postgres.host", text).unwrap_or_default();
        let port = src.or("postgres.port", 5432, integer(1u16));
        let database = src.or("postgres.database", "de".into(), text);
        let user = src.req("postgres.user", text).unwrap_or_default();
        let password = source::password(src, "postgres").unwrap_or_else(|| {
            src.problem(
                "postgres.password",
                "required: set it (e.g. as CAMPAIGN_PUSH__POSTGRES__PASSWORD) or \
                 postgres.password_file",
            );
            Secret::new("")
        });
        let modes = &[
            ("disable", Mode::Disable),
            ("prefer", Mode::Prefer),
            ("verify-full", Mode::VerifyFull),
        ];
        let tls = match src.opt(MODE, one_of(modes)) {
            Ok(Some(Mode::VerifyFull)) => PostgresTls::VerifyFull {
                ca_file: src.req(CA_FILE, ca_file).unwrap_or_default(),
            },
            Ok(Some(Mode::Disable)) => {
                src.forbid(CA_FILE, "with postgres.tls.mode = \"disable\"");
                PostgresTls::Disable
            }
            Ok(Some(Mode::Prefer) | None) => {
                src.forbid(
                    CA_FILE,
                    "with postgres.tls.mode = \"prefer\" (the default), which verifies \
                     nothing; set mode = \"verify-full\" to have the certificate checked",
                );
                PostgresTls::Prefer
            }
            Err(_) => {
                src.skip(CA_FILE);
                PostgresTls::Prefer
            }
        };
        let connect_timeout = src.or(
            "postgres.connect_timeout",
            Duration::from_secs(10),
            duration(Duration::from_millis(1)),
        );
        Self {
            host,
            port,
            database,
            user,
            password,
            tls,
            connect_timeout,
        }
    }
}

/// `postgres.tls.mode`'s values, before the keys each one needs are read.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Disable,
    Prefer,
    VerifyFull,
}

/// A connector that trusts only the certificates in `ca_file` and checks the server's host name
/// (or IP address) against its certificate.
pub fn tls_connector(ca_file: &Path) -> Result<MakeTlsConnector, PgConnectError> {
    let tls_error = |source| PgConnectError::Tls {
        path: ca_file.to_owned(),
        source,
    };
    let pem = std::fs::read(ca_file).map_err(|source| PgConnectError::CaFile {
        path: ca_file.to_owned(),
        source,
    })?;
    let certs = X509::stack_from_pem(&pem).map_err(tls_error)?;
    if certs.is_empty() {
        return Err(PgConnectError::CaFile {
            path: ca_file.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no PEM certificate"),
        });
    }
    let build = || -> Result<MakeTlsConnector, openssl::error::ErrorStack> {
        let mut store = X509StoreBuilder::new()?;
        for cert in certs {
            store.add_cert(cert)?;
        }
        let mut builder = SslConnector::builder(SslMethod::tls_client())?;
        builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        builder.set_cert_store(store.build());
        builder.set_verify(SslVerifyMode::PEER);
        Ok(MakeTlsConnector::new(builder.build()))
    };
    build().map_err(tls_error)
}

/// Runs a connection to its end, passing notifications on and logging notices.
async fn drive<S, T>(
    mut connection: Connection<S, T>,
    notifications: mpsc::UnboundedSender<Notification>,
) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message? {
            // A receiver that has gone away did not want them.
            AsyncMessage::Notification(n) => drop(notifications.send(n)),
            AsyncMessage::Notice(notice) => tracing::info!(
                severity = notice.severity(),
                "PostgreSQL notice: {}",
                notice.message()
            ),
            _ => {}
        }
    }
    Ok(())
}
