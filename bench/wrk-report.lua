-- wrk `done` hook: prints one parseable line with exact percentiles, because wrk's own
-- --latency report rounds them to two decimals in a unit it picks per value.
-- Latencies are in microseconds and the duration of the run is in microseconds too.

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d"
      .. " connect_errors=%d read_errors=%d write_errors=%d timeouts=%d status_errors=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max,
    errors.connect, errors.read, errors.write, errors.timeout, errors.status))
end
