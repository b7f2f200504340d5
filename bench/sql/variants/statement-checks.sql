-- Scratch: the three foreign keys the batch function checks per row, replaced by
-- one check per statement (transition tables), which locks the rows referred to
-- FOR KEY SHARE as the keys' own checks do. Only the insert side: a migration
-- would also need the keys' delete side (a deleted conversation's messages and
-- a deleted user's events go with them; a user who sent messages cannot be
-- deleted) and their update side.
ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey, DROP CONSTRAINT messages_sender_id_fkey;
ALTER TABLE user_events DROP CONSTRAINT user_events_user_id_fkey;
CREATE FUNCTION messages_refs_exist() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM (SELECT 1 FROM conversations c WHERE c.id IN (SELECT n.conversation_id FROM new_rows n) FOR KEY SHARE) x)
       <> (SELECT count(DISTINCT n.conversation_id) FROM new_rows n) THEN
        RAISE foreign_key_violation USING MESSAGE = 'messages.conversation_id';
    END IF;
    IF (SELECT count(*) FROM (SELECT 1 FROM users u WHERE u.id IN (SELECT n.sender_id FROM new_rows n) FOR KEY SHARE) x)
       <> (SELECT count(DISTINCT n.sender_id) FROM new_rows n) THEN
        RAISE foreign_key_violation USING MESSAGE = 'messages.sender_id';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER messages_refs AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION messages_refs_exist();
CREATE FUNCTION events_refs_exist() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM (SELECT 1 FROM users u WHERE u.id IN (SELECT n.user_id FROM new_rows n) FOR KEY SHARE) x)
       <> (SELECT count(DISTINCT n.user_id) FROM new_rows n) THEN
        RAISE foreign_key_violation USING MESSAGE = 'user_events.user_id';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER events_refs AFTER INSERT ON user_events REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION events_refs_exist();
