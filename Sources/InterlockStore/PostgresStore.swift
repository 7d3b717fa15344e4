public import InterlockCore
public import Logging
import NIOSSL
import PostgresNIO
import Synchronization

/// The cluster store: one PostgreSQL shared by every node.
///
/// A pool of connections (postgres-nio's `PostgresClient`, reconnecting on its own after a
/// dropped connection or a restarted server). Each operation is one statement or one
/// transaction on a connection taken for just that long: nothing holds a connection while
/// a model or tool call runs. Operations that cannot get a connection and an answer within
/// `connect_timeout_ms + statement_timeout_ms` fail with `PostgresStoreError.unavailable`.
public final class PostgresStore: InterlockStore {
    let client: PostgresClient
    private let runner: Task<Void, Never>
    let settings: PostgresSettings
    let logger: Logger
    /// Workflow checkpoints, written in groups (`PostgresStore+Runs.swift`).
    let checkpoints: CheckpointBatcher
    /// Published events, written in groups under the events lock (one batch at a time: the
    /// lock serializes them anyway).
    let publishedEvents: WriteBatcher<EventRecord, (event: EventRecord, created: Bool)>
    /// The NOTIFY channel: `interlock`, or `interlock_<schema>` so that deployments (and
    /// tests) in other schemas of the same database do not wake each other.
    let channel: String
    /// How long one operation may take, connection wait included.
    let deadline: Duration
    /// Subscribers to other nodes' notifications, and whether the listener runs.
    let listeners = Mutex(ListenerState())
    let listenTask = Mutex<Task<Void, Never>?>(nil)

    struct ListenerState {
        var continuations: [Int: AsyncStream<StoreNotification>.Continuation] = [:]
        var next = 0
        var listening = false
    }

    private init(client: PostgresClient, runner: Task<Void, Never>, settings: PostgresSettings, logger: Logger) {
        self.client = client
        self.runner = runner
        self.settings = settings
        self.logger = logger
        let statement = settings.statementTimeoutMs > 0 ? settings.statementTimeoutMs : 600_000
        self.deadline = .milliseconds(settings.connectTimeoutMs + statement + 1_000)
        // A channel name is at most 63 bytes; two schemas alike in their first 53 share one.
        // `public` is the default schema, named or not.
        self.channel = settings.schema.flatMap { $0 == "public" ? nil : "interlock_" + $0.prefix(53) } ?? "interlock"
        let box = PostgresStoreBox()
        // Batches written at once (`checkpoint_writers`, default one: a batch is one round
        // trip, and more writers split the same checkpoints into more transactions).
        self.checkpoints = CheckpointBatcher(concurrency: settings.checkpointWriters) { batch in await box.store!.write(batch) }
        self.publishedEvents = WriteBatcher { batch in await box.store!.writeEvents(batch) }
        box.store = self
    }

    /// Connects (waiting at most `connect_timeout_ms` for the server to answer). `node` names
    /// the connections (`application_name`) so `pg_stat_activity` shows whose they are.
    public static func open(settings: PostgresSettings, node: String, logger: Logger = Logger(label: "interlock.store")) async throws -> PostgresStore {
        var configuration = PostgresClient.Configuration(
            host: settings.host, port: settings.port, username: settings.user, password: settings.password?.reveal(), database: settings.database,
            tls: try tls(settings))
        configuration.options.maximumConnections = settings.poolSize
        configuration.options.minimumConnections = 0
        configuration.options.connectTimeout = .milliseconds(settings.connectTimeoutMs)
        var parameters = [("application_name", "interlock \(node)")]
        if settings.statementTimeoutMs > 0 { parameters.append(("statement_timeout", "\(settings.statementTimeoutMs)")) }
        if let schema = settings.schema {
            guard PostgresSettings.isPlainIdentifier(schema) else { throw PostgresStoreError.unavailable("'\(schema)' is not a usable schema name") }
            parameters.append(("search_path", schema))
        }
        configuration.options.additionalStartupParameters = parameters
        let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        let runner = Task { await client.run() }
        let store = PostgresStore(client: client, runner: runner, settings: settings, logger: logger)
        do {
            try await store.within(.milliseconds(settings.connectTimeoutMs)) { try await store.ping() }
        } catch {
            runner.cancel()
            throw PostgresStoreError.unavailable(
                "could not reach PostgreSQL at \(settings.host):\(settings.port) (database '\(settings.database)', user '\(settings.user)'): \(PostgresStoreError.describe(error))")
        }
        return store
    }

