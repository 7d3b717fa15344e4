public import InterlockCore
import SQLiteNIO
import Synchronization

extension SQLiteStore: RunStore {
    public func saveWorkflowVersion(_ version: WorkflowVersionRecord) async throws {
        try await transaction {
            _ = try await connection.query(
                "INSERT OR IGNORE INTO workflow_versions (hash, name, source, origin, created_ms) VALUES (?, ?, ?, ?, ?)",
                [.text(version.hash), .text(version.name), .text(version.source), .text(version.origin), .integer(Int(version.createdMs))])
        }
    }

    public func workflowVersion(hash: String) async throws -> WorkflowVersionRecord? {
        let rows = try await connection.query("SELECT hash, name, source, origin, created_ms FROM workflow_versions WHERE hash = ?", [.text(hash)])
        return rows.first.flatMap(StoreRecords.workflowVersion)
    }

    public func latestWorkflowVersions(origin: String) async throws -> [WorkflowVersionRecord] {
        let rows = try await connection.query(
            """
            SELECT hash, name, source, origin, created_ms FROM workflow_versions v
            WHERE origin = ? AND rowid = (SELECT MAX(rowid) FROM workflow_versions w WHERE w.name = v.name AND w.origin = v.origin)
            ORDER BY name
            """, [.text(origin)])
        return rows.compactMap(StoreRecords.workflowVersion)
    }

    public func createRun(_ run: RunRecord, events: [RunEvent], readyAtMs: Int64) async throws -> (run: RunRecord, created: Bool) {
        var existing: RunRecord?
        try await transaction {
            if let key = run.idempotencyKey {
                let rows = try await connection.query(
                    "SELECT \(StoreRecords.runColumns.joined(separator: ",")) FROM runs WHERE idempotency_key = ?", [.text(key)])
                if let row = rows.first {
                    existing = StoreRecords.run(row)
                    return
                }
            }
            var run = run
            run.lastSeq = events.last?.seq ?? 0
            let placeholders = Array(repeating: "?", count: StoreRecords.runColumns.count).joined(separator: ",")
            _ = try await connection.query(
                "INSERT INTO runs (\(StoreRecords.runColumns.joined(separator: ","))) VALUES (\(placeholders))", StoreRecords.values(run).map(\.sqlite))
            try await insertEvents(runID: run.id, events)
            _ = try await connection.query(
                "INSERT INTO run_queue (run_id, priority, ready_at_ms, lease_owner, lease_expires_ms, woken) VALUES (?, ?, ?, NULL, NULL, 0)",
                [.text(run.id), .integer(run.priority), .integer(Int(readyAtMs))])
        }
        if let existing { return (existing, false) }
        var created = run
        created.lastSeq = events.last?.seq ?? 0
        return (created, true)
    }

    private func insertEvents(runID: String, _ events: [RunEvent]) async throws {
        try await insertEvents([(runID, events)])
    }

    /// Appends events of one or more runs (multi-row statements) and keeps the waits index: a
    /// step waiting for an event type is indexed, one that completed or failed is not any more.
    private func insertEvents(_ histories: [(runID: String, events: [RunEvent])]) async throws {
        let columns = 6
        // Under SQLite's 32766 bound parameters per statement.
        let perStatement = 30_000 / columns
        var rows: [SQLiteData] = []
        for (runID, events) in histories {
            for event in events { rows += StoreRecords.values(runID: runID, event).map(\.sqlite) }
        }
        let waits = StoreRecords.WaitChanges(histories)
        // One statement each for the whole batch (row values: SQLite 3.15+).
        if !waits.finished.isEmpty {
            let placeholders = Array(repeating: "?", count: waits.finished.count).joined(separator: ",")
            _ = try await connection.query("DELETE FROM run_waits WHERE run_id IN (\(placeholders))", waits.finished.map(SQLiteData.text))
        }
        for chunk in stride(from: 0, to: waits.settled.count, by: 10_000) {
            let slice = waits.settled[chunk..<min(waits.settled.count, chunk + 10_000)]
            let pairs = Array(repeating: "(?, ?)", count: slice.count).joined(separator: ",")
            _ = try await connection.query("DELETE FROM run_waits WHERE (run_id, path) IN (VALUES \(pairs))", slice.flatMap { [.text($0.runID), .text($0.path)] })
        }
        for (runID, path, type) in waits.waiting {
            _ = try await connection.query(
                "INSERT OR REPLACE INTO run_waits (run_id, path, event_type) VALUES (?, ?, ?)", [.text(runID), .text(path), .text(type)])
        }
        var start = 0
        while start < rows.count {
            let slice = Array(rows[start..<min(rows.count, start + perStatement * columns)])
            let placeholders = Array(repeating: "(?, ?, ?, ?, ?, ?)", count: slice.count / columns).joined(separator: ",")
            _ = try await connection.query("INSERT INTO run_events (run_id, seq, ts_ms, kind, path, data) VALUES \(placeholders)", slice)
            start += perStatement * columns
        }
    }

