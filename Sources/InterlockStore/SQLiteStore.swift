public import InterlockCore
public import Logging
import SQLiteNIO

/// The embedded store: one SQLite file in WAL mode.
///
/// One connection serves reads and most writes; sqlite-nio runs each statement on its thread
/// pool so no event loop blocks on the disk. The usage ledger's and audit log's batches, the
/// writes of every call, go through a second connection with prepared statements
/// (`SQLiteAppender`). Writes on either take turns (`writes`), each one a transaction, so one
/// caller's rollback can never take another's rows with it and the two connections never
/// wait for each other's lock.
public final class SQLiteStore: InterlockStore {
    let connection: SQLiteConnection
    public let path: String
    /// The ledger's and audit log's batches, on a second connection with prepared statements
    /// (file databases only: `:memory:` has no file a second connection could open).
    let appender: SQLiteAppender?
    /// Every write runs through here. One connection serves all callers, and an open
    /// transaction would otherwise take in (and roll back) another caller's statements.
    private let writes = AsyncSerialGate()
    /// Workflow checkpoints, written in groups (`SQLiteStore+Runs.swift`).
    let checkpoints: CheckpointBatcher

    private init(connection: SQLiteConnection, path: String, appender: SQLiteAppender?) {
        self.connection = connection
        self.path = path
        self.appender = appender
        // The store is not built yet: the batcher reaches it through a box filled below.
        let box = StoreBox()
        self.checkpoints = CheckpointBatcher { batch in await box.store!.write(batch) }
        box.store = self
    }

    /// Opens (creating if needed) the database at `path`; `:memory:` gives a private in-memory one.
    public static func open(
        path: String, durability: SQLiteDurability = .normal, batchWriter: SQLiteBatchWriterSettings = .init(),
        logger: Logger = Logger(label: "interlock.store")
    ) async throws -> SQLiteStore {
        let storage: SQLiteConnection.Storage = path == ":memory:" ? .memory : .file(path: path)
        let connection = try await SQLiteConnection.open(storage: storage, logger: logger)
        do {
            if path != ":memory:" {
                _ = try await connection.query("PRAGMA journal_mode=WAL", [])
            }
            _ = try await connection.query(durability == .full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", [])
            _ = try await connection.query("PRAGMA busy_timeout=5000", [])
            _ = try await connection.query("PRAGMA foreign_keys=ON", [])
            // A batch `INSERT` inside `BEGIN` keeps a statement journal, which spills to a
            // temporary file past 64 KiB: one file created and written per ledger or audit batch.
            _ = try await connection.query("PRAGMA temp_store=MEMORY", [])
            let appender = isInMemory(path) ? nil : try await SQLiteAppender.open(path: path, durability: durability, batchWriter: batchWriter, logger: logger)
            return SQLiteStore(connection: connection, path: path, appender: appender)
        } catch {
            // Not a database (or not a usable one): close before the connection is released.
            try? await connection.close()
            throw error
        }
    }

    /// Whether `path` names a database without a file (`:memory:`, a `file:` URI with
    /// `mode=memory`, or the empty path of a temporary database): a second connection would
    /// open another, empty one.
    static func isInMemory(_ path: String) -> Bool {
        if path == ":memory:" || path.isEmpty { return true }
        guard path.hasPrefix("file:") else { return false }
        return path.hasPrefix("file::memory:") || path.split(separator: "?", maxSplits: 1).dropFirst().first?.split(separator: "&").contains("mode=memory") == true
    }

    /// The journal mode SQLite reports (`wal` for file databases).
    public func journalMode() async throws -> String {
        let rows = try await connection.query("PRAGMA journal_mode", [])
        return rows.first?.columns.first?.data.string ?? ""
    }

    public func migrate() async throws {
        _ = try await connection.query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_ms INTEGER NOT NULL)", [])
        let current = try await schemaVersion()
        for migration in SQLiteMigrations.all where migration.version > current {
            try await transaction {
                for statement in migration.statements { _ = try await connection.query(statement, []) }
                _ = try await connection.query(
                    "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (?, ?, CAST(strftime('%s','now') AS INTEGER) * 1000)",
                    [.integer(migration.version), .text(migration.name)])
            }
        }
    }

    public func schemaVersion() async throws -> Int {
        let rows = try await connection.query("SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations", [])
        return rows.first?.column("version")?.integer ?? 0
    }