    private static func tls(_ settings: PostgresSettings) throws -> PostgresClient.Configuration.TLS {
        var tls = TLSConfiguration.makeClientConfiguration()
        switch settings.tls {
        case .disable:
            return .disable
        case .prefer:
            tls.certificateVerification = .none
            return .prefer(tls)
        case .require:
            tls.certificateVerification = .none
            return .require(tls)
        case .verifyFull:
            tls.certificateVerification = .fullVerification
            if let file = settings.caFile { tls.trustRoots = .file(file) }
            return .require(tls)
        }
    }

    // MARK: Statements

    /// Runs `body`, failing with `unavailable` when it takes longer than `limit`. The caller
    /// is answered at the deadline even if `body` does not stop when cancelled (a query on a
    /// connection the server dropped mid-transaction can stay unanswered): it is cancelled
    /// and left to end on its own.
    func within<Result: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> Result) async throws -> Result {
        let race = DeadlineRace<Result>()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                race.start(continuation, limit: limit, body)
            }
        } onCancel: {
            race.cancel()
        }
    }

    static func query(_ sql: String, _ values: [StoreValue]) -> PostgresQuery {
        var binds = PostgresBindings(capacity: values.count)
        for value in values {
            switch value {
            case .text(let text): binds.append(text)
            case .int(let int): binds.append(int)
            case .double(let double): binds.append(double)
            case .null: binds.appendNull()
            }
        }
        return PostgresQuery(unsafeSQL: sql, binds: binds)
    }

    /// One statement on a pooled connection (or on `connection`, inside a transaction).
    @discardableResult
    func rows(_ sql: String, _ values: [StoreValue] = [], on connection: PostgresConnection? = nil) async throws -> [PGRow] {
        let query = Self.query(sql, values)
        do {
            if let connection {
                return try await connection.query(query, logger: logger).collect().map(PGRow.init)
            }
            let client = self.client
            return try await within(deadline) { try await client.query(query).collect().map(PGRow.init) }
        } catch let error as PSQLError {
            throw PostgresStoreError(error)
        }
    }

    /// One statement that is its own transaction (a function call), run again on a deadlock
    /// or serialization failure (twice).
    func statement(_ sql: String, _ values: [StoreValue]) async throws -> [PGRow] {
        try await retryingConflicts { try await self.rows(sql, values) }
    }

    /// `body`, run again (twice) when PostgreSQL ended it for a deadlock or a serialization
    /// failure; other errors as they are, the driver's wrapped in `PostgresStoreError`.
    private func retryingConflicts<Result>(_ body: () async throws -> Result) async throws -> Result {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await body()
            } catch let error as PSQLError {
                let wrapped = PostgresStoreError(error)
                if wrapped.isRetryable, attempt < 3 { continue }
                throw wrapped
            } catch let error as PostgresStoreError where error.isRetryable && attempt < 3 {
                continue
            }
        }
    }

    /// `body` as one transaction on one connection: committed, or rolled back and its error
    /// rethrown as it was. A deadlock or serialization failure is retried (twice).
    func transaction<Result: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> Result) async throws -> Result {
        try await retryingConflicts {
            try await self.within(self.deadline) { [client, logger] in
                try await client.withConnection { connection in
                    try await connection.query("BEGIN", logger: logger)
                    do {
                        let result = try await body(connection)
                        try await connection.query("COMMIT", logger: logger)
                        return result
                    } catch {
                        _ = try? await connection.query("ROLLBACK", logger: logger)
                        throw error
                    }
                }
            }
        }
    }

    /// Inserts rows with multi-row `INSERT`s (PostgreSQL takes 65535 parameters a statement),
    /// on `connection` when given.
    func insertRows<Record>(
        table: String, columns: [String], _ records: [Record], suffix: String = "", on connection: PostgresConnection,
        values: (Record) -> [StoreValue]
    ) async throws {
        let perStatement = max(1, 60_000 / columns.count)
        var start = 0
        while start < records.count {
            let slice = records[start..<min(records.count, start + perStatement)]
            var binds: [StoreValue] = []
            binds.reserveCapacity(slice.count * columns.count)
            for record in slice { binds += values(record) }
            try await rows(
                "INSERT INTO \(table) (\(columns.joined(separator: ","))) VALUES \(Self.placeholders(rows: slice.count, columns: columns.count)) \(suffix)",
                binds, on: connection)
            start += perStatement
        }
    }

    /// `($1,$2),($3,$4)` for `rows` rows of `columns` values, numbered from `first`.
    static func placeholders(rows: Int, columns: Int, from first: Int = 1, casts: [String]? = nil) -> String {
        var text = ""
        text.reserveCapacity(rows * columns * 5)
        var next = first
        for row in 0..<rows {
            if row > 0 { text += "," }
            text += "("
            for column in 0..<columns {
                if column > 0 { text += "," }
                text += "$\(next)"
                if let casts { text += "::" + casts[column] }
                next += 1
            }
            text += ")"
        }
        return text
    }

    static func list(_ count: Int, from first: Int = 1) -> String {
        (first..<(first + count)).map { "$\($0)" }.joined(separator: ",")
    }

    // MARK: InterlockStore

    public func migrate() async throws {
        try await transaction { [self] connection in
            // One node migrates at a time; the others wait, then find nothing to do.
            try await rows("SELECT pg_advisory_xact_lock(\(PostgresSchema.migrationLock))", on: connection)
            if let schema = settings.schema { try await rows("CREATE SCHEMA IF NOT EXISTS \(schema)", on: connection) }
            try await rows(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)",
                on: connection)
            let current = try await rows("SELECT COALESCE(MAX(version), 0)::bigint AS version FROM schema_migrations", on: connection).first?.int("version") ?? 0
            for migration in PostgresSchema.migrations where migration.version > current {
                for statement in migration.statements { try await rows(statement, on: connection) }
                try await rows(
                    "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, (extract(epoch from now()) * 1000)::bigint)",
                    [.int(migration.version), .text(migration.name)], on: connection)
            }
        }
    }

    public func schemaVersion() async throws -> Int {
        Int(try await rows("SELECT COALESCE(MAX(version), 0)::bigint AS version FROM schema_migrations").first?.int("version") ?? 0)
    }

    public func appendUsage(_ records: [UsageRecord]) async throws {
        guard !records.isEmpty else { return }
        try await transaction { [self] connection in
            try await insertRows(table: "usage_ledger", columns: StoreRecords.usageColumns, records, on: connection, values: StoreRecords.values)
        }
    }

    public func spend(agentID: String, sinceMs: Int64) async throws -> SpendTotals {
        let rows = try await rows(
            """
            SELECT COALESCE(SUM(cost_nanos), 0)::bigint AS cost, COUNT(*)::bigint AS calls, COALESCE(SUM(input_tokens), 0)::bigint AS input,
                   COALESCE(SUM(output_tokens), 0)::bigint AS output, COALESCE(SUM(cached_input_tokens), 0)::bigint AS cached
            FROM usage_ledger WHERE agent_id = $1 AND ts_ms >= $2
            """, [.text(agentID), .int(sinceMs)])
        return StoreRecords.spend(rows.first)
    }

    public func recentUsage(limit: Int) async throws -> [UsageRecord] {
        try await rows("SELECT \(StoreRecords.usageColumns.joined(separator: ",")) FROM usage_ledger ORDER BY id DESC LIMIT $1", [.int(limit)])
            .map(StoreRecords.usage)
    }

    /// Nodes write to one chain: a batch takes the chain's lock, links to the stored head
    /// (whichever node wrote it) and is stored in the same transaction.
    public func appendAudit(_ records: [AuditRecord]) async throws -> (sequence: Int64, hash: String) {
        try await transaction { [self] connection in
            try await rows("SELECT pg_advisory_xact_lock(\(PostgresSchema.auditLock))", on: connection)
            let head = try await rows("SELECT seq, hash FROM audit_log ORDER BY pos DESC LIMIT 1", on: connection).first
            var chain = AuditChain(lastSequence: head?.int("seq") ?? 0, lastHash: head?.text("hash") ?? AuditRecord.genesisHash)
            let linked = records.map { chain.link($0) }
            try await insertRows(table: "audit_log", columns: StoreRecords.auditColumns, linked, on: connection, values: StoreRecords.values)
            return (chain.lastSequence, chain.lastHash)
        }
    }

    public func auditHead() async throws -> (sequence: Int64, hash: String)? {
        guard let row = try await rows("SELECT seq, hash FROM audit_log ORDER BY pos DESC LIMIT 1").first, let sequence = row.int("seq"),
            let hash = row.text("hash")
        else { return nil }
        return (sequence, hash)
    }

    public func auditRecords(matching filter: AuditFilter, afterPosition position: Int64, limit: Int) async throws -> AuditPage {
        let (conditions, values) = StoreRecords.auditConditions(filter, afterPosition: position) { "$\($0)" }
        let rows = try await rows(
            "SELECT pos, \(StoreRecords.auditColumns.joined(separator: ",")) FROM audit_log WHERE \(conditions) ORDER BY pos LIMIT $\(values.count + 1)",
            values + [.int(limit)])
        return AuditPage(records: rows.map(StoreRecords.audit), lastPosition: rows.last?.int("pos") ?? position)
    }

    public func signingKeys() async throws -> [SigningKeyRecord] {
        try await rows("SELECT kid, private_pem, created_ms, retired_ms FROM signing_keys ORDER BY created_ms DESC, kid").compactMap(StoreRecords.signingKey)
    }

    public func saveSigningKeys(_ keys: [SigningKeyRecord], deleting kids: [String]) async throws {
        try await transaction { [self] connection in
            for key in keys {
                try await rows(
                    """
                    INSERT INTO signing_keys (kid, private_pem, created_ms, retired_ms) VALUES ($1, $2, $3, $4)
                    ON CONFLICT (kid) DO UPDATE SET private_pem = excluded.private_pem, retired_ms = excluded.retired_ms
                    """, [.text(key.kid), .text(key.privateKeyPEM), .int(key.createdMs), .int(key.retiredMs)], on: connection)
            }
            for kid in kids { try await rows("DELETE FROM signing_keys WHERE kid = $1", [.text(kid)], on: connection) }
            try await rows("SELECT pg_notify('\(channel)', 'keys')", on: connection)
        }
    }

    public func agents() async throws -> [Agent] {
        try await rows("SELECT body FROM agents ORDER BY id").compactMap(StoreRecords.agent)
    }

    public func apiKeys() async throws -> [APIKeyRecord] {
        try await rows("SELECT \(StoreRecords.apiKeyColumns.joined(separator: ",")) FROM api_keys ORDER BY created_ms, id").compactMap(StoreRecords.apiKey)
    }

    public func saveRegistry(agents: [Agent], keys: [APIKeyRecord]) async throws {
        guard !agents.isEmpty || !keys.isEmpty else { return }
        try await transaction { [self] connection in
            for agent in agents {
                try await rows(
                    "INSERT INTO agents (id, body, updated_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET body = excluded.body, updated_ms = excluded.updated_ms",
                    [.text(agent.id), .text(JSONWriter.string(agent.json)), .int(agent.updatedMs)], on: connection)
            }
            for key in keys {
                try await rows(
                    """
                    INSERT INTO api_keys (\(StoreRecords.apiKeyColumns.joined(separator: ","))) VALUES (\(Self.list(StoreRecords.apiKeyColumns.count)))
                    ON CONFLICT (id) DO UPDATE SET expires_ms = excluded.expires_ms, revoked_ms = excluded.revoked_ms
                    """, StoreRecords.values(key), on: connection)
            }
            // Other nodes reload: a key revoked here must stop working there too.
            try await rows("SELECT pg_notify('\(channel)', 'registry')", on: connection)
        }
    }

    public func toolPins() async throws -> [ToolPin] {
        try await rows("SELECT \(StoreRecords.toolPinColumns.joined(separator: ",")) FROM tool_pins ORDER BY name").compactMap(StoreRecords.toolPin)
    }

    public func saveToolPins(_ pins: [ToolPin]) async throws {
        guard !pins.isEmpty else { return }
        try await transaction { [self] connection in
            for pin in pins {
                try await rows(
                    """
                    INSERT INTO tool_pins (\(StoreRecords.toolPinColumns.joined(separator: ","))) VALUES (\(Self.list(StoreRecords.toolPinColumns.count)))
                    ON CONFLICT (name) DO UPDATE SET approved_hash = excluded.approved_hash, approved_ms = excluded.approved_ms,
                        approved_by = excluded.approved_by, pending_hash = excluded.pending_hash, pending_ms = excluded.pending_ms
                    """, StoreRecords.values(pin), on: connection)
            }
        }
    }

    public func runSpend(runID: String) async throws -> RunSpend {
        let rows = try await rows(
            """
            SELECT COUNT(*)::bigint AS calls, COALESCE(SUM(input_tokens + output_tokens), 0)::bigint AS tokens, COALESCE(SUM(cost_nanos), 0)::bigint AS cost
            FROM usage_ledger WHERE run_id = $1 AND outcome != 'rejected'
            """, [.text(runID)])
        return StoreRecords.runSpend(rows.first)
    }

    // MARK: Approvals

    public func createApproval(_ approval: ApprovalRecord) async throws {
        try await rows(
            "INSERT INTO approvals (\(StoreRecords.approvalColumns.joined(separator: ","))) VALUES (\(Self.list(StoreRecords.approvalColumns.count)))",
            StoreRecords.values(approval))
    }

    public func approval(id: String) async throws -> ApprovalRecord? {
        try await rows("SELECT \(StoreRecords.approvalColumns.joined(separator: ",")) FROM approvals WHERE id = $1", [.text(id)]).first
            .flatMap(StoreRecords.approval)
    }

    public func approvals(status: ApprovalRecord.Status?, agentID: String?, nowMs: Int64, limit: Int) async throws -> [ApprovalRecord] {
        let (filter, values) = StoreRecords.approvalConditions(status: status, agentID: agentID, nowMs: nowMs) { "$\($0)" }
        return try await rows(
            "SELECT \(StoreRecords.approvalColumns.joined(separator: ",")) FROM approvals \(filter) ORDER BY created_ms DESC LIMIT $\(values.count + 1)",
            values + [.int(limit)]
        ).compactMap(StoreRecords.approval)
    }

    public func decideApproval(
        id: String, approve: Bool, by: String, note: String?, answer: JSONValue?, nowMs: Int64, expiresMs: Int64
    ) async throws -> (ApprovalRecord, Bool)? {
        let changed = try await rows(
            """
            UPDATE approvals SET status = $1, decided_by = $2, decided_ms = $3, note = $4, expires_ms = $5, answer = $6
            WHERE id = $7 AND status = 'pending' AND expires_ms > $8 RETURNING id
            """,
            [.text(approve ? "approved" : "rejected"), .text(by), .int(nowMs), .text(note), .int(expiresMs), .json(answer), .text(id), .int(nowMs)])
        return try await approval(id: id).map { ($0, changed.count == 1) }
    }

    public func approval(binding: ApprovalBinding, status: ApprovalRecord.Status, nowMs: Int64) async throws -> ApprovalRecord? {
        try await rows(
            """
            SELECT \(StoreRecords.approvalColumns.joined(separator: ",")) FROM approvals
            WHERE agent_id = $1 AND target_kind = $2 AND target = $3 AND args_sha256 = $4 AND policy_version = $5 AND status = $6 AND expires_ms > $7
            ORDER BY created_ms DESC LIMIT 1
            """,
            [
                .text(binding.agentID), .text(binding.targetKind), .text(binding.target), .text(binding.argumentsHash), .text(binding.policyVersion),
                .text(status.rawValue), .int(nowMs),
            ]
        ).first.flatMap(StoreRecords.approval)
    }

    public func consumeApproval(id: String, nowMs: Int64) async throws -> Bool {
        try await rows(
            "UPDATE approvals SET status = 'consumed' WHERE id = $1 AND status = 'approved' AND expires_ms > $2 RETURNING id", [.text(id), .int(nowMs)]
        ).count == 1
    }

    public func restoreApproval(id: String) async throws {
        try await rows("UPDATE approvals SET status = 'approved' WHERE id = $1 AND status = 'consumed'", [.text(id)])
    }

    public func ping() async throws {
        try await rows("SELECT 1 AS one")
    }

    public func close() async throws {
        if let listener = listenTask.withLock({ $0 }) {
            listener.cancel()
            await listener.value
        }
        for continuation in listeners.withLock({ Array($0.continuations.values) }) { continuation.finish() }
        runner.cancel()
        await runner.value
    }
}

