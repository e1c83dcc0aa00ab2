#!/usr/bin/env bash
# Measure portcullis against nginx proxy_pass and against the bare upstream, on loopback.
#
# Usage: bench/run.sh           the proxy comparison: direct, nginx, portcullis, policies
#        bench/run.sh limits    the cost of one rate limit: portcullis, limit-local, limit-redis
#        bench/run.sh identity  the cost of one authentication policy: portcullis, key-auth,
#                               jwt-rs256, jwt-eddsa, introspection
#        bench/run.sh waf       the cost of the `waf` policy: portcullis, waf-builtin, waf-crs
#        bench/run.sh ai        the latency the AI gateway adds at fixed request rates, see
#                               bench/ai.sh
#
# Targets, each measured with wrk against GET /fast of tools/echo-upstream, once with
# BENCH_CONNECTIONS connections (full load) and once with BENCH_LIGHT_CONNECTIONS:
#   direct       wrk -> echo-upstream
#   nginx        wrk -> nginx proxy_pass (keep-alive upstream pool) -> echo-upstream
#   portcullis   wrk -> portcullis, no policies, no access log -> echo-upstream
#   policies     wrk -> portcullis, key-auth + rate limit + JSON access log file -> echo-upstream
#   limit-local  wrk -> portcullis, one rate limit with in-memory counters -> echo-upstream
#   limit-redis  wrk -> portcullis, one rate limit with Redis counters -> echo-upstream
#   waf-builtin  wrk -> portcullis, a `waf` policy with the built-in rules -> echo-upstream
#   waf-crs3     wrk -> portcullis, a `waf` policy with Debian's CRS 3.3 (package
#                modsecurity-crs) and its crs-setup.conf at paranoia level 1 -> echo-upstream
#   waf-crs      wrk -> portcullis, a `waf` policy with the OWASP CRS 4 at paranoia level 1
#                -> echo-upstream
#   nginx-modsec wrk -> nginx with ModSecurity v3 (package libnginx-mod-http-modsecurity) and
#                the same CRS 3.3 rules and crs-setup.conf as waf-crs3 -> echo-upstream
#
# The waf run measures two workloads on every target: GET /fast?user=alice&page=2, a benign
# request with two query parameters, and POST /api/orders with a 59-byte JSON body, a typical
# API call to which echo-upstream returns a JSON echo. It compares nginx, nginx-modsec,
# portcullis without policies and the WAF targets. Before measuring, it sends an attack and
# benign corpus (bench/waf_corpus.py over $PORTCULLIS_SHARED_DIR/datasets/HttpParamsDataset,
# BENCH_CORPUS_PER_CLASS values of each label) through every WAF target and counts the 403s.
# The CRS 4 comes from $PORTCULLIS_CRS_DIR/rules (default: ../shared/crs/rules next to the
# repository); without it waf-crs is skipped.
#   key-auth     wrk -> portcullis, key-auth with one declared key -> echo-upstream
#   jwt-rs256    wrk -> portcullis, jwt with a JWK Set, RS256 (RSA-2048) token -> echo-upstream
#   jwt-eddsa    wrk -> portcullis, jwt with a JWK Set, EdDSA (Ed25519) token -> echo-upstream
#   introspection  wrk -> portcullis, oauth2-introspection with a warm cache -> echo-upstream
#
# The limits run compares the last two with portcullis: the difference in CPU time and
# latency per request is the cost of a limit. Its Redis is a private redis-server on a free
# port, pinned to BENCH_LOAD_CORE, so the proxy core measures only the gateway. The limit
# admits 100,000,000 requests per second, so it never rejects.
#
# The identity run compares the next four with portcullis in the same way: the difference is
# the cost of verifying one credential per request. bench/identity_fixture.py, pinned to
# BENCH_LOAD_CORE, makes the keys and tokens with openssl and serves the JWK Set and the
# introspection endpoint on loopback. The gateway caches both, so after the check requests the
# measured runs verify signatures and look up the introspection cache without calling out. The
# report prints how many JWK Set and introspection calls the fixture served.
#
# wrk and echo-upstream share BENCH_LOAD_CORE; the proxy under test runs alone on
# BENCH_PROXY_CORE. The script also reads the resident memory (VmRSS) of the policy
# gateway and of nginx when idle and while BENCH_IDLE_CONNECTIONS idle keep-alive
# connections are open.
#
# Environment, with defaults:
#   BENCH_DURATION=10s            measured wrk run per target
#   BENCH_WARMUP=3s               wrk warm-up per target, not reported
#   BENCH_CONNECTIONS=64          wrk connections
#   BENCH_LIGHT_CONNECTIONS=1     wrk connections of the light-load latency run (0 skips it)
#   BENCH_LIGHT_DURATION=5s       light-load run per target, after a 1 s warm-up
#   BENCH_IDLE_CONNECTIONS=10000  idle connections for the memory check (0 skips it)
#   BENCH_LOAD_CORE=0             core for wrk, echo-upstream and the idle-connection client
#   BENCH_PROXY_CORE=1            core for nginx and portcullis
#   BENCH_KEEP=0                  1 keeps the temporary folder with configs and logs
#   BENCH_QUIET_TIMEOUT=120       max seconds to wait, before each attempt, for other
#                                 processes to use under 5% of a core
#   BENCH_ATTEMPTS=3              max measured runs per target while other processes
#                                 used 5% of a core or more; the least disturbed one is kept
#   BENCH_CORPUS_PER_CLASS=500    attack and benign values of the waf run's detection corpus
#                                 (0 skips the corpus)
#   PORTCULLIS_SHARED_DIR         folder with datasets/ (default: ../shared next to the repository)
#   CARGO_TARGET_DIR              cargo's output folder (default: target/ in the repository)
#
# With warm builds the default run takes about 1.5 minutes, and the waf run about 8. Every load is bounded by
# wrk's -d, and every wait by a timeout. Traffic goes only to 127.0.0.1.
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
readonly BENCH_DIR="$REPO/bench"

readonly DURATION=${BENCH_DURATION:-10s}
readonly WARMUP=${BENCH_WARMUP:-3s}
readonly CONNECTIONS=${BENCH_CONNECTIONS:-64}
readonly LIGHT_CONNECTIONS=${BENCH_LIGHT_CONNECTIONS:-1}
readonly LIGHT_DURATION=${BENCH_LIGHT_DURATION:-5s}
readonly IDLE_CONNECTIONS=${BENCH_IDLE_CONNECTIONS:-10000}
readonly LOAD_CORE=${BENCH_LOAD_CORE:-0}
readonly PROXY_CORE=${BENCH_PROXY_CORE:-1}
readonly KEEP=${BENCH_KEEP:-0}
readonly QUIET_TIMEOUT=${BENCH_QUIET_TIMEOUT:-120}
readonly ATTEMPTS=${BENCH_ATTEMPTS:-3}
readonly TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
CLOCK_TICKS=$(getconf CLK_TCK)
readonly CLOCK_TICKS

