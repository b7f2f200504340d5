-- Scratch: the three references the batch function writes (migration 0006's
-- statement checks) not checked at all: what checking them costs.
DROP TRIGGER messages_conversation_exists ON messages;
DROP TRIGGER messages_sender_exists ON messages;
DROP TRIGGER user_events_user_exists ON user_events;
