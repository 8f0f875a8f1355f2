//! The PostgreSQL sink: `subscribers_feedback` rows by binary COPY, guarded by the delivery ledger.
//!
//! The ledger table is created by migration `002_delivery_ledger`. One transaction per batch: stage every candidate delivery with binary COPY, record the new
//! (campaign, client) pairs in the ledger, insert feedback rows for exactly those, and return the
//! deliveries that Kafka still has to receive — the new ones plus any of this same input record
//! whose earlier Kafka transaction never committed (a crash between the two sinks).

use std::collections::BTreeMap;
use std::pin::pin;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient};

use super::SinkError;
use crate::pipeline::plan::Plan;

const STAGING_TABLE: &str = "CREATE TEMPORARY TABLE IF NOT EXISTS campaign_push_staging (
    idx int4 NOT NULL,
    source_partition int4 NOT NULL,
    source_offset int8 NOT NULL,
    restaurant_id text NOT NULL,
    adv_campaign_id text NOT NULL,
    adv_campaign_content text NOT NULL,
    adv_campaign_owner text NOT NULL,
    adv_campaign_owner_contact text NOT NULL,
    adv_campaign_datetime_start int8 NOT NULL,
    adv_campaign_datetime_end int8 NOT NULL,
    datetime_created int8 NOT NULL,
    client_id text NOT NULL,
    trigger_datetime_created int4 NOT NULL
) ON COMMIT DELETE ROWS";

const STAGING_COPY: &str = "COPY campaign_push_staging FROM STDIN (FORMAT binary)";
const STAGING_TYPES: [Type; 13] = [
    Type::INT4,
    Type::INT4,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::INT4,
];

const INSERT_NEW: &str = "WITH new AS (
    INSERT INTO campaign_push_deliveries
        (adv_campaign_id, client_id, source_topic, source_partition, source_offset)
    SELECT adv_campaign_id, client_id, $1, source_partition, source_offset
    FROM campaign_push_staging
    ORDER BY idx
    ON CONFLICT DO NOTHING
    RETURNING adv_campaign_id, client_id, source_partition, source_offset
)
INSERT INTO public.subscribers_feedback (
    restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner,
    adv_campaign_owner_contact, adv_campaign_datetime_start, adv_campaign_datetime_end,
    datetime_created, client_id, trigger_datetime_created, feedback)
SELECT s.restaurant_id, s.adv_campaign_id, s.adv_campaign_content, s.adv_campaign_owner,
    s.adv_campaign_owner_contact, s.adv_campaign_datetime_start, s.adv_campaign_datetime_end,
    s.datetime_created, s.client_id, s.trigger_datetime_created, NULL
FROM campaign_push_staging s
JOIN new USING (adv_campaign_id, client_id, source_partition, source_offset)
ORDER BY s.idx";

const TO_SEND: &str = "SELECT s.idx
FROM campaign_push_staging s
JOIN campaign_push_deliveries d USING (adv_campaign_id, client_id)
WHERE d.source_topic = $1
  AND d.source_partition = s.source_partition
  AND d.source_offset = s.source_offset
  AND NOT d.kafka_committed
ORDER BY s.idx";

/// One statement for every partition, so that confirming costs one round trip per batch.
const CONFIRM: &str = "UPDATE campaign_push_deliveries d SET kafka_committed = true
FROM unnest($2::int4[], $3::int8[]) AS c(source_partition, next_offset)
WHERE d.source_topic = $1 AND d.source_partition = c.source_partition
  AND d.source_offset < c.next_offset AND NOT d.kafka_committed";

/// What the PostgreSQL sink wrote for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Indices into `plan.deliveries` that Kafka must receive.
    pub to_send: Vec<usize>,
    /// Feedback rows inserted (new deliveries).
    pub rows_inserted: u64,
}

/// Prepares a fresh connection: the session's staging table.
pub async fn prepare_session(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(STAGING_TABLE).await
}

/// Marks as Kafka-committed every pending delivery of `topic` read before `next_offsets`: the
/// consumer group's committed offsets prove that those records' Kafka transactions committed.
pub async fn confirm(
    client: &Client,
    topic: &str,
    next_offsets: &BTreeMap<i32, i64>,
) -> Result<u64, tokio_postgres::Error> {
    mark_confirmed(client, topic, next_offsets).await
}

async fn mark_confirmed(
    client: &impl GenericClient,
    topic: &str,
    next_offsets: &BTreeMap<i32, i64>,
) -> Result<u64, tokio_postgres::Error> {
    if next_offsets.is_empty() {
        return Ok(0);
    }
    let partitions: Vec<i32> = next_offsets.keys().copied().collect();
    let offsets: Vec<i64> = next_offsets.values().copied().collect();
    client
        .execute(CONFIRM, &[&topic, &partitions, &offsets])
        .await
}

/// Writes a batch plan in one transaction; see the module doc.
///
/// `confirmed` are the next offsets of the previous batch whose Kafka transaction committed; they
/// are marked in the ledger in the same transaction, saving a round trip per batch.
pub async fn write(
    client: &mut Client,
    topic: &str,
    plan: &Plan<'_>,
    confirmed: &BTreeMap<i32, i64>,
) -> Result<Written, SinkError> {
    write_transaction(client, topic, plan, confirmed)
        .await
        .map_err(classify)
}

async fn write_transaction(
    client: &mut Client,
    topic: &str,
    plan: &Plan<'_>,
    confirmed: &BTreeMap<i32, i64>,
) -> Result<Written, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    mark_confirmed(&transaction, topic, confirmed).await?;
    if plan.deliveries.is_empty() {
        transaction.commit().await?;
        return Ok(Written {
            to_send: Vec::new(),
            rows_inserted: 0,
        });
    }
    let sink = transaction.copy_in(STAGING_COPY).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &STAGING_TYPES));
    for (index, delivery) in plan.deliveries.iter().enumerate() {
        let index = i32::try_from(index).expect("a batch holds fewer than 2^31 deliveries");
        let row = &delivery.row;
        let values: [&(dyn ToSql + Sync); 13] = [
            &index,
            &delivery.source.partition,
            &delivery.source.offset,
            &row.restaurant_id,
            &row.adv_campaign_id,
            &row.adv_campaign_content,
            &row.adv_campaign_owner,
            &row.adv_campaign_owner_contact,
            &row.adv_campaign_datetime_start,
            &row.adv_campaign_datetime_end,
            &row.datetime_created,
            &row.client_id,
            &row.trigger_datetime_created,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.as_mut().finish().await?;
    let rows_inserted = transaction.execute(INSERT_NEW, &[&topic]).await?;
    let to_send = transaction
        .query(TO_SEND, &[&topic])
        .await?
        .iter()
        .map(|row| row.get::<_, i32>(0) as usize)
        .collect();
    transaction.commit().await?;
    Ok(Written {
        to_send,
        rows_inserted,
    })
}

/// Everything the database says is worth a retry on a fresh connection, except errors that a
/// retry cannot fix (schema mismatch, permissions), which stop the service.
fn classify(error: tokio_postgres::Error) -> SinkError {
    use tokio_postgres::error::SqlState;
    let fatal = error.code().is_some_and(|code| {
        [
            SqlState::UNDEFINED_TABLE,
            SqlState::UNDEFINED_COLUMN,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::DATATYPE_MISMATCH,
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
        ]
        .contains(code)
    });
    let message = format!("{error:#}");
    if fatal {
        SinkError::Fatal(message)
    } else {
        SinkError::Retryable(message)
    }
}
