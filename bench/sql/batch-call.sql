-- One pgbench transaction: the next prepared batch, stored in one call.
SELECT nextval('batch_no') AS b \gset
SELECT count(*) FROM bench_batches x,
    store_message_batch(x.ids, x.senders, x.recipients, x.direct_keys, x.targets, x.client_ids, x.kinds,
                        x.bodies, x.replies, x.attachment_ids, x.attachments, x.times, x.new_ids)
WHERE x.b = :b;