    public func run(id: String) async throws -> RunRecord? {
        let rows = try await connection.query("SELECT \(StoreRecords.runColumns.joined(separator: ",")) FROM runs WHERE id = ?", [.text(id)])
        return rows.first.flatMap(StoreRecords.run)
    }

    public func runs(_ filter: RunFilter) async throws -> [RunRecord] {
        var conditions: [String] = []
        var binds: [SQLiteData] = []
        if let status = filter.status {
            conditions.append("status = ?")
            binds.append(.text(status.rawValue))
        }
        if let workflow = filter.workflow {
            conditions.append("workflow = ?")
            binds.append(.text(workflow))
        }
        if let startedBy = filter.startedBy {
            conditions.append("started_by = ?")
            binds.append(.text(startedBy))
        }
        if let before = filter.beforeID {
            conditions.append("rowid < (SELECT rowid FROM runs WHERE id = ?)")
            binds.append(.text(before))
        }
        let clause = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let rows = try await connection.query(
            "SELECT \(StoreRecords.runColumns.joined(separator: ",")) FROM runs \(clause) ORDER BY rowid DESC LIMIT ?", binds + [.integer(filter.limit)])
        return rows.compactMap(StoreRecords.run)
    }

    public func runEvents(runID: String, afterSeq: Int64) async throws -> [RunEvent] {
        let rows = try await connection.query(
            "SELECT seq, ts_ms, kind, data FROM run_events WHERE run_id = ? AND seq > ? ORDER BY seq", [.text(runID), .integer(Int(afterSeq))])
        return try rows.map(StoreRecords.runEvent)
    }

    public func claimRuns(owner: String, nowMs: Int64, leaseUntilMs: Int64, limit: Int) async throws -> [String] {
        var claimed: [String] = []
        try await transaction {
            let rows = try await connection.query(
                """
                UPDATE run_queue SET lease_owner = ?, lease_expires_ms = ?, woken = 0
                WHERE run_id IN (
                    SELECT run_id FROM run_queue
                    WHERE ready_at_ms <= ? AND (lease_owner IS NULL OR lease_expires_ms < ?)
                    ORDER BY priority DESC, ready_at_ms LIMIT ?)
                RETURNING run_id
                """,
                [.text(owner), .integer(Int(leaseUntilMs)), .integer(Int(nowMs)), .integer(Int(nowMs)), .integer(limit)])
            claimed = rows.compactMap { $0.column("run_id")?.string }
        }
        return claimed
    }

    public func renewLeases(owner: String, runIDs: [String], leaseUntilMs: Int64) async throws -> Set<String> {
        guard !runIDs.isEmpty else { return [] }
        var held: Set<String> = []
        try await transaction {
            let placeholders = Array(repeating: "?", count: runIDs.count).joined(separator: ",")
            let rows = try await connection.query(
                "UPDATE run_queue SET lease_expires_ms = ? WHERE lease_owner = ? AND run_id IN (\(placeholders)) RETURNING run_id",
                [.integer(Int(leaseUntilMs)), .text(owner)] + runIDs.map(SQLiteData.text))
            held = Set(rows.compactMap { $0.column("run_id")?.string })
        }
        return held
    }

    public func appendRunEvents(
        runID: String, owner: String, events: [RunEvent], update: RunUpdate, consumedSignals: [Int64], leaseUntilMs: Int64
    ) async throws {
        try await checkpoints.submit(
            Checkpoint(runID: runID, owner: owner, events: events, update: update, consumedSignals: consumedSignals, leaseUntilMs: leaseUntilMs))
    }

