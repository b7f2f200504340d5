-- Scratch: the three references checked by foreign keys, once per row, as
-- before migration 0006 replaced them with one check per statement.
DROP TRIGGER messages_conversation_exists ON messages;
DROP TRIGGER messages_sender_exists ON messages;
DROP TRIGGER user_events_user_exists ON user_events;
ALTER TABLE messages
    ADD CONSTRAINT messages_conversation_id_fkey FOREIGN KEY (conversation_id) REFERENCES conversations(id) ON DELETE CASCADE,
    ADD CONSTRAINT messages_sender_id_fkey FOREIGN KEY (sender_id) REFERENCES users(id);
ALTER TABLE user_events
    ADD CONSTRAINT user_events_user_id_fkey FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE;