/// A failed store operation, with PostgreSQL's SQLSTATE when the server answered. Its
/// description names the problem without the statement's values.
public struct PostgresStoreError: Error, CustomStringConvertible, Sendable {
    public var sqlState: String?
    public var message: String

    init(_ error: PSQLError) {
        sqlState = error.serverInfo?[.sqlState]
        message = Self.describe(error)
    }

    static func unavailable(_ message: String) -> PostgresStoreError {
        PostgresStoreError(sqlState: nil, message: message)
    }

    /// The server answered, but not as the store expects (a bug, never bad input).
    static func unexpected(_ message: String) -> PostgresStoreError {
        PostgresStoreError(sqlState: nil, message: message)
    }

    private init(sqlState: String?, message: String) {
        self.sqlState = sqlState
        self.message = message
    }

    /// Deadlocks and serialization failures: the transaction may simply be run again.
    var isRetryable: Bool { sqlState == "40P01" || sqlState == "40001" }
    /// A unique constraint was violated.
    var isUniqueViolation: Bool { sqlState == "23505" }

    public var description: String { message }

    static func describe(_ error: any Error) -> String {
        if let error = error as? PostgresStoreError { return error.message }
        guard let error = error as? PSQLError else { return "\(error)" }
        if let server = error.serverInfo, let text = server[.message] {
            return "PostgreSQL: \(text) (SQLSTATE \(server[.sqlState] ?? "?"))"
        }
        // PSQLError's own description is a placeholder; the code and the cause say what happened.
        if let underlying = error.underlying, !(underlying is PSQLError) { return "PostgreSQL connection: \(error.code): \(underlying)" }
        return "PostgreSQL connection: \(error.code)"
    }
}

