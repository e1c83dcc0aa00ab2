#!/usr/bin/env bash
# Measure portcullis against nginx proxy_pass and against the bare upstream, on loopback.
#
# Usage: bench/run.sh
#
# Targets, each measured with wrk against GET /fast of tools/echo-upstream:
#   direct      wrk -> echo-upstream
#   nginx       wrk -> nginx proxy_pass (keep-alive upstream pool) -> echo-upstream
#   portcullis  wrk -> portcullis, no policies, no access log -> echo-upstream
#   policies    wrk -> portcullis, key-auth + rate limit + JSON access log file -> echo-upstream
#
# wrk and echo-upstream share BENCH_LOAD_CORE; the proxy under test runs alone on
# BENCH_PROXY_CORE. The script also reads the resident memory (VmRSS) of the policy
# gateway when idle and while it holds BENCH_IDLE_CONNECTIONS idle keep-alive connections.
#
# Environment, with defaults:
#   BENCH_DURATION=10s            measured wrk run per target
#   BENCH_WARMUP=3s               wrk warm-up per target, not reported
#   BENCH_CONNECTIONS=64          wrk connections
#   BENCH_IDLE_CONNECTIONS=10000  idle connections for the memory check (0 skips it)
#   BENCH_LOAD_CORE=0             core for wrk, echo-upstream and the idle-connection client
#   BENCH_PROXY_CORE=1            core for nginx and portcullis
#   BENCH_KEEP=0                  1 keeps the temporary folder with configs and logs
#   CARGO_TARGET_DIR              cargo's output folder (default: target/ in the repository)
#
# With warm builds the default run takes about 1.5 minutes. Every load is bounded by
# wrk's -d, and every wait by a timeout. Traffic goes only to 127.0.0.1.
set -euo pipefail
export LC_ALL=C

readonly REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly BENCH_DIR="$REPO/bench"

readonly DURATION=${BENCH_DURATION:-10s}
readonly WARMUP=${BENCH_WARMUP:-3s}
readonly CONNECTIONS=${BENCH_CONNECTIONS:-64}
readonly IDLE_CONNECTIONS=${BENCH_IDLE_CONNECTIONS:-10000}
readonly LOAD_CORE=${BENCH_LOAD_CORE:-0}
readonly PROXY_CORE=${BENCH_PROXY_CORE:-1}
readonly KEEP=${BENCH_KEEP:-0}
readonly TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

readonly HOST=127.0.0.1
readonly API_KEY=alice-demo-key-0001
readonly ADMIN_TOKEN=bench-admin-token-000000000001
readonly TARGETS=(direct nginx portcullis policies)

WORK_DIR=""
PIDS=()
declare -A URL WARMUP_REQUESTS RPS P50_US P99_US MAX_US REQUESTS LOAD_BUSY PROXY_BUSY RSS_KIB

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

