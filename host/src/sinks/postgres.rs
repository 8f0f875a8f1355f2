//! The PostgreSQL sink: where a batch's decisions are taken for good.
//!
//! One transaction per write: record the candidates' (campaign, client) pairs in the delivery
//! ledger (migration `002_delivery_ledger`), insert a `subscribers_feedback` row by binary COPY
//! for exactly the pairs that were new, and store every candidate's decision — the messages of
//! those new pairs, or its dead-letter reason — in `campaign_push_decisions` (migration
//! `003_decisions`). Once that commits, the record is decided: [`recall`] gives the decision back
//! to any later attempt, and [`forget_committed`] deletes it when Kafka has committed it.

use std::collections::BTreeMap;
use std::pin::pin;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient};

use super::SinkError;
use crate::guest::GuestIdentity;
use crate::plan::{Candidate, Decision, Position, StoredDecision};

const INSERT_PAIRS: &str = "WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(adv_campaign_id, client_id, idx)
), new AS (
    INSERT INTO campaign_push_deliveries (adv_campaign_id, client_id)
    SELECT adv_campaign_id, client_id FROM input ORDER BY idx
    ON CONFLICT DO NOTHING
    RETURNING adv_campaign_id, client_id
)
SELECT input.idx FROM input JOIN new USING (adv_campaign_id, client_id)";

const FEEDBACK_COPY: &str = "COPY public.subscribers_feedback (
    restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner,
    adv_campaign_owner_contact, adv_campaign_datetime_start, adv_campaign_datetime_end,
    datetime_created, client_id, trigger_datetime_created) FROM STDIN (FORMAT binary)";
const FEEDBACK_TYPES: [Type; 10] = [
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

const DECISIONS_COPY: &str = "COPY campaign_push_decisions (
    source_topic, source_partition, source_offset, decided_at, guest_version, guest_sha256,
    dead_letter_reason, message_keys, message_values) FROM STDIN (FORMAT binary)";
const DECISION_TYPES: [Type; 9] = [
    Type::TEXT,
    Type::INT4,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
];
/// A decision already stored for one of the records: another attempt decided first.
const DECISIONS_KEY: &str = "campaign_push_decisions_pkey";

const RECALL: &str = "SELECT d.source_partition, d.source_offset, d.decided_at, d.guest_version,
    d.guest_sha256, d.dead_letter_reason, d.message_keys, d.message_values
FROM campaign_push_decisions d
JOIN unnest($2::int4[], $3::int8[], $4::int8[]) AS r(source_partition, first, last)
  ON d.source_partition = r.source_partition AND d.source_offset BETWEEN r.first AND r.last
WHERE d.source_topic = $1";

/// One statement for every partition, so that confirming costs one round trip per batch.
const FORGET: &str = "DELETE FROM campaign_push_decisions d
USING unnest($2::int4[], $3::int8[]) AS c(source_partition, next_offset)
WHERE d.source_topic = $1 AND d.source_partition = c.source_partition
  AND d.source_offset < c.next_offset";

/// The stored decisions of `topic` for records within `ranges` (per partition, first and last
/// offset, inclusive).
pub async fn recall(
    client: &Client,
    topic: &str,
    ranges: &BTreeMap<i32, (i64, i64)>,
) -> Result<Vec<StoredDecision>, SinkError> {
    let partitions: Vec<i32> = ranges.keys().copied().collect();
    let firsts: Vec<i64> = ranges.values().map(|range| range.0).collect();
    let lasts: Vec<i64> = ranges.values().map(|range| range.1).collect();
    let rows = client
        .query(RECALL, &[&topic, &partitions, &firsts, &lasts])
        .await
        .map_err(|e| classify(&e))?;
    Ok(rows
        .iter()
        .map(|row| StoredDecision {
            source: Position {
                partition: row.get(0),
                offset: row.get(1),
            },
            decided_at: row.get(2),
            guest: GuestIdentity {
                version: row.get(3),
                sha256: row.get(4),
            },
            dead_letter: row.get(5),
            keys: row.get(6),
            values: row.get(7),
        })
        .collect())
}

/// Deletes the stored decisions of `topic` before `next_offsets`: the consumer group's committed
/// offsets prove that those records' Kafka transactions committed.
pub async fn forget_committed(
    client: &impl GenericClient,
    topic: &str,
    next_offsets: &BTreeMap<i32, i64>,
) -> Result<u64, SinkError> {
    if next_offsets.is_empty() {
        return Ok(0);
    }
    let partitions: Vec<i32> = next_offsets.keys().copied().collect();
    let offsets: Vec<i64> = next_offsets.values().copied().collect();
    client
        .execute(FORGET, &[&topic, &partitions, &offsets])
        .await
        .map_err(|e| classify(&e))
}

/// What [`write`] decided, in the order of its candidates.
#[derive(Debug)]
pub struct Written<'a> {
    pub decisions: Vec<Decision<'a>>,
    /// Feedback rows inserted: the pairs new to the ledger.
    pub rows_inserted: u64,
}

