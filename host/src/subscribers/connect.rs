//! How the cache gets a database connection: a [`Connect`] implementation, so that the
//! configuration (host, port, credentials, TLS) stays the business of whoever builds it.

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Socket};

/// The messages a connection receives outside of query results (notifications, notices). Polling
/// the stream is what drives the connection: queries on the [`Client`] only progress while it
/// is polled.
pub type ConnectionMessages = BoxStream<'static, Result<AsyncMessage, tokio_postgres::Error>>;

/// Opens one new connection each time it is called (the cache calls it again after a loss).
///
/// Object safe: a `Box<dyn Connect>` or `Arc<dyn Connect>` is a `Connect` too, for wiring that
/// picks the TLS type at run time.
pub trait Connect: Send + Sync + 'static {
    fn connect(&self)
    -> BoxFuture<'_, Result<(Client, ConnectionMessages), tokio_postgres::Error>>;
}

impl Connect for Box<dyn Connect> {
    fn connect(
        &self,
    ) -> BoxFuture<'_, Result<(Client, ConnectionMessages), tokio_postgres::Error>> {
        (**self).connect()
    }
}

impl Connect for std::sync::Arc<dyn Connect> {
    fn connect(
        &self,
    ) -> BoxFuture<'_, Result<(Client, ConnectionMessages), tokio_postgres::Error>> {
        (**self).connect()
    }
}

/// The name the cache's connection shows in `pg_stat_activity` unless the config sets one.
pub const DEFAULT_APPLICATION_NAME: &str = "campaign-push-subscribers";

/// A [`Connect`] from a `tokio_postgres` config and TLS maker (`NoTls`, or e.g.
/// `postgres_openssl::MakeTlsConnector` for a CA-verified connection).
#[derive(Clone)]
pub struct PgConnector<T> {
    config: tokio_postgres::Config,
    tls: T,
}

impl<T> PgConnector<T> {
    /// Sets the application name to [`DEFAULT_APPLICATION_NAME`] if `config` has none, so that
    /// the listening session can be told apart from the service's other connections.
    pub fn new(mut config: tokio_postgres::Config, tls: T) -> Self {
        if config.get_application_name().is_none() {
            config.application_name(DEFAULT_APPLICATION_NAME);
        }
        Self { config, tls }
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl<T> Connect for PgConnector<T>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn connect(
        &self,
    ) -> BoxFuture<'_, Result<(Client, ConnectionMessages), tokio_postgres::Error>> {
        Box::pin(async move {
            let (client, mut connection) = self.config.connect(self.tls.clone()).await?;
            let messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            Ok((client, Box::pin(messages) as ConnectionMessages))
        })
    }
}