install_tools() {
    local missing=() command package
    for command in nginx wrk taskset python3 curl; do
        if ! command -v "$command" >/dev/null; then
            case $command in
                taskset) package=util-linux ;;
                *) package=$command ;;
            esac
            missing+=("$package")
        fi
    done
    if ((${#missing[@]} > 0)); then
        log "installing ${missing[*]} with apt-get"
        apt-get update
        apt-get install -y "${missing[@]}"
    fi
}

check_machine() {
    local cores
    cores=$(nproc)
    ((LOAD_CORE != PROXY_CORE)) || die "BENCH_LOAD_CORE and BENCH_PROXY_CORE are both $LOAD_CORE; pick two cores"
    ((LOAD_CORE < cores && PROXY_CORE < cores)) ||
        die "this machine has $cores cores (0-$((cores - 1))); BENCH_LOAD_CORE=$LOAD_CORE BENCH_PROXY_CORE=$PROXY_CORE is out of range"
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

# Run COMMAND every 0.1 s until it succeeds; fail when PID exits or after TIMEOUT seconds.
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

# Print the status of GET URL, or 000 when the request failed; extra arguments go to curl.
http_status() {
    local url=$1
    shift
    curl --silent --output /dev/null --write-out '%{http_code}' --max-time 5 "$@" "$url" || true
}

# Return 0 when GET URL returns EXPECTED_STATUS; extra arguments go to curl.
status_is() {
    local url=$1 expected=$2
    shift 2
    [[ $(http_status "$url" "$@") == "$expected" ]]
}

# Fail unless GET URL returns EXPECTED_STATUS; extra arguments go to curl.
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

write_nginx_config() {
    local port=$1 dir=$WORK_DIR/nginx
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
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
    # Both sides keep connections open for the whole run; the default of 1000 requests per
    # connection would make wrk reconnect during the measurement.
    keepalive_requests 1000000;

    upstream echo {
        server $UPSTREAM_ADDRESS;
        keepalive $CONNECTIONS;
        keepalive_requests 1000000;
    }

    server {
        listen $HOST:$port;
        location /echo/ {
            proxy_pass http://echo/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

start_nginx() {
    local port dir=$WORK_DIR/nginx
    port=$(free_port)
    write_nginx_config "$port"
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" || die "nginx rejected the generated config $dir/nginx.conf"
    taskset -c "$PROXY_CORE" nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' 2>>"$dir/error.log" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    URL[nginx]="http://$HOST:$port/echo/fast"
    wait_until nginx "$PROXY_PID" 10 "$dir/error.log" status_is "${URL[nginx]}" 200
    log "nginx $(nginx -v 2>&1 | sed 's|.*/||') on $HOST:$port, pinned to core $PROXY_CORE"
}

# Write a portcullis config to DIR/portcullis.yaml; WITH_POLICIES is 1 or 0.
write_portcullis_config() {
    local dir=$1 with_policies=$2
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
        if ((with_policies)); then
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

# Start portcullis for target NAME (portcullis or policies) and check that it proxies.
start_portcullis() {
    local name=$1 with_policies=0 dir=$WORK_DIR/$1 proxy_address admin_address
    [[ $name == policies ]] && with_policies=1
    write_portcullis_config "$dir" "$with_policies"
    taskset -c "$PROXY_CORE" "$PORTCULLIS" serve --config "$dir/portcullis.yaml" \
        --addresses-file "$dir/addresses.json" 2>"$dir/portcullis.log" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_until "portcullis ($name)" "$PROXY_PID" 30 "$dir/portcullis.log" test -s "$dir/addresses.json"
    proxy_address=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["proxy"][0])' "$dir/addresses.json")
    admin_address=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin"])' "$dir/addresses.json")
    ADMIN_URL="http://$admin_address"
    wait_until "portcullis ($name)" "$PROXY_PID" 30 "$dir/portcullis.log" \
        status_is "$ADMIN_URL/health/ready" 200
    URL[$name]="http://$proxy_address/echo/fast"
    expect_status "${URL[$name]}" 200 --header "apikey: $API_KEY"
    if ((with_policies)); then
        # Without the key the request must be rejected, or the policy chain is not active.
        expect_status "${URL[$name]}" 401
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

# Print "busy total" clock ticks of CORE from /proc/stat; idle and iowait count as not busy.
cpu_ticks() {
    local core=$1
    awk -v name="cpu$core" '$1 == name { total = 0; for (i = 2; i <= NF; i++) total += $i; print total - $5 - $6, total }' /proc/stat
}

# Print the busy share of CORE in percent between two cpu_ticks outputs.
busy_percent() {
    awk -v before="$1" -v after="$2" 'BEGIN {
        split(before, b, " "); split(after, a, " ")
        printf "%.0f", 100 * (a[1] - b[1]) / (a[2] - b[2])
    }'
}

vm_rss_kib() {
    awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"
}

# Run the warm-up and the measured wrk run for target NAME and store its figures.
measure() {
    local name=$1 output load_before proxy_before load_after proxy_after line
    local wrk=(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" --latency
        -s "$BENCH_DIR/wrk-report.lua" -H "apikey: $API_KEY")
    log "$name: warm-up ${WARMUP}, then ${DURATION} with $CONNECTIONS connections"
    "${wrk[@]}" -d"$WARMUP" "${URL[$name]}" >"$WORK_DIR/wrk-$name-warmup.txt" ||
        die "wrk warm-up failed for $name (see $WORK_DIR/wrk-$name-warmup.txt)"
    line=$(grep '^RESULT ' "$WORK_DIR/wrk-$name-warmup.txt") || die "wrk printed no RESULT line for the $name warm-up"
    WARMUP_REQUESTS[$name]=$(sed 's/.* requests=\([0-9]*\).*/\1/' <<<"$line")

    load_before=$(cpu_ticks "$LOAD_CORE")
    proxy_before=$(cpu_ticks "$PROXY_CORE")
    "${wrk[@]}" -d"$DURATION" "${URL[$name]}" >"$WORK_DIR/wrk-$name.txt" ||
        die "wrk failed for $name (see $WORK_DIR/wrk-$name.txt)"
    load_after=$(cpu_ticks "$LOAD_CORE")
    proxy_after=$(cpu_ticks "$PROXY_CORE")

    line=$(grep '^RESULT ' "$WORK_DIR/wrk-$name.txt") || die "wrk printed no RESULT line for $name (see $WORK_DIR/wrk-$name.txt)"
    declare -A field
    local pair
    for pair in ${line#RESULT }; do
        field[${pair%%=*}]=${pair#*=}
    done
    local errors=$((field[connect_errors] + field[read_errors] + field[write_errors] + field[timeouts] + field[status_errors]))
    ((errors == 0)) || die "$name: wrk counted $errors errors or non-2xx responses: $line"
    ((field[requests] > 0)) || die "$name: wrk completed no request"

    REQUESTS[$name]=${field[requests]}
    RPS[$name]=$(awk -v n="${field[requests]}" -v us="${field[duration_us]}" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
    P50_US[$name]=${field[p50_us]}
    P99_US[$name]=${field[p99_us]}
    MAX_US[$name]=${field[max_us]}
    LOAD_BUSY[$name]=$(busy_percent "$load_before" "$load_after")
    PROXY_BUSY[$name]=$(busy_percent "$proxy_before" "$proxy_after")
    log "$name: ${RPS[$name]} requests/s, p50 ${P50_US[$name]} us, p99 ${P99_US[$name]} us"
}

# Hold IDLE_CONNECTIONS idle keep-alive connections to the policy gateway and read its RSS.
measure_idle_connections() {
    local port=${URL[policies]#http://$HOST:} report
    port=${port%%/*}
    if ((IDLE_CONNECTIONS == 0)); then
        return
    fi
    log "policies: opening $IDLE_CONNECTIONS idle keep-alive connections"
    report=$(taskset -c "$LOAD_CORE" timeout 120 python3 "$BENCH_DIR/idle_connections.py" \
        --host "$HOST" --port "$port" --path /echo/fast --header "apikey: $API_KEY" \
        --connections "$IDLE_CONNECTIONS" --pid "$PROXY_PID" --timeout 100) ||
        die "idle connection client failed: $report"
    IDLE_REPORT=$report
    RSS_KIB[connections]=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["rss_kib"])' "$report")
    log "policies: $report"
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
    measure nginx
    stop_proxy

    start_portcullis portcullis
    RSS_KIB[portcullis_idle]=$(vm_rss_kib "$PROXY_PID")
    measure portcullis
    RSS_KIB[portcullis_loaded]=$(vm_rss_kib "$PROXY_PID")
    stop_proxy

    start_portcullis policies
    RSS_KIB[idle]=$(vm_rss_kib "$PROXY_PID")
    measure policies
    RSS_KIB[loaded]=$(vm_rss_kib "$PROXY_PID")
    ACCESS_LOG_LINES=$(wc -l <"$WORK_DIR/policies/access.log")
    measure_idle_connections
    stop_proxy
}

mib() {
    awk -v kib="$1" 'BEGIN { printf "%.1f", kib / 1024 }'
}

print_report() {
    local name
    printf '\n%s\n' "portcullis benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'machine: %s cores, %s, %s GiB memory, kernel %s\n' "$(nproc)" \
        "$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)" \
        "$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)"
    printf 'wrk -t1 -c%s -d%s (after a %s warm-up), GET /fast of echo-upstream (13-byte body)\n' \
        "$CONNECTIONS" "$DURATION" "$WARMUP"
    printf 'core %s: wrk and echo-upstream (they share it); core %s: the proxy under test\n\n' \
        "$LOAD_CORE" "$PROXY_CORE"

    printf '| %-10s | %10s | %8s | %8s | %8s | %10s | %11s |\n' \
        target 'requests/s' 'p50 ms' 'p99 ms' 'max ms' "core $LOAD_CORE busy" "core $PROXY_CORE busy"
    printf '|%s|%s|%s|%s|%s|%s|%s|\n' ------------ ------------: ----------: ----------: ----------: ------------: -------------:
    for name in "${TARGETS[@]}"; do
        printf '| %-10s | %10s | %8.3f | %8.3f | %8.3f | %9s%% | %10s%% |\n' "$name" "${RPS[$name]}" \
            "$(awk -v us="${P50_US[$name]}" 'BEGIN { print us / 1000 }')" \
            "$(awk -v us="${P99_US[$name]}" 'BEGIN { print us / 1000 }')" \
            "$(awk -v us="${MAX_US[$name]}" 'BEGIN { print us / 1000 }')" \
            "${LOAD_BUSY[$name]}" "${PROXY_BUSY[$name]}"
    done

    local ratio added_p99
    ratio=$(awk -v a="${RPS[policies]}" -v b="${RPS[nginx]}" 'BEGIN { printf "%.2f", a / b }')
    added_p99=$(awk -v a="${P99_US[policies]}" -v b="${P99_US[direct]}" 'BEGIN { printf "%.3f", (a - b) / 1000 }')
    printf '\nportcullis (policies) / nginx throughput: %sx (target >= 1.0x)\n' "$ratio"
    printf 'portcullis (no policies) / nginx throughput: %sx\n' \
        "$(awk -v a="${RPS[portcullis]}" -v b="${RPS[nginx]}" 'BEGIN { printf "%.2f", a / b }')"
    printf 'added p99, portcullis (policies) over direct: %s ms (target <= 1 ms)\n' "$added_p99"
    printf 'access log lines written by portcullis (policies): %s for %s requests (2 checks, warm-up, measured run)\n' \
        "$ACCESS_LOG_LINES" "$((2 + WARMUP_REQUESTS[policies] + REQUESTS[policies]))"

    printf '\nportcullis RSS (VmRSS):\n'
    printf '  no policies: %s MiB idle after start, %s MiB after the load run\n' \
        "$(mib "${RSS_KIB[portcullis_idle]}")" "$(mib "${RSS_KIB[portcullis_loaded]}")"
    printf '  policies:    %s MiB idle after start (target < 30 MB), %s MiB after the load run\n' \
        "$(mib "${RSS_KIB[idle]}")" "$(mib "${RSS_KIB[loaded]}")"
    if ((IDLE_CONNECTIONS > 0)); then
        printf '  policies:    %s MiB with %s idle keep-alive connections open\n' \
            "$(mib "${RSS_KIB[connections]}")" "$IDLE_CONNECTIONS"
        printf '  idle connection client: %s\n' "$IDLE_REPORT"
    fi
}

main() {
    trap cleanup EXIT
    install_tools
    check_machine
    build_binaries
    raise_open_file_limit
    WORK_DIR=$(mktemp -d -t portcullis-bench.XXXXXX)

    start_upstream
    measure direct
    run_proxy_targets
    print_report
}

main "$@"
