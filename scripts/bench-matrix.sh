#!/usr/bin/env bash
# Every measurement of docs/benchmarks.md, one after the other, each line
# as scripts/bench.sh prints it (needs root; about half an hour on two
# cores). Run it on a quiet machine:
#
#   scripts/bench-matrix.sh 2>&1 | tee bench-matrix.log
#
# RUNS (default 3) repeats the main comparison and the half-rate runs (p99
# on a shared VM moves with the hypervisor's steal time); SKIP_SCALE=1 leaves out the
# store benchmarks at SMTPGW_BENCH_BIG rows (default 1,000,000).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
RUNS=${RUNS:-3}
bin=$(mktemp -d /tmp/smtpgw-matrix.XXXXXX)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/smtpgw" ./cmd/smtpgw
b() { # title, then bench.sh settings
  echo "## $1"; shift
  env BIN="$bin/smtpgw" "$@" scripts/bench.sh 2>&1 | grep -v '^smtpgw: store:' || true
}

# The disk every durable server here waits on: its fsync times (a paced
# run's p99 follows the worst of them).
echo "## the disk, before"
go run ./scripts/fsyncprobe -dir /tmp -duration 20s
for i in $(seq "$RUNS"); do
  b "main run $i: 10 KiB, 20 sessions" N=10000 SIZE=10240 S=20
done
# Each paced run lasts PACED_SECS (default 60) seconds, the gateway's as
# long as Postfix's: p99 over the same time on the same disk. A minute,
# because some costs only start after half of one: PostgreSQL's first
# checkpoint that WAL volume triggers, its statistics going stale as
# dead rows pile up before the first autovacuum (in 30 s runs a plan that
# turned twenty times costlier at 30 s went unseen).
for i in $(seq "$RUNS"); do
  b "half the peak rate, run $i (Postfix too, paced at half its own rate, ${PACED_SECS:-60} s each)" N=10000 SIZE=10240 S=20 RATE=half PACED_SECS="${PACED_SECS:-60}"
done
b "BDAT (CHUNKING) instead of DATA" N=10000 SIZE=10240 S=20 POSTFIX=0 CHUNKING=1
b "a recipient per message (smtpgw only: smtp-source has one)" N=10000 SIZE=10240 S=20 POSTFIX=0 TO='r%d@example.net'
b "1 session" N=2000 SIZE=10240 S=1
b "200 sessions" N=10000 SIZE=10240 S=200
b "1 KiB" N=10000 SIZE=1024 S=20
b "100 KiB" N=3000 SIZE=102400 S=20
b "1 MiB" N=500 SIZE=1048576 S=20
b "gateways on one PostgreSQL" N=10000 SIZE=10240 S=20 POSTFIX=0 STORES=postgres GWS="1 2 4" PGTOP=8
b "profile" N=10000 SIZE=10240 S=20 POSTFIX=0 PROFILE="$bin/prof"

echo "## the disk, after"
go run ./scripts/fsyncprobe -dir /tmp -duration 20s

if [ "${SKIP_SCALE:-}" != 1 ]; then
  echo "## store benchmarks at ${SMTPGW_BENCH_BIG:-1000000} rows"
  go test -run '^$' -bench 'Scale' -benchtime 200x ./store/
fi
