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
use crate::plan::{Candidate, Commit, Decision, Position, StoredDecision};

const INSERT_PAIRS: &str = "WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(adv_campaign_id, client_id, idx)
), new AS (
    INSERT INTO campaign_push_deliveries (adv_campaign_id, client_id)
    SELECT adv_campaign_id, client_id FROM input ORDER BY idx
    ON CONFLICT DO NOTHING
    RETURNING adv_campaign_id, client_id
)
SELECT input.idx FROM input JOIN new USING (adv_campaign_id, client_id)";

/// The fast way to record pairs, when none of them is in the ledger yet (the common case: a new
/// campaign): a third of the slow path's time. A pair already there (a re-sent campaign) fails
/// the whole COPY on the primary key, and the batch takes [`INSERT_PAIRS`] instead.
const LEDGER_COPY: &str = "COPY campaign_push_deliveries (adv_campaign_id, client_id) FROM STDIN \
    (FORMAT binary)";
const LEDGER_TYPES: [Type; 2] = [Type::TEXT, Type::TEXT];

/// The campaigns of the pairs, with their latest end, for the ledger's retention; in a fixed order
/// so that two hosts writing the same campaigns lock them in the same order.
const UPSERT_CAMPAIGNS: &str = "INSERT INTO campaign_push_campaigns (adv_campaign_id, ends_at)
SELECT adv_campaign_id, max(ends_at)
FROM unnest($1::text[], $2::int8[]) AS u(adv_campaign_id, ends_at)
GROUP BY adv_campaign_id ORDER BY adv_campaign_id
ON CONFLICT (adv_campaign_id) DO UPDATE SET ends_at = EXCLUDED.ends_at
WHERE campaign_push_campaigns.ends_at < EXCLUDED.ends_at";

/// Up to `$2` ledger rows of campaigns that ended before `$1`, in one short statement.
const PURGE_PAIRS: &str = "DELETE FROM campaign_push_deliveries WHERE ctid = ANY (ARRAY(
    SELECT d.ctid FROM campaign_push_campaigns c
    JOIN campaign_push_deliveries d USING (adv_campaign_id)
    WHERE c.ends_at < $1 LIMIT $2))";

/// Campaigns that ended before `$1` and have no pair left.
const PURGE_CAMPAIGNS: &str = "DELETE FROM campaign_push_campaigns c
WHERE c.ends_at < $1 AND NOT EXISTS (
    SELECT 1 FROM campaign_push_deliveries d WHERE d.adv_campaign_id = c.adv_campaign_id)";

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
    dead_letter_reason, message_keys, message_values, continue_after) FROM STDIN (FORMAT binary)";
const DECISION_TYPES: [Type; 11] = [
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
    d.message_values
FROM campaign_push_decisions d
JOIN unnest($2::int4[], $3::int8[], $4::int4[]) AS r(source_partition, source_offset, part)
  USING (source_partition, source_offset, part)
WHERE d.source_topic = $1";

/// One statement for every partition, so that confirming costs one round trip per batch. Of a
/// record delivered in parts so far, the last delivered part stays: the next goes on from it.
const FORGET: &str = "DELETE FROM campaign_push_decisions d
USING unnest($2::int4[], $3::int8[], $4::int4[]) AS c(source_partition, next_offset, parts)
WHERE d.source_topic = $1 AND d.source_partition = c.source_partition
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
            decision.keys = row.get(3);
            decision.values = row.get(4);
        }
    }
    Ok(())
}

/// Deletes the stored decisions of `topic` that `commits` (the consumer group's committed
/// offsets) prove delivered: their Kafka transactions committed.
pub async fn forget_committed(
    client: &impl GenericClient,
    topic: &str,
    commits: &BTreeMap<i32, Commit>,
) -> Result<u64, SinkError> {
    if commits.is_empty() {
        return Ok(0);
    }
    let partitions: Vec<i32> = commits.keys().copied().collect();
    let offsets: Vec<i64> = commits.values().map(|commit| commit.offset).collect();
    let parts: Vec<i32> = commits
        .values()
        .map(|commit| i32::try_from(commit.parts_delivered).unwrap_or(i32::MAX))
        .collect();
    client
        .execute(FORGET, &[&topic, &partitions, &offsets, &parts])
        .await
        .map_err(|e| classify(&e))
}

/// Deletes the ledger's pairs of the campaigns that ended before `cutoff` (Unix epoch seconds),
/// `chunk` rows per statement so that no statement holds its locks for long, then those
/// campaigns. Returns the pairs deleted.
pub async fn purge_ended_campaigns(
    client: &impl GenericClient,
    cutoff: i64,
    chunk: i64,
) -> Result<u64, SinkError> {
    let mut purged = 0;
    loop {
        let deleted = client
            .execute(PURGE_PAIRS, &[&cutoff, &chunk])
            .await
            .map_err(|e| classify(&e))?;
        purged += deleted;
        if deleted < chunk as u64 {
            break;
        }
    }
    client
        .execute(PURGE_CAMPAIGNS, &[&cutoff])
        .await
        .map_err(|e| classify(&e))?;
    Ok(purged)
}

