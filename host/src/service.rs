//! The service: wires configuration, guest, subscriber cache, Kafka and PostgreSQL into the
//! pipeline and runs it until `shutdown` is cancelled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::{Config, PgConnection};
use crate::guest::{Budget, GuestRuntime, GuestSlot, LoadedGuest};
use crate::http::{self, Progress, Readiness};
use crate::metrics::Metrics;
use crate::migrations;
use crate::pipeline::clock::SystemClock;
use crate::pipeline::rebalance::GroupContext;
use crate::pipeline::regression::RegressionSettings;
use crate::pipeline::transformer::Transformer;
use crate::pipeline::{GroupConsumer, PgConnect, Pipeline, Settings};
use crate::plan::Limits;
use crate::plan::{Commit, Forget};
use crate::reload::{self, Reloader};
use crate::retention::Retention;
use crate::sinks::kafka::{self, KafkaSink, Topics};
use crate::sinks::postgres;
use crate::subscribers::{CacheOptions, Connect, PgConnector, SubscriberCache};
use crate::supervisor::Supervisor;

/// How long start-up waits for the consumer group's coordinator to answer.
const COORDINATOR_WAIT: Duration = Duration::from_secs(120);

/// How often the guest file is checked for a new version.
const GUEST_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// How long start-up waits for another live host to release the transactional id (a crashed
/// predecessor's database session can take a moment to end).
const ID_LOCK_WAIT: Duration = Duration::from_secs(15);

/// How long librdkafka's blocking calls (transactions, metadata, committed offsets) may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the service until `shutdown` is cancelled or something fails for good, keeping
/// `supervisor` informed.
pub async fn run(
    config: Config,
    supervisor: Supervisor,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(version = crate::VERSION, "starting");
    let result = serve(config, supervisor.clone(), shutdown.clone()).await;
    supervisor.stopping();
    shutdown.cancel();
    result
}

