-- Retention of the delivery ledger (host/src/retention.rs): the end of every campaign the ledger
-- holds pairs of, so that the pairs of campaigns long over can be deleted. Written in the
-- transaction that writes the pairs; an event that moves a campaign's end later moves it here too.
CREATE TABLE IF NOT EXISTS campaign_push_campaigns (
    adv_campaign_id text PRIMARY KEY,
    -- the latest adv_campaign_datetime_end of the campaign's events, Unix epoch seconds
    ends_at         int8 NOT NULL
);

CREATE INDEX IF NOT EXISTS campaign_push_campaigns_ends_at ON campaign_push_campaigns (ends_at);

-- Campaigns delivered before this migration: their end as their feedback rows hold it.
INSERT INTO campaign_push_campaigns (adv_campaign_id, ends_at)
SELECT f.adv_campaign_id, max(f.adv_campaign_datetime_end)
FROM public.subscribers_feedback f
WHERE f.adv_campaign_id IN (SELECT DISTINCT adv_campaign_id FROM campaign_push_deliveries)
GROUP BY f.adv_campaign_id
ON CONFLICT (adv_campaign_id) DO NOTHING;