    public func appendUsage(_ records: [UsageRecord]) async throws {
        if let appender { return try await writes.run { try await appender.appendUsage(records) } }
        try await insertRows(table: "usage_ledger", columns: StoreRecords.usageColumns, records, values: StoreRecords.values)
    }

    /// Inserts rows with multi-row `INSERT`s, all or none: SQLite allows 32766 bound
    /// parameters per statement, so a large batch takes several statements, and those run in
    /// one transaction (a retried batch must not leave half of itself behind).
    private func insertRows<Record>(table: String, columns: [String], _ records: [Record], values: (Record) -> [StoreValue]) async throws {
        guard !records.isEmpty else { return }
        try await transaction { try await insertStatements(table: table, columns: columns, records, values: values) }
    }

    /// The statements of `insertRows`, inside a transaction the caller holds.
    private func insertStatements<Record>(table: String, columns: [String], _ records: [Record], values: (Record) -> [StoreValue]) async throws {
        let perStatement = max(1, 30_000 / columns.count)
        let placeholders = "(" + Array(repeating: "?", count: columns.count).joined(separator: ",") + ")"
        let prefix = "INSERT INTO \(table) (\(columns.joined(separator: ","))) VALUES "
        var start = 0
        while start < records.count {
            let slice = records[start..<min(records.count, start + perStatement)]
            var binds: [SQLiteData] = []
            binds.reserveCapacity(slice.count * columns.count)
            // A plain loop: `map(\.sqlite)` applies a key path per value (a tenth of the writer's
            // own CPU in perf) and builds a second array per row.
            for record in slice {
                for value in values(record) { binds.append(value.sqlite) }
            }
            _ = try await connection.query(prefix + Array(repeating: placeholders, count: slice.count).joined(separator: ","), binds)
            start += perStatement
        }
    }

    /// Runs `body` as one write transaction, alone on the connection: committed, or rolled
    /// back and rethrown. `COMMIT` and `ROLLBACK` run even when the calling task was cancelled
    /// (sqlite-nio skips the statements of a cancelled task): a transaction left open would
    /// make every later write on the connection fail.
    func transaction(_ body: () async throws -> Void) async throws {
        try await writes.run {
            _ = try await connection.query("BEGIN IMMEDIATE", [])
            do {
                try await body()
                try await uncancellable("COMMIT")
            } catch {
                try? await uncancellable("ROLLBACK")
                throw error
            }
        }
    }

    private func uncancellable(_ statement: String) async throws {
        let connection = self.connection
        try await Task.detached { _ = try await connection.query(statement, []) }.value
    }

    public func spend(agentID: String, sinceMs: Int64) async throws -> SpendTotals {
        let rows = try await connection.query(
            """
            SELECT COALESCE(SUM(cost_nanos), 0) AS cost, COUNT(*) AS calls, COALESCE(SUM(input_tokens), 0) AS input,
                   COALESCE(SUM(output_tokens), 0) AS output, COALESCE(SUM(cached_input_tokens), 0) AS cached
            FROM usage_ledger WHERE agent_id = ? AND ts_ms >= ?
            """, [.text(agentID), .integer(Int(sinceMs))])
        return StoreRecords.spend(rows.first)
    }

    public func recentUsage(limit: Int) async throws -> [UsageRecord] {
        let rows = try await connection.query(
            "SELECT \(StoreRecords.usageColumns.joined(separator: ",")) FROM usage_ledger ORDER BY id DESC LIMIT ?", [.integer(limit)])
        return rows.map(StoreRecords.usage)
    }

    public func appendAudit(_ records: [AuditRecord]) async throws -> (sequence: Int64, hash: String) {
        if let appender { return try await writes.run { try await appender.appendAudit(records) } }
        var chain = AuditChain()
        try await transaction {
            let head = try await connection.query("SELECT seq, hash FROM audit_log ORDER BY pos DESC LIMIT 1", []).first
            chain = AuditChain(lastSequence: head?.int("seq") ?? 0, lastHash: head?.text("hash") ?? AuditRecord.genesisHash)
            try await insertStatements(table: "audit_log", columns: StoreRecords.auditColumns, records.map { chain.link($0) }, values: StoreRecords.values)
        }
        return (chain.lastSequence, chain.lastHash)
    }

    public func auditHead() async throws -> (sequence: Int64, hash: String)? {
        let rows = try await connection.query("SELECT seq, hash FROM audit_log ORDER BY pos DESC LIMIT 1", [])
        guard let row = rows.first, let sequence = row.int("seq"), let hash = row.text("hash") else { return nil }
        return (sequence, hash)
    }