    /// Writes checkpoints of several runs in one transaction (group commit): one fencing
    /// statement, one insert of every event, one update per run. A checkpoint whose lease is
    /// lost fails alone (`RunLeaseLost`); if the batch fails, each is written on its own so
    /// one bad checkpoint cannot fail the others.
    func write(_ batch: [Checkpoint]) async -> [Result<Void, any Error>] {
        do {
            var held: Set<String> = []
            try await transaction {
                held = try await fence(batch)
                let written = batch.filter { held.contains($0.runID) }
                try await insertEvents(written.map { ($0.runID, $0.events) })
                for checkpoint in written { try await updateSummary(checkpoint) }
                let signals = written.flatMap(\.consumedSignals)
                if !signals.isEmpty {
                    let placeholders = Array(repeating: "?", count: signals.count).joined(separator: ",")
                    _ = try await connection.query("DELETE FROM run_signals WHERE id IN (\(placeholders))", signals.map { .integer(Int($0)) })
                }
            }
            return batch.map { held.contains($0.runID) ? .success(()) : .failure(RunLeaseLost(runID: $0.runID)) }
        } catch {
            guard batch.count > 1 else { return [.failure(error)] }
            var results: [Result<Void, any Error>] = []
            for checkpoint in batch { results.append(contentsOf: await write([checkpoint])) }
            return results
        }
    }

    /// Fencing: only the lease holder writes, and it extends its lease as it does. The runs
    /// whose lease is held.
    private func fence(_ batch: [Checkpoint]) async throws -> Set<String> {
        var held: Set<String> = []
        for owner in Set(batch.map(\.owner)) {
            let mine = batch.filter { $0.owner == owner }
            let until = mine.map(\.leaseUntilMs).max() ?? 0
            let placeholders = Array(repeating: "?", count: mine.count).joined(separator: ",")
            let rows = try await connection.query(
                "UPDATE run_queue SET lease_expires_ms = ? WHERE lease_owner = ? AND run_id IN (\(placeholders)) RETURNING run_id",
                [.integer(Int(until)), .text(owner)] + mine.map { .text($0.runID) })
            for row in rows { if let id = row.column("run_id")?.string { held.insert(id) } }
        }
        return held
    }

    private func updateSummary(_ checkpoint: Checkpoint) async throws {
        _ = try await connection.query(
            """
            UPDATE runs SET status = ?, output = ?, error = ?, stop_limit = ?, budgets = ?, usage = ?, steps_started = ?,
                supervisor = COALESCE(?, supervisor), updated_ms = ?, finished_ms = ?, last_seq = COALESCE(?, last_seq)
            WHERE id = ?
            """,
            Array(StoreRecords.updateValues(runID: checkpoint.runID, checkpoint.update, lastSeq: checkpoint.events.last?.seq).map(\.sqlite).dropFirst()) + [.text(checkpoint.runID)])
    }

    public func releaseRun(runID: String, owner: String, readyAtMs: Int64?, finished: Bool, nowMs: Int64) async throws {
        try await transaction {
            if finished {
                _ = try await connection.query("DELETE FROM run_queue WHERE run_id = ? AND lease_owner = ?", [.text(runID), .text(owner)])
                return
            }
            _ = try await connection.query(
                """
                UPDATE run_queue SET lease_owner = NULL, lease_expires_ms = NULL,
                    ready_at_ms = CASE WHEN woken = 1 THEN ? ELSE ? END, woken = 0
                WHERE run_id = ? AND lease_owner = ?
                """, [.integer(Int(nowMs)), StoreValue.int(readyAtMs).sqlite, .text(runID), .text(owner)])
        }
    }

    public func wakeRun(runID: String, atMs: Int64) async throws {
        try await transaction {
            _ = try await connection.query(
                """
                UPDATE run_queue SET ready_at_ms = CASE WHEN ready_at_ms IS NULL OR ready_at_ms > ? THEN ? ELSE ready_at_ms END, woken = 1
                WHERE run_id = ?
                """, [.integer(Int(atMs)), .integer(Int(atMs)), .text(runID)])
        }
    }

    public func releaseLeases(ownerPrefix: String) async throws {
        try await transaction {
            _ = try await connection.query(
                "UPDATE run_queue SET lease_owner = NULL, lease_expires_ms = NULL WHERE substr(lease_owner, 1, ?) = ?",
                [.integer(ownerPrefix.utf8.count), .text(ownerPrefix)])
        }
    }

    public func nextRunDue() async throws -> Int64? {
        let rows = try await connection.query("SELECT MIN(ready_at_ms) AS due FROM run_queue WHERE lease_owner IS NULL AND ready_at_ms IS NOT NULL", [])
        return rows.first?.column("due")?.integer.map(Int64.init)
    }