readonly HOST=127.0.0.1
readonly API_KEY=alice-demo-key-0001
readonly ADMIN_TOKEN=bench-admin-token-000000000001
readonly TARGETS=(direct nginx portcullis policies)
readonly LIMIT_TARGETS=(portcullis limit-local limit-redis)
WAF_TARGETS=(nginx nginx-modsec portcullis waf-builtin waf-crs3 waf-crs)
readonly CRS_RULES=${PORTCULLIS_CRS_DIR:-$REPO/../shared/crs}/rules
# Debian's CRS 3.3 (package modsecurity-crs) and the crs-setup.conf it installs, which both
# nginx-modsec and waf-crs3 run.
readonly DEBIAN_CRS_RULES=/usr/share/modsecurity-crs/rules
readonly DEBIAN_CRS_SETUP=/etc/modsecurity/crs/crs-setup.conf
readonly MODSECURITY_MODULE=/usr/share/nginx/modules/ngx_http_modsecurity_module.so
readonly CORPUS_PER_CLASS=${BENCH_CORPUS_PER_CLASS:-500}
readonly CORPUS_CSV=${PORTCULLIS_SHARED_DIR:-$REPO/../shared}/datasets/HttpParamsDataset/payload_train.csv
# JSON body of the waf run's POST workload.
readonly POST_BODY='{"customer":"alice","items":[{"sku":"A-100","quantity":2}]}'
# Workload that measure_once sends: get (GET of URL[NAME]) or post (POST of POST_URL[NAME]).
WORKLOAD=get
# Time after which wrk counts a request as timed out, which fails the run. The waf run raises
# it because nginx with ModSecurity queues 64 connections for far longer than 2 s.
WRK_TIMEOUT=2s
# Path and query that wrk requests through the proxies.
PROXY_TARGET=/echo/fast
readonly IDENTITY_TARGETS=(portcullis key-auth jwt-rs256 jwt-eddsa introspection)
# Client secret that the introspection target sends to the fixture, which does not check it.
export BENCH_INTROSPECTION_SECRET=bench-introspection-secret

WORK_DIR=""
REDIS_URL=""
IDP_URL=""
PIDS=()
# Command that start_nginx and start_portcullis put before the proxy (bench/instructions.sh
# sets valgrind), and how many seconds they wait for the proxy to start.
PROXY_WRAPPER=()
START_TIMEOUT=30
# Directives that start_nginx passes with -g.
NGINX_GLOBALS='daemon off;'
# The credential header that wrk and the checks send to each target; `apikey` when unset.
declare -A HEADER
declare -A IDLE_REPORT URL POST_URL CORPUS_REPORT SENT ATTEMPTS_USED RPS P50_US P99_US MAX_US LOAD_BUSY PROXY_BUSY OTHER_BUSY PROXY_CPU_US RSS_KIB

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    printf '[bench] error: %s\n' "$*" >&2
    exit 1
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        stop_process "$pid"
    done
    if [[ -n $WORK_DIR ]]; then
        if [[ $KEEP == 1 ]]; then
            log "kept configs and logs in $WORK_DIR"
        else
            rm -rf "$WORK_DIR"
        fi
    fi
}

