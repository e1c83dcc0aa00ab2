#!/usr/bin/env bash
# Measure the latency that the AI gateway adds to a chat completion, at fixed request rates.
#
# Usage: bench/run.sh ai   (the same as bench/ai.sh)
#
# The provider is tools/echo-upstream's /llm/{delay_ms}/chat/completions, which returns every
# chat completion after a fixed delay. For each rate, oha sends POST /chat/completions at that
# fixed rate for a bounded time, once straight to the provider (direct) and once through
# portcullis with an `ai` route whose model alias points at the provider (gateway). The report
# prints p50 and p99 of both and their differences, the latency the gateway added. A difference
# of percentiles is not the percentile of the per-request overhead, so the report also prints
# the gateway's own portcullis_ai_overhead_seconds for the run: its mean, and the bucket that
# contains its p99.
#
# oha holds a fixed rate with -q, and --latency-correction measures each request from the time
# it was scheduled, so a stall is not hidden by the requests that were never sent (coordinated
# omission). wrk has no fixed-rate mode. The script installs oha with `cargo install` from
# crates.io into $CARGO_TARGET_DIR/bench-tools when it is missing.
#
# oha and the provider share BENCH_LOAD_CORE; portcullis runs alone on BENCH_PROXY_CORE.
#
# Environment, with defaults:
#   BENCH_AI_RATES="100 500 1000"  request rates, in requests per second
#   BENCH_AI_DURATION=10s          measured oha run per rate and target
#   BENCH_AI_WARMUP=2s             oha warm-up per target at the first rate, not reported
#   BENCH_AI_DELAY_MS=20           the provider's delay before each response
#   BENCH_AI_CONNECTIONS=100       oha connections, enough for rate x delay requests in flight
#   BENCH_LOAD_CORE, BENCH_PROXY_CORE, BENCH_KEEP, BENCH_QUIET_TIMEOUT, CARGO_TARGET_DIR as in
#   bench/run.sh
#
# Every load is bounded by oha's -z, and every wait by a timeout. Traffic goes only to 127.0.0.1.
set -euo pipefail

# run.sh defines the shared helpers and runs nothing when sourced.
# shellcheck source=bench/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/run.sh"

read -r -a AI_RATES <<<"${BENCH_AI_RATES:-100 500 1000}"
readonly AI_RATES
readonly AI_DURATION=${BENCH_AI_DURATION:-10s}
readonly AI_WARMUP=${BENCH_AI_WARMUP:-2s}
readonly AI_DELAY_MS=${BENCH_AI_DELAY_MS:-20}
readonly AI_CONNECTIONS=${BENCH_AI_CONNECTIONS:-100}
readonly OHA_VERSION=1.16.0
readonly CHAT_BODY='{"model":"bench","messages":[{"role":"user","content":"Hi"}]}'

declare -A AI_URL AI_P50 AI_P99 AI_RPS AI_ERRORS AI_OVERHEAD_MEAN AI_OVERHEAD_P99

# Install oha OHA_VERSION from crates.io unless it is already there.
install_oha() {
    OHA=$TARGET_DIR/bench-tools/bin/oha
    if [[ -x $OHA ]] && "$OHA" --version | grep -q "$OHA_VERSION"; then
        return
    fi
    log "installing oha $OHA_VERSION with cargo install (takes a few minutes once)"
    cargo install oha --version "$OHA_VERSION" --locked \
        --root "$TARGET_DIR/bench-tools"
}

write_ai_config() {
    local dir=$1
    mkdir -p "$dir"
    cat >"$dir/portcullis.yaml" <<EOF
listeners:
  - address: $HOST:0
admin:
  address: $HOST:0
  token: $ADMIN_TOKEN
store:
  sqlite: portcullis.db
log:
  level: warn
access_log: off
ai:
  providers:
    - name: bench-provider
      type: openai-compatible
      base_url: http://$UPSTREAM_ADDRESS/llm/$AI_DELAY_MS
  models:
    - name: bench
      targets: [bench-provider/bench]
routes:
  - name: llm
    paths: [/v1]
    ai: {}
EOF
}

