-- Push every change of public.subscribers_restaurants to the service's subscriber caches.
--
-- Applied by campaign_push::subscribers::migrate (one transaction, under an advisory lock); safe to
-- run again. Adds objects only: the contract's tables are not altered.
--
-- Channel: the trigger's argument, campaign_push_subscribers, which is the service's default
-- (subscribers::DEFAULT_CHANNEL). A deployment that listens elsewhere changes both.
--
-- Payload: a JSON object, see host/src/subscribers/change.rs:
--   {"op":"I","seq":n,"id":..,"client_id":..,"restaurant_id":..}          insert
--   {"op":"U","seq":n,"old_id":..,"id":..,"client_id":..,"restaurant_id":..}  update
--   {"op":"D","seq":n,"id":..}                                              delete
--   {"op":"F","seq":n,"id":..[,"old_id":..]}   insert/update too big for a NOTIFY payload
--                                              (8000 bytes): the cache reads the row itself
--   {"op":"T","seq":n}                                                      truncate: reload
-- seq numbers the notifications of one transaction (kept in a transaction-local setting, so no
-- sequence and no extra privilege is needed). It makes each payload unique, because PostgreSQL
-- delivers identical payloads of one transaction only once.
--
-- Delivery: at commit, in commit order, only to sessions listening at that time. The caches LISTEN
-- before they load the table, so no committed change falls between load and notifications.

CREATE OR REPLACE FUNCTION public.campaign_push_subscribers_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    channel text := coalesce(TG_ARGV[0], 'campaign_push_subscribers');
    seq int8;
    payload text;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD IS NOT DISTINCT FROM NEW THEN
        RETURN NULL;  -- an UPDATE that changed nothing
    END IF;
    seq := coalesce(nullif(current_setting('campaign_push.notify_seq', true), ''), '0')::int8 + 1;
    PERFORM set_config('campaign_push.notify_seq', seq::text, true);
    IF TG_OP = 'TRUNCATE' THEN
        payload := json_build_object('op', 'T', 'seq', seq)::text;
    ELSIF TG_OP = 'DELETE' THEN
        payload := json_build_object('op', 'D', 'seq', seq, 'id', OLD.id)::text;
    ELSIF TG_OP = 'INSERT' THEN
        payload := json_build_object('op', 'I', 'seq', seq, 'id', NEW.id,
            'client_id', NEW.client_id, 'restaurant_id', NEW.restaurant_id)::text;
        IF octet_length(payload) > 7900 THEN
            payload := json_build_object('op', 'F', 'seq', seq, 'id', NEW.id)::text;
        END IF;
    ELSE
        payload := json_build_object('op', 'U', 'seq', seq, 'old_id', OLD.id, 'id', NEW.id,
            'client_id', NEW.client_id, 'restaurant_id', NEW.restaurant_id)::text;
        IF octet_length(payload) > 7900 THEN
            payload := json_build_object('op', 'F', 'seq', seq, 'old_id', OLD.id, 'id', NEW.id)::text;
        END IF;
    END IF;
    PERFORM pg_notify(channel, payload);
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION public.campaign_push_subscribers_notify() IS
    'campaign-push: NOTIFY the subscriber caches of a change of subscribers_restaurants';

DROP TRIGGER IF EXISTS campaign_push_subscribers_notify_row ON public.subscribers_restaurants;
CREATE TRIGGER campaign_push_subscribers_notify_row
    AFTER INSERT OR UPDATE OR DELETE ON public.subscribers_restaurants
    FOR EACH ROW EXECUTE FUNCTION public.campaign_push_subscribers_notify('campaign_push_subscribers');

DROP TRIGGER IF EXISTS campaign_push_subscribers_notify_truncate ON public.subscribers_restaurants;
CREATE TRIGGER campaign_push_subscribers_notify_truncate
    AFTER TRUNCATE ON public.subscribers_restaurants
    FOR EACH STATEMENT EXECUTE FUNCTION public.campaign_push_subscribers_notify('campaign_push_subscribers');
