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

    /// `LISTEN` channels: runs became due or were woken (payload: the run id, or empty);
    /// an event was published.
    static let runsChannel = "interlock_runs"
    static let eventsChannel = "interlock_events"

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
    ]
}