# Fail unless a chat completion POSTed to URL returns 200.
expect_chat() {
    local url=$1 status
    status=$(curl --silent --max-time 5 --output /dev/null --write-out '%{http_code}' \
        --header 'content-type: application/json' --data "$CHAT_BODY" "$url")
    [[ $status == 200 ]] || die "POST $url returned $status, expected 200"
}

start_ai_gateway() {
    local dir=$WORK_DIR/ai-gateway
    write_ai_config "$dir"
    launch_portcullis ai "$dir"
    AI_URL[gateway]="http://$PROXY_ADDRESS/v1/chat/completions"
    AI_URL[direct]="http://$UPSTREAM_ADDRESS/llm/$AI_DELAY_MS/chat/completions"
    expect_chat "${AI_URL[gateway]}"
    expect_chat "${AI_URL[direct]}"
    log "portcullis (ai) on $PROXY_ADDRESS, admin on ${ADMIN_URL#http://}, pinned to core $PROXY_CORE"
}

# Run oha against TARGET at RATE for DURATION, pinned to the load core, and write its JSON
# report to FILE.
run_oha() {
    local target=$1 rate=$2 duration=$3 file=$4
    taskset -c "$LOAD_CORE" "$OHA" --no-tui --output-format json --latency-correction \
        -q "$rate" -z "$duration" -c "$AI_CONNECTIONS" -m POST \
        -H 'content-type: application/json' -d "$CHAT_BODY" "${AI_URL[$target]}" >"$file"
}

# Print the gateway's portcullis_ai_overhead_seconds histogram as JSON: buckets, sum, count.
overhead_snapshot() {
    curl --silent --max-time 5 "$ADMIN_URL/metrics" | python3 -c '
import json, re, sys
buckets, total, count = {}, 0.0, 0
for line in sys.stdin:
    if not line.startswith("portcullis_ai_overhead_seconds"):
        continue
    name, value = line.rsplit(" ", 1)
    match = re.search(r"le=\"([^\"]+)\"", name)
    if name.startswith("portcullis_ai_overhead_seconds_bucket") and match:
        buckets[match.group(1)] = buckets.get(match.group(1), 0) + float(value)
    elif name.startswith("portcullis_ai_overhead_seconds_sum"):
        total += float(value)
    elif name.startswith("portcullis_ai_overhead_seconds_count"):
        count += int(float(value))
print(json.dumps({"buckets": buckets, "sum": total, "count": count}))'
}