    public func auditRecords(matching filter: AuditFilter, afterPosition position: Int64, limit: Int) async throws -> AuditPage {
        let (conditions, values) = StoreRecords.auditConditions(filter, afterPosition: position) { _ in "?" }
        let rows = try await connection.query(
            "SELECT pos, \(StoreRecords.auditColumns.joined(separator: ",")) FROM audit_log WHERE \(conditions) ORDER BY pos LIMIT ?",
            values.map(\.sqlite) + [.integer(limit)])
        return AuditPage(records: rows.map(StoreRecords.audit), lastPosition: rows.last?.int("pos") ?? position)
    }

    public func signingKeys() async throws -> [SigningKeyRecord] {
        let rows = try await connection.query("SELECT kid, private_pem, created_ms, retired_ms FROM signing_keys ORDER BY created_ms DESC, kid", [])
        return rows.compactMap(StoreRecords.signingKey)
    }

    public func saveSigningKeys(_ keys: [SigningKeyRecord], deleting kids: [String]) async throws {
        try await transaction {
            for key in keys {
                _ = try await connection.query(
                    """
                    INSERT INTO signing_keys (kid, private_pem, created_ms, retired_ms) VALUES (?, ?, ?, ?)
                    ON CONFLICT (kid) DO UPDATE SET private_pem = excluded.private_pem, retired_ms = excluded.retired_ms
                    """,
                    [.text(key.kid), .text(key.privateKeyPEM), .integer(Int(key.createdMs)), key.retiredMs.map { .integer(Int($0)) } ?? .null])
            }
            for kid in kids { _ = try await connection.query("DELETE FROM signing_keys WHERE kid = ?", [.text(kid)]) }
        }
    }

    public func agents() async throws -> [Agent] {
        let rows = try await connection.query("SELECT body FROM agents ORDER BY id", [])
        return rows.compactMap(StoreRecords.agent)
    }

    public func apiKeys() async throws -> [APIKeyRecord] {
        let rows = try await connection.query(
            "SELECT \(StoreRecords.apiKeyColumns.joined(separator: ",")) FROM api_keys ORDER BY created_ms, id", [])
        return rows.compactMap(StoreRecords.apiKey)
    }

    public func saveRegistry(agents: [Agent], keys: [APIKeyRecord]) async throws {
        guard !agents.isEmpty || !keys.isEmpty else { return }
        try await transaction {
            for agent in agents {
                _ = try await connection.query(
                    "INSERT INTO agents (id, body, updated_ms) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET body = excluded.body, updated_ms = excluded.updated_ms",
                    [.text(agent.id), .text(JSONWriter.string(agent.json)), .integer(Int(agent.updatedMs))])
            }
            for key in keys {
                _ = try await connection.query(
                    """
                    INSERT INTO api_keys (id, agent_id, digest, prefix, source, created_ms, expires_ms, revoked_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (id) DO UPDATE SET expires_ms = excluded.expires_ms, revoked_ms = excluded.revoked_ms
                    """,
                    StoreRecords.values(key).map(\.sqlite))
            }
        }
    }

    public func toolPins() async throws -> [ToolPin] {
        let rows = try await connection.query(
            "SELECT \(StoreRecords.toolPinColumns.joined(separator: ",")) FROM tool_pins ORDER BY name", [])
        return rows.compactMap(StoreRecords.toolPin)
    }

    public func saveToolPins(_ pins: [ToolPin]) async throws {
        guard !pins.isEmpty else { return }
        try await transaction {
            for pin in pins {
                _ = try await connection.query(
                    """
                    INSERT INTO tool_pins (name, approved_hash, approved_ms, approved_by, pending_hash, pending_ms) VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT (name) DO UPDATE SET approved_hash = excluded.approved_hash, approved_ms = excluded.approved_ms,
                        approved_by = excluded.approved_by, pending_hash = excluded.pending_hash, pending_ms = excluded.pending_ms
                    """,
                    StoreRecords.values(pin).map(\.sqlite))
            }
        }
    }

    public func runSpend(runID: String) async throws -> RunSpend {
        let rows = try await connection.query(
            """
            SELECT COUNT(*) AS calls, COALESCE(SUM(input_tokens + output_tokens), 0) AS tokens, COALESCE(SUM(cost_nanos), 0) AS cost
            FROM usage_ledger WHERE run_id = ? AND outcome != 'rejected'
            """, [.text(runID)])
        return StoreRecords.runSpend(rows.first)
    }

