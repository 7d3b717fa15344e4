/// The PostgreSQL schema: the same tables as the SQLite store (times in ms and money in
/// nanodollars as BIGINT, JSON as text, flags as 0/1) plus what a cluster needs: nodes,
/// singleton leases, shared budget and rate counters.
enum PostgresSchema {
    struct Migration {
        var version: Int64
        var name: String
        var statements: [String]
    }

    /// Advisory lock keys (`pg_advisory_xact_lock`): one migrating node; one audit chain; events
    /// numbered in commit order.
    static let migrationLock: Int64 = 0x1A7E_0001
    static let auditLock: Int64 = 0x1A7E_0002
    static let eventsLock: Int64 = 0x1A7E_0003

    // The `LISTEN` channel is `PostgresStore.channel` (per schema). Payloads: `runs` (runs
    // became due), `run:<id>` (that run was woken), `events` (an event was published),
    // `registry` (agents or keys changed), `keys` (signing keys changed), `session:<id>` (an
    // MCP session ended).

    static let migrations: [Migration] = [
        Migration(version: 1, name: "initial", statements: [
            """
            CREATE TABLE usage_ledger (
                id BIGSERIAL PRIMARY KEY,
                request_id TEXT NOT NULL,
                ts_ms BIGINT NOT NULL,
                agent_id TEXT NOT NULL,
                target_kind TEXT NOT NULL,
                target TEXT NOT NULL,
                deployment_id TEXT,
                provider TEXT,
                upstream_model TEXT,
                operation TEXT NOT NULL,
                stream BIGINT NOT NULL,
                input_tokens BIGINT NOT NULL,
                output_tokens BIGINT NOT NULL,
                cached_input_tokens BIGINT NOT NULL,
                cost_nanos BIGINT NOT NULL,
                latency_ms DOUBLE PRECISION NOT NULL,
                attempts BIGINT NOT NULL,
                outcome TEXT NOT NULL,
                status BIGINT NOT NULL,
                error_code TEXT,
                run_id TEXT
            )
            """,
            "CREATE INDEX usage_ledger_agent_ts ON usage_ledger (agent_id, ts_ms)",
            "CREATE INDEX usage_ledger_request ON usage_ledger (request_id)",
            "CREATE INDEX usage_ledger_run ON usage_ledger (run_id)",
            // `pos` is the storage order; `seq` the chain's numbering, deliberately not unique
            // (a tampered log still loads and verification says where it breaks).
            """
            CREATE TABLE audit_log (
                pos BIGSERIAL PRIMARY KEY,
                seq BIGINT NOT NULL,
                ts_ms BIGINT NOT NULL,
                node TEXT NOT NULL,
                action TEXT NOT NULL,
                agent_id TEXT,
                user_id TEXT,
                actors TEXT NOT NULL,
                run_id TEXT,
                parent_run_id TEXT,
                supervisor TEXT,
                target TEXT,
                decision TEXT NOT NULL,
                reason TEXT,
                args_sha256 TEXT,
                outcome TEXT,
                status BIGINT,
                cost_nanos BIGINT,
                request_id TEXT,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL,
                result_sha256 TEXT,
                capture TEXT
            )
            """,
            "CREATE INDEX audit_log_seq ON audit_log (seq)",
            "CREATE INDEX audit_log_agent_ts ON audit_log (agent_id, ts_ms)",
            "CREATE INDEX audit_log_ts ON audit_log (ts_ms)",
            "CREATE INDEX audit_log_run ON audit_log (run_id)",
            "CREATE TABLE signing_keys (kid TEXT PRIMARY KEY, private_pem TEXT NOT NULL, created_ms BIGINT NOT NULL, retired_ms BIGINT)",
            "CREATE TABLE agents (id TEXT PRIMARY KEY, body TEXT NOT NULL, updated_ms BIGINT NOT NULL)",
            """
            CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                agent_id TEXT NOT NULL REFERENCES agents (id),
                digest TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                source TEXT NOT NULL,
                created_ms BIGINT NOT NULL,
                expires_ms BIGINT,
                revoked_ms BIGINT
            )
            """,
            "CREATE INDEX api_keys_agent ON api_keys (agent_id)",
            """
            CREATE TABLE tool_pins (
                name TEXT PRIMARY KEY,
                approved_hash TEXT NOT NULL,
                approved_ms BIGINT NOT NULL,
                approved_by TEXT NOT NULL,
                pending_hash TEXT,
                pending_ms BIGINT
            )
            """,
            """
            CREATE TABLE approvals (
                id TEXT PRIMARY KEY,
                agent_id TEXT NOT NULL,
                target_kind TEXT NOT NULL,
                target TEXT NOT NULL,
                args_sha256 TEXT NOT NULL,
                arguments TEXT NOT NULL,
                policy TEXT NOT NULL,
                policy_version TEXT NOT NULL,
                reason TEXT NOT NULL,
                request_id TEXT NOT NULL,
                user_id TEXT,
                run_id TEXT,
                created_ms BIGINT NOT NULL,
                expires_ms BIGINT NOT NULL,
                status TEXT NOT NULL,
                decided_by TEXT,
                decided_ms BIGINT,
                note TEXT,
                kind TEXT NOT NULL DEFAULT 'policy',
                step_path TEXT,
                answer TEXT,
                answer_schema TEXT
            )
            """,
            "CREATE INDEX approvals_binding ON approvals (agent_id, target_kind, target, args_sha256, policy_version, status)",
            "CREATE INDEX approvals_status ON approvals (status, created_ms)",
            "CREATE INDEX approvals_run ON approvals (run_id)",
            """
            CREATE TABLE workflow_versions (
                pos BIGSERIAL UNIQUE,
                hash TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                source TEXT NOT NULL,
                origin TEXT NOT NULL,
                created_ms BIGINT NOT NULL
            )
            """,
            "CREATE INDEX workflow_versions_name ON workflow_versions (origin, name, pos)",
            """
            CREATE TABLE runs (
                pos BIGSERIAL UNIQUE,
                id TEXT PRIMARY KEY,
                workflow TEXT NOT NULL,
                workflow_hash TEXT NOT NULL REFERENCES workflow_versions (hash),
                status TEXT NOT NULL,
                priority BIGINT NOT NULL,
                agent_id TEXT NOT NULL,
                started_by TEXT NOT NULL,
                user_id TEXT,
                parent_run_id TEXT,
                forked_from TEXT,
                forked_at_seq BIGINT,
                idempotency_key TEXT UNIQUE,
                trigger_event_id TEXT,
                input TEXT NOT NULL,
                output TEXT,
                error TEXT,
                stop_limit TEXT,
                budgets TEXT NOT NULL,
                usage TEXT NOT NULL,
                steps_started BIGINT NOT NULL,
                supervisor TEXT,
                created_ms BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL,
                finished_ms BIGINT,
                last_seq BIGINT NOT NULL
            )
            """,
            "CREATE INDEX runs_status ON runs (status, pos)",
            "CREATE INDEX runs_workflow ON runs (workflow, pos)",
            """
            CREATE TABLE run_events (
                run_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                ts_ms BIGINT NOT NULL,
                kind TEXT NOT NULL,
                path TEXT,
                data TEXT NOT NULL,
                PRIMARY KEY (run_id, seq)
            )
            """,
            // One row per unfinished run: when it is due, and who holds it until when.
            """
            CREATE TABLE run_queue (
                run_id TEXT PRIMARY KEY,
                priority BIGINT NOT NULL,
                ready_at_ms BIGINT,
                lease_owner TEXT,
                lease_expires_ms BIGINT,
                woken BIGINT NOT NULL DEFAULT 0
            )
            """,
            "CREATE INDEX run_queue_due ON run_queue (priority DESC, ready_at_ms) WHERE ready_at_ms IS NOT NULL",
            "CREATE INDEX run_queue_owner ON run_queue (lease_owner)",
            """
            CREATE TABLE run_signals (
                id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, kind TEXT NOT NULL, by TEXT NOT NULL, data TEXT, created_ms BIGINT NOT NULL
            )
            """,
            "CREATE INDEX run_signals_run ON run_signals (run_id)",
            "CREATE TABLE run_waits (run_id TEXT NOT NULL, path TEXT NOT NULL, event_type TEXT NOT NULL, PRIMARY KEY (run_id, path))",
            "CREATE INDEX run_waits_type ON run_waits (event_type)",
            """
            CREATE TABLE events (
                seq BIGSERIAL PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                type TEXT NOT NULL,
                payload TEXT NOT NULL,
                dedup_key TEXT,
                source TEXT NOT NULL,
                ts_ms BIGINT NOT NULL,
                UNIQUE (type, dedup_key)
            )
            """,
            "CREATE INDEX events_type ON events (type, seq)",
            "CREATE TABLE cursors (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        ]),
        Migration(version: 2, name: "cluster", statements: [
            """
            CREATE TABLE nodes (
                id TEXT PRIMARY KEY, region TEXT NOT NULL, incarnation TEXT NOT NULL, address TEXT NOT NULL, version TEXT NOT NULL,
                started_ms BIGINT NOT NULL, heartbeat_ms BIGINT NOT NULL, stopped_ms BIGINT
            )
            """,
            "CREATE TABLE leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_ms BIGINT NOT NULL)",
            // Dollar budgets shared by every node: what is spent and reserved per agent and
            // period; each reservation is a row until settled (or expired: its node died).
            """
            CREATE TABLE budget_counters (
                agent_id TEXT NOT NULL, period_key TEXT NOT NULL, spent_nanos BIGINT NOT NULL, reserved_nanos BIGINT NOT NULL,
                PRIMARY KEY (agent_id, period_key)
            )
            """,
            """
            CREATE TABLE budget_reservations (
                id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, period_keys TEXT[] NOT NULL, amount_nanos BIGINT NOT NULL, owner TEXT NOT NULL,
                expires_ms BIGINT NOT NULL
            )
            """,
            "CREATE INDEX budget_reservations_expiry ON budget_reservations (expires_ms)",
            // Rate limits shared by every node, as GCRA: the theoretical arrival time per key.
            "CREATE TABLE rate_counters (key TEXT PRIMARY KEY, tat_us BIGINT NOT NULL)",
            // One round trip per reservation. Rows are locked in period-key order (here and in
            // settle), so concurrent calls of one agent queue up and never deadlock.
            """
            CREATE FUNCTION interlock_budget_reserve(
                p_agent TEXT, p_keys TEXT[], p_starts BIGINT[], p_limits BIGINT[], p_amount BIGINT, p_id TEXT, p_owner TEXT, p_expires BIGINT
            ) RETURNS TABLE (granted BOOLEAN, period_index INT, committed BIGINT) AS $$
            DECLARE
                i INT;
                c BIGINT;
            BEGIN
                PERFORM interlock_budget_rows(p_agent, p_keys, p_starts);
                FOR i IN 1..coalesce(array_length(p_keys, 1), 0) LOOP
                    SELECT spent_nanos + reserved_nanos INTO c FROM budget_counters WHERE agent_id = p_agent AND period_key = p_keys[i];
                    IF c + p_amount > p_limits[i] THEN
                        RETURN QUERY SELECT false, i, c;
                        RETURN;
                    END IF;
                END LOOP;
                UPDATE budget_counters SET reserved_nanos = reserved_nanos + p_amount WHERE agent_id = p_agent AND period_key = ANY (p_keys);
                INSERT INTO budget_reservations (id, agent_id, period_keys, amount_nanos, owner, expires_ms)
                    VALUES (p_id, p_agent, p_keys, p_amount, p_owner, p_expires);
                RETURN QUERY SELECT true, 0, 0::bigint;
            END
            $$ LANGUAGE plpgsql
            """,
            // Creates an agent's counters for periods not seen yet (counting what the usage
            // ledger already holds for them) and locks them all, in key order.
            """
            CREATE FUNCTION interlock_budget_rows(p_agent TEXT, p_keys TEXT[], p_starts BIGINT[]) RETURNS VOID AS $$
            DECLARE
                i INT;
            BEGIN
                FOR i IN 1..coalesce(array_length(p_keys, 1), 0) LOOP
                    IF NOT EXISTS (SELECT 1 FROM budget_counters WHERE agent_id = p_agent AND period_key = p_keys[i]) THEN
                        INSERT INTO budget_counters (agent_id, period_key, spent_nanos, reserved_nanos)
                            SELECT p_agent, p_keys[i], COALESCE(SUM(cost_nanos), 0), 0 FROM usage_ledger WHERE agent_id = p_agent AND ts_ms >= p_starts[i]
                            ON CONFLICT DO NOTHING;
                    END IF;
                END LOOP;
                PERFORM 1 FROM budget_counters WHERE agent_id = p_agent AND period_key = ANY (p_keys) ORDER BY period_key FOR UPDATE;
            END
            $$ LANGUAGE plpgsql
            """,
            """
            CREATE FUNCTION interlock_budget_settle(p_id TEXT, p_agent TEXT, p_keys TEXT[], p_starts BIGINT[], p_actual BIGINT) RETURNS VOID AS $$
            DECLARE
                held_keys TEXT[];
                held BIGINT;
            BEGIN
                SELECT period_keys, amount_nanos INTO held_keys, held FROM budget_reservations WHERE id = p_id;
                PERFORM interlock_budget_rows(p_agent, p_keys || COALESCE(held_keys, ARRAY[]::TEXT[]), p_starts || ARRAY[]::BIGINT[]);
                IF held IS NOT NULL THEN
                    DELETE FROM budget_reservations WHERE id = p_id;
                    UPDATE budget_counters SET reserved_nanos = reserved_nanos - held WHERE agent_id = p_agent AND period_key = ANY (held_keys);
                END IF;
                UPDATE budget_counters SET spent_nanos = spent_nanos + p_actual WHERE agent_id = p_agent AND period_key = ANY (p_keys);
            END
            $$ LANGUAGE plpgsql
            """,
            """
            CREATE FUNCTION interlock_rate_take(p_key TEXT, p_now BIGINT, p_cost BIGINT, p_burst BIGINT) RETURNS BIGINT AS $$
            DECLARE
                t BIGINT;
                next_t BIGINT;
            BEGIN
                INSERT INTO rate_counters (key, tat_us) VALUES (p_key, p_now) ON CONFLICT DO NOTHING;
                SELECT GREATEST(tat_us, p_now) INTO t FROM rate_counters WHERE key = p_key FOR UPDATE;
                -- A request larger than the whole burst passes when the limit is idle.
                next_t := t + LEAST(p_cost, p_burst);
                IF next_t - p_now > p_burst THEN
                    RETURN next_t - p_burst - p_now;
                END IF;
                UPDATE rate_counters SET tat_us = next_t WHERE key = p_key;
                RETURN 0;
            END
            $$ LANGUAGE plpgsql
            """,
        ]),
        Migration(version: 3, name: "mcp_sessions", statements: [
            "CREATE TABLE mcp_sessions (id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, version TEXT NOT NULL, touched_ms BIGINT NOT NULL)",
            "CREATE INDEX mcp_sessions_touched ON mcp_sessions (touched_ms)",
        ]),
        // A batch of checkpoints in one statement, its own transaction: one round trip instead
        // of seven, and PL/pgSQL keeps its statements' plans per connection (planning the
        // same multi-row statements again and again was a third of the server's CPU). Each
        // argument is a JSON array of records; the run ids whose lease was held come back,
        // and only their checkpoints are written (fencing).
        Migration(version: 4, name: "checkpoint_function", statements: [
            """
            CREATE FUNCTION interlock_checkpoint(
                p_checkpoints JSON, p_events JSON, p_finished JSON, p_settled JSON, p_waiting JSON, p_signals JSON
            ) RETURNS SETOF TEXT AS $$
            DECLARE
                held TEXT[];
            BEGIN
                WITH fenced AS (
                    UPDATE run_queue q SET lease_expires_ms = c.lease_until_ms
                    FROM json_to_recordset(p_checkpoints) AS c(id TEXT, owner TEXT, lease_until_ms BIGINT)
                    WHERE q.run_id = c.id AND q.lease_owner = c.owner
                    RETURNING q.run_id
                )
                SELECT COALESCE(array_agg(run_id), ARRAY[]::TEXT[]) INTO held FROM fenced;
                IF cardinality(held) = 0 THEN
                    RETURN;
                END IF;
                DELETE FROM run_waits WHERE run_id = ANY (held)
                    AND run_id IN (SELECT f.run_id FROM json_to_recordset(p_finished) AS f(run_id TEXT));
                DELETE FROM run_waits w USING json_to_recordset(p_settled) AS s(run_id TEXT, path TEXT)
                    WHERE w.run_id = s.run_id AND w.path = s.path AND s.run_id = ANY (held);
                INSERT INTO run_waits (run_id, path, event_type)
                    SELECT x.run_id, x.path, x.event_type FROM json_to_recordset(p_waiting) AS x(run_id TEXT, path TEXT, event_type TEXT)
                    WHERE x.run_id = ANY (held)
                    ON CONFLICT (run_id, path) DO UPDATE SET event_type = excluded.event_type;
                INSERT INTO run_events (run_id, seq, ts_ms, kind, path, data)
                    SELECT e.run_id, e.seq, e.ts_ms, e.kind, e.path, e.data
                    FROM json_to_recordset(p_events) AS e(run_id TEXT, seq BIGINT, ts_ms BIGINT, kind TEXT, path TEXT, data TEXT)
                    WHERE e.run_id = ANY (held);
                UPDATE runs SET status = v.status, output = v.output, error = v.error, stop_limit = v.stop_limit, budgets = v.budgets,
                    usage = v.usage, steps_started = v.steps_started, supervisor = COALESCE(v.supervisor, runs.supervisor),
                    updated_ms = v.updated_ms, finished_ms = v.finished_ms, last_seq = COALESCE(v.last_seq, runs.last_seq)
                FROM json_to_recordset(p_checkpoints) AS v(
                    id TEXT, status TEXT, output TEXT, error TEXT, stop_limit TEXT, budgets TEXT, usage TEXT, steps_started BIGINT,
                    supervisor TEXT, updated_ms BIGINT, finished_ms BIGINT, last_seq BIGINT)
                WHERE runs.id = v.id AND v.id = ANY (held);
                DELETE FROM run_signals WHERE id IN (
                    SELECT s.id FROM json_to_recordset(p_signals) AS s(run_id TEXT, id BIGINT) WHERE s.run_id = ANY (held));
                RETURN QUERY SELECT unnest(held);
            END
            $$ LANGUAGE plpgsql
            """,
        ]),
        // Most calls belong to no workflow run: an index without their NULLs is one B-tree
        // insert fewer per call (`run_id = $1` implies `IS NOT NULL`, so lookups still use it).
        Migration(version: 5, name: "usage_run_partial_index", statements: [
            "DROP INDEX usage_ledger_run",
            "CREATE INDEX usage_ledger_run ON usage_ledger (run_id) WHERE run_id IS NOT NULL",
        ]),
        // As SQLite's migration 13: indexes no query reads, maintained on every call.
        Migration(version: 6, name: "drop_unused_call_indexes", statements: [
            "DROP INDEX IF EXISTS usage_ledger_request",
            "DROP INDEX IF EXISTS audit_log_seq",
        ]),
    ]
}