# Send SIGTERM to PID and wait up to 5 s before SIGKILL.
stop_process() {
    local pid=$1 tries
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((tries = 0; tries < 50; tries++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Install the commands and packages that MODE (proxies, limits, identity or waf) needs.
install_tools() {
    local mode=$1 missing=() command package commands=(wrk taskset python3 curl)
    case $mode in
        limits) commands+=(redis-server redis-cli) ;;
        identity) commands+=(openssl) ;;
        proxies | waf) commands+=(nginx) ;;
    esac
    for command in "${commands[@]}"; do
        if ! command -v "$command" >/dev/null; then
            case $command in
                taskset) package=util-linux ;;
                redis-server | redis-cli) package=redis-server ;;
                *) package=$command ;;
            esac
            missing+=("$package")
        fi
    done
    if [[ $mode == waf ]]; then
        [[ -f $MODSECURITY_MODULE ]] || missing+=(libnginx-mod-http-modsecurity)
        [[ -d $DEBIAN_CRS_RULES && -f $DEBIAN_CRS_SETUP ]] || missing+=(modsecurity-crs)
    fi
    if ((${#missing[@]} > 0)); then
        log "installing ${missing[*]} with apt-get"
        apt-get update
        apt-get install -y "${missing[@]}"
    fi
}

check_machine() {
    local cores
    cores=$(nproc)
    ((LOAD_CORE != PROXY_CORE)) || die "BENCH_LOAD_CORE and BENCH_PROXY_CORE must differ, but both are $LOAD_CORE"
    ((LOAD_CORE < cores && PROXY_CORE < cores)) ||
        die "BENCH_LOAD_CORE=$LOAD_CORE or BENCH_PROXY_CORE=$PROXY_CORE is out of range: this machine has cores 0-$((cores - 1))"
}

build_binaries() {
    log "building portcullis and echo-upstream (release)"
    (cd "$REPO" && cargo build --release -p portcullis -p echo-upstream)
    PORTCULLIS=$TARGET_DIR/release/portcullis
    ECHO_UPSTREAM=$TARGET_DIR/release/echo-upstream
    [[ -x $PORTCULLIS && -x $ECHO_UPSTREAM ]] || die "release binaries not found under $TARGET_DIR/release"
}

# Print a TCP port that is free on 127.0.0.1 right now, found by binding port 0.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Run COMMAND every 0.1 s until it succeeds. Fail when PID exits or after TIMEOUT seconds.
wait_until() {
    local what=$1 pid=$2 timeout=$3 log_file=$4
    shift 4
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log_file" >&2 || true
            die "$what exited before it was ready (log: $log_file)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$log_file" >&2 || true
            die "$what was not ready after ${timeout} s (log: $log_file)"
        fi
        sleep 0.1
    done
}

# Print the status of GET URL, or 000 when the request failed. Extra arguments go to curl.
http_status() {
    local url=$1
    shift
    curl --silent --output /dev/null --write-out '%{http_code}' --max-time 5 "$@" "$url" || true
}

# Return 0 when GET URL returns EXPECTED_STATUS. Extra arguments go to curl.
status_is() {
    local url=$1 expected=$2
    shift 2
    [[ $(http_status "$url" "$@") == "$expected" ]]
}

# Fail unless GET URL returns EXPECTED_STATUS. Extra arguments go to curl.
expect_status() {
    local url=$1 expected=$2 status
    shift 2
    status=$(http_status "$url" "$@")
    [[ $status == "$expected" ]] || die "GET $url returned $status, expected $expected"
}

start_upstream() {
    local log_file=$WORK_DIR/echo-upstream.log address
    taskset -c "$LOAD_CORE" "$ECHO_UPSTREAM" "$HOST:0" 2>"$log_file" &
    UPSTREAM_PID=$!
    PIDS+=("$UPSTREAM_PID")
    wait_until echo-upstream "$UPSTREAM_PID" 10 "$log_file" grep -q 'listening on http://' "$log_file"
    address=$(sed -n 's|.*listening on http://\([0-9.:]*\).*|\1|p' "$log_file" | head -n 1)
    UPSTREAM_ADDRESS=$address
    URL[direct]="http://$address/fast"
    expect_status "${URL[direct]}" 200
    log "echo-upstream on $address, pinned to core $LOAD_CORE"
}

# Write the ModSecurity v3 config of nginx-modsec to DIR/modsecurity.conf: the engine on, the
# request body inspected, and Debian's CRS 3.3 after its crs-setup.conf, as Debian's
# owasp-crs.load includes them. Rules 200000 and 200001 select the XML and JSON body parsers,
# as in ModSecurity's modsecurity.conf-recommended, because ModSecurity v3 picks no body
# parser from Content-Type by itself (portcullis does).
write_modsecurity_config() {
    local dir=$1
    cat >"$dir/modsecurity.conf" <<EOF
SecRuleEngine On
SecRequestBodyAccess On
SecRequestBodyLimit 13107200
SecRequestBodyNoFilesLimit 131072
SecRequestBodyLimitAction Reject
SecResponseBodyAccess Off
SecAuditEngine Off
SecArgumentSeparator &
SecCookieFormat 0
SecRule REQUEST_HEADERS:Content-Type "^(?:application(?:/soap\\+|/)|text/)xml" \\
    "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "^application/json" \\
    "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
Include $DEBIAN_CRS_SETUP
Include $DEBIAN_CRS_RULES/*.conf
EOF
}

# Write the config of target NAME (nginx, or nginx-modsec with ModSecurity) listening on PORT
# to WORK_DIR/NAME/nginx.conf.
write_nginx_config() {
    local port=$1 name=$2 dir=$WORK_DIR/$2 module="" modsecurity=""
    mkdir -p "$dir"
    if [[ $name == nginx-modsec ]]; then
        write_modsecurity_config "$dir"
        module="load_module $MODSECURITY_MODULE;"
        modsecurity="modsecurity on; modsecurity_rules_file $dir/modsecurity.conf;"
    fi
    cat >"$dir/nginx.conf" <<EOF
$module
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;

events {
    worker_connections 16384;
}

http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    # Both sides keep connections open for the whole run, because the default of 1000
    # requests per connection would make wrk reconnect during the measurement.
    keepalive_requests 1000000;

    upstream echo {
        server $UPSTREAM_ADDRESS;
        keepalive $CONNECTIONS;
        keepalive_requests 1000000;
    }

    server {
        listen $HOST:$port;
        $modsecurity
        location /echo/ {
            proxy_pass http://echo/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# Start target NAME (default nginx; nginx-modsec adds ModSecurity) and check that it proxies.
start_nginx() {
    local name=${1:-nginx} port dir base
    dir=$WORK_DIR/$name
    port=$(free_port)
    write_nginx_config "$port" "$name"
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" || die "nginx rejected the generated config $dir/nginx.conf"
    taskset -c "$PROXY_CORE" "${PROXY_WRAPPER[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -g "$NGINX_GLOBALS" \
        2>>"$dir/error.log" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    base="http://$HOST:$port"
    URL[$name]="$base$PROXY_TARGET"
    POST_URL[$name]="$base/echo/api/orders"
    wait_until "$name" "$PROXY_PID" "$START_TIMEOUT" "$dir/error.log" status_is "${URL[$name]}" 200
    if [[ $name == nginx-modsec ]]; then
        # An attack must be rejected, or the run would measure nginx without ModSecurity.
        expect_status "$base/echo/fast?q=1%27%20OR%20%271%27%3D%271" 403
    fi
    log "$name $(nginx -v 2>&1 | sed 's|.*/||') on $HOST:$port, pinned to core $PROXY_CORE"
}

# Print the credential header of target NAME.
request_header() {
    echo "${HEADER[$1]:-apikey: $API_KEY}"
}

# Start bench/identity_fixture.py on a free port, pinned to the load core, set IDP_URL, and
# set the Authorization header of the token targets.
start_identity_provider() {
    local port dir=$WORK_DIR/identity pid
    port=$(free_port)
    mkdir -p "$dir"
    taskset -c "$LOAD_CORE" python3 "$BENCH_DIR/identity_fixture.py" --dir "$dir" --port "$port" \
        >"$dir/fixture.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_until identity_fixture.py "$pid" 30 "$dir/fixture.log" grep -q '^serving on' "$dir/fixture.log"
    IDP_URL="http://$HOST:$port"
    HEADER[jwt-rs256]="Authorization: Bearer $(cat "$dir/rs256.token")"
    HEADER[jwt-eddsa]="Authorization: Bearer $(cat "$dir/eddsa.token")"
    HEADER[introspection]="Authorization: Bearer $(cat "$dir/introspection.token")"
    log "identity_fixture.py on $HOST:$port, pinned to core $LOAD_CORE"
}

# Print the JWK Set and introspection calls that the identity fixture has served, as JSON.
identity_provider_calls() {
    curl --silent --fail --max-time 5 "$IDP_URL/stats"
}

# Start a private redis-server on a free port, pinned to the load core, and set REDIS_URL.
start_redis() {
    local port dir=$WORK_DIR/redis pid
    port=$(free_port)
    mkdir -p "$dir"
    taskset -c "$LOAD_CORE" redis-server --bind "$HOST" --port "$port" --save "" --appendonly no \
        --dir "$dir" >"$dir/redis.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_until redis-server "$pid" 10 "$dir/redis.log" redis-cli -h "$HOST" -p "$port" ping
    REDIS_URL="redis://$HOST:$port"
    log "redis-server $(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p') on $HOST:$port, pinned to core $LOAD_CORE"
}

# Print the services and consumers of identity target NAME, whose one policy authenticates.
identity_entities() {
    local name=$1 policy algorithm=RS256
    case $name in
        key-auth) policy='key-auth: {}' ;;
        jwt-rs256 | jwt-eddsa)
            [[ $name == jwt-eddsa ]] && algorithm=EdDSA
            policy="jwt: { issuer: \"https://idp.bench\", audiences: [bench], jwks_uri: \"$IDP_URL/jwks.json\", algorithms: [$algorithm], consumer_claim: sub }"
            ;;
        introspection)
            policy="oauth2-introspection: { introspection_endpoint: \"$IDP_URL/introspect\", client_id: gateway, client_secret_env: BENCH_INTROSPECTION_SECRET, audiences: [bench] }"
            ;;
        *) die "no identity policy for target $name" ;;
    esac
    echo_service_with_policy "$policy"
    cat <<EOF
consumers:
  - name: alice
    api_keys: [$API_KEY]
EOF
}

# Print the echo service, without an access log, with POLICY as its one policy.
echo_service_with_policy() {
    cat <<EOF
access_log: off
services:
  - name: echo
    targets: [http://$UPSTREAM_ADDRESS]
    policies:
      - $1
EOF
}

# Return 0 when target NAME is one of the identity targets other than portcullis.
is_identity_target() {
    case $1 in
        key-auth | jwt-rs256 | jwt-eddsa | introspection) return 0 ;;
        *) return 1 ;;
    esac
}

