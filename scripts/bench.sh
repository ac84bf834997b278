#!/usr/bin/env bash
# Injection and relay throughput and CPU per message of smtpgw beside the
# Postfix baseline, in one run on this machine (docs/benchmarks.md comes from
# here).
#
#   N=10000 SIZE=10240 S=20 scripts/bench.sh
#
# 1. Postfix (the logic of ../shared/bench/postfix-anchor.sh): Postfix on
#    loopback relaying to smtp-sink, smtp-source injecting N messages of SIZE
#    bytes over S sessions, plain SMTP.
# 2. smtpgw serve on SQLite, then on PostgreSQL (a throwaway cluster of its
#    own), relaying to smtp-sink; `smtpgw bench` injects the same N/SIZE/S
#    (TLS=starttls by default, AUTH once per session).
#
# For each server it prints: injection msg/s (rate of 250s), inject+relay
# msg/s (first MAIL until the queue is empty), the server's CPU per message
# (its own cgroup, cpuacct, until the queue is empty), PostgreSQL's CPU per
# message apart (the cluster runs in a cgroup of its own), the load client's
# CPU per message, p50/p99 time-to-250, bytes on disk per message (peak while
# running, and after the queue drained), bytes the disk wrote per message
# (disk_written_bytes_per_msg: the device under the work directory, from
# /proc/diskstats, until a final sync and, on PostgreSQL, a checkpoint after
# the queue drained), the server's peak RSS, and whether
# the relay keeps up: queue_peak (the most queued+deferred recipients seen
# while injecting, sampled every 0.5 s from gateway 1's /metrics on a
# loopback port, one curl each, so the gateway only pays a scrape) and
# queue_end_of_injection (the same once the last 250 came back), and
# steal_ms: CPU time the hypervisor gave other guests while the VM wanted it
# (/proc/stat, from the first message until the queue is empty); latency
# tails on a shared VM follow it. store_tx_per_msg, items_per_tx and
# writer_busy describe gateway 1's group committer over the same span (its
# /metrics smtpgw_store_*): transactions per message, messages and outcomes
# per transaction, and the share of the time it was writing; slow_commits
# counts its batches that took over 25 ms (every session in such a batch
# waits that long for its 250: a disk whose fsync stalls shows here), and
# slowest_commit_ms is the upper bound of the smallest histogram bucket
# (smtpgw_store_commit_seconds) that holds every batch of the run. Each server's run starts after a sync(1),
# so that the dirty pages an earlier run left behind are not written back
# (and journalled) in the next one's time.
#
# Settings: N, SIZE, S, TLS (starttls|none|"starttls none"), STORES
# ("sqlite postgres"), GWS (gateway processes sharing the PostgreSQL
# database, e.g. "1 2 4"), POSTFIX=0 skips the baseline, CHUNKING=1 makes
# the load client send with BDAT, TO=ADDRESS sets its recipient (a %d in
# it is the message's number: TO='r%d@example.net' gives every message a
# recipient of its own, as real traffic has; Postfix's smtp-source keeps
# one), PGTOP=N lists PostgreSQL's costliest
# statements, PROFILE=DIR writes each gateway's and each load client's CPU
# profile there (serve --cpuprofile, bench --cpuprofile) and prints the top
# functions of the first of each.
# PostgreSQL's cluster is made for the run; before the first run it
# writes PGWARM_MB (default 1024) of WAL and checkpoints, so that the runs
# write into recycled WAL segments as a cluster in service does (0: none),
# and it checkpoints before each run.
# RATE=R paces the smtpgw load open-loop at R messages per second in all
# (`smtpgw bench --rate`, split evenly between the GWS gateways; latencies
# count from when each message was due, so a stalled server shows in p99);
# RATE=half runs each smtpgw configuration twice: at full speed, then at half
# the injection rate that run measured (issue 12: p99 time-to-250 at half the
# peak rate), printing both result lines. Unset or 0: full speed only. With
# RATE set and the Postfix baseline, Postfix too gets a paced run (at R, or
# at half its own rate), from `smtpgw bench --no-auth --tls none`: its p50,
# p99 and max on the same disk.
# PGCONF adds settings to the PostgreSQL cluster's command line, for
# looking into it (e.g. PGCONF="-c log_checkpoints=on -c
# shared_preload_libraries=pg_stat_statements,auto_explain
# -c auto_explain.log_min_duration=5"); the documented runs set none.
# PACED_SECS=T makes every paced run (the gateway's and Postfix's) last
# about T seconds: it sends rate x T messages instead of N. Unset or 0: N.
# A paced run of N messages lasts N/rate seconds, so a faster server's p99
# comes from a shorter window, in which one stall of the disk weighs more
# (a 200 ms stall is 3 % of a 6.7 s run, 0.6 % of a 33 s one); with
# PACED_SECS every server's p99 is read over the same time.
# Needs root (cgroups, Postfix, the PostgreSQL cluster runs as user postgres),
# cgroup v1 cpuacct or cgroup v2, smtp-sink/smtp-source (package postfix) and
# PostgreSQL 15 binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}; SIZE=${SIZE:-10240}; S=${S:-20}
TLS=${TLS:-starttls}; STORES=${STORES:-"sqlite postgres"}; GWS=${GWS:-1}
POSTFIX=${POSTFIX:-1}; RATE=${RATE:-0}; PGWARM_MB=${PGWARM_MB:-1024}; PACED_SECS=${PACED_SECS:-0}
case $PACED_SECS in *[!0-9]*|"") echo "bench.sh: PACED_SECS=$PACED_SECS: want a whole number of seconds (0: N messages)" >&2; exit 2 ;; esac
case $PGWARM_MB in *[!0-9]*|"") echo "bench.sh: PGWARM_MB=$PGWARM_MB: want a number of megabytes (0: no warm-up)" >&2; exit 2 ;; esac
case $RATE in half) ;; *[!0-9.]*|"") echo "bench.sh: RATE=$RATE: want a number of messages per second or half" >&2; exit 2 ;; esac
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
export PATH="$PATH:/usr/sbin:/sbin:/usr/local/go/bin"

