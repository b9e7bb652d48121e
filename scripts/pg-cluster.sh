#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and benchmarks.
#
#   scripts/pg-cluster.sh start DIR   creates a cluster in DIR (which must be
#                                     empty or missing), starts it on a free
#                                     port and prints its connection string
#   scripts/pg-cluster.sh stop DIR    stops the cluster and removes DIR
#
# The cluster listens on 127.0.0.1 and on a Unix socket in DIR; the printed
# connection string uses the socket (`host=DIR/socket port=N user=postgres
# dbname=postgres`). Authentication is `trust`: nothing but local processes
# can reach it, and it lives only as long as the test run.
#
# initdb refuses to run as root, so as root the cluster is created and run as
# the `postgres` user (which Debian's postgresql package creates).
#
# Settings (see docs/POSTGRES.md for the reasons): fsync and
# synchronous_commit stay on, as in production, because the tests and the
# benchmark count on an acked mutation surviving a crash; memory settings are
# sized for a small machine.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$2

pg_bin() {
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return
  fi
  local newest
  newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$newest" ]; then
    echo "error: PostgreSQL is not installed (apt-get install -y postgresql)" >&2
    exit 1
  fi
  echo "$newest"
}

# Runs a PostgreSQL tool as the cluster's owner.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    if command -v runuser >/dev/null 2>&1; then
      runuser -u postgres -- "$@"
    else
      su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
  else
    "$@"
  fi
}

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    return
  fi
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "error: no free port found" >&2
  exit 1
}

start() {
  local bin port
  bin=$(pg_bin)
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    echo "error: $dir is not empty" >&2
    exit 1
  fi
  mkdir -p "$dir/data" "$dir/socket"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres "$dir"
  fi
  as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
    --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
      cat "$dir/initdb.log" >&2
      exit 1
    }
  port=$(free_port)
  cat >>"$dir/data/postgresql.conf" <<EOF
# Throwaway test cluster (scripts/pg-cluster.sh).
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/socket'
max_connections = 300
shared_buffers = 256MB
work_mem = 8MB
maintenance_work_mem = 64MB
wal_buffers = 16MB
max_wal_size = 2GB
checkpoint_timeout = 15min
# Durability stays as in production: an acked mutation survives a crash.
fsync = on
synchronous_commit = on
full_page_writes = on
# Nothing replicates from a throwaway cluster.
wal_level = minimal
max_wal_senders = 0
log_min_messages = warning
log_min_duration_statement = -1
EOF
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null || {
    cat "$dir/server.log" >&2
    exit 1
  }
  echo "host=$dir/socket port=$port user=postgres dbname=postgres"
}

stop() {
  local bin
  [ -d "$dir" ] || return 0
  if [ -f "$dir/data/postmaster.pid" ]; then
    bin=$(pg_bin)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