# Write a portcullis config for target NAME to DIR/portcullis.yaml.
write_portcullis_config() {
    local dir=$1 name=$2 with_policies=0 backend
    [[ $name == policies ]] && with_policies=1
    mkdir -p "$dir"
    {
        cat <<EOF
listeners:
  - address: $HOST:0
admin:
  address: $HOST:0
  token: $ADMIN_TOKEN
store:
  sqlite: portcullis.db
log:
  level: warn
EOF
        if is_identity_target "$name"; then
            identity_entities "$name"
        elif [[ $name == limit-* ]]; then
            backend=${name#limit-}
            if [[ $backend == redis ]]; then
                printf 'redis: { url: "%s", key_prefix: "bench:" }\n' "$REDIS_URL"
            fi
            echo_service_with_policy "rate-limit: { limit: 100000000, window: 1s, by: ip, backend: $backend }"
        elif [[ $name == waf-crs3 ]]; then
            echo_service_with_policy "waf: { rules_dir: \"$WORK_DIR/crs3-rules\", paranoia: 1 }"
        elif [[ $name == waf-crs ]]; then
            echo_service_with_policy "waf: { rules_dir: \"$CRS_RULES\", paranoia: 1 }"
        elif [[ $name == waf-builtin ]]; then
            echo_service_with_policy "waf: {}"
        elif ((with_policies)); then
            cat <<EOF
access_log: access.log
services:
  - name: echo
    targets: [http://$UPSTREAM_ADDRESS]
    policies:
      - key-auth: {}
      - rate-limit: { limit: 100000000, window: 1s, by: consumer }
consumers:
  - name: alice
    api_keys: [$API_KEY]
EOF
        else
            cat <<EOF
access_log: off
services:
  - name: echo
    targets: [http://$UPSTREAM_ADDRESS]
EOF
        fi
        cat <<EOF
routes:
  - name: echo
    service: echo
    paths: [/echo]
    strip_prefix: true
EOF
    } >"$dir/portcullis.yaml"
}

# Start portcullis pinned to the proxy core with DIR/portcullis.yaml, wait until it is ready,
# and set PROXY_PID, PROXY_ADDRESS and ADMIN_URL. NAME labels its log lines.
launch_portcullis() {
    local name=$1 dir=$2 admin_address
    taskset -c "$PROXY_CORE" "${PROXY_WRAPPER[@]}" "$PORTCULLIS" serve --config "$dir/portcullis.yaml" \
        --addresses-file "$dir/addresses.json" 2>"$dir/portcullis.log" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_until "portcullis ($name)" "$PROXY_PID" "$START_TIMEOUT" "$dir/portcullis.log" \
        test -s "$dir/addresses.json"
    PROXY_ADDRESS=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["proxy"][0])' "$dir/addresses.json")
    admin_address=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin"])' "$dir/addresses.json")
    ADMIN_URL="http://$admin_address"
    wait_until "portcullis ($name)" "$PROXY_PID" "$START_TIMEOUT" "$dir/portcullis.log" \
        status_is "$ADMIN_URL/health/ready" 200
}

# Start portcullis for target NAME (portcullis, policies, a limit, an identity or a waf target)
# and check that it proxies.
start_portcullis() {
    local name=$1 with_policies=0 dir=$WORK_DIR/$1 proxy_address admin_address
    [[ $name == policies ]] && with_policies=1
    is_identity_target "$name" && with_policies=1
    write_portcullis_config "$dir" "$name"
    launch_portcullis "$name" "$dir"
    proxy_address=$PROXY_ADDRESS
    admin_address=${ADMIN_URL#http://}
    URL[$name]="http://$proxy_address$PROXY_TARGET"
    POST_URL[$name]="http://$proxy_address/echo/api/orders"
    expect_status "${URL[$name]}" 200 --header "$(request_header "$name")"
    if ((with_policies)); then
        # Without the credential the request must be rejected, or the policy chain is not active.
        expect_status "${URL[$name]}" 401
    fi
    if [[ $name == limit-* ]]; then
        # The limit must be in the chain, or the run would measure a gateway without it.
        curl --silent --max-time 5 --include "${URL[$name]}" | grep -qi '^ratelimit-policy:' ||
            die "portcullis ($name) sent no RateLimit-Policy header, so its limit is not active"
    fi
    if [[ $name == waf-* ]]; then
        # An attack must be rejected, or the run would measure a gateway without the WAF.
        expect_status "http://$proxy_address/echo/fast?q=1%27%20OR%20%271%27%3D%271" 403
    fi
    log "portcullis ($name) on $proxy_address, admin on $admin_address, pinned to core $PROXY_CORE"
}

stop_proxy() {
    stop_process "$PROXY_PID"
    forget_pid "$PROXY_PID"
}

forget_pid() {
    local pid kept=()
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$1" ]] || kept+=("$pid")
    done
    PIDS=("${kept[@]}")
}

# Print "busy total" clock ticks of CORE from /proc/stat. Idle and iowait count as not busy.
cpu_ticks() {
    local core=$1
    awk -v name="cpu$core" '$1 == name { total = 0; for (i = 2; i <= NF; i++) total += $i; print total - $5 - $6, total }' /proc/stat
}

# Print the busy share in percent between two "busy total" tick pairs, such as cpu_ticks prints.
busy_percent() {
    awk -v before="$1" -v after="$2" 'BEGIN {
        split(before, b, " "); split(after, a, " ")
        printf "%.0f", 100 * (a[1] - b[1]) / (a[2] - b[2])
    }'
}

# Print the CPU clock ticks used so far by every process outside this script's process tree,
# children that already exited included (through their parents' cutime and cstime).
# Builds, tests and other work on the machine show up here and skew the figures.
other_cpu_ticks() {
    python3 - "$$" <<'PYTHON'
import os
import sys

bench = int(sys.argv[1])
parents, ticks = {}, {}
for entry in os.listdir("/proc"):
    if not entry.isdigit():
        continue
    try:
        with open(f"/proc/{entry}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    pid = int(entry)
    parents[pid] = int(fields[1])
    ticks[pid] = sum(int(value) for value in fields[11:15])


def in_bench_tree(pid):
    while pid > 1:
        if pid == bench:
            return True
        pid = parents.get(pid, 0)
    return False


print(sum(value for pid, value in ticks.items() if not in_bench_tree(pid)))
PYTHON
}

# Wait until processes outside this script use under 5% of one core over one second,
# or until QUIET_TIMEOUT seconds have passed.
wait_for_quiet() {
    local started=$SECONDS waited=0 before after core_before core_after percent
    while true; do
        before=$(other_cpu_ticks)
        core_before=$(cpu_ticks "$PROXY_CORE")
        sleep 1
        core_after=$(cpu_ticks "$PROXY_CORE")
        after=$(other_cpu_ticks)
        percent=$(busy_percent "$before ${core_before#* }" "$after ${core_after#* }")
        if ((percent < 5)); then
            ((waited == 0)) || log "the machine went quiet after $((SECONDS - started)) s"
            return
        fi
        if ((SECONDS - started >= QUIET_TIMEOUT)); then
            log "warning: other processes still use ${percent}% of a core after ${QUIET_TIMEOUT} s; measuring anyway"
            return
        fi
        if ((waited == 0)); then
            log "other processes use ${percent}% of a core; waiting up to ${QUIET_TIMEOUT} s for the machine to go quiet"
            waited=1
        fi
    done
}

# Print "utime stime" in clock ticks of PID and its direct children (the nginx worker), summed.
process_tree_ticks() {
    local pid user=0 system=0 fields
    for pid in "$1" $(pgrep -P "$1" || true); do
        read -r -a fields < <(sed 's/.*) //' "/proc/$pid/stat")
        user=$((user + fields[11]))
        system=$((system + fields[12]))
    done
    echo "$user $system"
}

# Print the CPU microseconds per request between two process_tree_ticks outputs as
# "user system".
cpu_us_per_request() {
    awk -v before="$1" -v after="$2" -v hz="$CLOCK_TICKS" -v n="$3" 'BEGIN {
        split(before, b, " "); split(after, a, " ")
        printf "%.1f %.1f", (a[1] - b[1]) / hz * 1e6 / n, (a[2] - b[2]) / hz * 1e6 / n
    }'
}

# Print the VmRSS in KiB of PID and its direct children (the nginx worker), summed.
vm_rss_kib() {
    local pid total=0
    for pid in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status")))
    done
    echo "$total"
}

# Run a warm-up and a measured wrk run against target NAME with CONNECTIONS connections,
# and store the figures of the measured run under KEY.
measure_once() {
    local name=$1 key=$2 connections=$3 warmup=$4 duration=$5
    local load_before proxy_before other_before process_before
    local load_after proxy_after other_after process_after line pair
    local url=${URL[$name]} script=$BENCH_DIR/wrk-report.lua
    if [[ $WORKLOAD == post ]]; then
        url=${POST_URL[$name]}
        script=$WORK_DIR/post.lua
    fi
    local wrk=(taskset -c "$LOAD_CORE" wrk -t1 -c"$connections" --latency --timeout "$WRK_TIMEOUT"
        -s "$script" -H "$(request_header "$name")")
    local output=$WORK_DIR/wrk-$key

    wait_for_quiet
    log "$name: warm-up ${warmup}, then ${duration} with $connections connections"
    "${wrk[@]}" -d"$warmup" "$url" >"$output-warmup.txt" ||
        die "wrk warm-up failed for $name (see $output-warmup.txt)"
    line=$(grep '^RESULT ' "$output-warmup.txt") || die "wrk printed no RESULT line for the $name warm-up"
    [[ $line =~ requests=([0-9]+) ]] || die "wrk printed no request count for the $name warm-up: $line"
    SENT[$name]=$((${SENT[$name]:-0} + BASH_REMATCH[1]))

    other_before=$(other_cpu_ticks)
    load_before=$(cpu_ticks "$LOAD_CORE")
    proxy_before=$(cpu_ticks "$PROXY_CORE")
    [[ $name == direct ]] || process_before=$(process_tree_ticks "$PROXY_PID")
    "${wrk[@]}" -d"$duration" "$url" >"$output.txt" || die "wrk failed for $name (see $output.txt)"
    load_after=$(cpu_ticks "$LOAD_CORE")
    proxy_after=$(cpu_ticks "$PROXY_CORE")
    other_after=$(other_cpu_ticks)
    [[ $name == direct ]] || process_after=$(process_tree_ticks "$PROXY_PID")

    line=$(grep '^RESULT ' "$output.txt") || die "wrk printed no RESULT line for $name (see $output.txt)"
    declare -A field
    for pair in ${line#RESULT }; do
        field[${pair%%=*}]=${pair#*=}
    done
    local errors=$((field[connect_errors] + field[read_errors] + field[write_errors] + field[timeouts] + field[status_errors]))
    ((errors == 0)) || die "$name: wrk counted $errors errors or non-2xx responses: $line"
    ((field[requests] > 0)) || die "$name: wrk completed no request"
    SENT[$name]=$((SENT[$name] + field[requests]))

    RPS[$key]=$(awk -v n="${field[requests]}" -v us="${field[duration_us]}" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
    P50_US[$key]=${field[p50_us]}
    P99_US[$key]=${field[p99_us]}
    MAX_US[$key]=${field[max_us]}
    LOAD_BUSY[$key]=$(busy_percent "$load_before" "$load_after")
    PROXY_BUSY[$key]=$(busy_percent "$proxy_before" "$proxy_after")
    if [[ $name == direct ]]; then
        PROXY_CPU_US[$key]="- -"
    else
        PROXY_CPU_US[$key]=$(cpu_us_per_request "$process_before" "$process_after" "${field[requests]}")
    fi
    OTHER_BUSY[$key]=$(busy_percent "$other_before ${proxy_before#* }" "$other_after ${proxy_after#* }")
    log "$name: ${RPS[$key]} requests/s, p50 ${P50_US[$key]} us, p99 ${P99_US[$key]} us," \
        "other processes ${OTHER_BUSY[$key]}% of a core"
}

# Run measure_once NAME KEY CONNECTIONS WARMUP DURATION up to ATTEMPTS times, until other
# processes used under 5% of a core, and store the attempt with the least other load under KEY.
measure() {
    local name=$1 key=$2 attempt attempt_key best="" array
    shift 2
    for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
        attempt_key="$key-$attempt"
        measure_once "$name" "$attempt_key" "$@"
        if [[ -z $best ]] || ((OTHER_BUSY[$attempt_key] < OTHER_BUSY[$best])); then
            best=$attempt_key
        fi
        ((OTHER_BUSY[$best] < 5)) && break
    done
    ATTEMPTS_USED[$key]=$((attempt > ATTEMPTS ? ATTEMPTS : attempt))
    for array in RPS P50_US P99_US MAX_US LOAD_BUSY PROXY_BUSY PROXY_CPU_US OTHER_BUSY; do
        declare -n values=$array
        values["$key"]=${values[$best]}
        unset -n values
    done
}

# Measure target NAME under full load, then under light load, and store the figures under
# KEY (default NAME) and KEY-light.
measure_target() {
    local name=$1 key=${2:-$1}
    measure "$name" "$key" "$CONNECTIONS" "$WARMUP" "$DURATION"
    if ((LIGHT_CONNECTIONS > 0)); then
        measure "$name" "$key-light" "$LIGHT_CONNECTIONS" 1s "$LIGHT_DURATION"
    fi
}

# Open IDLE_CONNECTIONS idle keep-alive connections to target NAME, whose processes are
# PROXY_PID and its children, and store their summed RSS under NAME-connections.
measure_idle_connections() {
    local name=$1 port report pid pid_arguments=()
    ((IDLE_CONNECTIONS > 0)) || return 0
    port=${URL[$name]#http://$HOST:}
    port=${port%%/*}
    for pid in "$PROXY_PID" $(pgrep -P "$PROXY_PID" || true); do
        pid_arguments+=(--pid "$pid")
    done
    log "$name: opening $IDLE_CONNECTIONS idle keep-alive connections"
    report=$(taskset -c "$LOAD_CORE" timeout 120 python3 "$BENCH_DIR/idle_connections.py" \
        --host "$HOST" --port "$port" --path /echo/fast --header "apikey: $API_KEY" \
        --connections "$IDLE_CONNECTIONS" "${pid_arguments[@]}" --timeout 100) ||
        die "idle connection client failed for $name: $report"
    IDLE_REPORT[$name]=$report
    RSS_KIB[$name-connections]=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["rss_kib"])' "$report")
    log "$name: $report"
}

raise_open_file_limit() {
    local wanted=$((IDLE_CONNECTIONS + 4096)) hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < wanted)); then
        die "the hard open-file limit is $hard but $IDLE_CONNECTIONS idle connections need $wanted; lower BENCH_IDLE_CONNECTIONS"
    fi
    if [[ $(ulimit -Sn) != unlimited ]] && (($(ulimit -Sn) < wanted)); then
        ulimit -Sn "$wanted"
    fi
}

run_proxy_targets() {
    start_nginx
    RSS_KIB[nginx_idle]=$(vm_rss_kib "$PROXY_PID")
    measure_target nginx
    measure_idle_connections nginx
    stop_proxy

    start_portcullis portcullis
    RSS_KIB[portcullis_idle]=$(vm_rss_kib "$PROXY_PID")
    measure_target portcullis
    RSS_KIB[portcullis_loaded]=$(vm_rss_kib "$PROXY_PID")
    stop_proxy

    start_portcullis policies
    RSS_KIB[idle]=$(vm_rss_kib "$PROXY_PID")
    measure_target policies
    RSS_KIB[loaded]=$(vm_rss_kib "$PROXY_PID")
    ACCESS_LOG_LINES=$(wc -l <"$WORK_DIR/policies/access.log")
    measure_idle_connections policies
    stop_proxy
}

milliseconds() {
    awk -v us="$1" 'BEGIN { printf "%.3f", us / 1000 }'
}

# Print a size given in KiB as "N MB (N MiB)". The memory target is in MB (10^6 bytes).
megabytes() {
    awk -v kib="$1" 'BEGIN { printf "%.1f MB (%.1f MiB)", kib * 1024 / 1e6, kib / 1024 }'
}

# Print "met" or "missed" for a condition that awk evaluates.
verdict() {
    awk "BEGIN { print ($1) ? \"met\" : \"missed\" }"
}

print_header() {
    printf '\n%s\n' "portcullis benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'machine: %s cores, %s, %s GiB memory, kernel %s\n' "$(nproc)" \
        "$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)" \
        "$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)"
    printf 'request: GET /fast of echo-upstream (13-byte body), one wrk thread\n'
    printf 'core %s: wrk and echo-upstream (they share it); core %s: the proxy under test\n' \
        "$LOAD_CORE" "$PROXY_CORE"
}

# Print the table of figures stored under NAME + SUFFIX for every target NAME given.
print_table() {
    local suffix=$1 name key cpu
    shift
    printf '| %-11s | %10s | %7s | %7s | %7s | %10s | %10s | %11s | %11s | %10s |\n' target requests/s \
        'p50 ms' 'p99 ms' 'max ms' 'user us/req' 'sys us/req' "core $LOAD_CORE busy" "core $PROXY_CORE busy" \
        'other load'
    printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------------- -----------: --------: --------: --------: \
        ------------: -----------: ------------: ------------: -----------:
    for name in "$@"; do
        key=$name$suffix
        read -r -a cpu <<<"${PROXY_CPU_US[$key]}"
        printf '| %-11s | %10s | %7.3f | %7.3f | %7.3f | %11s | %10s | %10s%% | %10s%% | %9s%% |\n' "$name" \
            "${RPS[$key]}" "$(milliseconds "${P50_US[$key]}")" "$(milliseconds "${P99_US[$key]}")" \
            "$(milliseconds "${MAX_US[$key]}")" "${cpu[0]}" "${cpu[1]}" "${LOAD_BUSY[$key]}" \
            "${PROXY_BUSY[$key]}" "${OTHER_BUSY[$key]}"
    done
}

# Print the p99 of KEY minus the p99 of BASE_KEY, in milliseconds.
added_p99() {
    awk -v a="${P99_US[$1]}" -v b="${P99_US[$2]}" 'BEGIN { printf "%.3f", (a - b) / 1000 }'
}

throughput_ratio() {
    awk -v a="${RPS[$1]}" -v b="${RPS[$2]}" 'BEGIN { printf "%.2f", a / b }'
}

print_ratios() {
    local ratio added
    ratio=$(throughput_ratio policies nginx)
    added=$(added_p99 policies direct)
    printf 'portcullis (policies) / nginx throughput: %sx (target >= 1.0x: %s)\n' "$ratio" "$(verdict "$ratio >= 1.0")"
    printf 'portcullis (no policies) / nginx throughput: %sx\n' "$(throughput_ratio portcullis nginx)"
    printf 'added p99 over direct, full load: portcullis (policies) %s ms (target <= 1 ms: %s);' \
        "$added" "$(verdict "$added <= 1.0")"
    printf ' portcullis (no policies) %s ms; nginx %s ms\n' "$(added_p99 portcullis direct)" \
        "$(added_p99 nginx direct)"
    if ((LIGHT_CONNECTIONS > 0)); then
        printf 'added p99 over direct, light load: portcullis (policies) %s ms;' \
            "$(added_p99 policies-light direct-light)"
        printf ' portcullis (no policies) %s ms; nginx %s ms\n' "$(added_p99 portcullis-light direct-light)" \
            "$(added_p99 nginx-light direct-light)"
    fi
    # wrk leaves out of its count the requests in flight when a run stops, up to one per
    # connection, so the log may have a few lines per connection and run more than this sum.
    printf 'access log lines written by portcullis (policies): %s; requests counted by wrk: %s, plus 2 checks\n' \
        "$ACCESS_LOG_LINES" "${SENT[policies]}"
}

print_memory() {
    printf 'resident memory (VmRSS):\n'
    printf '  %-45s %s\n' 'nginx master and worker, idle after start:' "$(megabytes "${RSS_KIB[nginx_idle]}")"
    printf '  %-45s %s\n' 'portcullis (no policies), idle after start:' "$(megabytes "${RSS_KIB[portcullis_idle]}")"
    printf '  %-45s %s\n' 'portcullis (no policies), after the load runs:' \
        "$(megabytes "${RSS_KIB[portcullis_loaded]}")"
    printf '  %-45s %s (target < 30 MB: %s)\n' 'portcullis (policies), idle after start:' \
        "$(megabytes "${RSS_KIB[idle]}")" "$(verdict "${RSS_KIB[idle]} * 1024 < 30e6")"
    printf '  %-45s %s\n' 'portcullis (policies), after the load runs:' "$(megabytes "${RSS_KIB[loaded]}")"
    if ((IDLE_CONNECTIONS > 0)); then
        printf '  %-45s %s\n' "nginx, $IDLE_CONNECTIONS idle connections:" \
            "$(megabytes "${RSS_KIB[nginx-connections]}")"
        printf '  %-45s %s\n' "portcullis (policies), $IDLE_CONNECTIONS idle connections:" \
            "$(megabytes "${RSS_KIB[policies-connections]}")"
        printf '  idle connection client, nginx: %s\n' "${IDLE_REPORT[nginx]}"
        printf '  idle connection client, portcullis (policies): %s\n' "${IDLE_REPORT[policies]}"
    fi
}

print_warnings() {
    local key
    for key in "${!OTHER_BUSY[@]}"; do
        if [[ -n ${ATTEMPTS_USED[$key]:-} ]] && ((OTHER_BUSY[$key] >= 5)); then
            printf 'warning: other processes used %s%% of a core during the least disturbed of %s %s runs,' \
                "${OTHER_BUSY[$key]}" "${ATTEMPTS_USED[$key]}" "$key"
            printf ' so its figures are skewed\n'
        fi
    done
}

print_report() {
    print_header
    printf '\nfull load: wrk -c%s -d%s after a %s warm-up\n\n' "$CONNECTIONS" "$DURATION" "$WARMUP"
    print_table "" "${TARGETS[@]}"
    if ((LIGHT_CONNECTIONS > 0)); then
        printf '\nlight load: wrk -c%s -d%s after a 1s warm-up\n\n' "$LIGHT_CONNECTIONS" "$LIGHT_DURATION"
        print_table -light "${TARGETS[@]}"
    fi
    print_table_legend
    print_ratios
    printf '\n'
    print_memory
    print_warnings
}

print_table_legend() {
    printf '\n(user and sys us/req: CPU time of the proxy process per request, in microseconds; busy:\n'
    printf 'share of the core not idle during the measured run; other load: CPU used by processes\n'
    printf 'outside this benchmark, in %% of one core)\n\n'
}

# Print the CPU time, p50 and p99 per request that target KEY adds over BASE_KEY.
added_cost() {
    local key=$1 base=$2 cpu base_cpu
    read -r -a cpu <<<"${PROXY_CPU_US[$key]}"
    read -r -a base_cpu <<<"${PROXY_CPU_US[$base]}"
    awk -v c="${cpu[0]}" -v s="${cpu[1]}" -v bc="${base_cpu[0]}" -v bs="${base_cpu[1]}" \
        -v p50="${P50_US[$key]}" -v bp50="${P50_US[$base]}" -v p99="${P99_US[$key]}" -v bp99="${P99_US[$base]}" \
        'BEGIN { printf "%+.1f us CPU, p50 %+.3f ms, p99 %+.3f ms", (c + s) - (bc + bs), (p50 - bp50) / 1000, (p99 - bp99) / 1000 }'
}

# Print the tables of the targets given, the first of which is portcullis without policies,
# and the cost that each other target adds per request over it. WHAT names that cost.
print_cost_report() {
    local what=$1 name
    shift
    printf '\nfull load: wrk -c%s -d%s after a %s warm-up\n\n' "$CONNECTIONS" "$DURATION" "$WARMUP"
    print_table "" "$@"
    if ((LIGHT_CONNECTIONS > 0)); then
        printf '\nlight load: wrk -c%s -d%s after a 1s warm-up\n\n' "$LIGHT_CONNECTIONS" "$LIGHT_DURATION"
        print_table -light "$@"
    fi
    print_table_legend
    printf 'cost of %s per request, over portcullis without policies:\n' "$what"
    for name in "${@:2}"; do
        printf '  %-13s full load: %s\n' "$name" "$(added_cost "$name" portcullis)"
        if ((LIGHT_CONNECTIONS > 0)); then
            printf '  %-13s light load: %s\n' "$name" "$(added_cost "$name-light" portcullis-light)"
        fi
    done
    print_warnings
}

print_limit_report() {
    print_header
    printf 'redis: a private redis-server on core %s at %s\n' "$LOAD_CORE" "$REDIS_URL"
    print_cost_report "one rate limit" "${LIMIT_TARGETS[@]}"
}

print_identity_report() {
    print_header
    printf 'identity provider: bench/identity_fixture.py on core %s at %s\n' "$LOAD_CORE" "$IDP_URL"
    print_cost_report "one authentication policy" "${IDENTITY_TARGETS[@]}"
    printf 'calls that the identity fixture served in the whole run: %s\n' "$(identity_provider_calls)"
}

run_identity_targets() {
    local name
    start_identity_provider
    for name in "${IDENTITY_TARGETS[@]}"; do
        start_portcullis "$name"
        measure_target "$name"
        stop_proxy
    done
}

run_limit_targets() {
    local name
    start_redis
    for name in "${LIMIT_TARGETS[@]}"; do
        start_portcullis "$name"
        measure_target "$name"
        stop_proxy
    done
}

# Print the p50 of KEY minus the p50 of BASE_KEY, in microseconds.
added_p50_us() {
    awk -v a="${P50_US[$1]}" -v b="${P50_US[$2]}" 'BEGIN { printf "%d", a - b }'
}

# Print one line of detection counts per WAF target that got the corpus.
print_corpus_report() {
    local name
    if ((${#CORPUS_REPORT[@]} == 0)); then
        printf '\ndetection corpus: not run (no %s, or BENCH_CORPUS_PER_CLASS=0)\n' "$CORPUS_CSV"
        return
    fi
    printf '\ndetection corpus: HttpParamsDataset %s, each value as the query parameter q\n' "$CORPUS_CSV"
    printf '| %-12s | %15s | %15s | %s |\n' target 'attacks 403' 'benign 403' 'other statuses'
    printf '|%s|%s|%s|%s|\n' -------------- ----------------: ----------------: ----------------
    for name in "${WAF_TARGETS[@]}"; do
        [[ -n ${CORPUS_REPORT[$name]:-} ]] || continue
        python3 - "$name" "${CORPUS_REPORT[$name]}" <<'PYTHON'
import json
import sys

name, report = sys.argv[1], json.loads(sys.argv[2])
attacks = f"{report['attacks_blocked']}/{report['attacks']}"
benign = f"{report['benign_blocked']}/{report['benign']}"
print(f"| {name:<12} | {attacks:>15} | {benign:>15} | {json.dumps(report['other_status'])} |")
PYTHON
    done
}

print_waf_report() {
    local name suffix ratio added
    print_header
    printf 'waf run: GET %s, and POST /echo/api/orders with the %s-byte JSON body %s\n' \
        "$PROXY_TARGET" "${#POST_BODY}" "$POST_BODY"
    printf 'nginx-modsec and waf-crs3 rules: %s after %s, paranoia level 1; waf-crs rules: %s\n' \
        "$DEBIAN_CRS_RULES" "$DEBIAN_CRS_SETUP" "$CRS_RULES"
    for suffix in "" -post; do
        if [[ -z $suffix ]]; then printf '\nGET, '; else printf '\nPOST, '; fi
        printf 'full load: wrk -c%s -d%s after a %s warm-up\n\n' "$CONNECTIONS" "$DURATION" "$WARMUP"
        print_table "$suffix" "${WAF_TARGETS[@]}"
        if ((LIGHT_CONNECTIONS > 0)); then
            if [[ -z $suffix ]]; then printf '\nGET, '; else printf '\nPOST, '; fi
            printf 'light load: wrk -c%s -d%s after a 1s warm-up\n\n' "$LIGHT_CONNECTIONS" "$LIGHT_DURATION"
            print_table "$suffix-light" "${WAF_TARGETS[@]}"
        fi
    done
    print_table_legend
    for suffix in "" -post; do
        ratio=$(throughput_ratio "waf-crs3$suffix" "nginx-modsec$suffix")
        printf '%s throughput, waf-crs3 / nginx-modsec: %sx (target >= 20x: %s);' \
            "$([[ -z $suffix ]] && echo GET || echo POST)" "$ratio" "$(verdict "$ratio >= 20")"
        printf ' nginx-modsec / nginx: %sx; waf-crs3 / portcullis: %sx\n' \
            "$(throughput_ratio "nginx-modsec$suffix" "nginx$suffix")" \
            "$(throughput_ratio "waf-crs3$suffix" "portcullis$suffix")"
    done
    if ((LIGHT_CONNECTIONS > 0)); then
        added=$(added_p50_us waf-crs3-post-light portcullis-post-light)
        printf 'p50 that the WAF adds to the POST at light load: waf-crs3 %s us (target < 50 us: %s);' \
            "$added" "$(verdict "$added < 50")"
        printf ' waf-builtin %s us; nginx-modsec over nginx %s us\n' \
            "$(added_p50_us waf-builtin-post-light portcullis-post-light)" \
            "$(added_p50_us nginx-modsec-post-light nginx-post-light)"
    fi
    printf 'cost per request of each WAF over the same proxy without it (portcullis, or nginx for nginx-modsec):\n'
    for name in "${WAF_TARGETS[@]}"; do
        [[ $name == nginx || $name == portcullis ]] && continue
        local base=portcullis
        [[ $name == nginx-modsec ]] && base=nginx
        for suffix in "" -post; do
            printf '  %-12s %-4s full load: %s\n' "$name" "$([[ -z $suffix ]] && echo GET || echo POST)" \
                "$(added_cost "$name$suffix" "$base$suffix")"
            if ((LIGHT_CONNECTIONS > 0)); then
                printf '  %-12s %-4s light load: %s\n' "$name" "$([[ -z $suffix ]] && echo GET || echo POST)" \
                    "$(added_cost "$name$suffix-light" "$base$suffix-light")"
            fi
        done
    done
    print_corpus_report
    print_warnings
}

# Link Debian's crs-setup.conf and the CRS 3.3 rule and data files into WORK_DIR/crs3-rules,
# the rules_dir of waf-crs3. portcullis loads the *.conf files in name order, so the setup is
# linked as 00-crs-setup.conf, which sorts before REQUEST-*.
link_debian_crs() {
    local dir=$WORK_DIR/crs3-rules file
    mkdir -p "$dir"
    ln -s "$DEBIAN_CRS_SETUP" "$dir/00-crs-setup.conf"
    for file in "$DEBIAN_CRS_RULES"/*; do
        ln -s "$file" "$dir/${file##*/}"
    done
}

# Write WORK_DIR/post.lua, the wrk script of the POST workload: the JSON request, then the
# report hook of wrk-report.lua.
write_post_script() {
    {
        printf 'wrk.method = "POST"\n'
        printf 'wrk.body = [[%s]]\n' "$POST_BODY"
        printf 'wrk.headers["Content-Type"] = "application/json"\n'
        cat "$BENCH_DIR/wrk-report.lua"
    } >"$WORK_DIR/post.lua"
}

# Send the detection corpus through target NAME and store the counts in CORPUS_REPORT[NAME].
run_corpus() {
    local name=$1 report
    ((CORPUS_PER_CLASS > 0)) && [[ -f $CORPUS_CSV ]] || return 0
    log "$name: sending the detection corpus, $CORPUS_PER_CLASS attack and $CORPUS_PER_CLASS benign values"
    report=$(taskset -c "$LOAD_CORE" timeout 600 python3 "$BENCH_DIR/waf_corpus.py" --csv "$CORPUS_CSV" \
        --per-class "$CORPUS_PER_CLASS" --target "$name=${URL[$name]%%\?*}") ||
        die "waf_corpus.py failed for $name"
    CORPUS_REPORT[$name]=$report
    log "$name: $report"
}

run_waf_targets() {
    local name
    if [[ ! -d $CRS_RULES ]]; then
        log "skipping waf-crs: no CRS rules at $CRS_RULES (set PORTCULLIS_CRS_DIR)"
        WAF_TARGETS=(nginx nginx-modsec portcullis waf-builtin waf-crs3)
    fi
    [[ -f $CORPUS_CSV ]] || log "skipping the detection corpus: no $CORPUS_CSV (set PORTCULLIS_SHARED_DIR)"
    link_debian_crs
    write_post_script
    for name in "${WAF_TARGETS[@]}"; do
        case $name in
            nginx | nginx-modsec) start_nginx "$name" ;;
            *) start_portcullis "$name" ;;
        esac
        if [[ $name != nginx && $name != portcullis ]]; then
            run_corpus "$name"
        fi
        WORKLOAD=get
        measure_target "$name"
        WORKLOAD=post
        measure_target "$name" "$name-post"
        WORKLOAD=get
        stop_proxy
    done
}

main() {
    local mode=proxies
    case ${1:-} in
        "") ;;
        limits) mode=limits ;;
        identity) mode=identity ;;
        waf) mode=waf ;;
        ai) exec "$BENCH_DIR/ai.sh" ;;
        *) die "unknown argument '$1'; usage: bench/run.sh [limits | identity | waf | ai]" ;;
    esac
    trap cleanup EXIT
    # The EXIT trap runs on these signals only when the shell handles them.
    trap 'exit 130' INT
    trap 'exit 143' TERM
    install_tools "$mode"
    check_machine
    build_binaries
    WORK_DIR=$(mktemp -d -t portcullis-bench.XXXXXX)

    start_upstream
    if [[ $mode == waf ]]; then
        PROXY_TARGET='/echo/fast?user=alice&page=2'
        WRK_TIMEOUT=30s
        run_waf_targets
        print_waf_report
        return
    fi
    if [[ $mode == limits ]]; then
        run_limit_targets
        print_limit_report
        return
    fi
    if [[ $mode == identity ]]; then
        run_identity_targets
        print_identity_report
        return
    fi
    raise_open_file_limit
    measure_target direct
    run_proxy_targets
    print_report
}

# bench/instructions.sh sources this file for its functions and runs its own main.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