    // MARK: Approvals

    public func createApproval(_ approval: ApprovalRecord) async throws {
        try await insertRows(table: "approvals", columns: StoreRecords.approvalColumns, [approval], values: StoreRecords.values)
    }

    public func approval(id: String) async throws -> ApprovalRecord? {
        let rows = try await connection.query(
            "SELECT \(StoreRecords.approvalColumns.joined(separator: ",")) FROM approvals WHERE id = ?", [.text(id)])
        return rows.first.flatMap(StoreRecords.approval)
    }

    public func approvals(status: ApprovalRecord.Status?, agentID: String?, nowMs: Int64, limit: Int) async throws -> [ApprovalRecord] {
        let (filter, values) = StoreRecords.approvalConditions(status: status, agentID: agentID, nowMs: nowMs) { _ in "?" }
        let rows = try await connection.query(
            "SELECT \(StoreRecords.approvalColumns.joined(separator: ",")) FROM approvals \(filter) ORDER BY created_ms DESC LIMIT ?",
            values.map(\.sqlite) + [.integer(limit)])
        return rows.compactMap(StoreRecords.approval)
    }

    public func decideApproval(
        id: String, approve: Bool, by: String, note: String?, answer: JSONValue?, nowMs: Int64, expiresMs: Int64
    ) async throws -> (ApprovalRecord, Bool)? {
        var changed = false
        try await transaction {
            _ = try await connection.query(
                """
                UPDATE approvals SET status = ?, decided_by = ?, decided_ms = ?, note = ?, expires_ms = ?, answer = ?
                WHERE id = ? AND status = 'pending' AND expires_ms > ?
                """,
                [
                    .text(approve ? "approved" : "rejected"), .text(by), .integer(Int(nowMs)), note.map(SQLiteData.text) ?? .null, .integer(Int(expiresMs)),
                    answer.map { .text(JSONWriter.string($0)) } ?? .null, .text(id), .integer(Int(nowMs)),
                ])
            let rows = try await connection.query("SELECT changes() AS n", [])
            changed = (rows.first?.column("n")?.integer ?? 0) == 1
        }
        return try await approval(id: id).map { ($0, changed) }
    }

    public func approval(binding: ApprovalBinding, status: ApprovalRecord.Status, nowMs: Int64) async throws -> ApprovalRecord? {
        let rows = try await connection.query(
            """
            SELECT \(StoreRecords.approvalColumns.joined(separator: ",")) FROM approvals
            WHERE agent_id = ? AND target_kind = ? AND target = ? AND args_sha256 = ? AND policy_version = ? AND status = ? AND expires_ms > ?
            ORDER BY created_ms DESC LIMIT 1
            """,
            [
                .text(binding.agentID), .text(binding.targetKind), .text(binding.target), .text(binding.argumentsHash), .text(binding.policyVersion),
                .text(status.rawValue), .integer(Int(nowMs)),
            ])
        return rows.first.flatMap(StoreRecords.approval)
    }

    public func restoreApproval(id: String) async throws {
        try await transaction {
            _ = try await connection.query("UPDATE approvals SET status = 'approved' WHERE id = ? AND status = 'consumed'", [.text(id)])
        }
    }

    public func consumeApproval(id: String, nowMs: Int64) async throws -> Bool {
        var consumed = false
        try await transaction {
            _ = try await connection.query(
                "UPDATE approvals SET status = 'consumed' WHERE id = ? AND status = 'approved' AND expires_ms > ?", [.text(id), .integer(Int(nowMs))])
            let rows = try await connection.query("SELECT changes() AS n", [])
            consumed = (rows.first?.column("n")?.integer ?? 0) == 1
        }
        return consumed
    }

    public func ping() async throws {
        _ = try await connection.query("SELECT 1", [])
    }

    public func close() async throws {
        await writes.run { await appender?.close() }
        try await connection.close()
    }
}

/// Versioned schema changes, applied in order, each in its own transaction.
enum SQLiteMigrations {
    struct Migration {
        var version: Int
        var name: String
        var statements: [String]
    }

