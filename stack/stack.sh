#!/usr/bin/env bash
# The local stack: one Apache Kafka node (KRaft, broker + controller) and one PostgreSQL cluster,
# run as plain processes on 127.0.0.1, with every bit of state under $ROOT/.stack/. (One exception:
# when the postgres system user cannot reach .stack/, PostgreSQL's directory lives in
# /var/lib/campaign-push/<hash of $ROOT>/ instead, and .stack/postgres is a symlink to it.)
#
#   stack/stack.sh up       install what is missing, start what is not running (idempotent)
#   stack/stack.sh down     stop what `up` started (by pid)
#   stack/stack.sh status   what runs where
#   stack/stack.sh reset    down, then wipe .stack/ (the Kafka jars cached in ~/.cache and the
#                           librdkafka installed for kcat in /usr/local/lib stay)
#   stack/stack.sh restart-postgres   stop (by pid) and start PostgreSQL only; starts it if stopped
#   stack/stack.sh restart-kafka      stop (by pid) and start Kafka only; starts it if stopped
#                                     (both keep the server down STACK_RESTART_DOWNTIME seconds, 0)
#
# Ports come from STACK_KAFKA_PORT, STACK_KAFKA_SASL_PORT, STACK_KAFKA_CONTROLLER_PORT and
# STACK_PG_PORT. Credentials are generated on first run into .stack/local.env and never printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="$ROOT/.stack"
CACHE_DIR="${CAMPAIGN_PUSH_CACHE:-$HOME/.cache/campaign-push}"

HOST=127.0.0.1
KAFKA_PORT="${STACK_KAFKA_PORT:-19092}"
KAFKA_SASL_PORT="${STACK_KAFKA_SASL_PORT:-19093}"
KAFKA_CONTROLLER_PORT="${STACK_KAFKA_CONTROLLER_PORT:-19094}"
PG_PORT="${STACK_PG_PORT:-15432}"

KAFKA_POM="$ROOT/stack/kafka/pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM")"
KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_DIR="$STACK_DIR/kafka"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_CONFIG="$KAFKA_DIR/server.properties"
KAFKA_PID_FILE="$KAFKA_DIR/kafka.pid"
KAFKA_LOG="$KAFKA_DIR/kafka.log"      # the broker's own log (log4j 2)
KAFKA_OUT="$KAFKA_DIR/kafka.out"      # JVM stdout/stderr: crashes before logging starts land here
KAFKA_GC_LOG="$KAFKA_DIR/gc.log"      # every GC pause, timed: what a latency spike may be
KAFKA_START_TIMEOUT=120
KAFKA_STOP_TIMEOUT=60
KAFKA_USER=campaign-push
# name:partitions
TOPICS=(campaigns:3 campaign-notifications:3 campaigns-dead-letter:3)

TLS_DIR="$STACK_DIR/tls"
CA_FILE="$TLS_DIR/ca.pem"

# PG_DIR and the paths under it (PG_DATA, PG_SOCKET_DIR, PG_TLS_DIR, PG_LOG) are set by
# select_pg_dir, which needs the postgres system user; until then they are unset on purpose, so
# that `set -u` catches any use before the choice is made.
PG_LINK="$STACK_DIR/postgres"
PG_FALLBACK_ROOT=/var/lib/campaign-push
PG_USER=campaign_push
PG_DATABASE=de
# The integration tests' own database, with the same schema and sample rows: what `make test` and
# `make bench-pipeline` write stays out of `de`, which the README's walkthrough shows its user.
PG_TEST_DATABASE=de_test
PG_SQL_FILES=("$ROOT/stack/contract/schema.sql" "$ROOT/stack/contract/sample_subscribers.sql")

ENV_FILE="$STACK_DIR/local.env"
APT_LOG="$STACK_DIR/apt.log"
MAVEN_LOG="$STACK_DIR/maven.log"

# Debian 12's kcat links librdkafka 2.0.2, whose SCRAM login Kafka 4.x refuses (see
# ensure_kcat_librdkafka). kcat gets a newer librdkafka, built from the source that the
# rdkafka-sys crate vendors, installed as /usr/local/lib/librdkafka.so.1.
LIBRDKAFKA_MIN=2.6.1
LIBRDKAFKA_LIB=/usr/local/lib/librdkafka.so.1
LIBRDKAFKA_LOG="$STACK_DIR/librdkafka-build.log"

# Debian packages: the stack's servers and clients, plus what the rdkafka crate needs to build its
# vendored librdkafka (./configure + make with a C compiler, OpenSSL and zlib headers found by
# pkg-config; cmake is only needed for rdkafka's non-default cmake-build feature). The same
# toolchain builds the librdkafka that kcat gets (ensure_kcat_librdkafka).
# fonts-dejavu-core: the font `make bench` draws its plots' text with.
REQUIRED_PACKAGES=(postgresql kcat openssl openjdk-17-jre-headless maven iproute2
                   build-essential pkg-config libssl-dev zlib1g-dev fonts-dejavu-core)

START_NS="$(date +%s%N)"

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

