-- Scratch: the three foreign keys the batch function checks per row, replaced by
-- one check per statement (transition tables), which locks the rows referred to
-- FOR KEY SHARE as the keys' own checks do. Only the insert side: a migration
-- would also need the keys' delete side (a deleted conversation's messages and
-- a deleted user's events go with them; a user who sent messages cannot be
-- deleted) and their update side.
ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey, DROP CONSTRAINT messages_sender_id_fkey;
ALTER TABLE user_events DROP CONSTRAINT user_events_user_id_fkey;
-- One check for every key: TG_ARGV is the table referred to, then the column.
CREATE FUNCTION refs_exist() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing boolean;
BEGIN
    EXECUTE format(
        'SELECT (SELECT count(*) FROM (SELECT 1 FROM %1$I r WHERE r.id IN (SELECT n.%2$I FROM new_rows n) FOR KEY SHARE) x)
              <> (SELECT count(DISTINCT n.%2$I) FROM new_rows n)',
        TG_ARGV[0], TG_ARGV[1]) INTO missing;
    IF missing THEN
        RAISE foreign_key_violation USING MESSAGE = format('%s.%s', TG_TABLE_NAME, TG_ARGV[1]);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER messages_conversation AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refs_exist('conversations', 'conversation_id');
CREATE TRIGGER messages_sender AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refs_exist('users', 'sender_id');
CREATE TRIGGER user_events_user AFTER INSERT ON user_events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refs_exist('users', 'user_id');
