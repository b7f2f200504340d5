-- store_message_batch (0005) keeps one generic plan per statement for the life
-- of a connection, made at the connection's first call. If that call found
-- `messages` analyzed and empty (an ANALYZE of a fresh database, or of one whose
-- messages were all deleted), the planner believed the table held one row and
-- planned the retry check, NOT EXISTS on (sender_id, client_id), as a
-- sequential scan of `messages` for every message of every later batch, kept
-- until the table was analyzed again. Measured: 40 calls of 300 messages on one
-- such connection took 73-99 ms a call on average instead of 9.7, and scanned
-- the table 11,400-12,000 times (docs/benchmarks.md, sessions 17 and 18).
--
-- The lookups in `messages` (retries and answered messages) are now a
-- statement of their own, planned with sequential scans ruled out, so they go
-- by index whatever the statistics said at a connection's first call. Only
-- that statement: the others read the conversations, members and users of the
-- batch, where a scan of a small table is the right plan (with scans ruled
-- out for the whole function, Parley fell behind at 25,000 messages/s where
-- it kept up before).
-- The caller's enable_seqscan is restored after it. The rest is 0005's.
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
    taken int[];
    taken_convs uuid[];
    taken_seqs bigint[];
    refused bigint[];
    seqscan text := current_setting('enable_seqscan');
