#!/usr/bin/env bash
# Injection and relay throughput of smtpgw beside the Postfix baseline, in one
# run on this machine (the numbers in docs/benchmarks.md come from here).
#
#   N=5000 SIZE=10240 S=20 scripts/bench.sh
#
# 1. ../shared/bench/postfix-anchor.sh: Postfix + smtp-source, N messages of
#    SIZE bytes over S sessions, relaying to smtp-sink (the baseline).
# 2. smtpgw serve on SQLite, then on PostgreSQL, relaying to smtp-sink;
#    `smtpgw bench` injects the same N/SIZE/S (AUTH once per session), and
#    the script waits until the relay has delivered every message.
# Needs root for Postfix, and PostgreSQL at $PGURL (default the CI server).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5000}; SIZE=${SIZE:-10240}; S=${S:-20}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432/test}
export PGOPTIONS="-c client_min_messages=warning"
ANCHOR=${ANCHOR:-../shared/bench/postfix-anchor.sh}
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/smtpgw" ./cmd/smtpgw
gw="$work/smtpgw"

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(go version | cut -d' ' -f3), N=$N size=$SIZE sessions=$S"
N=$N SIZE=$SIZE S=$S bash "$ANCHOR"

smtp-sink -u nobody -c 127.0.0.1:2527 1024 >/dev/null 2>&1 &
sleep 0.5

run_backend() { # name dburl tls
  local name=$1 url=$2 tls=$3 dir="$work/$1-$3"
  mkdir -p "$dir"
  cat >"$dir/smtpgw.toml" <<TOML
hostname = "bench.test"
data_dir = "$dir/data"
[database]
url = "$url"
[smtp]
submission_addr = "127.0.0.1:2587"
allow_insecure_auth = true
max_connections = 2000
[relay]
mode = "smarthost"
smarthost = "127.0.0.1:2527"
smarthost_tls = "none"
[http]
addr = ""
TOML
  "$gw" serve --config "$dir/smtpgw.toml" --log-level warn 2>"$dir/serve.log" &
  local pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/2587) 2>/dev/null && break; sleep 0.1; done
  local key
  key=$("$gw" keys create --config "$dir/smtpgw.toml" --label bench --grant smtp/inject --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["results"]["key"])')
  local t0 t1 t2
  t0=$(date +%s%N)
  "$gw" bench --addr 127.0.0.1:2587 --key "$key" --conns "$S" --messages "$N" --size "$SIZE" \
    --tls "$tls" --insecure-skip-verify | sed "s/^smtpgw bench:/smtpgw injection ($name, $tls):/"
  t1=$(date +%s%N)
  while :; do
    left=$("$gw" queue stats --config "$dir/smtpgw.toml" --json |
      python3 -c 'import json,sys; s=json.load(sys.stdin)["results"]["recipients_by_state"]; print(s.get("queued",0)+s.get("deferred",0))')
    [ "$left" = 0 ] && break
    sleep 0.2
  done
  t2=$(date +%s%N)
  delivered=$("$gw" queue stats --config "$dir/smtpgw.toml" --json |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["results"]["recipients_by_state"].get("delivered",0))')
  echo "smtpgw inject+relay ($name, $tls): delivered=$delivered in $(( (t2 - t0) / 1000000 )) ms, msgs_per_s=$(( delivered * 1000000000 / (t2 - t0) )) (relay drained $(( (t2 - t1) / 1000000 )) ms after the last 250)"
  kill -TERM "$pid"; wait "$pid" || true
}

run_backend sqlite "" none
run_backend sqlite "" starttls
for tls in none starttls; do
  schema="bench_$(date +%s)_$tls"
  psql "$PGURL" -qc "create schema $schema"
  run_backend postgres "$PGURL?search_path=$schema" "$tls"
  psql "$PGURL" -qc "drop schema $schema cascade"
done
