# Provisions the real peers the test suite talks to; sourced by .ci/test. Every step is idempotent and
# fails loudly: a test run must never proceed, and then skip, without its peers.
#
# - PostgreSQL: the machine's server at 127.0.0.1:5432 (user postgres, trust auth, database `test`);
#   started with pg_ctlcluster if it is down. ensure_postgres_tls adds TLS: a test CA and server
#   certificate, ssl = on, and the role hubroute_tls that may connect only over TLS. The chaos test
#   restarts PostgreSQL, so it runs a private cluster with the same server's initdb and pg_ctl.
# - Python: a virtualenv at .venv with the official Azure SDK packages and pyarrow (protocol and format
#   fidelity checks run the real SDKs against our endpoints).
# - Azurite: Azure Blob emulator from npm, installed under .ci/node_modules, listening on 127.0.0.1:10000.
# - moto: an S3-compatible server from PyPI (in .venv), listening on 127.0.0.1:9010.
# - Chromium: Debian's chromium and chromium-driver, for the status page's browser test.
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

# PostgreSQL over TLS for the sink's sslmode tests: a test CA and a server certificate for localhost
# and 127.0.0.1 (generated once with openssl into <data_directory>/hubroute-tls, where the tests
# find ca.crt), ssl = on with them, and the role hubroute_tls (password hubroute_tls) that
# pg_hba.conf admits only over TLS with SCRAM (hostssl), rejecting it without (hostnossl). The
# plain tests keep using user postgres over 127.0.0.1 without TLS.
ensure_postgres_tls() {
    local admin=(psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq)
    local data hba dir
    data="$("${admin[@]}" -c 'show data_directory')" || die "cannot ask PostgreSQL for its data directory"
    hba="$("${admin[@]}" -c 'show hba_file')" || die "cannot ask PostgreSQL for its hba_file"
    dir="$data/hubroute-tls"
    if [[ ! -s "$dir/server.crt" || ! -s "$dir/ca.crt" ]]; then
        log "generating a test CA and a PostgreSQL server certificate in $dir"
        mkdir -p "$dir" || die "cannot create $dir"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=hubroute test CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null || die "openssl could not create the test CA"
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null || die "openssl could not create the server key"
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$dir/server.ext"
        openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
            -days 3650 -sha256 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null ||
            die "openssl could not sign the server certificate"
        chown -R postgres:postgres "$dir" && chmod 600 "$dir/server.key" "$dir/ca.key" ||
            die "cannot give $dir to the postgres user"
    fi
    "${admin[@]}" -c "ALTER SYSTEM SET ssl = on" \
        -c "ALTER SYSTEM SET ssl_cert_file = '$dir/server.crt'" \
        -c "ALTER SYSTEM SET ssl_key_file = '$dir/server.key'" ||
        die "cannot configure ssl in PostgreSQL"
    if ! grep -q '^hostssl all hubroute_tls ' "$hba"; then
        log "admitting role hubroute_tls only over TLS in $hba"
        { printf '# hubroute tests (.ci/services.sh): role hubroute_tls only over TLS\n'
          printf 'hostssl all hubroute_tls 127.0.0.1/32 scram-sha-256\n'
          printf 'hostnossl all hubroute_tls 127.0.0.1/32 reject\n'
          cat "$hba"; } >"$hba.hubroute" && cat "$hba.hubroute" >"$hba" && rm "$hba.hubroute" ||
            die "cannot edit $hba"
    fi
    "${admin[@]}" -c "DO \$\$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hubroute_tls') THEN
                CREATE ROLE hubroute_tls LOGIN PASSWORD 'hubroute_tls';
            END IF;
        END \$\$" || die "cannot create role hubroute_tls"
    psql -h 127.0.0.1 -U postgres -d test -v ON_ERROR_STOP=1 -Atqc "GRANT CREATE ON SCHEMA public TO hubroute_tls" ||
        die "cannot grant hubroute_tls the public schema of database test"
    "${admin[@]}" -c "SELECT pg_reload_conf()" >/dev/null || die "cannot reload PostgreSQL's configuration"
    PGPASSWORD=hubroute_tls psql "host=127.0.0.1 dbname=test user=hubroute_tls sslmode=verify-full sslrootcert=$dir/ca.crt" \
        -v ON_ERROR_STOP=1 -Atqc "select 1" >/dev/null ||
        die "PostgreSQL does not accept hubroute_tls over TLS (verify-full with $dir/ca.crt)"
    if PGPASSWORD=hubroute_tls psql "host=127.0.0.1 dbname=test user=hubroute_tls sslmode=disable" -Atqc "select 1" >/dev/null 2>&1; then
        die "PostgreSQL accepts hubroute_tls without TLS; check $hba"
    fi
    log "PostgreSQL TLS ready (CA $dir/ca.crt)"
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
            --skipApiVersionCheck --loose --silent --disableTelemetry >"$HUBROUTE_STATE/azurite.log" 2>&1 &
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

ensure_chromium() {
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
        log "installing Debian's chromium and chromium-driver (the status page test drives them)"
        command -v apt-get >/dev/null || die "chromium is missing and there is no apt-get; install chromium and chromium-driver"
        # Another apt run (ours or a neighbour's) may hold the lock for a while: wait rather than fail.
        apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends chromium chromium-driver >"$HUBROUTE_STATE/apt-chromium.log" 2>&1 ||
            { apt-get -o DPkg::Lock::Timeout=300 update >>"$HUBROUTE_STATE/apt-chromium.log" 2>&1 &&
                apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends chromium chromium-driver >>"$HUBROUTE_STATE/apt-chromium.log" 2>&1; } ||
            die "apt-get install chromium chromium-driver failed; see $HUBROUTE_STATE/apt-chromium.log"
    fi
    export HUBROUTE_CHROMIUM
    HUBROUTE_CHROMIUM="$(command -v chromium)"
    export HUBROUTE_CHROMEDRIVER
    HUBROUTE_CHROMEDRIVER="$(command -v chromedriver)"
    "$HUBROUTE_CHROMIUM" --version >/dev/null 2>&1 || die "$HUBROUTE_CHROMIUM does not run"
    log "Chromium ready: $HUBROUTE_CHROMIUM"
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