BEGIN
    -- First messages of 1:1 conversations: the conversation, with both members,
    -- unless the recipient does not exist.
    WITH pairs AS (
        SELECT DISTINCT ON (b.k) b.k, b.sender, b.recipient, b.new_id
        FROM unnest(direct_keys, senders, recipients, new_ids) WITH ORDINALITY AS b(k, sender, recipient, new_id, i)
        WHERE b.k IS NOT NULL AND b.sender <> b.recipient
          AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.direct_key = b.k)
          AND EXISTS (SELECT 1 FROM users u WHERE u.id = b.recipient)
        ORDER BY b.k, b.i
    ), made AS (
        INSERT INTO conversations AS c (id, kind, direct_key, audience, created_by, last_seq, created_at)
        SELECT p.new_id, 'direct', p.k, 'user_user', p.sender, 0, first_at FROM pairs p ORDER BY p.k
        ON CONFLICT (direct_key) DO NOTHING
        RETURNING c.id, c.direct_key
    )
    INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
    SELECT made.id, m.member, 'member', first_at
    FROM made JOIN pairs p ON p.k = made.direct_key, LATERAL (VALUES (p.sender), (p.recipient)) AS m(member);

    -- Each message's conversation, locked in id order before its members are read.
    convs := ARRAY(
        SELECT coalesce(b.target, c.id)
        FROM unnest(targets, direct_keys) WITH ORDINALITY AS b(target, k, i)
        LEFT JOIN conversations c ON c.direct_key = b.k
        ORDER BY b.i);
    PERFORM 1 FROM conversations c WHERE c.id = ANY(convs) ORDER BY c.id FOR NO KEY UPDATE;

    -- Retries (a client id the sender has used before) and answers to a message
    -- not in the conversation, looked up in `messages` by key, with sequential
    -- scans ruled out for this statement's plan.
    PERFORM set_config('enable_seqscan', 'off', true);
    -- Each lookup is a lateral subquery with LIMIT, so that it is one probe per
    -- message: never a hash of the whole table built for the batch.
    refused := ARRAY(
        SELECT b.i
        FROM unnest(senders, client_ids, replies) WITH ORDINALITY AS b(sender, client_id, reply_to, i)
        LEFT JOIN LATERAL (SELECT true AS used FROM messages s
                           WHERE s.sender_id = b.sender AND s.client_id = b.client_id LIMIT 1) retry ON true
        LEFT JOIN LATERAL (SELECT true AS found FROM messages r
                           WHERE b.reply_to IS NOT NULL AND r.id = b.reply_to AND r.conversation_id = convs[b.i]
                           LIMIT 1) answered ON true
        WHERE retry.used OR (b.reply_to IS NOT NULL AND answered.found IS NULL));
    PERFORM set_config('enable_seqscan', seqscan, true);

    -- The messages taken: the sender is a member, no member blocked the
    -- conversation (text), the answered message is in it, and the client id is new.
    WITH batch AS (
        SELECT b.i, convs[b.i] AS conv, b.sender, b.client_id
        FROM unnest(senders, client_ids, kinds) WITH ORDINALITY AS b(sender, client_id, kind, i)
        WHERE convs[b.i] IS NOT NULL
          AND EXISTS (SELECT 1 FROM conversation_members m WHERE m.conversation_id = convs[b.i] AND m.user_id = b.sender)
          AND NOT (b.kind = 'text' AND EXISTS
                (SELECT 1 FROM conversation_members m WHERE m.conversation_id = convs[b.i] AND m.blocked))
          AND NOT (b.i = ANY (refused))
    ), firsts AS (
        SELECT b.i, b.conv, row_number() OVER (PARTITION BY b.sender, b.client_id ORDER BY b.i) AS copy
        FROM batch b
    ), ok AS (
        SELECT f.i, f.conv, row_number() OVER (PARTITION BY f.conv ORDER BY f.i) AS rank
        FROM firsts f WHERE f.copy = 1
    ), counts AS (
        SELECT ok.conv, count(*) AS cnt, max(times[ok.i]) AS at FROM ok GROUP BY ok.conv
    ), numbered AS (
        UPDATE conversations c SET last_seq = c.last_seq + counts.cnt, last_message_at = counts.at
        FROM counts WHERE c.id = counts.conv
        RETURNING c.id, c.last_seq - counts.cnt AS base
    ), stored AS (
        SELECT ok.i, ok.conv, numbered.base + ok.rank AS seq FROM ok JOIN numbered ON numbered.id = ok.conv
    ), inserted AS (
        INSERT INTO messages (id, conversation_id, seq, sender_id, client_id, kind, body, reply_to,
                              attachment_id, attachment, created_at)
        SELECT ids[s.i], s.conv, s.seq, senders[s.i], client_ids[s.i], kinds[s.i], bodies[s.i], replies[s.i],
               attachment_ids[s.i], attachments[s.i], times[s.i]
        FROM stored s ORDER BY s.i
    )
    SELECT array_agg(s.i ORDER BY s.i), array_agg(s.conv ORDER BY s.i), array_agg(s.seq ORDER BY s.i)
    INTO taken, taken_convs, taken_seqs FROM stored s;
    IF taken IS NULL THEN
        RETURN;
    END IF;

    -- Every member's log moves on by its number of events, rows locked in id order.
    PERFORM 1 FROM users u
    WHERE u.id IN (SELECT m.user_id FROM conversation_members m WHERE m.conversation_id = ANY(taken_convs))
    ORDER BY u.id FOR NO KEY UPDATE;
    RETURN QUERY
    WITH events AS (
        SELECT t.i, t.conv, t.seq, m.user_id AS member,
               row_number() OVER (PARTITION BY m.user_id ORDER BY t.i) AS rank
        FROM unnest(taken, taken_convs, taken_seqs) AS t(i, conv, seq)
        JOIN conversation_members m ON m.conversation_id = t.conv
    ), counts AS (
        SELECT e.member, count(*) AS cnt FROM events e GROUP BY e.member
    ), numbered AS (
        UPDATE users u SET last_event_seq = u.last_event_seq + counts.cnt
        FROM counts WHERE u.id = counts.member
        RETURNING u.id, u.last_event_seq - counts.cnt AS base
    ), logged AS (
        SELECT e.i, e.conv, e.seq, e.member, numbered.base + e.rank AS event_seq
        FROM events e JOIN numbered ON numbered.id = e.member
    ), inserted AS (
        INSERT INTO user_events (user_id, seq, kind, conversation_id, message_id, body, created_at)
        SELECT l.member, l.event_seq, 'message', l.conv, ids[l.i], '{}', times[l.i] FROM logged l
    )
    SELECT l.i::int, l.conv, l.seq, l.member, l.event_seq FROM logged l ORDER BY l.i, l.member;
END
$$;