const UNDELIVERABLE_ROWS: &str = "DELETE FROM public.subscribers_feedback
WHERE adv_campaign_id = $1 AND client_id = ANY($2) AND trigger_datetime_created = $3";
const UNDELIVERABLE_PAIRS: &str = "DELETE FROM campaign_push_deliveries
WHERE adv_campaign_id = $1 AND client_id = ANY($2)";
const UNDELIVERABLE_DECISION: &str = "UPDATE campaign_push_decisions
SET message_keys = '{}', message_values = '{}', continue_after = NULL, dead_letter_reason = $5
WHERE source_topic = $1 AND source_partition = $2 AND source_offset = $3 AND part = $4";

/// Turns the stored `decision`, whose messages Kafka refuses for good, into a dead letter with
/// `reason`, in one transaction: its feedback rows and ledger pairs go (no client was notified,
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
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m.value).ok())
        .and_then(|value| value["adv_campaign_id"].as_str().map(str::to_owned));
    let trigger = i32::try_from(decision.decided_at).unwrap_or_default();
    let part = i32::try_from(decision.part).expect("fewer than 2^31 parts");
    let transaction = client.transaction().await.map_err(|e| classify(&e))?;
    if let Some(campaign) = &campaign {
        transaction
            .execute(UNDELIVERABLE_ROWS, &[campaign, &clients, &trigger])
            .await
            .map_err(|e| classify(&e))?;
        transaction
            .execute(UNDELIVERABLE_PAIRS, &[campaign, &clients])
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

/// What [`write`] decided, in the order of its candidates.
#[derive(Debug)]
pub struct Written<'a> {
    pub decisions: Vec<Decision<'a>>,
    /// Feedback rows inserted: the pairs new to the ledger.
    pub rows_inserted: u64,
}

/// Stores the decisions of `candidates`, taken by `guest`, in one transaction; see the module
/// doc. `confirmed` (the commits of the last batch whose Kafka transaction committed) are
/// forgotten in the same transaction, saving a round trip.
///
/// [`SinkError::Refused`] means that the database refused the data of one of the candidates for
/// good; [`SinkError::Conflict`], that another attempt stored a decision for one of them first.
pub async fn write<'a>(
    client: &mut Client,
    topic: &str,
    candidates: &[&Candidate<'a>],
    guest: &'a GuestIdentity,
    confirmed: &BTreeMap<i32, Commit>,
) -> Result<Written<'a>, SinkError> {
    let transaction = client.transaction().await.map_err(|e| classify(&e))?;
    forget_committed(&transaction, topic, confirmed).await?;
    let written = decide(&transaction, topic, candidates, guest)
        .await
        .map_err(|e| classify(&e))?;
    crate::crash_point!("before-postgres-commit");
    transaction.commit().await.map_err(|e| classify(&e))?;
    Ok(written)
}

/// Records every pair as new in the ledger, failing with a unique violation if one is not.
async fn copy_pairs(
    transaction: &tokio_postgres::Transaction<'_>,
    campaigns: &[&str],
    clients: &[&str],
) -> Result<(), tokio_postgres::Error> {
    let sink = transaction.copy_in(LEDGER_COPY).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &LEDGER_TYPES));
    for (campaign, client) in campaigns.iter().zip(clients) {
        let values: [&(dyn ToSql + Sync); 2] = [campaign, client];
        writer.as_mut().write(&values).await?;
    }
    writer.as_mut().finish().await?;
    Ok(())
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
    let mut is_new = vec![false; deliveries.len()];
    if !deliveries.is_empty() {
        let campaigns: Vec<&str> = deliveries.iter().map(|d| d.row.adv_campaign_id).collect();
        let clients: Vec<&str> = deliveries.iter().map(|d| d.row.client_id).collect();
        // One entry per candidate, not per pair: a candidate's pairs share their campaign.
        let (ended, ends): (Vec<&str>, Vec<i64>) = candidates
            .iter()
            .filter_map(|candidate| candidate.deliveries().first())
            .map(|d| (d.row.adv_campaign_id, d.row.adv_campaign_datetime_end))
            .unzip();
        // Both statements in flight at once on the connection: one round trip, not two.
        let campaign_params: [&(dyn ToSql + Sync); 2] = [&ended, &ends];
        futures::try_join!(
            transaction.execute(UPSERT_CAMPAIGNS, &campaign_params),
            transaction.batch_execute("SAVEPOINT ledger_copy"),
        )?;
        match copy_pairs(transaction, &campaigns, &clients).await {
            Ok(()) => is_new.fill(true),
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                transaction
                    .batch_execute("ROLLBACK TO SAVEPOINT ledger_copy")
                    .await?;
                let pair_params: [&(dyn ToSql + Sync); 2] = [&campaigns, &clients];
                for row in transaction.query(INSERT_PAIRS, &pair_params).await? {
                    let ordinal: i64 = row.get(0);
                    is_new[(ordinal - 1) as usize] = true;
                }
            }
            Err(error) => return Err(error),
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
        let values: Vec<&str> = decision.messages.iter().map(|m| m.value).collect();
        let part = i32::try_from(candidate.part).expect("fewer than 2^31 parts");
        let row: [&(dyn ToSql + Sync); 11] = [
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
