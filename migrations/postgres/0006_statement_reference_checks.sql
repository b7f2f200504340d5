-- The three references every stored message writes, checked once per statement
-- instead of once per row. A batch of 300 messages wrote 300 messages and about
-- 600 events, and the three foreign keys ran a check for each row: 37-40% of
-- store_message_batch's time (docs/benchmarks.md, sessions 16-18). The rules
-- stay in the schema, enforced for every writer, with the keys' meaning:
--
--   messages.conversation_id -> conversations(id)  ON DELETE CASCADE
--   messages.sender_id       -> users(id)          a user who sent messages cannot be deleted
--   user_events.user_id      -> users(id)          ON DELETE CASCADE
--
-- and their update side: a row written or changed refers to a row that exists,
-- and an id that rows refer to cannot change. Like the keys' own checks, a
-- check locks the rows referred to FOR KEY SHARE, so a delete waits for the
-- writers that refer to its rows, and a writer waits for a delete in progress
-- and then finds the row gone. A violation raises foreign_key_violation (23503)
-- under the name of the key it replaces.
--
-- A delete's cascade and check read at the statement's snapshot. At READ
-- COMMITTED (every Parley writer, and psql's default) that snapshot includes a
-- writer the delete waited for. A REPEATABLE READ transaction that deletes a
-- conversation or user while another transaction adds a message to it can miss
-- that message, where the keys would have raised a serialization error.
--
-- SQLite keeps its foreign keys: they cost it little, and the same tests
-- (store/tests/references.rs) hold both backends to the same rules.

ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey, DROP CONSTRAINT messages_sender_id_fkey;
ALTER TABLE user_events DROP CONSTRAINT user_events_user_id_fkey;

-- Rows written refer to existing rows. Arguments: the table referred to (by its
-- id), the referring column, the name of the key. Reads the statement's new
-- rows. Static queries, one per key, so each session plans them once: a query
-- built for each call cost 0.3-0.6 ms more for a batch of 4 messages.
CREATE FUNCTION references_exist() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing boolean;
BEGIN
    CASE TG_TABLE_NAME || '.' || TG_ARGV[1]
    WHEN 'messages.conversation_id' THEN
        missing := (SELECT count(*) FROM (SELECT 1 FROM conversations r
                        WHERE r.id IN (SELECT n.conversation_id FROM new_rows n) FOR KEY SHARE) x)
                   <> (SELECT count(DISTINCT n.conversation_id) FROM new_rows n);
    WHEN 'messages.sender_id' THEN
        missing := (SELECT count(*) FROM (SELECT 1 FROM users r
                        WHERE r.id IN (SELECT n.sender_id FROM new_rows n) FOR KEY SHARE) x)
                   <> (SELECT count(DISTINCT n.sender_id) FROM new_rows n);
    WHEN 'user_events.user_id' THEN
        missing := (SELECT count(*) FROM (SELECT 1 FROM users r
                        WHERE r.id IN (SELECT n.user_id FROM new_rows n) FOR KEY SHARE) x)
                   <> (SELECT count(DISTINCT n.user_id) FROM new_rows n);
    END CASE;
    IF missing THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('%s.%s refers to no row of %s', TG_TABLE_NAME, TG_ARGV[1], TG_ARGV[0]),
            CONSTRAINT = TG_ARGV[2], TABLE = TG_TABLE_NAME, COLUMN = TG_ARGV[1];
    END IF;
    RETURN NULL;
END $$;

-- Rows referring to deleted rows go with them. Arguments: the referring table
-- and column. Reads the statement's old rows.
CREATE FUNCTION references_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DELETE FROM %1$I t USING old_rows o WHERE t.%2$I = o.id', TG_ARGV[0], TG_ARGV[1]);
    RETURN NULL;
END $$;

-- Rows still referred to cannot be deleted. Arguments: the referring table and
-- column, the name of the key. Reads the statement's old rows, after any
-- cascade of the same statement has run.
CREATE FUNCTION references_block_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    referred boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM old_rows o JOIN %1$I t ON t.%2$I = o.id)', TG_ARGV[0], TG_ARGV[1])
        INTO referred;
    IF referred THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('%s.%s still refers to a deleted row of %s', TG_ARGV[0], TG_ARGV[1], TG_TABLE_NAME),
            CONSTRAINT = TG_ARGV[2], TABLE = TG_ARGV[0], COLUMN = TG_ARGV[1];
    END IF;
    RETURN NULL;
END $$;

-- An id that rows refer to cannot change. A row trigger with a WHEN clause, so
-- the updates that leave the id alone (every one Parley makes) cost nothing.
-- Arguments: the referring table and column, the name of the key.
CREATE FUNCTION references_keep_id() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    referred boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %1$I t WHERE t.%2$I = $1)', TG_ARGV[0], TG_ARGV[1])
        USING OLD.id INTO referred;
    IF referred THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('%s.id %s is still referred to by %s.%s', TG_TABLE_NAME, OLD.id, TG_ARGV[0], TG_ARGV[1]),
            CONSTRAINT = TG_ARGV[2], TABLE = TG_ARGV[0], COLUMN = TG_ARGV[1];
    END IF;
    RETURN NULL;
END $$;

-- messages.conversation_id -> conversations(id) ON DELETE CASCADE
CREATE TRIGGER messages_conversation_exists AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION references_exist('conversations', 'conversation_id', 'messages_conversation_id_fkey');
CREATE TRIGGER messages_conversation_exists_after_update AFTER UPDATE ON messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION references_exist('conversations', 'conversation_id', 'messages_conversation_id_fkey');
CREATE TRIGGER conversations_delete_messages AFTER DELETE ON conversations REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION references_cascade('messages', 'conversation_id');
CREATE TRIGGER conversations_keep_id_of_messages AFTER UPDATE OF id ON conversations
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION references_keep_id('messages', 'conversation_id', 'messages_conversation_id_fkey');

-- messages.sender_id -> users(id), no deleting a user who sent messages
CREATE TRIGGER messages_sender_exists AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION references_exist('users', 'sender_id', 'messages_sender_id_fkey');
CREATE TRIGGER messages_sender_exists_after_update AFTER UPDATE ON messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION references_exist('users', 'sender_id', 'messages_sender_id_fkey');
CREATE TRIGGER users_delete_unless_sender AFTER DELETE ON users REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION references_block_delete('messages', 'sender_id', 'messages_sender_id_fkey');
CREATE TRIGGER users_keep_id_of_messages AFTER UPDATE OF id ON users
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION references_keep_id('messages', 'sender_id', 'messages_sender_id_fkey');

-- user_events.user_id -> users(id) ON DELETE CASCADE
CREATE TRIGGER user_events_user_exists AFTER INSERT ON user_events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION references_exist('users', 'user_id', 'user_events_user_id_fkey');
CREATE TRIGGER user_events_user_exists_after_update AFTER UPDATE ON user_events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION references_exist('users', 'user_id', 'user_events_user_id_fkey');
CREATE TRIGGER users_delete_user_events AFTER DELETE ON users REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION references_cascade('user_events', 'user_id');
CREATE TRIGGER users_keep_id_of_user_events AFTER UPDATE OF id ON users
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION references_keep_id('user_events', 'user_id', 'user_events_user_id_fkey');