/// The first of an operation's result and its deadline answers the caller; the other is
/// cancelled.
private final class DeadlineRace<Result: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<Result, any Error>?
        var work: Task<Void, Never>?
        var timer: Task<Void, Never>?
        var cancelled = false
    }

    private let state = Mutex(State())

    func start(_ continuation: CheckedContinuation<Result, any Error>, limit: Duration, _ body: @escaping @Sendable () async throws -> Result) {
        let cancelled = state.withLock { state -> Bool in
            state.continuation = continuation
            return state.cancelled
        }
        if cancelled {
            finish(.failure(CancellationError()))
            return
        }
        let work = Task {
            do {
                self.finish(.success(try await body()))
            } catch {
                self.finish(.failure(error))
            }
        }
        let timer = Task {
            guard (try? await Task.sleep(for: limit)) != nil else { return }
            self.finish(.failure(PostgresStoreError.unavailable("PostgreSQL did not answer within \(limit.components.seconds) s")))
        }
        let done = state.withLock { state -> Bool in
            state.work = work
            state.timer = timer
            return state.continuation == nil
        }
        if done {
            work.cancel()
            timer.cancel()
        }
    }

    func cancel() {
        state.withLock { $0.cancelled = true }
        finish(.failure(CancellationError()))
    }

    private func finish(_ result: Swift.Result<Result, any Error>) {
        let (continuation, work, timer) = state.withLock { state in
            let taken = (state.continuation, state.work, state.timer)
            state.continuation = nil
            return taken
        }
        guard let continuation else { return }
        work?.cancel()
        timer?.cancel()
        continuation.resume(with: result)
    }
}

/// A result row of postgres-nio read by column name.
struct PGRow: StoreRow {
    let row: PostgresRandomAccessRow

    init(_ row: PostgresRow) { self.row = row.makeRandomAccess() }

    func text(_ column: String) -> String? { (try? row[column].decode(String?.self)) ?? nil }
    func int(_ column: String) -> Int64? { (try? row[column].decode(Int64?.self)) ?? nil }
    func double(_ column: String) -> Double? { (try? row[column].decode(Double?.self)) ?? nil }
}

/// Lets the checkpoint batcher call back into the store it belongs to (set once, at init).
private final class PostgresStoreBox: @unchecked Sendable {
    // Written once in the store's initializer before any checkpoint can be submitted, read only after.
    weak var store: PostgresStore?
}