say() { printf '[stack] %s\n' "$*"; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

elapsed() { # seconds since the script started, one decimal
    local ns=$(( $(date +%s%N) - START_NS ))
    printf '%d.%d' $(( ns / 1000000000 )) $(( ns / 100000000 % 10 ))
}

# Run a command as root: directly when we are root, else through sudo.
as_root() { if (( EUID == 0 )); then "$@"; else sudo "$@"; fi; }

# PostgreSQL refuses to run as root, so as root we run its programs as the `postgres` system
# user (created by the Debian package); as anybody else, as that user. From /, because the
# current directory may be out of the postgres user's reach (its programs warn about that);
# every path given to them is absolute.
as_pg() {
    if (( EUID == 0 )); then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}
pg_owner() { if (( EUID == 0 )); then echo postgres; else id -un; fi; }

# Serialise concurrent invocations (two terminals running `make up`): the lock lives in .stack/.
# Every long-lived process we start must get `9>&-`, or it would inherit the lock and hold it.
take_lock() {
    mkdir -p "$STACK_DIR"
    exec 9>"$STACK_DIR/.lock"
    flock 9
}

# Fail early, with the variable to change, when a port is taken by something that is not ours.
require_port_free() { # port env-var-name
    if [[ -n "$(ss -Htln "sport = :$1")" ]]; then
        die "port $1 is already in use by another program; choose another one with $2=<port>"
    fi
}

# (Outputs are captured into variables before grep -q looks at them: with pipefail, a writer
# that gets SIGPIPE after grep -q found its match would turn a match into a failure.)

# Poll (no fixed sleep) until a command succeeds or the deadline passes.
wait_until() { # timeout-seconds command...
    local timeout=$1; shift
    local deadline=$(( SECONDS + timeout ))
    until "$@"; do
        (( SECONDS < deadline )) || return 1
        sleep 0.2   # poll interval, not a wait for a guessed start-up time
    done
}

# ---------------------------------------------------------------------------------------------
# Installation (only what is missing)
# ---------------------------------------------------------------------------------------------

ensure_packages() {
    local missing=() p
    for p in "${REQUIRED_PACKAGES[@]}"; do
        [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] \
            || missing+=("$p")
    done
    (( ${#missing[@]} == 0 )) && return 0
    say "installing Debian packages: ${missing[*]} (log: $APT_LOG)"
    as_root apt-get update >"$APT_LOG" 2>&1 || die "apt-get update failed; see $APT_LOG"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${missing[@]}" >>"$APT_LOG" 2>&1 || die "apt-get install failed; see $APT_LOG"
}

# The Wasm guest is built for wasm32-wasip2; rustup fetches the target's standard library.
ensure_wasm_target() {
    if ! command -v rustup >/dev/null; then
        say "rustup not found: cannot check the wasm32-wasip2 target"
        return 0
    fi
    if ! grep -qx wasm32-wasip2 <<<"$(cd "$ROOT" && rustup target list --installed)"; then
        say "adding the Rust target wasm32-wasip2"
        (cd "$ROOT" && rustup target add wasm32-wasip2) >/dev/null
    fi
}

require_java17() {
    command -v java >/dev/null || die "java not found (package openjdk-17-jre-headless)"
    local major
    major="$(java -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n1)"
    (( ${major:-0} >= 17 )) || die "Kafka $KAFKA_VERSION needs Java 17 or newer; 'java' is version $major"
}

# Kafka's jars come from Maven Central through stack/kafka/pom.xml into a cache outside the repo.
# A stamp with the pom's hash tells whether the cached jars match the pom.
ensure_kafka_jars() {
    local stamp="$KAFKA_HOME/pom.sha256" want
    want="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
    if [[ -f $stamp && "$(<"$stamp")" == "$want" && -d $KAFKA_LIBS ]]; then
        return 0
    fi
    say "fetching Apache Kafka $KAFKA_VERSION with Maven into $KAFKA_LIBS (log: $MAVEN_LOG)"
    mkdir -p "$KAFKA_HOME"
    rm -rf "$KAFKA_LIBS.partial"
    # Copy into a side folder first so that an interrupted download never looks complete.
    mvn -B -ntp -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.partial" >"$MAVEN_LOG" 2>&1 \
        || die "Maven could not fetch Kafka's jars; see $MAVEN_LOG"
    rm -rf "$KAFKA_LIBS"
    mv "$KAFKA_LIBS.partial" "$KAFKA_LIBS"
    echo "$want" >"$stamp"
}

# The librdkafka version kcat runs with (kcat -V asks the loaded library, not its headers).
kcat_librdkafka_version() {
    local out
    out="$(kcat -V 2>/dev/null)" || return 0
    sed -n 's/.*librdkafka \([0-9][0-9.]*\).*/\1/p' <<<"$out" | head -n1
}

version_at_least() { # have want
    [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$2" ]]
}

# Kafka 4.x checks the nonce of a SCRAM client's final message strictly, and librdkafka before
# 2.6.1 sends it wrongly (librdkafka PR #4895): Debian 12's kcat 1.7.1, linked to Debian's
# librdkafka 2.0.2, fails with "Authentication failed ... invalid credentials". So kcat gets a
# newer librdkafka (same soname, backwards compatible ABI): the source that the rdkafka-sys crate
# vendors (the version in Cargo.lock, i.e. the very librdkafka the service uses) is built once into
# $CACHE_DIR and its shared library installed as /usr/local/lib/librdkafka.so.1, which the dynamic
# linker finds before Debian's (/etc/ld.so.conf.d/libc.conf lists /usr/local/lib first). This
# affects every program on the machine that loads librdkafka.so.1 (kcat is the one that matters).
# Fast when kcat already runs with a new enough librdkafka: one `kcat -V`.
ensure_kcat_librdkafka() {
    local have
    have="$(kcat_librdkafka_version)"
    [[ -n $have ]] && version_at_least "$have" "$LIBRDKAFKA_MIN" && return 0

    # One build at a time on this machine (other clones share the cache and /usr/local/lib);
    # whoever waited finds the library installed and is done.
    mkdir -p "$CACHE_DIR"
    exec 8>"$CACHE_DIR/librdkafka.lock"
    flock 8
    have="$(kcat_librdkafka_version)"
    if [[ -n $have ]] && version_at_least "$have" "$LIBRDKAFKA_MIN"; then
        exec 8>&-
        return 0
    fi

    local crate_version src build t0=$SECONDS
    crate_version="$(sed -n '/^name = "rdkafka-sys"$/{n;s/^version = "\(.*\)"$/\1/p}' "$ROOT/Cargo.lock")"
    [[ -n $crate_version ]] || die "rdkafka-sys is missing from $ROOT/Cargo.lock"
    say "kcat runs with librdkafka ${have:-?}, older than $LIBRDKAFKA_MIN (Kafka 4.x refuses its" \
        "SCRAM login); building librdkafka from rdkafka-sys $crate_version (log: $LIBRDKAFKA_LOG)"
    : >"$LIBRDKAFKA_LOG"
    src="$(librdkafka_source "$crate_version")"
    build="$CACHE_DIR/librdkafka-$crate_version"
    # (A chain of &&: `set -e` does not apply inside a command whose status `||` tests.)
    (
        rm -rf "$build" && cp -a "$src" "$build" && cd "$build" &&
        # Only what the Debian packages above provide: OpenSSL (SSL, SCRAM) and zlib; LZ4 and
        # snappy are built in. No zstd, Cyrus SASL (GSSAPI), libcurl (OIDC): like the service's
        # own librdkafka (rdkafka crate features "ssl", default libz), which needs none of them.
        ./configure --prefix=/usr/local --no-download --disable-zstd --disable-gssapi \
            --disable-curl --disable-lz4-ext --enable-ssl --enable-zlib &&
        make -C src -j"$(nproc)" librdkafka.so.1
    ) >>"$LIBRDKAFKA_LOG" 2>&1 || die "building librdkafka failed; see $LIBRDKAFKA_LOG"
    # Into place by rename, so that a kcat starting meanwhile never loads half a file.
    as_root install -m 644 "$build/src/librdkafka.so.1" "$LIBRDKAFKA_LIB.partial"
    as_root mv -f "$LIBRDKAFKA_LIB.partial" "$LIBRDKAFKA_LIB"
    as_root ldconfig
    have="$(kcat_librdkafka_version)"
    version_at_least "${have:-0}" "$LIBRDKAFKA_MIN" \
        || die "kcat still runs with librdkafka ${have:-?} after installing $LIBRDKAFKA_LIB;" \
               "check 'ldd \$(command -v kcat)' and /etc/ld.so.conf.d/"
    exec 8>&-
    say "kcat now runs with librdkafka $have ($LIBRDKAFKA_LIB, built in $(( SECONDS - t0 ))s)"
}

# The librdkafka source folder inside the rdkafka-sys crate, fetched by cargo when missing.
librdkafka_source() { # crate-version
    local cargo_home="${CARGO_HOME:-$HOME/.cargo}" dir
    dir="$(ls -d "$cargo_home"/registry/src/*/"rdkafka-sys-$1"/librdkafka 2>/dev/null | head -n1)"
    if [[ ! -x $dir/configure ]]; then
        command -v cargo >/dev/null || die "cargo not found: it fetches the librdkafka source"
        (cd "$ROOT" && cargo fetch --locked) >>"$LIBRDKAFKA_LOG" 2>&1 \
            || die "cargo fetch failed; see $LIBRDKAFKA_LOG"
        dir="$(ls -d "$cargo_home"/registry/src/*/"rdkafka-sys-$1"/librdkafka 2>/dev/null | head -n1)"
        [[ -x $dir/configure ]] || die "no librdkafka source in rdkafka-sys $1 under $cargo_home"
    fi
    echo "$dir"
}

# ---------------------------------------------------------------------------------------------
# Credentials and the env file
# ---------------------------------------------------------------------------------------------

# The value of KEY in the existing env file, or nothing.
env_file_value() {
    [[ -f $ENV_FILE ]] || return 0
    sed -n "s/^$1=//p" "$ENV_FILE" | tail -n1
}

# Passwords are generated once and then read back from the env file on every run. If the data
# that a password protects exists but the password is gone, a new one would not match it.
load_or_generate_secrets() {
    KAFKA_SASL_PASSWORD="$(env_file_value KAFKA_SASL_PASSWORD)"
    if [[ -z $KAFKA_SASL_PASSWORD ]]; then
        [[ -e $KAFKA_DATA/meta.properties ]] && die "Kafka's data in $KAFKA_DATA exists but its" \
            "SCRAM password is missing from $ENV_FILE; run 'make reset' to start afresh"
        KAFKA_SASL_PASSWORD="$(openssl rand -hex 24)"
    fi
    PG_PASSWORD="$(env_file_value PGPASSWORD)"
    if [[ -z $PG_PASSWORD ]]; then
        [[ -e $PG_DATA/PG_VERSION ]] && die "PostgreSQL's data in $PG_DATA exists but the" \
            "password of $PG_USER is missing from $ENV_FILE; run 'make reset' to start afresh"
        PG_PASSWORD="$(openssl rand -hex 24)"
    fi
}

render_env_file() {
    cat <<EOF
# Written by stack/stack.sh: connection settings of the local stack. Shell-sourceable:
#   set -a; . .stack/local.env; set +a
KAFKA_PLAINTEXT_BOOTSTRAP=$HOST:$KAFKA_PORT
KAFKA_SASL_BOOTSTRAP=$HOST:$KAFKA_SASL_PORT
KAFKA_SECURITY_PROTOCOL=SASL_SSL
KAFKA_SASL_MECHANISM=SCRAM-SHA-512
KAFKA_SASL_USERNAME=$KAFKA_USER
KAFKA_SASL_PASSWORD=$KAFKA_SASL_PASSWORD
KAFKA_CA_FILE=$CA_FILE
KAFKA_INPUT_TOPIC=${TOPICS[0]%%:*}
KAFKA_OUTPUT_TOPIC=${TOPICS[1]%%:*}
KAFKA_DEAD_LETTER_TOPIC=${TOPICS[2]%%:*}
PGHOST=$HOST
PGPORT=$PG_PORT
PGDATABASE=$PG_DATABASE
PGDATABASE_TESTS=$PG_TEST_DATABASE
PGUSER=$PG_USER
PGPASSWORD=$PG_PASSWORD
PGSSLROOTCERT=$CA_FILE
EOF
}

# Written before any server uses a password, so that a crash later never loses one. Rewritten
# only when its content changes (e.g. another port), and always mode 600.
write_env_file() {
    local tmp="$ENV_FILE.tmp"
    (umask 077 && render_env_file >"$tmp")
    if [[ -f $ENV_FILE ]] && cmp -s "$tmp" "$ENV_FILE"; then
        rm -f "$tmp"
    else
        mv "$tmp" "$ENV_FILE"
    fi
    chmod 600 "$ENV_FILE"
}

# ---------------------------------------------------------------------------------------------
# TLS: a local CA and one server certificate each for Kafka and PostgreSQL
# ---------------------------------------------------------------------------------------------

make_ca() {
    say "creating the local CA $CA_FILE"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TLS_DIR/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$TLS_DIR/ca.key" -sha256 -days 3650 \
        -subj "/CN=campaign-push local stack CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$CA_FILE.partial"
    mv "$CA_FILE.partial" "$CA_FILE"
}

# NAME.key (PKCS#8, unencrypted) and NAME.pem, valid for DNS:localhost and IP:127.0.0.1.
issue_server_cert() { # name
    local name=$1
    say "issuing the $name server certificate"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TLS_DIR/$name.key" 2>/dev/null
    openssl req -new -key "$TLS_DIR/$name.key" -subj "/CN=localhost" -out "$TLS_DIR/$name.csr"
    openssl x509 -req -in "$TLS_DIR/$name.csr" -CA "$CA_FILE" -CAkey "$TLS_DIR/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
        -extfile <(printf '%s\n' \
            "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth") \
        -out "$TLS_DIR/$name.pem.partial" 2>/dev/null
    rm -f "$TLS_DIR/$name.csr"
    mv "$TLS_DIR/$name.pem.partial" "$TLS_DIR/$name.pem"
}

ensure_tls() {
    mkdir -p "$TLS_DIR"
    chmod 755 "$TLS_DIR"
    (
        umask 077   # private keys readable by the owner only
        [[ -f $CA_FILE ]] || make_ca
        [[ -f $TLS_DIR/kafka.pem ]] || issue_server_cert kafka
        [[ -f $TLS_DIR/postgres.pem ]] || issue_server_cert postgres
    )
    chmod 644 "$CA_FILE" "$TLS_DIR/kafka.pem" "$TLS_DIR/postgres.pem"
    # Kafka's PEM keystore: the private key followed by the certificate chain, in one file.
    if [[ ! -f $TLS_DIR/kafka-keystore.pem ]]; then
        (umask 077 && cat "$TLS_DIR/kafka.key" "$TLS_DIR/kafka.pem" >"$TLS_DIR/kafka-keystore.pem")
    fi
}

# ---------------------------------------------------------------------------------------------
# Kafka
# ---------------------------------------------------------------------------------------------

# The pid of our running broker, or failure. The process must still run our config file, so a
# stale pid file whose pid was reused by another process is not mistaken for the broker (a
# zombie has an empty command line and does not match either).
kafka_pid() {
    [[ -f $KAFKA_PID_FILE ]] || return 1
    local pid
    pid="$(<"$KAFKA_PID_FILE")"
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    local cmdline
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ $cmdline == *"kafka.Kafka $KAFKA_CONFIG"* ]] || return 1
    echo "$pid"
}

render_kafka_config() {
    cat <<EOF
# Written by stack/stack.sh at each start: a single local node, broker and controller in one.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER

listeners=PLAINTEXT://$HOST:$KAFKA_PORT,SASL_SSL://$HOST:$KAFKA_SASL_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,SASL_SSL://$HOST:$KAFKA_SASL_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT

# SASL_SSL as in production: SCRAM-SHA-512 over TLS, with a certificate from the local CA.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS_DIR/kafka-keystore.pem
listener.name.sasl_ssl.ssl.client.auth=none

log.dirs=$KAFKA_DATA
num.partitions=3
auto.create.topics.enable=false

# One node: internal topics with one replica, so that consumer groups and transactions work.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
group.initial.rebalance.delay.ms=0

# The node shares a small machine with builds: a stall of tens of seconds (seen: a 26 s metadata
# write during a cold cargo build) must not make the controller fence its own broker, which moves
# every partition leader and transaction coordinator under the running tests.
broker.session.timeout.ms=60000
EOF
}

# Once per data directory: the cluster id and the SCRAM user go into the metadata log.
format_kafka_storage() {
    [[ -e $KAFKA_DATA/meta.properties ]] && return 0
    say "formatting Kafka storage in $KAFKA_DATA"
    local cluster_id
    # A Kafka cluster id is 16 random bytes in URL-safe base64 without padding.
    cluster_id="$(openssl rand 16 | base64 | tr '+/' '-_' | tr -d '=')"
    # (umask: Kafka 4.x prints the SCRAM credential's salt and keys, which stay private.)
    (umask 077 && kafka_tool kafka.tools.StorageTool format --config "$KAFKA_CONFIG" \
        --cluster-id "$cluster_id" \
        --add-scram "SCRAM-SHA-512=[name=$KAFKA_USER,password=$KAFKA_SASL_PASSWORD]" \
        >"$KAFKA_DIR/format.log" 2>&1) \
        || die "formatting Kafka's storage failed; see $KAFKA_DIR/format.log"
}

# A short-lived Kafka command-line tool: small heap, quick JIT, warnings to stderr only.
kafka_tool() { # main-class args...
    java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
        -Dlog4j2.configurationFile="$ROOT/stack/kafka/log4j2-tools.properties" \
        -cp "$KAFKA_LIBS/*" "$@"
}

# Does the broker answer a metadata request on the PLAINTEXT listener and list itself?
kafka_answers() {
    local out
    # Not listening yet: skip kcat, which would wait its whole metadata timeout.
    [[ -n "$(ss -Htln "sport = :$KAFKA_PORT")" ]] || return 1
    out="$(kcat -b "$HOST:$KAFKA_PORT" -L -m 2 2>/dev/null)" || return 1
    grep -q "broker 1 at" <<<"$out"
}

wait_for_kafka() {
    local deadline=$(( SECONDS + KAFKA_START_TIMEOUT ))
    until kafka_answers; do
        kafka_pid >/dev/null \
            || die "Kafka exited during start-up; see $KAFKA_LOG and $KAFKA_OUT"
        (( SECONDS < deadline )) \
            || die "Kafka did not answer on $HOST:$KAFKA_PORT within ${KAFKA_START_TIMEOUT}s; see $KAFKA_LOG"
        sleep 0.2   # poll interval
    done
}

start_kafka() {
    if kafka_pid >/dev/null; then
        return 0
    fi
    mkdir -p "$KAFKA_DATA"
    render_kafka_config >"$KAFKA_CONFIG"
    format_kafka_storage
    say "starting Kafka $KAFKA_VERSION on $HOST:$KAFKA_PORT (PLAINTEXT) and $HOST:$KAFKA_SASL_PORT (SASL_SSL)"
    # setsid: the broker outlives this script and ignores a Ctrl-C typed at `make up`. In a
    # non-interactive shell the background child is no process-group leader, so setsid execs
    # in place and $! is the JVM's pid (kafka_pid checks that).
    setsid java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Xlog:gc:file="$KAFKA_GC_LOG":time,uptime:filecount=2,filesize=20M \
        -Dlog4j2.configurationFile="$ROOT/stack/kafka/log4j2.properties" \
        -Dkafka.logs.dir="$KAFKA_DIR" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONFIG" \
        </dev/null >>"$KAFKA_OUT" 2>&1 9>&- &
    echo $! >"$KAFKA_PID_FILE"
    wait_for_kafka
}

# A kcat client configuration for the SASL_SSL listener, given as a file descriptor so that the
# password is neither on a command line nor in another file.
kcat_sasl() { # kcat args...
    kcat -F <(printf '%s\n' \
        "security.protocol=SASL_SSL" \
        "sasl.mechanisms=SCRAM-SHA-512" \
        "sasl.username=$KAFKA_USER" \
        "sasl.password=$KAFKA_SASL_PASSWORD" \
        "ssl.ca.location=$CA_FILE") -b "$HOST:$KAFKA_SASL_PORT" "$@"
}

# The users' path end to end: TLS verified against the local CA (hostname too) and SCRAM login.
check_kafka_sasl() {
    local out
    if ! out="$(kcat_sasl -L -m 10 2>&1)" || ! grep -q "broker 1 at" <<<"$out"; then
        printf '%s\n' "$out" | grep -v -i password | tail -n 5 >&2
        die "the SASL_SSL listener $HOST:$KAFKA_SASL_PORT does not accept the local user; see $KAFKA_LOG"
    fi
}

kafka_topic_listing() { kcat -b "$HOST:$KAFKA_PORT" -L -m 5 2>/dev/null; }

# Topics are created only when missing: listing them with kcat is instant, while each Kafka
# tool is a JVM that takes seconds to start. Missing topics are created in parallel.
ensure_topics() {
    local listing spec name parts pids=() names=()
    listing="$(kafka_topic_listing)"
    for spec in "${TOPICS[@]}"; do
        name=${spec%%:*} parts=${spec##*:}
        grep -q "topic \"$name\" with" <<<"$listing" && continue
        say "creating topic $name ($parts partitions)"
        kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$KAFKA_PORT" \
            --create --if-not-exists --topic "$name" --partitions "$parts" --replication-factor 1 \
            >"$KAFKA_DIR/topic-$name.log" 2>&1 &
        pids+=($!) names+=("$name")
    done
    local i
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || die "creating topic ${names[$i]} failed; see $KAFKA_DIR/topic-${names[$i]}.log"
    done
}

stop_kafka() {
    local pid
    if ! pid="$(kafka_pid)"; then
        rm -f "$KAFKA_PID_FILE"
        return 0
    fi
    say "stopping Kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until "$KAFKA_STOP_TIMEOUT" kafka_gone; then
        say "Kafka did not exit within ${KAFKA_STOP_TIMEOUT}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_until 10 kafka_gone || die "could not stop Kafka (pid $pid)"
    fi
    rm -f "$KAFKA_PID_FILE"
}

kafka_gone() { ! kafka_pid >/dev/null; }

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------

# The newest installed server (15 on Debian 12); the Debian layout keeps each version's programs
# in /usr/lib/postgresql/<major>/bin, which is not on PATH.
find_pg_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
    [[ -x $dir/pg_ctl ]] || die "PostgreSQL server programs not found in /usr/lib/postgresql/*/bin"
    PG_BIN=$dir
}

pg_major() { basename "$(dirname "$PG_BIN")"; }

# Can the server's user search (traverse) DIR? access(2) checks every directory on the way, so
# one test covers all the parents. (stderr: runuser complains when there is no postgres user yet.)
pg_can_traverse() { as_pg test -x "$1" 2>/dev/null; }

# The kernel limits a unix socket's path to 107 bytes.
socket_fits() { local sock="$1/run/.s.PGSQL.$PG_PORT"; (( ${#sock} <= 107 )); } # pg-dir

set_pg_paths() { # pg-dir
    PG_DIR=$1
    PG_DATA="$PG_DIR/data"
    PG_SOCKET_DIR="$PG_DIR/run"
    PG_TLS_DIR="$PG_DIR/tls"
    PG_LOG="$PG_DIR/postgres.log"
}

# Outside the clone, one folder per clone (the hash of its path), short enough for the socket.
pg_fallback_dir() {
    local hash
    hash="$(printf '%s' "$ROOT" | sha256sum | cut -c1-16)"
    echo "$PG_FALLBACK_ROOT/$hash/postgres"
}

# Where PostgreSQL's directory lives. The server runs as the postgres user, which must be able
# to traverse every parent of it; a clone under a private home directory (e.g. /root, mode 700,
# as on CI) is out of its reach, and users should not have to chmod their home for us. So:
#   - .stack/postgres is a symlink: a previous run (or the user) chose its target; use that;
#   - .stack/postgres is a directory, or the postgres user can reach .stack/: use .stack/postgres;
#   - else: a folder under /var/lib, with the symlink .stack/postgres pointing at it so that
#     later runs (and `down`, `reset`) find it.
# The programs always get the resolved path: the symlink lives in the unreachable folder, so a
# path through it would be as unreachable as the folder itself. With --create (only `up`), the
# fallback's parents and the symlink are made; `down`, `status` and `reset` only look.
select_pg_dir() { # [--create]
    if [[ -L $PG_LINK ]]; then
        # -m: the target may be missing (deleted by hand); init_pg_cluster makes it again.
        set_pg_paths "$(readlink -m "$PG_LINK")"
    elif [[ -d $PG_LINK ]] || { pg_can_traverse "$STACK_DIR" && socket_fits "$PG_LINK"; }; then
        # (A reachable clone whose path is too long for the socket also gets the fallback.)
        set_pg_paths "$PG_LINK"
    else
        set_pg_paths "$(pg_fallback_dir)"
        [[ ${1:-} == --create ]] || return 0
        [[ -e $PG_LINK ]] && die "$PG_LINK is neither a directory nor a symlink; remove it"
        say "$STACK_DIR is out of the postgres user's reach (or too deep for a socket path);" \
            "PostgreSQL's directory is $PG_DIR"
        # Root-owned and world-traversable, so that the postgres user reaches its own folder.
        as_root mkdir -p "$PG_DIR"
        as_root chown root:root "$PG_FALLBACK_ROOT" "$(dirname "$PG_DIR")"
        as_root chmod 755 "$PG_FALLBACK_ROOT" "$(dirname "$PG_DIR")"
        # PG_DIR itself as init_pg_cluster makes it, which (unless root) could not make it here.
        as_root chown "$(pg_owner):" "$PG_DIR"
        as_root chmod 700 "$PG_DIR"
        ln -s "$PG_DIR" "$PG_LINK"
    fi
}

# The chosen directory must be reachable: a symlink (or a directory left by an older version of
# this script) may point where the postgres user cannot go. Its parent is tested, as PG_DIR
# itself may not exist yet.
require_pg_reachable() {
    local parent
    parent="$(dirname "$PG_DIR")"
    pg_can_traverse "$parent" && return 0
    local dir=$parent blocker=$parent
    while [[ $dir != / ]]; do
        pg_can_traverse "$dir" || blocker=$dir
        dir="$(dirname "$dir")"
    done
    die "the postgres system user cannot reach $PG_DIR (blocked at $blocker);" \
        "run 'make reset' so that the next 'make up' puts it under $PG_FALLBACK_ROOT"
}

require_socket_path_fits() {
    socket_fits "$PG_DIR" || die "PostgreSQL's socket path $PG_SOCKET_DIR/.s.PGSQL.$PG_PORT is" \
        "longer than 107 bytes; use a clone in a shorter path"
}

# Only what select_pg_dir makes: this clone's fallback folder (also when .stack/ was deleted by
# hand and left it behind). A symlink that the user pointed elsewhere is theirs: its target stays.
remove_pg_fallback() {
    local clone_dir
    clone_dir="$(dirname "$(pg_fallback_dir)")"
    if [[ $PG_DIR == "$(pg_fallback_dir)" ]]; then
        [[ -d $clone_dir ]] || return 0
        say "removing $clone_dir"
        as_root rm -rf "$clone_dir"
        as_root rmdir --ignore-fail-on-non-empty "$PG_FALLBACK_ROOT"  # other clones' may remain
    elif [[ -L $PG_LINK ]]; then
        say "leaving $PG_DIR (the target of $PG_LINK, not made by this script)"
    fi
}

pg_running() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; }

pg_pid() { head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null; }

init_pg_cluster() {
    [[ -f $PG_DATA/PG_VERSION ]] && return 0
    say "initialising a PostgreSQL $(pg_major) cluster in $PG_DATA"
    mkdir -p "$PG_DIR"
    chown "$(pg_owner):" "$PG_DIR"
    chmod 700 "$PG_DIR"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --encoding=UTF8 --locale=C \
        --auth-local=peer --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 \
        || die "initdb failed; see $PG_DIR/initdb.log"
    # Only the superuser over the socket by peer auth (for this script); everybody else with a
    # password, over the socket or TCP (TLS or not; 'host' matches both).
    as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<'EOF'
# Written by stack/stack.sh.
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 peer
local   all       all                      scram-sha-256
host    all       all       127.0.0.1/32   scram-sha-256
EOF
    # Settings that may change between runs (port, paths) live in stack.conf, rewritten at start.
    echo "include_if_exists = 'stack.conf'" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
}

render_pg_config() {
    cat <<EOF
# Written by stack/stack.sh at each start.
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = '$PG_TLS_DIR/server.pem'
ssl_key_file = '$PG_TLS_DIR/server.key'
# Sized as a server for this write-heavy workload would be (the defaults suit a laptop): with 128 MB
# of buffers and a checkpoint every 1 GB of WAL, checkpoints came every few seconds under load,
# each followed by full-page images of every page touched again. Durability is untouched: fsync,
# synchronous_commit and full_page_writes keep their defaults.
shared_buffers = 1GB
max_wal_size = 8GB
checkpoint_timeout = 15min
checkpoint_completion_target = 0.9
EOF
}

# PostgreSQL insists that its key belongs to the server's user and is private.
install_pg_tls() {
    as_pg mkdir -p "$PG_TLS_DIR"
    install -o "$(pg_owner)" -m 644 "$TLS_DIR/postgres.pem" "$PG_TLS_DIR/server.pem"
    install -o "$(pg_owner)" -m 600 "$TLS_DIR/postgres.key" "$PG_TLS_DIR/server.key"
}

start_pg() {
    pg_running && return 0
    as_pg mkdir -p "$PG_SOCKET_DIR"
    install_pg_tls
    render_pg_config | as_pg tee "$PG_DATA/stack.conf" >/dev/null
    say "starting PostgreSQL $(pg_major) on $HOST:$PG_PORT"
    # -w: pg_ctl itself polls until the server accepts connections.
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 -s start 9>&- \
        || die "PostgreSQL did not start; see $PG_LOG"
}

# psql as the superuser over the unix socket (peer auth).
pg_admin_psql() {
    as_pg "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 \
        -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres -d postgres "$@"
}

# The service's role and database. The password goes in on stdin, never on a command line; it
# is set only when the role is created, so a second run changes nothing.
ensure_pg_role_and_db() {
    if [[ -z "$(pg_admin_psql -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" ]]; then
        say "creating PostgreSQL role $PG_USER"
        printf '%s\n' "\\set pw '$PG_PASSWORD'" \
            "CREATE ROLE $PG_USER LOGIN PASSWORD :'pw';" | pg_admin_psql
    fi
    local db
    for db in "$PG_DATABASE" "$PG_TEST_DATABASE"; do
        if [[ -z "$(pg_admin_psql -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]]; then
            say "creating database $db"
            pg_admin_psql -c "CREATE DATABASE $db OWNER $PG_USER"
        fi
    done
}

# The sample rows carry explicit ids, which leave the serial sequence at 1: the first plain
# INSERT (no id) would then collide with row 1. Move the sequence to the highest id (idempotent).
# subscribers_feedback has no sample rows, so its sequence needs nothing.
SYNC_SUBSCRIBERS_SEQUENCE="SELECT setval(pg_get_serial_sequence('public.subscribers_restaurants', 'id'),
    GREATEST((SELECT max(id) FROM public.subscribers_restaurants), 1))"

# The contract's schema and sample rows, applied as the service user over TCP with TLS verified
# against the local CA (which also proves that path works). Both files are idempotent.
apply_schema() {
    local db
    for db in "$PG_DATABASE" "$PG_TEST_DATABASE"; do
        PGPASSWORD="$PG_PASSWORD" PGOPTIONS='-c client_min_messages=warning' \
            "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
            "host=$HOST port=$PG_PORT dbname=$db user=$PG_USER sslmode=verify-full sslrootcert=$CA_FILE" \
            -f "${PG_SQL_FILES[0]}" -f "${PG_SQL_FILES[1]}" -c "$SYNC_SUBSCRIBERS_SEQUENCE" >/dev/null \
            || die "applying the schema to $db as $PG_USER failed (see above and $PG_LOG)"
    done
}

stop_pg() {
    [[ -f $PG_DATA/PG_VERSION ]] || return 0
    pg_running || return 0
    say "stopping PostgreSQL (pid $(pg_pid))"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 -s stop \
        || die "PostgreSQL did not stop; see $PG_LOG"
}

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

# A running server keeps the settings it was started with. If the requested ports differ (say
# STACK_PG_PORT changed), refuse before the env file is rewritten to point where nothing listens.
require_running_config_unchanged() {
    require_running_kafka_config_unchanged
    require_running_pg_config_unchanged
}

require_running_kafka_config_unchanged() {
    if kafka_pid >/dev/null && ! cmp -s "$KAFKA_CONFIG" <(render_kafka_config); then
        die "Kafka runs with other settings than requested (another port, or from an older stack.sh); run 'make down' first"
    fi
}

require_running_pg_config_unchanged() {
    if [[ -f $PG_DATA/PG_VERSION ]] && pg_running \
        && ! as_pg cat "$PG_DATA/stack.conf" | cmp -s - <(render_pg_config); then
        die "PostgreSQL runs with other settings than requested (another port, or from an older stack.sh); run 'make down' first"
    fi
}

# Before starting anything: every port that a server we are about to start needs must be free,
# so that a clash fails the whole `up` at once instead of leaving half a stack running.
require_ports_free() {
    if ! kafka_pid >/dev/null; then
        require_port_free "$KAFKA_PORT" STACK_KAFKA_PORT
        require_port_free "$KAFKA_SASL_PORT" STACK_KAFKA_SASL_PORT
        require_port_free "$KAFKA_CONTROLLER_PORT" STACK_KAFKA_CONTROLLER_PORT
    fi
    if ! { [[ -f $PG_DATA/PG_VERSION ]] && pg_running; }; then
        require_port_free "$PG_PORT" STACK_PG_PORT
    fi
}

cmd_up() {
    take_lock
    ensure_packages
    ensure_kcat_librdkafka   # needs the toolchain; before anything below runs kcat
    select_pg_dir --create   # needs the postgres user, which the postgresql package creates
    ensure_wasm_target
    require_java17
    ensure_kafka_jars
    find_pg_bin
    require_running_config_unchanged
    require_ports_free
    require_pg_reachable
    require_socket_path_fits
    load_or_generate_secrets
    write_env_file
    ensure_tls

    start_kafka
    check_kafka_sasl
    ensure_topics

    init_pg_cluster
    start_pg
    ensure_pg_role_and_db
    apply_schema

    say "up in $(elapsed)s: Kafka $HOST:$KAFKA_SASL_PORT (SASL_SSL), $HOST:$KAFKA_PORT (PLAINTEXT);" \
        "PostgreSQL $HOST:$PG_PORT; settings in $ENV_FILE"
}

cmd_down() {
    take_lock
    select_pg_dir
    stop_kafka
    if [[ -f $PG_DATA/PG_VERSION ]]; then
        find_pg_bin
        stop_pg
    fi
    say "down in $(elapsed)s"
}

cmd_status() {
    local pid listing
    select_pg_dir
    echo "Kafka $KAFKA_VERSION (jars: $KAFKA_LIBS)"
    if pid="$(kafka_pid)"; then
        echo "  running, pid $pid"
    else
        echo "  not running"
    fi
    echo "  PLAINTEXT   $HOST:$KAFKA_PORT   (no auth; admin and tests)"
    echo "  SASL_SSL    $HOST:$KAFKA_SASL_PORT   (SCRAM-SHA-512, user $KAFKA_USER, CA $CA_FILE)"
    echo "  CONTROLLER  $HOST:$KAFKA_CONTROLLER_PORT"
    if [[ -n ${pid:-} ]] && listing="$(kafka_topic_listing)"; then
        echo "  topics:"
        sed -n 's/^ *topic "\([^"]*\)" with \([0-9]*\) partitions:.*/    \1 (\2 partitions)/p' \
            <<<"$listing" | sort
    fi
    echo "  log: $KAFKA_LOG (JVM output: $KAFKA_OUT)"

    if [[ -f $PG_DATA/PG_VERSION ]]; then
        find_pg_bin
        echo "PostgreSQL $(pg_major)"
        if pg_running; then
            echo "  running, pid $(pg_pid)"
        else
            echo "  not running"
        fi
    else
        echo "PostgreSQL"
        echo "  not initialised (make up)"
    fi
    echo "  address     $HOST:$PG_PORT   (database $PG_DATABASE, tests' $PG_TEST_DATABASE, user $PG_USER, TLS with CA $CA_FILE)"
    echo "  data dir    $PG_DATA"
    echo "  socket dir  $PG_SOCKET_DIR"
    echo "  log: $PG_LOG"
    echo "CA file:  $CA_FILE"
    echo "env file: $ENV_FILE (passwords; mode 600)"
}

cmd_reset() {
    cmd_down   # also resolves PG_DIR, through the symlink that the rm -rf below takes away
    # Guard the rm -rf: only ever the .stack folder of this repository.
    [[ $STACK_DIR == "$ROOT/.stack" && -n $ROOT && $ROOT != / ]] || die "refusing to remove $STACK_DIR"
    remove_pg_fallback
    say "removing $STACK_DIR (the Kafka jars in $KAFKA_HOME and $LIBRDKAFKA_LIB stay)"
    rm -rf "$STACK_DIR"
}

# Restarting one server of a stack that `up` made, e.g. for tests that a client rides through a
# server restart. Idempotent: a server that is not running is just started. The server comes
# back with the settings it had (a request for other ports is refused, as `up` refuses it), and
# nothing else is checked, installed or changed, so a restart takes only as long as the server
# needs to stop and to answer again (polled, as `up` does). STACK_RESTART_DOWNTIME (whole seconds,
# default 0) keeps the server down that long in between, for tests of longer outages.
RESTART_DOWNTIME="${STACK_RESTART_DOWNTIME:-0}"

require_valid_downtime() { # before anything is stopped
    [[ $RESTART_DOWNTIME =~ ^[0-9]+$ ]] \
        || die "STACK_RESTART_DOWNTIME must be a whole number of seconds, not '$RESTART_DOWNTIME'"
}

restart_downtime() {
    (( RESTART_DOWNTIME == 0 )) && return 0
    say "keeping it down for ${RESTART_DOWNTIME}s (STACK_RESTART_DOWNTIME)"
    sleep "$RESTART_DOWNTIME"   # the outage asked for, not a wait for readiness
}

cmd_restart_postgres() {
    require_valid_downtime
    take_lock
    select_pg_dir
    [[ -f $PG_DATA/PG_VERSION ]] || die "PostgreSQL is not initialised in $PG_DATA; run 'make up' first"
    find_pg_bin
    require_running_pg_config_unchanged
    stop_pg
    restart_downtime
    require_port_free "$PG_PORT" STACK_PG_PORT
    start_pg
    say "PostgreSQL restarted in $(elapsed)s (pid $(pg_pid))"
}

cmd_restart_kafka() {
    require_valid_downtime
    take_lock
    [[ -e $KAFKA_DATA/meta.properties && -d $KAFKA_LIBS ]] \
        || die "Kafka is not set up in $KAFKA_DATA; run 'make up' first"
    require_running_kafka_config_unchanged
    stop_kafka
    restart_downtime
    require_port_free "$KAFKA_PORT" STACK_KAFKA_PORT
    require_port_free "$KAFKA_SASL_PORT" STACK_KAFKA_SASL_PORT
    require_port_free "$KAFKA_CONTROLLER_PORT" STACK_KAFKA_CONTROLLER_PORT
    start_kafka   # polls until the broker answers on the PLAINTEXT listener
    # As `up`: ready means the users' SASL_SSL login works too (the password from the env file).
    KAFKA_SASL_PASSWORD="$(env_file_value KAFKA_SASL_PASSWORD)"
    [[ -n $KAFKA_SASL_PASSWORD ]] || die "$ENV_FILE has no KAFKA_SASL_PASSWORD; run 'make up' first"
    check_kafka_sasl
    say "Kafka restarted in $(elapsed)s (pid $(kafka_pid))"
}

main() {
    case "${1:-}" in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        reset) cmd_reset ;;
        restart-postgres) cmd_restart_postgres ;;
        restart-kafka) cmd_restart_kafka ;;
        *) echo "usage: $0 up|down|status|reset|restart-postgres|restart-kafka" >&2; exit 2 ;;
    esac
}

main "$@"
