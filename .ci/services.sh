# Provisions the real peers the test suite talks to; sourced by .ci/test. Every step is idempotent and
# fails loudly: a test run must never proceed, and then skip, without its peers.
#
# - PostgreSQL: the machine's server at 127.0.0.1:5432 (user postgres, trust auth, database `test`);
#   started with pg_ctlcluster if it is down.
# - Python: a virtualenv at .venv with the official Azure SDK packages and pyarrow (protocol and format
#   fidelity checks run the real SDKs against our endpoints).
# - Azurite: Azure Blob emulator from npm, installed under .ci/node_modules, listening on 127.0.0.1:10000.
# - moto: an S3-compatible server from PyPI (in .venv), listening on 127.0.0.1:9010.
# - RabbitMQ: the machine's broker at 127.0.0.1:5672 (guest/guest) with its AMQP 1.0 plugin enabled,
#   the third-party AMQP 1.0 peer of the servicebus sink.

HUBROUTE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HUBROUTE_STATE="${HUBROUTE_STATE:-$HUBROUTE_ROOT/.ci/state}"
mkdir -p "$HUBROUTE_STATE"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] FATAL: %s\n' "$*" >&2; exit 1; }

wait_for_port() { # host port seconds
    local deadline=$((SECONDS + $3))
    until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

ensure_postgres() {
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        log "PostgreSQL is down; starting it"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start ||
            die "could not start PostgreSQL (pg_ctlcluster); the sink tests need it at 127.0.0.1:5432"
        wait_for_port 127.0.0.1 5432 30 || die "PostgreSQL did not come up on 127.0.0.1:5432"
    fi
    if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc "select 1 from pg_database where datname = 'test'" | grep -q 1; then
        log "creating database test"
        psql -h 127.0.0.1 -U postgres -d postgres -qc "create database test" ||
            die "could not create database test"
    fi
    log "PostgreSQL ready"
}

ensure_python() {
    local venv="$HUBROUTE_ROOT/.venv"
    local requirements="$HUBROUTE_ROOT/tests/e2e/python/requirements.txt"
    local stamp="$venv/.requirements.sha"
    if [[ ! -x "$venv/bin/python" ]]; then
        log "creating Python virtualenv at .venv"
        python3 -m venv "$venv" || die "python3 -m venv failed"
    fi
    local want
    want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        log "installing Python test requirements"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" ||
            die "pip install -r tests/e2e/python/requirements.txt failed"
        echo "$want" >"$stamp"
    fi
    export HUBROUTE_PYTHON="$venv/bin/python"
    log "Python ready: $HUBROUTE_PYTHON"
}

ensure_azurite() {
    local bin="$HUBROUTE_ROOT/.ci/node_modules/.bin/azurite-blob"
    if [[ ! -x "$bin" ]]; then
        log "installing Azurite from npm"
        (cd "$HUBROUTE_ROOT/.ci" && npm install --silent --no-audit --no-fund --no-save azurite@3.35.0 >/dev/null) ||
            die "npm install azurite failed"
    fi
    if ! (exec 3<>/dev/tcp/127.0.0.1/10000) 2>/dev/null; then
        log "starting Azurite blob service on 127.0.0.1:10000"
        mkdir -p "$HUBROUTE_STATE/azurite"
        nohup "$bin" --blobHost 127.0.0.1 --blobPort 10000 --location "$HUBROUTE_STATE/azurite" \
            --skipApiVersionCheck --loose --silent >"$HUBROUTE_STATE/azurite.log" 2>&1 &
        wait_for_port 127.0.0.1 10000 60 || die "Azurite did not start; see $HUBROUTE_STATE/azurite.log"
    fi
    export HUBROUTE_AZURITE_BLOB_ENDPOINT="http://127.0.0.1:10000/devstoreaccount1"
    log "Azurite ready"
}

ensure_s3() {
    local bin="$HUBROUTE_ROOT/.venv/bin/moto_server"
    [[ -x "$bin" ]] || die "moto_server is missing from .venv; ensure_python installs it"
    if ! (exec 3<>/dev/tcp/127.0.0.1/9010) 2>/dev/null; then
        log "starting the moto S3 server on 127.0.0.1:9010"
        nohup "$bin" -H 127.0.0.1 -p 9010 >"$HUBROUTE_STATE/moto.log" 2>&1 &
        wait_for_port 127.0.0.1 9010 60 || die "moto did not start; see $HUBROUTE_STATE/moto.log"
    fi
    export HUBROUTE_S3_ENDPOINT="http://127.0.0.1:9010"
    log "S3 (moto) ready"
}

ensure_rabbitmq() {
    command -v rabbitmq-plugins >/dev/null ||
        die "rabbitmq-plugins is missing; the servicebus sink tests need RabbitMQ at 127.0.0.1:5672"
    wait_for_port 127.0.0.1 5672 30 || die "RabbitMQ is not listening on 127.0.0.1:5672"
    if ! rabbitmq-plugins list --enabled --minimal 2>/dev/null | grep -qx rabbitmq_amqp1_0; then
        log "enabling RabbitMQ's AMQP 1.0 plugin"
        rabbitmq-plugins enable rabbitmq_amqp1_0 >/dev/null ||
            die "rabbitmq-plugins enable rabbitmq_amqp1_0 failed"
    fi
    log "RabbitMQ (AMQP 1.0) ready"
}
