-- The delivery ledger: one row per (campaign, client) ever delivered, with the input record that
-- delivered it and whether that record's Kafka transaction is known to have committed.
-- Written in the same PostgreSQL transaction as the subscribers_feedback rows it accounts for.
CREATE TABLE IF NOT EXISTS campaign_push_deliveries (
    adv_campaign_id  text    NOT NULL,
    client_id        text    NOT NULL,
    source_topic     text    NOT NULL,
    source_partition int4    NOT NULL,
    source_offset    int8    NOT NULL,
    kafka_committed  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (adv_campaign_id, client_id)
);

-- Finds the few deliveries whose Kafka transaction is not yet confirmed.
CREATE INDEX IF NOT EXISTS campaign_push_deliveries_pending
    ON campaign_push_deliveries (source_topic, source_partition, source_offset)
    WHERE NOT kafka_committed;