    public func addRunSignal(_ signal: RunSignal) async throws {
        try await transaction {
            _ = try await connection.query(
                "INSERT INTO run_signals (run_id, kind, by, data, created_ms) VALUES (?, ?, ?, ?, ?)",
                [.text(signal.runID), .text(signal.kind), .text(signal.by), StoreValue.json(signal.data).sqlite, .integer(Int(signal.createdMs))])
            _ = try await connection.query(
                """
                UPDATE run_queue SET ready_at_ms = CASE WHEN ready_at_ms IS NULL OR ready_at_ms > ? THEN ? ELSE ready_at_ms END, woken = 1
                WHERE run_id = ?
                """, [.integer(Int(signal.createdMs)), .integer(Int(signal.createdMs)), .text(signal.runID)])
            // A finished run has left the queue; a retry puts it back.
            if signal.kind == "retry" {
                _ = try await connection.query(
                    """
                    INSERT OR IGNORE INTO run_queue (run_id, priority, ready_at_ms, lease_owner, lease_expires_ms, woken)
                    SELECT id, priority, ?, NULL, NULL, 1 FROM runs WHERE id = ?
                    """, [.integer(Int(signal.createdMs)), .text(signal.runID)])
            }
        }
    }

    public func runSignals(runID: String) async throws -> [RunSignal] {
        let rows = try await connection.query(
            "SELECT id, run_id, kind, by, data, created_ms FROM run_signals WHERE run_id = ? ORDER BY id", [.text(runID)])
        return rows.map(StoreRecords.signal)
    }

    public func publishEvent(_ event: EventRecord) async throws -> (event: EventRecord, created: Bool) {
        var result = (event, false)
        try await transaction {
            if let key = event.dedupKey {
                let rows = try await connection.query(
                    "SELECT \(StoreRecords.eventColumns) FROM events WHERE type = ? AND dedup_key = ?", [.text(event.type), .text(key)])
                if let row = rows.first {
                    result = (StoreRecords.event(row), false)
                    return
                }
            }
            let rows = try await connection.query(
                "INSERT INTO events (id, type, payload, dedup_key, source, ts_ms) VALUES (?, ?, ?, ?, ?, ?) RETURNING seq",
                [
                    .text(event.id), .text(event.type), StoreValue.json(event.payload).sqlite, StoreValue.text(event.dedupKey).sqlite, .text(event.source),
                    .integer(Int(event.timeMs)),
                ])
            var stored = event
            stored.seq = Int64(rows.first?.column("seq")?.integer ?? 0)
            result = (stored, true)
        }
        return result
    }

    public func events(afterSeq: Int64, type: String?, limit: Int) async throws -> [EventRecord] {
        let rows: [SQLiteRow]
        if let type {
            rows = try await connection.query(
                "SELECT \(StoreRecords.eventColumns) FROM events WHERE type = ? AND seq > ? ORDER BY seq LIMIT ?",
                [.text(type), .integer(Int(afterSeq)), .integer(limit)])
        } else {
            rows = try await connection.query(
                "SELECT \(StoreRecords.eventColumns) FROM events WHERE seq > ? ORDER BY seq LIMIT ?", [.integer(Int(afterSeq)), .integer(limit)])
        }
        return rows.map(StoreRecords.event)
    }

    public func lastEventSeq() async throws -> Int64 {
        Int64(try await connection.query("SELECT COALESCE(MAX(seq), 0) AS seq FROM events", []).first?.column("seq")?.integer ?? 0)
    }

    public func runsWaiting(eventType: String) async throws -> [String] {
        let rows = try await connection.query("SELECT DISTINCT run_id FROM run_waits WHERE event_type = ?", [.text(eventType)])
        return rows.compactMap { $0.column("run_id")?.string }
    }

    public func cursor(_ name: String) async throws -> Int64 {
        let rows = try await connection.query("SELECT value FROM cursors WHERE name = ?", [.text(name)])
        return Int64(rows.first?.column("value")?.integer ?? 0)
    }

    public func setCursor(_ name: String, to value: Int64) async throws {
        try await transaction {
            _ = try await connection.query(
                "INSERT INTO cursors (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value", [.text(name), .integer(Int(value))])
        }
    }
}

/// One run's checkpoint, waiting to be written.
struct Checkpoint: Sendable {
    var runID: String
    var owner: String
    var events: [RunEvent]
    var update: RunUpdate
    var consumedSignals: [Int64]
    var leaseUntilMs: Int64
}

/// Group commit: while a batch is being written, the items that arrive meanwhile wait and
/// are written together next. Each caller waits for its own item's commit. Up to
/// `concurrency` batches are written at once (SQLite: one, its writes take turns anyway;
/// PostgreSQL: `checkpoint_writers`, on separate connections). Checkpoints
/// (`CheckpointBatcher`) and, on PostgreSQL, published events go through one.
final class WriteBatcher<Item: Sendable, Output: Sendable>: Sendable {
    private struct State {
        var pending: [(Item, CheckedContinuation<Output, any Error>)] = []
        var writers = 0
    }