# Measure TARGET at RATE and store its percentiles, rate and errors. For the gateway also store
# the mean and the p99 bucket of its own overhead histogram over the run.
measure_ai() {
    local target=$1 rate=$2 file=$WORK_DIR/oha-$1-$2.json before after result
    wait_for_quiet
    [[ $target == gateway ]] && before=$(overhead_snapshot)
    run_oha "$target" "$rate" "$AI_DURATION" "$file"
    [[ $target == gateway ]] && after=$(overhead_snapshot)
    result=$(python3 -c '
import json, sys
report = json.load(open(sys.argv[1]))
percentiles = report["latencyPercentiles"]
codes = report.get("statusCodeDistribution", {})
errors = sum(count for code, count in codes.items() if code != "200")
# oha aborts the requests still in flight when -z ends (about rate x delay of them) and lists
# them as "aborted due to deadline". They are cut off, not failed, so they are not errors.
errors += sum(count for kind, count in report.get("errorDistribution", {}).items()
              if kind != "aborted due to deadline")
p50, p99 = percentiles["p50"] * 1000, percentiles["p99"] * 1000
rate = report["summary"]["requestsPerSec"]
print(f"{p50:.3f} {p99:.3f} {rate:.0f} {errors}")' "$file")
    read -r "AI_P50[$target-$rate]" "AI_P99[$target-$rate]" "AI_RPS[$target-$rate]" \
        "AI_ERRORS[$target-$rate]" <<<"$result"
    if [[ $target == gateway ]]; then
        result=$(python3 -c '
import json, sys
before, after = json.loads(sys.argv[1]), json.loads(sys.argv[2])
count = after["count"] - before["count"]
mean = (after["sum"] - before["sum"]) / count * 1000 if count else float("nan")
bounds = sorted(after["buckets"], key=lambda bound: float(bound))
p99 = "n/a"
for bound in bounds:
    seen = after["buckets"][bound] - before["buckets"].get(bound, 0)
    if count and seen >= 0.99 * count:
        p99 = "<= " + (f"{float(bound) * 1000:g} ms" if bound != "+Inf" else "inf")
        break
print(f"{mean:.3f}|{p99}")' "$before" "$after")
        AI_OVERHEAD_MEAN[$rate]=${result%%|*}
        AI_OVERHEAD_P99[$rate]=${result#*|}
    fi
    log "$target at $rate req/s: p50 ${AI_P50[$target-$rate]} ms, p99 ${AI_P99[$target-$rate]} ms, ${AI_RPS[$target-$rate]} req/s, ${AI_ERRORS[$target-$rate]} errors"
}

print_ai_report() {
    local rate added_p50 added_p99
    printf '\nAI gateway overhead: provider delay %s ms, %s per run, %s connections, latency-corrected\n' \
        "$AI_DELAY_MS" "$AI_DURATION" "$AI_CONNECTIONS"
    printf 'machine: %s, oha %s on core %s, portcullis on core %s\n\n' \
        "$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)" "$OHA_VERSION" "$LOAD_CORE" "$PROXY_CORE"
    printf '%-8s %10s %10s %10s   %10s %10s %10s   %9s %7s   %14s %16s\n' \
        'req/s' 'direct p50' 'gw p50' 'added p50' 'direct p99' 'gw p99' 'added p99' 'gw req/s' 'errors' \
        'overhead mean' 'overhead p99'
    for rate in "${AI_RATES[@]}"; do
        added_p50=$(awk -v a="${AI_P50[gateway-$rate]}" -v b="${AI_P50[direct-$rate]}" 'BEGIN { printf "%+.3f", a - b }')
        added_p99=$(awk -v a="${AI_P99[gateway-$rate]}" -v b="${AI_P99[direct-$rate]}" 'BEGIN { printf "%+.3f", a - b }')
        printf '%-8s %10s %10s %10s   %10s %10s %10s   %9s %7s   %11s ms %16s\n' \
            "$rate" "${AI_P50[direct-$rate]}" "${AI_P50[gateway-$rate]}" "$added_p50" \
            "${AI_P99[direct-$rate]}" "${AI_P99[gateway-$rate]}" "$added_p99" \
            "${AI_RPS[gateway-$rate]}" "$((AI_ERRORS[direct-$rate] + AI_ERRORS[gateway-$rate]))" \
            "${AI_OVERHEAD_MEAN[$rate]}" "${AI_OVERHEAD_P99[$rate]}"
    done
    printf '\nLatencies in ms. added = gateway minus direct, per percentile. overhead = the\n'
    printf "gateway's portcullis_ai_overhead_seconds over the run: mean, and the bucket of its p99.\n"
}

ai_main() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    install_tools ai
    install_oha
    check_machine
    build_binaries
    WORK_DIR=$(mktemp -d -t portcullis-bench-ai.XXXXXX)
    raise_open_file_limit
    start_upstream
    start_ai_gateway
    local target rate
    for target in direct gateway; do
        log "warming up $target for $AI_WARMUP"
        run_oha "$target" "${AI_RATES[0]}" "$AI_WARMUP" /dev/null
    done
    for rate in "${AI_RATES[@]}"; do
        for target in direct gateway; do
            measure_ai "$target" "$rate"
        done
    done
    print_ai_report
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    ai_main "$@"
fi