    static let all: [Migration] = [
        Migration(version: 1, name: "usage_ledger", statements: [
            """
            CREATE TABLE usage_ledger (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                request_id TEXT NOT NULL,
                ts_ms INTEGER NOT NULL,
                agent_id TEXT NOT NULL,
                target_kind TEXT NOT NULL,
                target TEXT NOT NULL,
                deployment_id TEXT,
                provider TEXT,
                upstream_model TEXT,
                operation TEXT NOT NULL,
                stream INTEGER NOT NULL,
                input_tokens INTEGER NOT NULL,
                output_tokens INTEGER NOT NULL,
                cached_input_tokens INTEGER NOT NULL,
                cost_nanos INTEGER NOT NULL,
                latency_ms REAL NOT NULL,
                attempts INTEGER NOT NULL,
                outcome TEXT NOT NULL,
                status INTEGER NOT NULL,
                error_code TEXT
            )
            """,
            "CREATE INDEX usage_ledger_agent_ts ON usage_ledger (agent_id, ts_ms)",
            "CREATE INDEX usage_ledger_request ON usage_ledger (request_id)",
        ]),
        Migration(version: 2, name: "audit_log", statements: [
            // `pos` is the storage order; `seq` is the chain's own numbering and deliberately not
            // unique, so a tampered log still loads and `interlock audit verify` can say where
            // it breaks.
            """
            CREATE TABLE audit_log (
                pos INTEGER PRIMARY KEY AUTOINCREMENT,
                seq INTEGER NOT NULL,
                ts_ms INTEGER NOT NULL,
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
                status INTEGER,
                cost_nanos INTEGER,
                request_id TEXT,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL
            )
            """,
            "CREATE INDEX audit_log_seq ON audit_log (seq)",
            "CREATE INDEX audit_log_agent_ts ON audit_log (agent_id, ts_ms)",
            "CREATE INDEX audit_log_ts ON audit_log (ts_ms)",
        ]),
        Migration(version: 3, name: "signing_keys", statements: [
            "CREATE TABLE signing_keys (kid TEXT PRIMARY KEY, private_pem TEXT NOT NULL, created_ms INTEGER NOT NULL)",
        ]),
        Migration(version: 4, name: "agent_registry", statements: [
            // An agent's profile is one JSON document (`Agent.json`): the admin API shows the
            // same shape, and new fields need no migration.
            "CREATE TABLE agents (id TEXT PRIMARY KEY, body TEXT NOT NULL, updated_ms INTEGER NOT NULL)",
            """
            CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                agent_id TEXT NOT NULL REFERENCES agents (id),
                digest TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                source TEXT NOT NULL,
                created_ms INTEGER NOT NULL,
                expires_ms INTEGER,
                revoked_ms INTEGER
            )
            """,
            "CREATE INDEX api_keys_agent ON api_keys (agent_id)",
        ]),
        Migration(version: 5, name: "signing_key_rotation", statements: [
            "ALTER TABLE signing_keys ADD COLUMN retired_ms INTEGER",
        ]),
        Migration(version: 6, name: "tool_pins", statements: [
            """
            CREATE TABLE tool_pins (
                name TEXT PRIMARY KEY,
                approved_hash TEXT NOT NULL,
                approved_ms INTEGER NOT NULL,
                approved_by TEXT NOT NULL,
                pending_hash TEXT,
                pending_ms INTEGER
            )
            """,
        ]),
        Migration(version: 7, name: "audit_tool_results", statements: [
            "ALTER TABLE audit_log ADD COLUMN result_sha256 TEXT",
            "ALTER TABLE audit_log ADD COLUMN capture TEXT",
        ]),
        Migration(version: 8, name: "approvals", statements: [
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
                created_ms INTEGER NOT NULL,
                expires_ms INTEGER NOT NULL,
                status TEXT NOT NULL,
                decided_by TEXT,
                decided_ms INTEGER,
                note TEXT
            )
            """,
            "CREATE INDEX approvals_binding ON approvals (agent_id, target_kind, target, args_sha256, policy_version, status)",
            "CREATE INDEX approvals_status ON approvals (status, created_ms)",
        ]),
        Migration(version: 9, name: "usage_run", statements: [
            "ALTER TABLE usage_ledger ADD COLUMN run_id TEXT",
            "CREATE INDEX usage_ledger_run ON usage_ledger (run_id)",
        ]),
        workflows,
        cluster,
        // Most calls belong to no workflow run: an index without their NULLs is one B-tree
        // insert fewer per call (`run_id = ?` implies `IS NOT NULL`, so lookups still use it).
        Migration(version: 12, name: "usage_run_partial_index", statements: [
            "DROP INDEX usage_ledger_run",
            "CREATE INDEX usage_ledger_run ON usage_ledger (run_id) WHERE run_id IS NOT NULL",
        ]),
        // No query of Interlock's reads the ledger by request id or the audit log by `seq`
        // (the chain is read in `pos` order), and every call paid a B-tree insert into each.
        // An operator who looks calls up that way adds the index themselves (README).
        Migration(version: 13, name: "drop_unused_call_indexes", statements: [
            "DROP INDEX IF EXISTS usage_ledger_request",
            "DROP INDEX IF EXISTS audit_log_seq",
        ]),
    ]
}

extension SQLiteRow: StoreRow {
    func text(_ column: String) -> String? { self.column(column)?.string }
    func int(_ column: String) -> Int64? { self.column(column)?.integer.map(Int64.init) }
    func double(_ column: String) -> Double? { self.column(column)?.double }
}

extension StoreValue {
    var sqlite: SQLiteData {
        switch self {
        case .text(let value): .text(value)
        case .int(let value): .integer(Int(value))
        case .double(let value): .float(value)
        case .null: .null
        }
    }
}

/// Lets the checkpoint batcher call back into the store it belongs to (set once, at init).
private final class StoreBox: @unchecked Sendable {
    // Written once in the store's initializer before any checkpoint can be submitted, read only after.
    weak var store: SQLiteStore?
}

extension SQLiteStore: ClusterStore {
    public func heartbeat(_ node: NodeRecord) async throws {
        try await transaction {
            _ = try await connection.query(
                """
                INSERT INTO nodes (id, region, incarnation, address, version, started_ms, heartbeat_ms, stopped_ms) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)
                ON CONFLICT (id) DO UPDATE SET region = excluded.region, incarnation = excluded.incarnation, address = excluded.address,
                    version = excluded.version, started_ms = excluded.started_ms, heartbeat_ms = excluded.heartbeat_ms, stopped_ms = NULL
                """, NodeRows.values(node).map(\.sqlite))
        }
    }

    public func nodes() async throws -> [NodeRecord] {
        try await connection.query("SELECT \(NodeRows.columns) FROM nodes ORDER BY started_ms DESC, id", []).map(NodeRows.node)
    }

    public func markNodeStopped(id: String, incarnation: String, atMs: Int64) async throws {
        try await transaction {
            _ = try await connection.query(
                "UPDATE nodes SET stopped_ms = ? WHERE id = ? AND incarnation = ?", [.integer(Int(atMs)), .text(id), .text(incarnation)])
        }
    }

    public func holdLease(_ name: String, owner: String, nowMs: Int64, untilMs: Int64) async throws -> Bool {
        var held = false
        try await transaction {
            let rows = try await connection.query(
                """
                INSERT INTO leases (name, owner, expires_ms) VALUES (?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_ms = excluded.expires_ms
                WHERE leases.owner = excluded.owner OR leases.expires_ms < ?
                RETURNING owner
                """, [.text(name), .text(owner), .integer(Int(untilMs)), .integer(Int(nowMs))])
            held = !rows.isEmpty
        }
        return held
    }

    public func notifications() -> AsyncStream<StoreNotification>? { nil }
}

extension SQLiteMigrations {
    static let cluster = Migration(version: 11, name: "cluster", statements: [
        """
        CREATE TABLE nodes (
            id TEXT PRIMARY KEY, region TEXT NOT NULL, incarnation TEXT NOT NULL, address TEXT NOT NULL, version TEXT NOT NULL,
            started_ms INTEGER NOT NULL, heartbeat_ms INTEGER NOT NULL, stopped_ms INTEGER
        )
        """,
        "CREATE TABLE leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_ms INTEGER NOT NULL)",
    ])
}

/// The nodes table, as both stores read and write it.
enum NodeRows {
    static let columns = "id, region, incarnation, address, version, started_ms, heartbeat_ms, stopped_ms"

    static func values(_ node: NodeRecord) -> [StoreValue] {
        [.text(node.id), .text(node.region), .text(node.incarnation), .text(node.address), .text(node.version), .int(node.startedMs), .int(node.heartbeatMs)]
    }

    static func node(_ row: some StoreRow) -> NodeRecord {
        NodeRecord(
            id: row.text("id") ?? "", region: row.text("region") ?? "", incarnation: row.text("incarnation") ?? "", address: row.text("address") ?? "",
            version: row.text("version") ?? "", startedMs: row.int("started_ms") ?? 0, heartbeatMs: row.int("heartbeat_ms") ?? 0,
            stoppedMs: row.int("stopped_ms"))
    }
}