/// Stores the decisions of `candidates`, taken by `guest` at `now`, in one transaction; see the
/// module doc. `confirmed` (the next offsets of the last batch whose Kafka transaction committed)
/// are forgotten in the same transaction, saving a round trip.
///
/// [`SinkError::Refused`] means that the database refused the data of one of the candidates for
/// good; [`SinkError::Conflict`], that another attempt stored a decision for one of them first.
pub async fn write<'a>(
    client: &mut Client,
    topic: &str,
    candidates: &[&Candidate<'a>],
    guest: &'a GuestIdentity,
    now: i64,
    confirmed: &BTreeMap<i32, i64>,
) -> Result<Written<'a>, SinkError> {
    let transaction = client.transaction().await.map_err(|e| classify(&e))?;
    forget_committed(&transaction, topic, confirmed).await?;
    let written = decide(&transaction, topic, candidates, guest, now)
        .await
        .map_err(|e| classify(&e))?;
    crate::crash_point!("before-postgres-commit");
    transaction.commit().await.map_err(|e| classify(&e))?;
    Ok(written)
}

async fn decide<'a>(
    transaction: &tokio_postgres::Transaction<'_>,
    topic: &str,
    candidates: &[&Candidate<'a>],
    guest: &'a GuestIdentity,
    now: i64,
) -> Result<Written<'a>, tokio_postgres::Error> {
    let deliveries: Vec<_> = candidates
        .iter()
        .flat_map(|candidate| candidate.deliveries())
        .collect();
    let mut is_new = vec![false; deliveries.len()];
    if !deliveries.is_empty() {
        let campaigns: Vec<&str> = deliveries.iter().map(|d| d.row.adv_campaign_id).collect();
        let clients: Vec<&str> = deliveries.iter().map(|d| d.row.client_id).collect();
        for row in transaction
            .query(INSERT_PAIRS, &[&campaigns, &clients])
            .await?
        {
            let ordinal: i64 = row.get(0);
            is_new[(ordinal - 1) as usize] = true;
        }
    }
    let rows_inserted = is_new.iter().filter(|&&new| new).count() as u64;
    if rows_inserted > 0 {
        let sink = transaction.copy_in(FEEDBACK_COPY).await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &FEEDBACK_TYPES));
        for (delivery, _) in deliveries.iter().zip(&is_new).filter(|(_, new)| **new) {
            let row = &delivery.row;
            let values: [&(dyn ToSql + Sync); 10] = [
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
    }

    let mut is_new = is_new.into_iter();
    let decisions: Vec<Decision<'a>> = candidates
        .iter()
        .map(|candidate| Decision {
            source: candidate.source,
            input: candidate.input,
            guest,
            messages: candidate
                .deliveries()
                .iter()
                .filter(|_| is_new.next().expect("one flag per delivery"))
                .map(|delivery| delivery.message)
                .collect(),
            dead_letter: match &candidate.verdict {
                crate::plan::Verdict::DeadLetter(reason) => Some(reason.clone()),
                _ => None,
            },
        })
        .collect();

    let sink = transaction.copy_in(DECISIONS_COPY).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &DECISION_TYPES));
    for decision in &decisions {
        // PostgreSQL text cannot hold U+0000, and a reason is the guest's free text.
        let reason = decision
            .dead_letter
            .as_deref()
            .map(|reason| reason.replace('\0', "\\u0000"));
        let keys: Vec<&str> = decision.messages.iter().map(|m| m.key).collect();
        let values: Vec<&str> = decision.messages.iter().map(|m| m.value).collect();
        let row: [&(dyn ToSql + Sync); 9] = [
            &topic,
            &decision.source.partition,
            &decision.source.offset,
            &now,
            &guest.version,
            &guest.sha256,
            &reason,
            &keys,
            &values,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.as_mut().finish().await?;
    Ok(Written {
        decisions,
        rows_inserted,
    })
}

/// A PostgreSQL error as one line with what the server said: SQLSTATE, message, detail, hint —
/// or, for an error of the connection, its whole cause chain.
pub fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("SQLSTATE {}: {}", db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
        // One line: it becomes a log field and a dead letter's header.
        return text.replace('\n', " ");
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    text
}

/// How the pipeline must handle a database error; see [`SinkError`].
fn classify(error: &tokio_postgres::Error) -> SinkError {
    let described = describe(error);
    let Some(code) = error.code() else {
        return SinkError::Retryable(described);
    };
    let constraint = error.as_db_error().and_then(|db| db.constraint());
    if *code == SqlState::UNIQUE_VIOLATION && constraint == Some(DECISIONS_KEY) {
        SinkError::Conflict
    } else if *code == SqlState::SEQUENCE_GENERATOR_LIMIT_EXCEEDED {
        // Class 22 like the per-event errors, but no event can be isolated from it: the
        // contract's `subscribers_feedback.id` is serial4 and has run out.
        SinkError::Fatal(format!(
            "subscribers_feedback.id cannot grow any further (an int4 serial in the contract's \
             schema): {described}"
        ))
    } else if [
        SqlState::UNDEFINED_TABLE,
        SqlState::UNDEFINED_COLUMN,
        SqlState::INSUFFICIENT_PRIVILEGE,
        SqlState::DATATYPE_MISMATCH,
    ]
    .contains(code)
    {
        SinkError::Fatal(described)
    } else if code.code().starts_with("22") || *code == SqlState::PROGRAM_LIMIT_EXCEEDED {
        // Data exceptions (a NUL in text, a value out of range) and limits (an index entry over
        // ~2.7 kB) come from the data of an event, and come again on every retry.
        SinkError::Refused(described)
    } else {
        SinkError::Retryable(described)
    }
}

/// Whether the connection that returned `error` is still usable.
pub fn connection_is_usable(error: &SinkError) -> bool {
    matches!(error, SinkError::Refused(_) | SinkError::Conflict)
}
