//! The PostgreSQL sink: where a batch's decisions are taken for good.
//!
//! One transaction per write: record the candidates' (campaign, client) pairs that are new in the
//! delivery [`ledger`], insert a `subscribers_feedback` row by binary COPY
//! for exactly the pairs that were new, and store every candidate's decision — the messages of
//! those new pairs, or its dead-letter reason — in `campaign_push_decisions` (migration
//! `003_decisions`). Once that commits, the record is decided: [`recall`] gives the decision back
//! to any later attempt, and [`forget_committed`] deletes it when Kafka has committed it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::pin::pin;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient};

use super::template;
use super::{SinkError, ledger};
use crate::guest::GuestIdentity;
use crate::plan::{Candidate, Decision, Forget, Position, StoredDecision};

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
    source_topic, source_partition, source_offset, part, decided_at, guest_version, guest_sha256,
    dead_letter_reason, message_keys, message_values, value_template, continue_after)
    FROM STDIN (FORMAT binary)";
const DECISION_TYPES: [Type; 12] = [
    Type::TEXT,
    Type::INT4,
    Type::INT8,
    Type::INT4,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT,
];
/// A decision already stored for one of the records: another attempt decided first.
const DECISIONS_KEY: &str = "campaign_push_decisions_pkey";

/// Everything but the messages: a part already delivered is read for where it stopped, and its
/// messages (a whole part's worth) are not needed.
const RECALL: &str = "SELECT d.source_partition, d.source_offset, d.decided_at, d.guest_version,
    d.guest_sha256, d.dead_letter_reason, d.part, d.continue_after
FROM campaign_push_decisions d
JOIN unnest($2::int4[], $3::int8[], $4::int8[]) AS r(source_partition, first, last)
  ON d.source_partition = r.source_partition AND d.source_offset BETWEEN r.first AND r.last
WHERE d.source_topic = $1";

const RECALL_MESSAGES: &str = "SELECT d.source_partition, d.source_offset, d.part, d.message_keys,
    d.message_values, d.value_template
FROM campaign_push_decisions d
JOIN unnest($2::int4[], $3::int8[], $4::int4[]) AS r(source_partition, source_offset, part)
  USING (source_partition, source_offset, part)
WHERE d.source_topic = $1";

/// One statement for every partition, so that confirming costs one round trip per batch. Of a
/// record delivered in parts so far, the last delivered part stays: the next goes on from it.
///
/// The lower bound is what keeps this cheap: deleted decisions stay in the primary key until
/// vacuum, and the bitmap scan of a delete bounded only from above visited every one of them. With
/// the minute of deletions between two autovacuum runs, that cost 26 µs per forgotten decision,
/// more than storing it (`pg_stat_statements` during `make bench`, 2026-11-29).
const FORGET: &str = "DELETE FROM campaign_push_decisions d
USING unnest($2::int4[], $3::int8[], $4::int8[], $5::int4[])
    AS c(source_partition, from_offset, next_offset, parts)
WHERE d.source_topic = $1 AND d.source_partition = c.source_partition
  AND d.source_offset >= c.from_offset
  AND (d.source_offset < c.next_offset
       OR (d.source_offset = c.next_offset AND d.part + 1 < c.parts))";

/// The stored decisions of `topic` for records within `ranges` (per partition, first and last
/// offset, inclusive), without their messages (see [`recall_messages`]).
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
            keys: Vec::new(),
            values: Vec::new(),
            part: row.get::<_, i32>(6) as u32,
            continue_after: row.get(7),
        })
        .collect())
}

/// Reads the messages of `decisions` (recalled by [`recall`]) from `topic`'s stored decisions.
pub async fn recall_messages(
    client: &Client,
    topic: &str,
    decisions: &mut [&mut StoredDecision],
) -> Result<(), SinkError> {
    if decisions.is_empty() {
        return Ok(());
    }
    let partitions: Vec<i32> = decisions.iter().map(|d| d.source.partition).collect();
    let offsets: Vec<i64> = decisions.iter().map(|d| d.source.offset).collect();
    let parts: Vec<i32> = decisions.iter().map(|d| d.part as i32).collect();
    let rows = client
        .query(RECALL_MESSAGES, &[&topic, &partitions, &offsets, &parts])
        .await
        .map_err(|e| classify(&e))?;
    for row in rows {
        let (partition, offset, part): (i32, i64, i32) = (row.get(0), row.get(1), row.get(2));
        if let Some(decision) = decisions.iter_mut().find(|d| {
            (d.source.partition, d.source.offset, d.part as i32) == (partition, offset, part)
        }) {
            let keys: Vec<String> = row.get(3);
            decision.values = match row.get::<_, Option<Vec<String>>>(5).as_deref() {
                Some([prefix, suffix]) => template::render(prefix, suffix, &keys),
                _ => row.get(4),
            };
            decision.keys = keys;
        }
    }
    Ok(())
}

/// Deletes the stored decisions of `topic` that `forgets` say the consumer group's committed
/// offsets prove delivered: their Kafka transactions committed.
pub async fn forget_committed(
    client: &impl GenericClient,
    topic: &str,
    forgets: &BTreeMap<i32, Forget>,
) -> Result<u64, SinkError> {
    if forgets.is_empty() {
        return Ok(0);
    }
    let partitions: Vec<i32> = forgets.keys().copied().collect();
    let froms: Vec<i64> = forgets.values().map(|forget| forget.from).collect();
    let offsets: Vec<i64> = forgets.values().map(|forget| forget.until.offset).collect();
    let parts: Vec<i32> = forgets
        .values()
        .map(|forget| i32::try_from(forget.until.parts_delivered).unwrap_or(i32::MAX))
        .collect();
    client
        .execute(FORGET, &[&topic, &partitions, &froms, &offsets, &parts])
        .await
        .map_err(|e| classify(&e))
}

