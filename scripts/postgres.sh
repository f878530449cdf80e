#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for a shared Optuna storage (repbench search --storage URL).
#
#   scripts/postgres.sh start DIR   initdb under DIR, start the server, create database "repbench"; prints the URL
#   scripts/postgres.sh url DIR     prints the SQLAlchemy URL again (postgresql+psycopg://repbench:...@127.0.0.1:PORT/repbench)
#   scripts/postgres.sh stop DIR    stops the server (DIR is left for you to remove)
#
# The Debian server binaries (/usr/lib/postgresql/*/bin) refuse to run as root, so as root the cluster belongs to the
# `postgres` system user the Debian package creates; DIR must then be reachable by that user (e.g. under /tmp).
# The server listens on a free port of 127.0.0.1 (password login) and on a unix socket in DIR (local trust login).
# fsync is off: the cluster is meant to be thrown away, and durability would only slow the trials' many small writes.
set -euo pipefail
umask 077

die() { echo "postgres.sh: $*" >&2; exit 2; }

[ $# -eq 2 ] || die "usage: $0 start|stop|url DIR"
cmd=$1
[ -n "$2" ] || die "DIR is empty; give a folder for the cluster, e.g. /tmp/repbench-pg"
dir=$(realpath -m -- "$2")
data=$dir/data
user=repbench

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -x "$bindir/initdb" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; apt-get install postgresql"

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  [ ! -e "$data" ] || die "$data already exists; use '$0 url $dir', or stop the server and remove $dir"
  mkdir -p -- "$dir"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user; install Debian's postgresql"
    chown postgres: -- "$dir"
    runuser -u postgres -- test -w "$dir" || die "user postgres cannot reach $dir (a parent folder is private); use a folder under /tmp"
  fi
  chmod 700 -- "$dir"
  local password port
  password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  port=$(free_port)
  printf '%s\n' "$password" | as_owner tee "$dir/password" >/dev/null
  as_owner "$bindir/initdb" -D "$data" -U "$user" --pwfile="$dir/password" --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 \
    || die "initdb failed; see $dir/initdb.log"
  as_owner "$bindir/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    >/dev/null || die "the server did not start; see $dir/server.log"
  as_owner "$bindir/createdb" -h "$dir" -p "$port" -U "$user" repbench || die "createdb failed; see $dir/server.log"
  printf 'postgresql+psycopg://%s:%s@127.0.0.1:%s/repbench\n' "$user" "$password" "$port" | as_owner tee "$dir/url"
}

case $cmd in
  start) start ;;
  url) [ -f "$dir/url" ] || die "no cluster under $dir; run '$0 start $dir' first"; cat -- "$dir/url" ;;
  stop) [ -d "$data" ] || die "no cluster under $dir"; as_owner "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null ;;
  *) die "unknown command '$cmd'; use start, stop or url" ;;
esac