async fn serve(
    config: Config,
    supervisor: Supervisor,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // As soon as a stop is asked for, not only once the batch in flight is done.
    tokio::spawn({
        let (supervisor, shutdown) = (supervisor.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            supervisor.stopping();
        }
    });
    let metrics = Arc::new(Metrics::default());
    let progress = Arc::new(Progress::new(config.pipeline.stall_timeout));
    let readiness = Arc::new(Readiness {
        progress: progress.clone(),
        ..Readiness::default()
    });
    tokio::spawn(
        supervisor
            .clone()
            .keep_alive(progress.clone(), shutdown.clone()),
    );
    let http = http::serve(
        config.http.listen,
        http::AppState {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
        },
        shutdown.clone(),
    )
    .await?;
    let Some(started) = start_up(&config, &readiness, &shutdown).await? else {
        return Ok(());
    };
    let Started {
        runtime,
        guest,
        cache,
        admin,
        sink,
        limits,
    } = started;
    let identity = guest.identity().clone();
    metrics.set_guest(&identity.version, &identity.sha256);
    let slot = Arc::new(GuestSlot::new(guest));
    let reloader = Arc::new(Reloader::new(
        runtime,
        slot.clone(),
        config.guest.path.clone(),
        metrics.clone(),
        supervisor.clone(),
    ));
    tokio::spawn(reload::watch_file(
        reloader.clone(),
        GUEST_WATCH_INTERVAL,
        shutdown.clone(),
    ));
    tokio::spawn(reload_on_sighup(reloader.clone(), shutdown.clone()));
    let admin_api = match &config.admin.token {
        Some(token) => Some(
            admin::serve(
                config.admin.listen,
                admin::AdminState {
                    reloader: reloader.clone(),
                    token: Arc::new(token.clone()),
                },
                shutdown.clone(),
            )
            .await?,
        ),
        None => {
            tracing::info!(
                "no admin.token_file: the admin API is not served (SIGHUP and the guest file's \
                 watch still reload)"
            );
            None
        }
    };
    tokio::spawn(report_cache_metrics(
        cache.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let consumer = Arc::new(create_consumer(&config)?);
    tokio::spawn(report_consumer_lag(
        consumer.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let postgres_config = config.postgres.clone();
    let pg_connect: PgConnect = Arc::new(move || {
        let postgres_config = postgres_config.clone();
        Box::pin(async move { Ok(postgres_config.connect().await?.client) })
    });
    let clock: Arc<dyn crate::pipeline::clock::Clock> = Arc::new(SystemClock);
    tokio::spawn(
        Retention {
            retention: config.ledger.retention,
            interval: config.ledger.purge_interval,
            connect: pg_connect.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
        }
        .run(shutdown.clone()),
    );
    let pipeline = Pipeline {
        consumer,
        reloader,
        regression: RegressionSettings {
            window: config.guest.rollback_window,
            margin: f64::from(config.guest.rollback_margin_percent) / 100.0,
            min_events: config.guest.rollback_min_events,
        },
        input_topic: config.kafka.input_topic.clone(),
        transformer: Transformer::new(slot, Arc::new(cache), config.guest.engine)?,
        pg_connect,
        kafka: sink,
        clock,
        metrics,
        progress,
        settings: Settings {
            batch_max_events: config.pipeline.batch_max_events,
            batch_linger: config.pipeline.batch_linger,
            retry_initial_backoff: config.pipeline.sink_retry_initial_backoff,
            retry_max_backoff: config.pipeline.sink_retry_max_backoff,
            budget: Budget {
                outputs: config.pipeline.batch_max_outputs,
                bytes: config.pipeline.batch_max_bytes,
            },
            limits,
            kafka_timeout: KAFKA_TIMEOUT,
        },
    };
    readiness.pipeline_running.store(true, Ordering::Release);
    tracing::info!(topic = %config.kafka.input_topic, "consuming");
    supervisor.ready();
    let result = pipeline.run(shutdown.clone()).await;
    readiness.pipeline_running.store(false, Ordering::Release);
    shutdown.cancel();
    let _ = http.await;
    if let Some(admin_api) = admin_api {
        let _ = admin_api.await;
    }
    drop(admin);
    result
}

/// What start-up prepares for the pipeline.
struct Started {
    runtime: GuestRuntime,
    guest: LoadedGuest,
    cache: SubscriberCache,
    /// Holds the transactional id's lock for as long as the service runs.
    admin: PgConnection,
    sink: KafkaSink,
    limits: Limits,
}

/// Loads the guest, the subscriber cache and the topics' limits, and takes the database and the
/// Kafka transactions into service, side by side: each mostly waits on a core or a round trip, and
/// one after the other they took twice as long (the guest compiles in ~0.1–0.25 s, a Kafka client
/// needs a TLS and SCRAM handshake before its first request). Only the transactional producer
/// waits for something else: the id's lock. `None` when `shutdown` came first.
async fn start_up(
    config: &Config,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Started>> {
    let guest_config = config.guest.clone();
    let guest = tokio::task::spawn_blocking(move || crate::guest::start(&guest_config));
    let kafka = config.kafka.clone();
    let limits = tokio::spawn(async move { message_limits(&kafka).await });
    let cache = start_subscriber_cache(config, shutdown.clone())?;

    let guest = async {
        let (runtime, guest) = guest.await.context("loading the guest")??;
        let identity = guest.identity();
        tracing::info!(version = %identity.version, sha256 = %identity.sha256, "guest loaded");
        anyhow::Ok((runtime, guest))
    };
    let cache_loaded = async {
        cache
            .ready()
            .await
            .context("loading the subscriber cache")?;
        readiness.subscribers_loaded.store(true, Ordering::Release);
        tracing::info!(rows = cache.stats().rows, "subscriber cache loaded");
        anyhow::Ok(())
    };
    let database_and_kafka = async {
        let admin = config
            .postgres
            .connect()
            .await
            .context("connecting to PostgreSQL")?;
        let report = migrations::migrate(&admin.client)
            .await
            .context("applying the project's migrations")?;
        tracing::info!(applied = ?report.applied, "database objects up to date");
        lock_transactional_id(&admin.client, &config.kafka.transactional_id, shutdown).await?;
        let limits = limits.await.context("reading the topics' limits")?;
        let (sink, lookup) = tokio::try_join!(
            start_sink(&config.kafka, limits.max_message_bytes),
            OffsetLookup::connect(config)
        )?;
        // After `init_transactions` (which aborts what a crashed predecessor left open: until
        // then the group's offsets are unstable and cannot be read) and before the consumer joins
        // the group (a JoinGroup request held by the coordinator would delay this lookup).
        let committed: BTreeMap<i32, Forget> = lookup
            .committed()?
            .into_iter()
            .map(|(partition, commit)| (partition, Forget::all_below(commit)))
            .collect();
        let forgotten =
            postgres::forget_committed(&admin.client, &config.kafka.input_topic, &committed)
                .await
                .context("forgetting the decisions that Kafka has committed")?;
        if forgotten > 0 {
            tracing::info!(
                forgotten,
                "stored decisions confirmed as committed to Kafka"
            );
        }
        anyhow::Ok((admin, sink, limits))
    };
    tokio::select! {
        _ = shutdown.cancelled() => Ok(None),
        started = async { tokio::try_join!(guest, cache_loaded, database_and_kafka) } => {
            let ((runtime, guest), (), (admin, sink, limits)) = started?;
            Ok(Some(Started { runtime, guest, cache, admin, sink, limits }))
        }
    }
}

/// The transactional producer, its transactions initialised (which waits for the coordinator to
/// settle what a predecessor with the same id left open).
async fn start_sink(
    kafka: &crate::config::KafkaConfig,
    max_message_bytes: usize,
) -> anyhow::Result<KafkaSink> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        KafkaSink::new(
            kafka.client_config(),
            &kafka.transactional_id,
            Topics {
                input: kafka.input_topic,
                output: kafka.output_topic,
                dead_letter: kafka.dead_letter_topic,
            },
            KAFKA_TIMEOUT,
            max_message_bytes,
        )
    })
    .await?
    .map_err(|e| anyhow::anyhow!("creating the transactional producer: {e}"))
}

/// What a record batch adds to a message in the broker's accounting of `max.message.bytes`
/// (batch header and record framing), with room to spare.
const RECORD_BATCH_OVERHEAD: usize = 128;

/// The largest message Kafka takes for the output and dead-letter topics: the producer's
/// `message.max.bytes`, or a topic's `max.message.bytes` when that is smaller. A message over
/// either is refused every time it is sent, so the plan dead-letters it before any sink is
/// touched. A topic whose configuration cannot be read (no DescribeConfigs permission) is
/// assumed to take what the producer sends.
async fn message_limits(kafka: &crate::config::KafkaConfig) -> Limits {
    let mut limits = Limits {
        max_message_bytes: kafka.message_max_bytes(),
        max_message_bytes_setting: "the Kafka producer's message.max.bytes",
    };
    let admin: AdminClient<DefaultClientContext> = match kafka.client_config().create() {
        Ok(admin) => admin,
        Err(error) => {
            tracing::warn!(%error, "cannot read the topics' max.message.bytes");
            return limits;
        }
    };
    let options = AdminOptions::new().request_timeout(Some(KAFKA_TIMEOUT));
    let topics = [
        (&kafka.output_topic, "the output topic's max.message.bytes"),
        (
            &kafka.dead_letter_topic,
            "the dead-letter topic's max.message.bytes",
        ),
    ];
    for (topic, setting) in topics {
        let described = admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
            .await;
        let value = match described.as_deref() {
            Ok([Ok(resource)]) => resource
                .get("max.message.bytes")
                .and_then(|entry| entry.value.as_deref())
                .and_then(|value| value.parse::<usize>().ok()),
            Ok(results) => {
                tracing::warn!(topic, ?results, "cannot read the topic's max.message.bytes");
                None
            }
            Err(error) => {
                tracing::warn!(topic, %error, "cannot read the topic's max.message.bytes");
                None
            }
        };
        if let Some(topic_limit) = value.map(|v| v.saturating_sub(RECORD_BATCH_OVERHEAD))
            && topic_limit < limits.max_message_bytes
        {
            limits = Limits {
                max_message_bytes: topic_limit,
                max_message_bytes_setting: setting,
            };
        }
    }
    limits
}

/// Takes a PostgreSQL advisory lock named after `transactional_id` on `client`'s session, so that
/// two live hosts never share the id (they would fence each other's producer in turn, and share
/// one static group membership). Waits [`ID_LOCK_WAIT`] for a crashed predecessor's session to
/// end before it gives up.
async fn lock_transactional_id(
    client: &tokio_postgres::Client,
    transactional_id: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let name = format!("campaign-push kafka.transactional_id {transactional_id}");
    let deadline = tokio::time::Instant::now() + ID_LOCK_WAIT;
    loop {
        let taken: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&name],
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", postgres::describe(&e)))
            .context("locking kafka.transactional_id")?
            .get(0);
        if taken {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "kafka.transactional_id {transactional_id:?} is in use by another live host (it has \
             held it for {ID_LOCK_WAIT:?}); give every host its own id (the default \
             campaign-push-<host name> does, or set CAMPAIGN_PUSH__KAFKA__TRANSACTIONAL_ID)"
        );
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for kafka.transactional_id"),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

async fn reload_on_sighup(reloader: Arc<Reloader>, shutdown: CancellationToken) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("cannot listen for SIGHUP; reload through the file or the admin endpoint");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hangup.recv() => { let _ = reloader.reload("SIGHUP").await; }
        }
    }
}

