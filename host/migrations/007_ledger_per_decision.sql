-- The delivery ledger, one row per stored decision instead of one per (campaign, client) pair
-- (host/src/sinks/ledger.rs): a row holds the clients its decision reached first, with the
-- smallest and largest of them in byte order, so that a batch reads only the rows of its campaigns
-- whose range overlaps its own. Recording a pair cost a B-tree entry of two text columns at a
-- random place of a large index: a third of the PostgreSQL time of a batch, as much as its
-- feedback rows (`make bench`, 2026-11-29). Now a decision costs one row and one index entry.
CREATE TABLE IF NOT EXISTS campaign_push_ledger (
    adv_campaign_id  text   NOT NULL,
    first_client     text   COLLATE "C" NOT NULL,
    last_client      text   COLLATE "C" NOT NULL,
    clients          text[] NOT NULL,
    -- the decision that reached them; NULL for the pairs recorded before this migration
    source_topic     text   NULL,
    source_partition int4   NULL,
    source_offset    int8   NULL,
    part             int4   NULL
);

-- As for the decisions' messages (006): lz4 where the server has it.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE campaign_push_ledger ALTER COLUMN clients SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error OR invalid_parameter_value THEN
    RAISE NOTICE 'campaign_push_ledger keeps its TOAST compression: %', SQLERRM;
END
$$;

CREATE INDEX IF NOT EXISTS campaign_push_ledger_campaign
    ON campaign_push_ledger (adv_campaign_id);

-- The pairs recorded one by one so far, in rows of 4,096 clients of a campaign in byte order (so
-- that their ranges do not overlap), then the old table.
DO $$
BEGIN
    IF to_regclass('campaign_push_deliveries') IS NOT NULL THEN
        INSERT INTO campaign_push_ledger (adv_campaign_id, first_client, last_client, clients)
        SELECT adv_campaign_id, min(client_id), max(client_id), array_agg(client_id ORDER BY client_id)
        FROM (
            SELECT adv_campaign_id, client_id COLLATE "C" AS client_id,
                   (row_number() OVER (PARTITION BY adv_campaign_id
                                       ORDER BY client_id COLLATE "C") - 1) / 4096 AS chunk
            FROM campaign_push_deliveries
        ) pairs
        GROUP BY adv_campaign_id, chunk;
        DROP TABLE campaign_push_deliveries;
    END IF;
END
$$;
