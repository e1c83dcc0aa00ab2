#!/usr/bin/env bash
# Count the CPU instructions and the syscalls that a proxy spends per request, on loopback.
#
# Usage: bench/instructions.sh [TARGET...]    TARGET: portcullis, policies, nginx, key-auth,
#                                             jwt-rs256, jwt-eddsa or introspection
#                                             (default: portcullis, policies and nginx)
#
# Requests/s on a shared machine move with every other process, but these counts barely do.
# callgrind counts the user-space instructions of every thread of the proxy. It slows the
# proxy down many times over, so the proxy is the bottleneck and every connection always has
# a request queued, as at full load. Syscalls are counted by `perf stat` on the kernel's
# syscall tracepoints, at full speed. strace would slow the proxy down enough to change how
# many requests each wake-up finds, and so the number of syscalls per request.
#
# Under valgrind 3.19, the sha2 crate picks its software SHA-256 (`sha256::soft::compress`
# in the profile) even on a CPU with the SHA extensions (`sha_ni` in /proc/cpuinfo). So the
# key-auth hash costs more instructions here than it does outside valgrind on such a CPU.
#
# The targets and their configs are those of bench/run.sh, whose functions this script reuses:
#   portcullis  one route, no policies, no access log
#   policies    key-auth + rate limit + JSON access log file
#   nginx       nginx proxy_pass with a keep-alive upstream pool, run as one process
#               (master_process off) so that one PID does all the work
#   key-auth, jwt-rs256, jwt-eddsa, introspection
#               one authentication policy each, as in `bench/run.sh identity`, with
#               bench/identity_fixture.py serving the JWK Set and the introspection endpoint
#
# For each target the script starts echo-upstream and the proxy under callgrind, warms the
# proxy up, resets callgrind's counters, runs wrk and dumps the counters. Then it starts the
# proxy again without callgrind and counts its syscalls during another wrk run. Requests are
# counted by portcullis itself (portcullis_requests_total), because wrk leaves out the
# requests in flight when it stops. For nginx, wrk's count is used.
#
# Environment, with defaults:
#   INSTRUCTIONS_DURATION=10s     wrk run under callgrind
#   INSTRUCTIONS_CONNECTIONS=16   wrk connections
#   SYSCALLS_DURATION=5s          wrk run while perf counts syscalls
#   BENCH_KEEP=0                  1 keeps the folder with the callgrind dumps, for
#                                 callgrind_annotate
#   PORTCULLIS_BINARY             portcullis binary to measure, such as a copy of an older
#                                 build (default: the release build of this checkout)
# and the core and build settings that bench/run.sh documents.
#
# Needs valgrind (callgrind_control included), perf, wrk, curl and python3, nginx for the nginx
# target and openssl for the identity targets.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/run.sh
source "$REPO/bench/run.sh"

readonly INSTRUCTIONS_DURATION=${INSTRUCTIONS_DURATION:-10s}
readonly INSTRUCTIONS_CONNECTIONS=${INSTRUCTIONS_CONNECTIONS:-16}
readonly SYSCALLS_DURATION=${SYSCALLS_DURATION:-5s}

declare -A REQUESTS INSTRUCTIONS SYSCALL_REQUESTS SYSCALL_DETAIL

# Print the number of requests that portcullis has completed, from its metrics.
portcullis_requests() {
    curl --silent --fail --max-time 30 "$ADMIN_URL/metrics" |
        awk '/^portcullis_requests_total/ { sum += $NF } END { printf "%d", sum }'
}

# Run wrk against target NAME for DURATION and print the number of requests that it completed.
run_wrk() {
    local name=$1 duration=$2 output line
    output=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$INSTRUCTIONS_CONNECTIONS" -d"$duration" \
        -s "$BENCH_DIR/wrk-report.lua" -H "$(request_header "$name")" "${URL[$name]}") ||
        die "wrk failed for $name: $output"
    line=$(grep '^RESULT ' <<<"$output") || die "wrk printed no RESULT line for $name: $output"
    [[ $line =~ status_errors=0 && $line =~ read_errors=0 && $line =~ timeouts=0 ]] ||
        die "wrk counted errors for $name: $line"
    [[ $line =~ requests=([0-9]+) ]] || die "wrk printed no request count for $name: $line"
    echo "${BASH_REMATCH[1]}"
}

# Start the proxy of target NAME, wrapped in the command PROXY_WRAPPER holds.
start_target() {
    local name=$1
    case $name in
        nginx) start_nginx ;;
        *) start_portcullis "$name" ;;
    esac
}

# Print the number of requests that target NAME completed while wrk ran for DURATION.
count_requests() {
    local name=$1 duration=$2 before after sent
    if [[ $name == nginx ]]; then
        run_wrk "$name" "$duration"
        return
    fi
    before=$(portcullis_requests)
    sent=$(run_wrk "$name" "$duration")
    after=$(portcullis_requests)
    ((after - before >= sent)) || die "$name counted $((after - before)) requests but wrk completed $sent"
    echo $((after - before))
}

