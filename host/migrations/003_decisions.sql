-- Decide once, deliver the decision (host/src/plan): the first attempt's decision for every input
-- record is stored in the PostgreSQL transaction that writes the ledger and feedback rows it
-- accounts for, and any later delivery of the record (crash replay, retry, another host after a
-- rebalance) sends what is stored here instead of computing it again. A decision is deleted once
-- the consumer group's committed offset of its partition has passed it: that offset is committed
-- in the same Kafka transaction as the record's outputs.
CREATE TABLE IF NOT EXISTS campaign_push_decisions (
    source_topic       text   NOT NULL,
    source_partition   int4   NOT NULL,
    source_offset      int8   NOT NULL,
    -- the `now` of the decision: trigger_datetime_created of its rows and messages
    decided_at         int8   NOT NULL,
    guest_version      text   NOT NULL,
    guest_sha256       text   NOT NULL,
    -- set when the record goes to the dead-letter topic
    dead_letter_reason text   NULL,
    -- the output messages for the pairs that were new to the ledger, in order
    message_keys       text[] NOT NULL,
    message_values     text[] NOT NULL,
    PRIMARY KEY (source_topic, source_partition, source_offset)
);

-- The ledger keeps only what de-duplication needs: confirmation is the decisions' deletion, no
-- longer a flag updated per pair. A delivery still pending when this migration runs (a host
-- stopped between its two commits) is not replayed from a decision: stop hosts with SIGTERM
-- before upgrading.
DROP INDEX IF EXISTS campaign_push_deliveries_pending;
ALTER TABLE campaign_push_deliveries
    DROP COLUMN IF EXISTS kafka_committed,
    DROP COLUMN IF EXISTS source_topic,
    DROP COLUMN IF EXISTS source_partition,
    DROP COLUMN IF EXISTS source_offset;