const UNDELIVERABLE_ROWS: &str = "DELETE FROM public.subscribers_feedback
WHERE adv_campaign_id = $1 AND client_id = ANY($2) AND trigger_datetime_created = $3";
const UNDELIVERABLE_DECISION: &str = "UPDATE campaign_push_decisions
SET message_keys = '{}', message_values = '{}', value_template = NULL, continue_after = NULL,
    dead_letter_reason = $5
WHERE source_topic = $1 AND source_partition = $2 AND source_offset = $3 AND part = $4";

/// Turns the stored `decision`, whose messages Kafka refuses for good, into a dead letter with
/// `reason`, in one transaction: its feedback rows and ledger row go (no client was notified,
/// and both sinks must agree), its stored messages too. The batch is then sent again, the record
/// as a dead letter.
pub async fn undeliverable(
    client: &mut Client,
    topic: &str,
    decision: &Decision<'_>,
    reason: &str,
) -> Result<(), SinkError> {
    let clients: Vec<&str> = decision.messages.iter().map(|m| m.key).collect();
    // Every message of a decision is of one campaign, and names it.
    let campaign = decision
        .messages
        .first()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(&m.value()).ok())
        .and_then(|value| value["adv_campaign_id"].as_str().map(str::to_owned));
    let trigger = i32::try_from(decision.decided_at).unwrap_or_default();
    let part = i32::try_from(decision.part).expect("fewer than 2^31 parts");
    let transaction = client.transaction().await.map_err(|e| classify(&e))?;
    if let Some(campaign) = &campaign {
        transaction
            .execute(UNDELIVERABLE_ROWS, &[campaign, &clients, &trigger])
            .await
            .map_err(|e| classify(&e))?;
        ledger::forget_decision(
            &transaction,
            campaign,
            topic,
            decision.source.partition,
            decision.source.offset,
            part,
        )
        .await
        .map_err(|e| classify(&e))?;
    }
    let reason = reason.replace('\0', "\\u0000");
    transaction
        .execute(
            UNDELIVERABLE_DECISION,
            &[
                &topic,
                &decision.source.partition,
                &decision.source.offset,
                &part,
                &reason,
            ],
        )
        .await
        .map_err(|e| classify(&e))?;
    transaction.commit().await.map_err(|e| classify(&e))
}

/// What [`write`](fn@write) decided, in the order of its candidates.
#[derive(Debug)]
pub struct Written<'a> {
    pub decisions: Vec<Decision<'a>>,
    /// Feedback rows inserted: the pairs new to the ledger.
    pub rows_inserted: u64,
}

/// Stores the decisions of `candidates`, taken by `guest`, in one transaction; see the module
/// doc. The decisions that `forgets` names (those the batches whose Kafka transactions
/// committed since prove delivered) are forgotten in the same transaction, saving a round trip.
///
/// [`SinkError::Refused`] means that the database refused the data of one of the candidates for
/// good; [`SinkError::Conflict`], that another attempt stored a decision for one of them first.
pub async fn write<'a>(
    client: &mut Client,
    topic: &str,
    candidates: &[&Candidate<'a>],
    guest: &'a GuestIdentity,
    forgets: &BTreeMap<i32, Forget>,
) -> Result<Written<'a>, SinkError> {
    let transaction = client.transaction().await.map_err(|e| classify(&e))?;
    // JIT compilation only costs these short statements time: the ledger's lookup, costed high
    // while its table had no statistics, spent 60–300 ms per batch compiling itself. SET LOCAL
    // ends with the transaction (a connection pooler's session may be shared).
    futures::try_join!(
        async {
            transaction
                .batch_execute("SET LOCAL jit = off")
                .await
                .map_err(|e| classify(&e))
        },
        forget_committed(&transaction, topic, forgets),
    )?;
    let written = decide(&transaction, topic, candidates, guest)
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
) -> Result<Written<'a>, tokio_postgres::Error> {
    let deliveries: Vec<_> = candidates
        .iter()
        .flat_map(|candidate| candidate.deliveries())
        .collect();
    let is_new = ledger::record_new(transaction, topic, candidates).await?;
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
            part: candidate.part,
            decided_at: candidate.decided_at,
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
    for (decision, candidate) in decisions.iter().zip(candidates) {
        // PostgreSQL text cannot hold U+0000, and a reason is the guest's free text.
        let reason = decision
            .dead_letter
            .as_deref()
            .map(|reason| reason.replace('\0', "\\u0000"));
        let keys: Vec<&str> = decision.messages.iter().map(|m| m.key).collect();
        let template = template::of(&decision.messages);
        let values: Vec<Cow<'_, str>> = match template {
            Some(_) => Vec::new(),
            None => decision.messages.iter().map(|m| m.value()).collect(),
        };
        let template = template.map(|t| vec![t.prefix, t.suffix]);
        let part = i32::try_from(candidate.part).expect("fewer than 2^31 parts");
        let row: [&(dyn ToSql + Sync); 12] = [
            &topic,
            &decision.source.partition,
            &decision.source.offset,
            &part,
            &candidate.decided_at,
            &guest.version,
            &guest.sha256,
            &reason,
            &keys,
            &values,
            &template,
            &candidate.continue_after,
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
