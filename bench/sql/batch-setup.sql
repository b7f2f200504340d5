-- The batch benchmark's data, after the migrations: 100 users in 50 1:1
-- conversations (the chat workload's shape at --devices 100), and 2,000 batches
-- of :size messages (a psql variable, at most 1,000) ready as the arrays
-- `store_message_batch` takes. Message n of the whole run (batch b's message i,
-- n = (b - 1) * size + i) goes from one person of pair 1 + ((n - 1) / 2) % 50 to
-- the other, the two taking turns; every message has a client id of its own.
CREATE SEQUENCE batch_no;
INSERT INTO users (id, username, password_hash, created_at)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'u' || g, 'x', 0
FROM generate_series(1, 100) g;
CREATE TABLE bench_pairs AS
SELECT p, ('00000000-0000-4000-8000-' || lpad(to_hex(2 * p - 1), 12, '0'))::uuid AS a,
          ('00000000-0000-4000-8000-' || lpad(to_hex(2 * p), 12, '0'))::uuid AS b
FROM generate_series(1, 50) p;
ALTER TABLE bench_pairs ADD COLUMN k text;
UPDATE bench_pairs SET k = a::text || ':' || b::text;
INSERT INTO conversations (id, kind, direct_key, audience, created_by, last_seq, created_at)
SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(p), 12, '0'))::uuid, 'direct', k, 'user_user', a, 0, 0
FROM bench_pairs;
INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
SELECT c.id, m, 'member', 0
FROM bench_pairs p JOIN conversations c ON c.direct_key = p.k, LATERAL (VALUES (p.a), (p.b)) v(m);
CREATE TABLE bench_batches (
    b bigint PRIMARY KEY, ids uuid[], senders uuid[], recipients uuid[], direct_keys text[], targets uuid[],
    client_ids text[], kinds text[], bodies text[], replies uuid[], attachment_ids uuid[], attachments text[],
    times bigint[], new_ids uuid[]);
INSERT INTO bench_batches
SELECT bn,
    -- Time-ordered ids, as `Uuid::now_v7` gives.
    array_agg(('00000000-0000-7000-8000-' || lpad(to_hex(bn * 1000 + i), 12, '0'))::uuid ORDER BY i),
    array_agg(CASE WHEN ((bn - 1) * :size + i) % 2 = 0 THEN p.a ELSE p.b END ORDER BY i),
    array_agg(CASE WHEN ((bn - 1) * :size + i) % 2 = 0 THEN p.b ELSE p.a END ORDER BY i),
    array_agg(p.k ORDER BY i),
    array_agg(NULL::uuid ORDER BY i),
    array_agg('c' || bn || '-' || i ORDER BY i),
    array_agg('text'::text ORDER BY i),
    -- A body like the generator's: its send time in microseconds.
    array_agg((1765000000000000 + bn * 1000 + i)::text ORDER BY i),
    array_agg(NULL::uuid ORDER BY i), array_agg(NULL::uuid ORDER BY i), array_agg(NULL::text ORDER BY i),
    array_agg((1765000000000 + bn)::bigint ORDER BY i),
    array_agg(gen_random_uuid() ORDER BY i)
FROM generate_series(1, 2000) bn CROSS JOIN generate_series(1, :size) i
    JOIN bench_pairs p ON p.p = 1 + (((bn - 1) * :size + i - 1) / 2) % 50
GROUP BY bn;