measure_instructions() {
    local name=$1 pid dump
    local out_dir=$WORK_DIR/callgrind-$name
    mkdir -p "$out_dir"
    PROXY_WRAPPER=(valgrind --tool=callgrind --quiet "--callgrind-out-file=$out_dir/callgrind.out.%p")
    START_TIMEOUT=300
    start_target "$name"
    pid=$PROXY_PID
    log "$name: warming up under callgrind"
    run_wrk "$name" 2s >/dev/null
    callgrind_control --zero "$pid" >/dev/null 2>&1 || die "callgrind_control --zero failed for PID $pid"
    REQUESTS[$name]=$(count_requests "$name" "$INSTRUCTIONS_DURATION")
    callgrind_control --dump "$pid" >/dev/null 2>&1 || die "callgrind_control --dump failed for PID $pid"
    dump=$(ls -t "$out_dir"/callgrind.out."$pid".* | head -n 1) || die "callgrind wrote no dump in $out_dir"
    INSTRUCTIONS[$name]=$(awk '/^(totals|summary):/ { print $2; exit }' "$dump")
    [[ -n ${INSTRUCTIONS[$name]} ]] || die "no instruction total in $dump"
    log "$name: ${INSTRUCTIONS[$name]} instructions for ${REQUESTS[$name]} requests ($dump)"
    stop_proxy
    PROXY_WRAPPER=()
    START_TIMEOUT=30
}

# Syscalls counted one by one. The event raw_syscalls:sys_enter counts all of them.
readonly COUNTED_SYSCALLS=(read readv write writev recvfrom recvmsg sendto sendmsg epoll_wait
    epoll_pwait epoll_ctl futex sched_yield accept4 close getsockopt setsockopt)

measure_syscalls() {
    local name=$1 pid perf_pid output=$WORK_DIR/syscalls-$1.csv events=raw_syscalls:sys_enter syscall
    for syscall in "${COUNTED_SYSCALLS[@]}"; do
        events+=",syscalls:sys_enter_$syscall"
    done
    start_target "$name"
    pid=$PROXY_PID
    run_wrk "$name" 1s >/dev/null
    perf stat -x, -e "$events" -p "$pid" -o "$output" &
    perf_pid=$!
    SYSCALL_REQUESTS[$name]=$(count_requests "$name" "$SYSCALLS_DURATION")
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    SYSCALL_DETAIL[$name]=$(python3 - "$output" "${SYSCALL_REQUESTS[$name]}" <<'PYTHON'
import sys

path, requests = sys.argv[1], int(sys.argv[2])
total, rows = None, []
for line in open(path):
    fields = line.strip().split(",")
    if len(fields) < 3 or not fields[0].isdigit():
        continue
    count, event = int(fields[0]), fields[2]
    if event == "raw_syscalls:sys_enter":
        total = count
    elif count / requests >= 0.01:
        rows.append((event.removeprefix("syscalls:sys_enter_"), count))
if total is None:
    sys.exit(f"perf stat printed no raw_syscalls:sys_enter count in {path}")
rows.sort(key=lambda row: -row[1])
other = total - sum(count for name, count in rows)
if other / requests >= 0.01:
    rows.append(("others", other))
detail = ", ".join(f"{name} {count / requests:.2f}" for name, count in rows)
print(f"{total / requests:.2f}|{detail}")
PYTHON
    )
    log "$name: ${SYSCALL_DETAIL[$name]%%|*} syscalls per request over ${SYSCALL_REQUESTS[$name]} requests"
    stop_proxy
}

print_instruction_report() {
    local name
    local build="commit $(git -C "$REPO" rev-parse --short HEAD)"
    [[ -z ${PORTCULLIS_BINARY:-} ]] || build="portcullis binary $PORTCULLIS_BINARY"
    printf '\n%s\n' "instructions and syscalls per request, $(date -u '+%Y-%m-%d %H:%M UTC'), $build"
    printf 'wrk -t1 -c%s; callgrind over %s; perf stat syscall tracepoints over %s\n\n' "$INSTRUCTIONS_CONNECTIONS" \
        "$INSTRUCTIONS_DURATION" "$SYSCALLS_DURATION"
    printf '| target | instructions/request | syscalls/request | syscalls/request by name |\n'
    printf '|---|---:|---:|---|\n'
    for name in "$@"; do
        printf '| %s | %s | %s | %s |\n' "$name" \
            "$(awk -v i="${INSTRUCTIONS[$name]}" -v n="${REQUESTS[$name]}" 'BEGIN { printf "%.0f", i / n }')" \
            "${SYSCALL_DETAIL[$name]%%|*}" "${SYSCALL_DETAIL[$name]#*|}"
    done
}

instructions_main() {
    local targets=("$@") name identity=0
    ((${#targets[@]} > 0)) || targets=(portcullis policies nginx)
    for name in "${targets[@]}"; do
        if is_identity_target "$name"; then
            identity=1
        elif [[ $name != portcullis && $name != policies && $name != nginx ]]; then
            die "unknown target $name; expected portcullis, policies, nginx, key-auth, jwt-rs256, jwt-eddsa or introspection"
        fi
    done
    local commands=(valgrind callgrind_control perf wrk curl python3 taskset)
    ((identity == 0)) || commands+=(openssl)
    [[ " ${targets[*]} " != *" nginx "* ]] || commands+=(nginx)
    for command in "${commands[@]}"; do
        command -v "$command" >/dev/null || die "$command is missing; install it with apt-get"
    done
    NGINX_GLOBALS='daemon off; master_process off;'
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    check_machine
    build_binaries
    PORTCULLIS=${PORTCULLIS_BINARY:-$PORTCULLIS}
    WORK_DIR=$(mktemp -d -t portcullis-instructions.XXXXXX)
    start_upstream
    ((identity == 0)) || start_identity_provider
    for name in "${targets[@]}"; do
        measure_instructions "$name"
        measure_syscalls "$name"
    done
    print_instruction_report "${targets[@]}"
}

instructions_main "$@"
