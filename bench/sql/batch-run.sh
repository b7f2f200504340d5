#!/usr/bin/env bash
# The batch benchmark: PostgreSQL's `store_message_batch` alone, batches of
# SIZE messages (300 unless --size says otherwise; the chat workload's batches
# at 10,000/s), one connection, no Parley. For each variant a fresh database
# from the migrations, bench/sql/batch-setup.sql and the variant's scratch SQL
# ("base" for none); then ROUNDS rounds, the variants interleaved, each CALLS
# calls after 20 to warm up, printing pgbench's average latency per call.
#
#   bench/sql/batch-run.sh [--size SIZE] [ROUNDS [CALLS]] [VARIANT...]
#   PARLEY_BENCH_POSTGRES=postgres://postgres:postgres@127.0.0.1:5432/postgres \
#     bench/sql/batch-run.sh 3 150 base foreign-keys no-reference-checks
#
# Variants are bench/sql/variants/NAME.sql. Needs psql and pgbench; drops and
# makes databases named parley_batch_NAME. The server is the one in
# PARLEY_BENCH_POSTGRES (a URL without query parameters).
set -euo pipefail
export PGOPTIONS="-c client_min_messages=warning"
here=$(cd "$(dirname "$0")" && pwd)
migrations="$here/../../migrations/postgres"
server=${PARLEY_BENCH_POSTGRES:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
root=${server%/*}
rounds=3
calls=150
size=300
if [ "${1:-}" = --size ]; then size=${2:-}; shift 2 || true; fi
[[ $size =~ ^[0-9]+$ ]] && (( size >= 1 && size <= 1000 )) || { echo "--size takes 1 to 1000" >&2; exit 2; }
if [[ ${1:-} =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
if [[ ${1:-} =~ ^[0-9]+$ ]]; then calls=$1; shift; fi
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(base foreign-keys)
# batch-setup.sql prepares 2,000 batches; a call past them would store nothing.
(( rounds * (calls + 20) <= 2000 )) || { echo "ROUNDS x (CALLS + 20) must be at most 2000" >&2; exit 2; }
db_of() { echo "parley_batch_${1//-/_}"; }

for v in "${variants[@]}"; do
    [ "$v" = base ] || [ -f "$here/variants/$v.sql" ] || { echo "no variant $v" >&2; exit 2; }
    db=$(db_of "$v")
    psql -q "$server" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
    for f in "$migrations"/*.sql "$here/batch-setup.sql"; do
        psql -q -v ON_ERROR_STOP=1 -v size="$size" "$root/$db" -f "$f" >/dev/null
    done
    [ "$v" = base ] || psql -q -v ON_ERROR_STOP=1 "$root/$db" -f "$here/variants/$v.sql" >/dev/null
    psql -q "$root/$db" -c "VACUUM ANALYZE" >/dev/null
done
for r in $(seq 1 "$rounds"); do
    for v in "${variants[@]}"; do
        db="$root/$(db_of "$v")"
        # The warm-up has a connection of its own: one whose first call finds
        # `messages` analyzed and empty keeps plans that scan the whole table
        # for every message (docs/benchmarks.md, session 17).
        pgbench -n -f "$here/batch-call.sql" -t 20 "$db" >/dev/null 2>&1
        ms=$(pgbench -n -f "$here/batch-call.sql" -t "$calls" "$db" 2>&1 | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
        [ -n "$ms" ] || { echo "pgbench failed on $db" >&2; exit 1; }
        awk -v r="$r" -v v="$v" -v ms="$ms" -v n="$size" \
            'BEGIN { printf "round %s  %-20s %7.2f ms a call, %5.1f us a message\n", r, v, ms, ms * 1000 / n }'
    done
done