    private let state = Mutex(State())
    private let concurrency: Int
    private let write: @Sendable ([Item]) async -> [Result<Output, any Error>]

    init(concurrency: Int = 1, write: @escaping @Sendable ([Item]) async -> [Result<Output, any Error>]) {
        self.concurrency = concurrency
        self.write = write
    }

    func submit(_ item: Item) async throws -> Output {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Output, any Error>) in
            let start = state.withLock { state -> Bool in
                state.pending.append((item, continuation))
                guard state.writers < concurrency else { return false }
                state.writers += 1
                return true
            }
            // Detached: a caller's cancellation must not stop the writes of others.
            if start { Task.detached { await self.drain() } }
        }
    }

    private func drain() async {
        while true {
            let batch = state.withLock { state -> [(Item, CheckedContinuation<Output, any Error>)] in
                let batch = state.pending
                state.pending = []
                if batch.isEmpty { state.writers -= 1 }
                return batch
            }
            guard !batch.isEmpty else { return }
            let results = await write(batch.map(\.0))
            for ((_, continuation), result) in zip(batch, results) { continuation.resume(with: result) }
        }
    }
}

typealias CheckpointBatcher = WriteBatcher<Checkpoint, Void>

extension SQLiteMigrations {
    static let workflows = Migration(version: 10, name: "workflows", statements: [
        "CREATE TABLE workflow_versions (hash TEXT PRIMARY KEY, name TEXT NOT NULL, source TEXT NOT NULL, origin TEXT NOT NULL, created_ms INTEGER NOT NULL)",
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            workflow TEXT NOT NULL,
            workflow_hash TEXT NOT NULL REFERENCES workflow_versions (hash),
            status TEXT NOT NULL,
            priority INTEGER NOT NULL,
            agent_id TEXT NOT NULL,
            started_by TEXT NOT NULL,
            user_id TEXT,
            parent_run_id TEXT,
            forked_from TEXT,
            forked_at_seq INTEGER,
            idempotency_key TEXT UNIQUE,
            trigger_event_id TEXT,
            input TEXT NOT NULL,
            output TEXT,
            error TEXT,
            stop_limit TEXT,
            budgets TEXT NOT NULL,
            usage TEXT NOT NULL,
            steps_started INTEGER NOT NULL,
            supervisor TEXT,
            created_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL,
            finished_ms INTEGER,
            last_seq INTEGER NOT NULL
        )
        """,
        "CREATE INDEX runs_status ON runs (status)",
        "CREATE INDEX runs_workflow ON runs (workflow)",
        """
        CREATE TABLE run_events (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts_ms INTEGER NOT NULL,
            kind TEXT NOT NULL,
            path TEXT,
            data TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID
        """,
        // One row per run that is not finished: when it is due, and who holds it.
        """
        CREATE TABLE run_queue (
            run_id TEXT PRIMARY KEY,
            priority INTEGER NOT NULL,
            ready_at_ms INTEGER,
            lease_owner TEXT,
            lease_expires_ms INTEGER,
            woken INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX run_queue_due ON run_queue (ready_at_ms)",
        "CREATE TABLE run_signals (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, kind TEXT NOT NULL, by TEXT NOT NULL, data TEXT, created_ms INTEGER NOT NULL)",
        "CREATE INDEX run_signals_run ON run_signals (run_id)",
        "CREATE TABLE run_waits (run_id TEXT NOT NULL, path TEXT NOT NULL, event_type TEXT NOT NULL, PRIMARY KEY (run_id, path))",
        "CREATE INDEX run_waits_type ON run_waits (event_type)",
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            payload TEXT NOT NULL,
            dedup_key TEXT,
            source TEXT NOT NULL,
            ts_ms INTEGER NOT NULL
        )
        """,
        "CREATE INDEX events_type ON events (type, seq)",
        // A dedup key is unique within its event type (NULLs are distinct: events without a key never collide).
        "CREATE UNIQUE INDEX events_dedup ON events (type, dedup_key)",
        "CREATE TABLE cursors (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "ALTER TABLE approvals ADD COLUMN kind TEXT NOT NULL DEFAULT 'policy'",
        "ALTER TABLE approvals ADD COLUMN step_path TEXT",
        "ALTER TABLE approvals ADD COLUMN answer TEXT",
        "ALTER TABLE approvals ADD COLUMN answer_schema TEXT",
        "CREATE INDEX approvals_run ON approvals (run_id)",
    ])
}