fn start_subscriber_cache(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<SubscriberCache> {
    let mut pg_config = config.postgres.pg_config();
    pg_config.application_name("campaign-push-subscribers");
    let connector: Box<dyn Connect> = Box::new(PgConnector::new(
        pg_config,
        config.postgres.tls_connector()?,
    ));
    let options = CacheOptions {
        channel: config.subscribers.notify_channel.clone(),
        resync_interval: config.subscribers.resync_interval,
        ..CacheOptions::default()
    };
    let (cache, _task) = SubscriberCache::spawn(connector, options, shutdown)?;
    Ok(cache)
}

async fn report_cache_metrics(
    cache: SubscriberCache,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            now = tick.tick() => {
                let stats = cache.stats();
                metrics.cache_rows.set(stats.rows as i64);
                if let Some(age) = stats.sync_age(now.into_std()) {
                    metrics.cache_age_seconds.set(age.as_secs() as i64);
                }
            }
        }
    }
}

/// Every few seconds: records not yet consumed on the assigned partitions (high watermark minus
/// the consumer's position), for the `consumer_lag` gauge.
async fn report_consumer_lag(
    consumer: Arc<GroupConsumer>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let consumer = consumer.clone();
        let lag = tokio::task::spawn_blocking(move || -> Option<i64> {
            let positions = consumer.position().ok()?;
            let mut lag = 0;
            for element in positions.elements() {
                let (_, high) = consumer
                    .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(5))
                    .ok()?;
                if let Offset::Offset(position) = element.offset() {
                    lag += (high - position).max(0);
                } else {
                    lag += high.max(0);
                }
            }
            Some(lag)
        })
        .await;
        if let Ok(Some(lag)) = lag {
            metrics.consumer_lag.set(lag);
        }
    }
}

