-- Scratch: the three foreign keys the batch function checks per row, dropped (not a
-- migration; for measuring what their per-row trigger queries cost).
ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey, DROP CONSTRAINT messages_sender_id_fkey;
ALTER TABLE user_events DROP CONSTRAINT user_events_user_id_fkey;
