-- A decision's messages usually differ only in the client id each one names, which is also its
-- key: such a decision is stored as its keys and one template, the text before and after the key
-- (host/src/sinks/template.rs), instead of every rendered value. A 20,000-message batch then
-- stores ~1 kB per event instead of ~4.5 kB, none of it compressed by TOAST. When
-- `value_template` is NULL, `message_values` holds the values as before.
ALTER TABLE campaign_push_decisions
    ADD COLUMN IF NOT EXISTS value_template text[] NULL;
