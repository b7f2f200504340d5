-- Scratch: the batch function with its messages and events written by one
-- statement (the members of every conversation locked before it), each
-- message's number and each member's event number read from the rows locked
-- instead of from the UPDATE's RETURNING. Same results as migration 0005's.
-- It keeps 0005's lookups of retries and answered messages inside the first
-- statement, so against `base` it also leaves out 0007's separate lookup
-- statement (about 2 us a message, docs/benchmarks.md session 18).
CREATE OR REPLACE FUNCTION store_message_batch(
    ids uuid[], senders uuid[], recipients uuid[], direct_keys text[], targets uuid[],
    client_ids text[], kinds text[], bodies text[], replies uuid[], attachment_ids uuid[],
    attachments text[], times bigint[], new_ids uuid[])
RETURNS TABLE (n int, conversation_id uuid, seq bigint, user_id uuid, event_seq bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    first_at bigint := (SELECT min(t) FROM unnest(times) AS t);
    convs uuid[];
BEGIN
    WITH pairs AS (
        SELECT p.k, p.sender, p.recipient, p.new_id
        FROM (SELECT DISTINCT ON (b.k) b.k, b.sender, b.recipient, b.new_id
              FROM unnest(direct_keys, senders, recipients, new_ids) WITH ORDINALITY AS b(k, sender, recipient, new_id, i)
              WHERE b.k IS NOT NULL
              ORDER BY b.k, b.i) p
        WHERE p.sender <> p.recipient
          AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.direct_key = p.k)
          AND EXISTS (SELECT 1 FROM users u WHERE u.id = p.recipient)
    ), made AS (
        INSERT INTO conversations AS c (id, kind, direct_key, audience, created_by, last_seq, created_at)
        SELECT p.new_id, 'direct', p.k, 'user_user', p.sender, 0, first_at FROM pairs p ORDER BY p.k
        ON CONFLICT (direct_key) DO NOTHING
        RETURNING c.id, c.direct_key
    )
    INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
    SELECT made.id, m.member, 'member', first_at
    FROM made JOIN pairs p ON p.k = made.direct_key, LATERAL (VALUES (p.sender), (p.recipient)) AS m(member);

    convs := ARRAY(
        SELECT coalesce(b.target, c.id)
        FROM unnest(targets, direct_keys) WITH ORDINALITY AS b(target, k, i)
        LEFT JOIN conversations c ON c.direct_key = b.k
        ORDER BY b.i);
    -- Locks: the conversations, then all their members, each in id order.
    PERFORM 1 FROM conversations c WHERE c.id = ANY(convs) ORDER BY c.id FOR NO KEY UPDATE;
    PERFORM 1 FROM users u
    WHERE u.id IN (SELECT m.user_id FROM conversation_members m WHERE m.conversation_id = ANY(convs))
    ORDER BY u.id FOR NO KEY UPDATE;

    RETURN QUERY
    WITH batch AS (
        SELECT b.i, c.id AS conv, c.last_seq, b.sender, b.client_id
        FROM unnest(senders, client_ids, kinds, replies) WITH ORDINALITY AS b(sender, client_id, kind, reply_to, i)
        JOIN conversations c ON c.id = convs[b.i]
        WHERE EXISTS (SELECT 1 FROM conversation_members m WHERE m.conversation_id = c.id AND m.user_id = b.sender)
          AND NOT (b.kind = 'text' AND EXISTS
                (SELECT 1 FROM conversation_members m WHERE m.conversation_id = c.id AND m.blocked))
          AND (b.reply_to IS NULL OR EXISTS
                (SELECT 1 FROM messages r WHERE r.id = b.reply_to AND r.conversation_id = c.id))
          AND NOT EXISTS (SELECT 1 FROM messages s WHERE s.sender_id = b.sender AND s.client_id = b.client_id)
    ), firsts AS (
        SELECT b.i, b.conv, b.last_seq, row_number() OVER (PARTITION BY b.sender, b.client_id ORDER BY b.i) AS copy
        FROM batch b
    ), stored AS (
        SELECT f.i, f.conv, f.last_seq + row_number() OVER (PARTITION BY f.conv ORDER BY f.i) AS seq
        FROM firsts f WHERE f.copy = 1
    ), counts AS (
        SELECT s.conv, max(s.seq) AS last, max(times[s.i]) AS at FROM stored s GROUP BY s.conv
    ), numbered AS (
        UPDATE conversations c SET last_seq = counts.last, last_message_at = counts.at
        FROM counts WHERE c.id = counts.conv
    ), inserted AS (
        INSERT INTO messages (id, conversation_id, seq, sender_id, client_id, kind, body, reply_to,
                              attachment_id, attachment, created_at)
        SELECT ids[s.i], s.conv, s.seq, senders[s.i], client_ids[s.i], kinds[s.i], bodies[s.i], replies[s.i],
               attachment_ids[s.i], attachments[s.i], times[s.i]
        FROM stored s ORDER BY s.i
    ), events AS (
        SELECT s.i, s.conv, s.seq, m.user_id AS member, u.last_event_seq
               + row_number() OVER (PARTITION BY m.user_id ORDER BY s.i) AS event_seq
        FROM stored s
        JOIN conversation_members m ON m.conversation_id = s.conv
        JOIN users u ON u.id = m.user_id
    ), event_counts AS (
        SELECT e.member, max(e.event_seq) AS last FROM events e GROUP BY e.member
    ), logged AS (
        UPDATE users u SET last_event_seq = event_counts.last
        FROM event_counts WHERE u.id = event_counts.member
    ), events_inserted AS (
        INSERT INTO user_events (user_id, seq, kind, conversation_id, message_id, body, created_at)
        SELECT e.member, e.event_seq, 'message', e.conv, ids[e.i], '{}', times[e.i] FROM events e
    )
    SELECT e.i::int, e.conv, e.seq, e.member, e.event_seq FROM events e ORDER BY e.i, e.member;
END
$$;
