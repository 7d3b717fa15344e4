-- wrk script: POST the request body named by BENCH_BODY with BENCH_CREDENTIAL (the bench
-- agent's key, or an access token).
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_CREDENTIAL") or "bench-agent-key-0000000001")