work=$(mktemp -d /tmp/smtpgw-bench.XXXXXX)
[ -n "${PROFILE:-}" ] && mkdir -p "$PROFILE" && PROFILE=$(cd "$PROFILE" && pwd)
chmod 755 "$work"

# paced_n rate -> how many messages a run at that rate sends: N, or with
# PACED_SECS rate x PACED_SECS (a full-speed run, rate 0, sends N).
paced_n() {
  awk -v r="$1" -v t="$PACED_SECS" -v n="$N" 'BEGIN {if (r > 0 && t > 0) n = int(r * t + 0.5); print n}'
}

# Control groups: one per server so each one's CPU is counted apart.
if [ -d /sys/fs/cgroup/cpuacct ]; then
  CGROOT=/sys/fs/cgroup/cpuacct; CGV=1
elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  CGROOT=/sys/fs/cgroup; CGV=2
else
  echo "bench.sh: no cgroup cpuacct (v1) or cgroup v2 under /sys/fs/cgroup" >&2; exit 2
fi
CG=$CGROOT/smtpgw-bench.$$
mkdir "$CG"
cg_new() { mkdir -p "$CG/$1"; }
cg_run() ( # name cmd...: run cmd in cgroup name
  g=$1; shift
  cg_new "$g"
  exec bash -c 'echo $$ >"$0/cgroup.procs"; exec "$@"' "$CG/$g" "$@"
)
cg_usec() { # CPU microseconds used so far by everything in cgroup $1
  if [ $CGV = 1 ]; then echo $(( $(cat "$CG/$1/cpuacct.usage") / 1000 ))
  else awk '$1 == "usage_usec" {print $2}' "$CG/$1/cpu.stat"; fi
}
cleanup() {
  set +e
  for p in $(jobs -p); do kill "$p" 2>/dev/null; done
  [ -n "${pgdata:-}" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$pgdata" -m immediate stop >/dev/null 2>&1
  [ "${pf_started:-}" = 1 ] && postfix stop >/dev/null 2>&1
  sleep 0.5
  for g in "$CG"/*/; do
    [ -d "$g" ] || continue
    for p in $(cat "$g/cgroup.procs" 2>/dev/null); do kill "$p" 2>/dev/null; done
  done
  sleep 0.3
  for g in "$CG"/*/; do [ -d "$g" ] && rmdir "$g"; done
  rmdir "$CG" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${BIN:-}" ]; then gw=$BIN; else # BIN=path measures an smtpgw built elsewhere
  go build -o "$work/smtpgw" ./cmd/smtpgw
  gw="$work/smtpgw"
fi

per() { # total count -> total/count with no decimals
  echo $(( $1 / ($2 > 0 ? $2 : 1) ))
}
steal_ms() { # CPU time the hypervisor took from this VM so far (/proc/stat), in ms
  awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" {print int($9 * 1000 / hz)}' /proc/stat
}
# The block device under the work directory, for disk_written: bytes each
# server's run made the disk write (its files, their journal, PostgreSQL's
# WAL and checkpoints), all of them, read from /proc/diskstats.
disk_dev=$(df --output=source "$work" | tail -1); disk_dev=${disk_dev#/dev/}
disk_written() { # bytes written to disk_dev so far, or nothing if it is not a block device
  awk -v d="$disk_dev" '$3 == d {printf "%d\n", $10 * 512}' /proc/diskstats
}
written_per() { # bytes-before bytes-after count -> bytes per message, ? if unknown
  if [ -n "$1" ] && [ -n "$2" ] && [ -n "$3" ]; then per $(( $2 - $1 )) "$3"; else echo "?"; fi
}
rate() { # count nanoseconds -> msg/s
  echo $(( $1 * 1000000000 / ($2 > 0 ? $2 : 1) ))
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(go version | cut -d' ' -f3), N=$N size=$SIZE sessions=$S rate=$RATE paced_secs=$PACED_SECS, load average $(cut -d' ' -f1-3 /proc/loadavg)"

pf_drain() { # wait until Postfix's queue is empty, keeping the spool's peak size in $peak
  local q d
  while :; do
    q=$(find /var/spool/postfix/incoming /var/spool/postfix/active /var/spool/postfix/deferred \
      /var/spool/postfix/maildrop -type f 2>/dev/null | wc -l)
    d=$( (du -sb /var/spool/postfix 2>/dev/null || true) | cut -f1); [ "$d" -gt "$peak" ] && peak=$d
    [ "$q" = 0 ] && break
    sleep 0.2
  done
}

# Postfix baseline.
if [ "$POSTFIX" = 1 ]; then
  if ! command -v smtp-source >/dev/null; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
  fi
  postfix stop >/dev/null 2>&1 || true
  cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
  postconf -e 'myhostname=anchor.test' 'inet_interfaces=loopback-only' 'mynetworks=127.0.0.0/8' \
    'relayhost=[127.0.0.1]:2526' 'mydestination=' 'smtpd_relay_restrictions=permit_mynetworks,reject' \
    'default_process_limit=200' 'smtpd_client_connection_count_limit=0' 'inet_protocols=ipv4' \
    'compatibility_level=3.6' 'maillog_file=/var/log/postfix.log'
  cg_run sink smtp-sink -u nobody -c 127.0.0.1:2526 1024 >/dev/null 2>&1 &
  postsuper -d ALL >/dev/null 2>&1 || true
  cg_run postfix postfix start >/dev/null 2>&1; pf_started=1
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/25) 2>/dev/null && break; sleep 0.1; done
  sleep 1
  sync # what earlier work left to write back is not this run's
  c0=$(cg_usec postfix); t0=$(date +%s%N); s0=$(steal_ms); d0=$(disk_written)
  cg_new pfclient; k0=$(cg_usec pfclient)
  cg_run pfclient smtp-source -l "$SIZE" -m "$N" -s "$S" -f sender@a.test -t rcpt@b.test 127.0.0.1:25
  t1=$(date +%s%N); k1=$(cg_usec pfclient)
  peak=0
  pf_drain
  t2=$(date +%s%N); c1=$(cg_usec postfix); s1=$(steal_ms)
  sync; d1=$(disk_written)
  echo "postfix: inject_msgs_per_s=$(rate "$N" $((t1 - t0))) inject_relay_msgs_per_s=$(rate "$N" $((t2 - t0))) server_cpu_us_per_msg=$(per $((c1 - c0)) "$N") client_cpu_us_per_msg=$(per $((k1 - k0)) "$N") spool_peak_bytes_per_msg=$(per "$peak" "$N") disk_written_bytes_per_msg=$(written_per "$d0" "$d1" "$N") steal_ms=$((s1 - s0))"
  if [ "$RATE" != 0 ]; then
    # The same paced load as the gateway's, from the same client without
    # AUTH (Postfix relays for localhost): Postfix's latency at half its
    # own peak rate, on the same disk.
    if [ "$RATE" = half ]; then pr=$(( $(rate "$N" $((t1 - t0))) / 2 )); else pr=$RATE; fi
    sync
    s0=$(steal_ms); d0=$(disk_written)
    line=$(cg_run pfclient "$gw" bench --addr 127.0.0.1:25 --tls none --no-auth --conns "$S" --messages "$(paced_n "$pr")" \
      --size "$SIZE" --rate "$pr" 2>&1) || echo "$line" >&2
    pf_drain
    s1=$(steal_ms); sync; d1=$(disk_written)
    echo "postfix (paced at $pr msg/s by smtpgw bench --no-auth):$(grep -o ' sent=[^ ]*\| failed=[^ ]*\| msgs_per_s=[^ ]*\| p50=[^ ]*\| p99=[^ ]*\| max=[^ ]*\| max_start_lag=[^ ]*' <<<"$line" | tr -d '\n') disk_written_bytes_per_msg=$(written_per "$d0" "$d1" "$(sed -n 's/.* sent=\([0-9]*\).*/\1/p' <<<"$line")") steal_ms=$((s1 - s0))"
  fi
  postfix stop >/dev/null 2>&1; pf_started=
fi

cg_run sink smtp-sink -u nobody -c 127.0.0.1:2527 1024 >/dev/null 2>&1 &
sleep 0.5

# A PostgreSQL cluster of its own, in its own cgroup, so that its CPU is
# counted apart from the gateway's and from anything else using the
# machine's PostgreSQL.
start_pg() {
  pgdata=$work/pgdata
  mkdir -p "$pgdata" && chown postgres "$pgdata"
  runuser -u postgres -- "$PGBIN/initdb" -D "$pgdata" -A trust -U postgres >/dev/null
  cg_new postgres
  cg_run postgres runuser -u postgres -- "$PGBIN/pg_ctl" -D "$pgdata" -w -l "$pgdata/log" \
    -o "-p 25432 -k $pgdata -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_preload_libraries=pg_stat_statements -c min_wal_size=$((PGWARM_MB > 80 ? PGWARM_MB : 80))MB ${PGCONF:-}" start >/dev/null
  PGURL=postgres://postgres@127.0.0.1:25432/postgres
  # A cluster in service writes its WAL into segments that checkpoints
  # recycled; a new one creates each 16 MB segment when it needs it,
  # zero-filling and syncing it inside whichever COMMIT crossed into it (a
  # 40-85 ms COMMIT every half second here). Write PGWARM_MB of WAL once and
  # checkpoint, so that the runs find recycled segments as in service
  # (min_wal_size keeps them); run_gateway checkpoints before each run.
  if [ "$PGWARM_MB" -gt 0 ]; then
    "$PGBIN/psql" -q "$PGURL" \
      -c "create table walwarm as select g, repeat('x', 900) as pad from generate_series(1, $((PGWARM_MB * 1000))) g" \
      -c 'drop table walwarm' -c checkpoint -c 'select pg_switch_wal()' -c checkpoint >/dev/null
  fi
}

# run_gateway store tls gws [rate]: gws gateway processes on one database,
# each in its own cgroup; the load (rate msg/s in all; 0 or none: as fast as
# possible) is split evenly between them. Sets inject_rate to the injection
# rate measured.
run_gateway() {
  local store=$1 tls=$2 gws=$3 rate=${4:-0} url="" name="$1-$2-x$3-r${4:-0}"
  local dir="$work/$name"
  mkdir -p "$dir"
  if [ "$store" = postgres ]; then
    url="$PGURL"
    PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -q "$PGURL" -c 'drop schema public cascade; create schema public' \
      -c 'create schema if not exists pgss' -c 'create extension if not exists pg_stat_statements with schema pgss' -c 'select pgss.pg_stat_statements_reset()' \
      -c checkpoint >/dev/null
  fi
  local pids=() i
  for i in $(seq "$gws"); do
    # Another process on a gateway's port would take its load (and its
    # clients' AUTH): refuse to measure rather than measure it.
    for port in $((2586 + i)) $((2686 + i)); do
      if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
        echo "bench.sh: 127.0.0.1:$port is already in use (a gateway left running?); stop it and run again" >&2
        exit 1
      fi
    done
    mkdir -p "$dir/$i"
    cat >"$dir/$i/smtpgw.toml" <<TOML
hostname = "bench$i.test"
data_dir = "$dir/data"
[database]
url = "$url"
[smtp]
submission_addr = "127.0.0.1:$((2586 + i))"
allow_insecure_auth = true
max_connections = 2000
max_connections_per_ip = 2000
[relay]
mode = "smarthost"
smarthost = "127.0.0.1:2527"
smarthost_tls = "none"
[http]
addr = "$([ "$i" = 1 ] && echo "127.0.0.1:$((2686 + i))")"
TOML
    cg_run "gw$name-$i" "$gw" serve --config "$dir/$i/smtpgw.toml" --log-level warn \
      ${PROFILE:+--cpuprofile "$PROFILE/$name-$i.pprof"} 2>"$dir/$i/serve.log" &
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$((2586 + i))) 2>/dev/null && break; sleep 0.1; done
    pids+=("$(head -1 "$CG/gw$name-$i/cgroup.procs")")
    if [ -z "${pids[-1]}" ] || ! kill -0 "${pids[-1]}" 2>/dev/null; then
      echo "bench.sh: gateway $i did not start; its log:" >&2
      cat "$dir/$i/serve.log" >&2
      exit 1
    fi
  done
  local key
  key=$("$gw" keys create --config "$dir/1/smtpgw.toml" --label bench --grant smtp/inject --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["results"]["key"])')
  sleep 0.5
  sync # the previous run's writeback (Postfix's spool, a store's files) is not this one's
  local c0=() c1=() pg0=0 pg1=0 t0 t1 t2 k0 k1 s0 s1
  for i in $(seq "$gws"); do c0+=("$(cg_usec "gw$name-$i")"); done
  [ "$store" = postgres ] && pg0=$(cg_usec postgres)
  cg_new "client$name"; k0=$(cg_usec "client$name")
  # The queue depth while injecting, from gateway 1 (on PostgreSQL every
  # gateway reports the shared queue).
  local metrics="http://127.0.0.1:2687/metrics" sampler qend qpeak
  : >"$dir/queue.samples"
  (while :; do queue_depth "$metrics" >>"$dir/queue.samples"; sleep 0.5; done) &
  sampler=$!
  local w0 w1 d0 d1
  w0=$(store_counters "$metrics")
  t0=$(date +%s%N); s0=$(steal_ms); d0=$(disk_written)
  local bpids=()
  for i in $(seq "$gws"); do
    SMTPGW_KEY="$key" cg_run "client$name" "$gw" bench --addr "127.0.0.1:$((2586 + i))" \
      --conns $(( (S + gws - 1) / gws )) --messages $(( $(paced_n "$rate") / gws )) --size "$SIZE" --tls "$tls" \
      --rate "$(awk -v r="$rate" -v g="$gws" 'BEGIN {printf "%.3f", r / g}')" \
      --insecure-skip-verify ${CHUNKING:+--chunking} ${TO:+--to "g$i.$TO"} \
      ${PROFILE:+--cpuprofile "$PROFILE/$name-client-$i.pprof"} >"$dir/bench-$i.out" &
    bpids+=($!)
  done
  for p in "${bpids[@]}"; do wait "$p" || true; done
  t1=$(date +%s%N); k1=$(cg_usec "client$name")
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  qend=$(queue_depth "$metrics")
  echo "$qend" >>"$dir/queue.samples"
  qpeak=$(awk 'NF && $1 > m {m = $1} END {print m + 0}' "$dir/queue.samples")
  local peak=0 left bytes
  while :; do
    left=$("$gw" queue stats --config "$dir/1/smtpgw.toml" --json 2>/dev/null |
      python3 -c 'import json,sys; s=json.load(sys.stdin)["results"]["recipients_by_state"]; print(s.get("queued",0)+s.get("deferred",0))')
    bytes=$(disk_bytes "$store" "$dir")
    [ "$bytes" -gt "$peak" ] && peak=$bytes
    [ "$left" = 0 ] && break
    sleep 0.3
  done
  t2=$(date +%s%N); s1=$(steal_ms)
  w1=$(store_counters "$metrics")
  for i in $(seq "$gws"); do c1+=("$(cg_usec "gw$name-$i")"); done
  [ "$store" = postgres ] && pg1=$(cg_usec postgres)
  local sent=0 line p50="" p99="" kcpu="" rss=0 r
  for i in $(seq "$gws"); do
    line=$(cat "$dir/bench-$i.out"); echo "  $line"
    sent=$(( sent + $(sed -n 's/.* sent=\([0-9]*\).*/\1/p' <<<"$line") ))
    p50+="$(sed -n 's/.* p50=\([^ ]*\).*/\1/p' <<<"$line") "
    p99+="$(sed -n 's/.* p99=\([^ ]*\).*/\1/p' <<<"$line") "
    kcpu+="$(sed -n 's/.* cpu_us_per_msg=\([^ ]*\).*/\1/p' <<<"$line") "
    r=$(awk '/VmHWM/ {print $2}' "/proc/${pids[$((i - 1))]}/status"); [ "$r" -gt "$rss" ] && rss=$r
  done
  local gcpu=0
  for i in $(seq "$gws"); do gcpu=$(( gcpu + ${c1[$((i - 1))]} - ${c0[$((i - 1))]} )); done
  local after
  after=$(disk_bytes "$store" "$dir")
  # What the run made the disk write, once the kernel and PostgreSQL have
  # written back what it dirtied (the run before ended the same way).
  [ "$store" = postgres ] && "$PGBIN/psql" -qAt "$PGURL" -c checkpoint >/dev/null
  sync; d1=$(disk_written)
  local pgpart="" pace="full speed"
  [ "$store" = postgres ] && pgpart=" postgres_cpu_us_per_msg=$(per $((pg1 - pg0)) "$sent")"
  [ "$rate" != 0 ] && pace="paced at $rate msg/s"
  inject_rate=$(rate "$sent" $((t1 - t0)))
  echo "smtpgw $store ($tls, $gws gateway$([ "$gws" = 1 ] || echo s), $pace): inject_msgs_per_s=$inject_rate inject_relay_msgs_per_s=$(rate "$sent" $((t2 - t0))) server_cpu_us_per_msg=$(per "$gcpu" "$sent")$pgpart client_cpu_us_per_msg=$(per $((k1 - k0)) "$sent") (self-reported: ${kcpu% }) p50=${p50% } p99=${p99% } disk_peak_bytes_per_msg=$(per "$peak" "$sent") disk_after_bytes_per_msg=$(per "$after" "$sent") disk_written_bytes_per_msg=$(written_per "$d0" "$d1" "$sent") peak_rss_kb=$rss queue_peak=${qpeak:-?} queue_end_of_injection=${qend:-?} $(writer_stats "$w0" "$w1" $((t2 - t0)) $((sent / gws))) steal_ms=$((s1 - s0))"
  if [ "$store" = postgres ] && [ -n "${PGTOP:-}" ]; then # PGTOP=N: PostgreSQL's N costliest statements
    "$PGBIN/psql" -qAt "$PGURL" -F ' | ' -c "select round(total_exec_time::numeric * 1000 / $sent) as us_per_msg, calls,
      regexp_replace(left(query, 90), '\s+', ' ', 'g') from pgss.pg_stat_statements order by total_exec_time desc limit $PGTOP" | sed 's/^/  pg: /'
  fi
  for p in "${pids[@]}"; do kill -TERM "$p"; done
  for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  if [ -n "${PROFILE:-}" ]; then
    go tool pprof -top -nodecount 25 "$gw" "$PROFILE/$name-1.pprof" 2>/dev/null | sed 's/^/  prof: /'
    go tool pprof -top -nodecount 12 "$gw" "$PROFILE/$name-client-1.pprof" 2>/dev/null | sed 's/^/  client prof: /'
  fi
}

queue_depth() { # metrics URL -> queued+deferred recipients, nothing if the scrape fails
  curl -fs --max-time 2 "$1" 2>/dev/null | awk '/^smtpgw_queue_recipients\{state="(queued|deferred)"\}/ {n += $2; f = 1}
    END {if (f) printf "%d\n", n}' || true
}

store_counters() { # metrics URL -> "transactions items busy_seconds batches le1=n1 le2=n2 ..." of the group committer
  curl -fs --max-time 2 "$1" 2>/dev/null | awk '/^smtpgw_store_transactions_total / {t = $2}
    /^smtpgw_store_transaction_items_total / {i = $2} /^smtpgw_store_writer_busy_seconds_total / {b = $2}
    /^smtpgw_store_commit_seconds_count / {n = $2}
    /^smtpgw_store_commit_seconds_bucket\{le="[0-9.e+-]+"\} / {le = $1; gsub(/.*le="|"\}/, "", le); h = h " " le "=" $2}
    END {if (t != "") printf "%s %s %s %s%s\n", t, i, b, (n == "" ? 0 : n), h}' || true
}

writer_stats() { # "t i b n buckets" before, after, wall ns, messages -> gateway 1's committer over the run
  [ -n "$1" ] && [ -n "$2" ] || { echo "store_tx_per_msg=? items_per_tx=? writer_busy=? slow_commits=? slowest_commit_ms=?"; return; }
  awk -v a="$1" -v b="$2" -v ns="$3" -v n="$4" 'BEGIN {na = split(a, x, " "); split(b, y, " ");
    t = y[1] - x[1]; i = y[2] - x[2]; w = y[3] - x[3]; batches = y[4] - x[4];
    printf "store_tx_per_msg=%.3f items_per_tx=%.1f writer_busy=%.2f", t / n, (t ? i / t : 0), w / (ns / 1e9)
    # Batches over 25 ms, and the bound of the smallest bucket holding them all.
    slow = "?"; slowest = "?"
    for (k = 5; k <= na; k++) {
      split(x[k], p, "="); split(y[k], q, "="); c = q[2] - p[2]
      if (p[1] == "0.025") slow = batches - c
      if (slowest == "?" && c == batches) slowest = p[1] * 1000
    }
    if (slowest == "?" && na >= 5) slowest = "over " p[1] * 1000
    printf " slow_commits=%s slowest_commit_ms=%s", slow, slowest}'
}

disk_bytes() { # store dir -> bytes the store uses on disk
  if [ "$1" = sqlite ]; then
    (du -sb "$2/data" 2>/dev/null || true) | cut -f1
  else
    PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -qAt "$PGURL" -c \
      "select coalesce(sum(pg_total_relation_size(c.oid)), 0) from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind in ('r', 'm')"
  fi
}

# run_paced store tls gws: one run at RATE, or with RATE=half one at full
# speed and one at half the rate it measured.
run_paced() {
  if [ "$RATE" = half ]; then
    run_gateway "$@" 0
    if [ "$inject_rate" -ge 2 ]; then run_gateway "$@" $(( inject_rate / 2 ))
    else echo "bench.sh: no injection rate measured, no half-rate run" >&2; fi
  else
    run_gateway "$@" "$RATE"
  fi
}

for store in $STORES; do
  [ "$store" = postgres ] && [ -z "${pgdata:-}" ] && start_pg
  for tls in $TLS; do
    if [ "$store" = postgres ]; then
      for g in $GWS; do run_paced "$store" "$tls" "$g"; done
    else
      run_paced "$store" "$tls" 1
    fi
  done
done
