-- A record whose fan-out is larger than a batch's budget is decided and delivered in parts
-- (host/src/plan, "Parts"): one stored decision per part, each with the last client it reached.
-- The consumer group's committed offset stops at such a record until its last part is delivered,
-- and its metadata counts the parts delivered; the last delivered part is kept, as the point the
-- next part goes on from.
ALTER TABLE campaign_push_decisions
    ADD COLUMN IF NOT EXISTS part int4 NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS continue_after text NULL;

DO $$
BEGIN
    -- The key gains the part; the constraint keeps its name, which the service recognises when
    -- another attempt stored a decision first.
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
        WHERE c.conname = 'campaign_push_decisions_pkey' AND a.attname = 'part'
    ) THEN
        ALTER TABLE campaign_push_decisions
            DROP CONSTRAINT campaign_push_decisions_pkey,
            ADD CONSTRAINT campaign_push_decisions_pkey
                PRIMARY KEY (source_topic, source_partition, source_offset, part);
    END IF;
END
$$;