fn consumer_config(config: &Config) -> rdkafka::ClientConfig {
    let mut client_config = config.kafka.client_config();
    client_config
        .set("group.id", &config.kafka.consumer_group)
        // Static membership: a restarted host takes its partitions back at once instead of
        // waiting for the group to time its previous incarnation out.
        .set("group.instance.id", &config.kafka.transactional_id)
        // Offsets are committed only inside the output transaction.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Events produced in aborted transactions never reach the service.
        .set("isolation.level", "read_committed");
    client_config
}

fn create_consumer(config: &Config) -> anyhow::Result<GroupConsumer> {
    let consumer: GroupConsumer = consumer_config(config)
        .create_with_context(GroupContext::default())
        .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[&config.kafka.input_topic])
        .context("subscribing to kafka.input_topic")?;
    Ok(consumer)
}

/// Reads the consumer group's committed offsets for every partition of the input topic, with a
/// consumer that never joins the group. Connected apart from the read, so that its handshakes
/// and the topic's metadata can overlap the producer's start (the read itself must wait for it).
struct OffsetLookup {
    consumer: rdkafka::consumer::BaseConsumer,
    partitions: TopicPartitionList,
}

impl OffsetLookup {
    /// Creates the consumer and reads which partitions the input topic has.
    async fn connect(config: &Config) -> anyhow::Result<Self> {
        let topic = config.kafka.input_topic.clone();
        let mut lookup_config = consumer_config(config);
        lookup_config.remove("group.instance.id");
        tokio::task::spawn_blocking(move || {
            let consumer: rdkafka::consumer::BaseConsumer = lookup_config
                .create()
                .context("creating the Kafka offset lookup")?;
            let metadata = consumer
                .fetch_metadata(Some(&topic), KAFKA_TIMEOUT)
                .with_context(|| format!("reading the metadata of {topic}"))?;
            let mut partitions = TopicPartitionList::new();
            for topic_metadata in metadata.topics() {
                anyhow::ensure!(
                    topic_metadata.error().is_none(),
                    "kafka.input_topic {topic}: {:?}",
                    topic_metadata.error()
                );
                for partition in topic_metadata.partitions() {
                    partitions.add_partition(&topic, partition.id());
                }
            }
            Ok(Self {
                consumer,
                partitions,
            })
        })
        .await?
    }

    /// The committed offsets. A broker that has just started answers "not coordinator" or
    /// "coordinator loading" until the group's offsets partition is ready: transient, so this
    /// waits it out.
    fn committed(&self) -> anyhow::Result<BTreeMap<i32, Commit>> {
        tokio::task::block_in_place(|| {
            let deadline = std::time::Instant::now() + COORDINATOR_WAIT;
            let mut delay = Duration::from_millis(100);
            loop {
                match self
                    .consumer
                    .committed_offsets(self.partitions.clone(), KAFKA_TIMEOUT)
                {
                    Ok(committed) => return Ok(kafka::commits_of(&committed)),
                    Err(error) if std::time::Instant::now() < deadline => {
                        tracing::info!(%error, "committed offsets not readable yet; retrying");
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    Err(error) => {
                        return Err(error).context(format!(
                            "reading the committed offsets (gave up after {COORDINATOR_WAIT:?})"
                        ));
                    }
                }
            }
        })
    }
}
