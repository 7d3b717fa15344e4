public import InterlockCore
import PostgresNIO

extension PostgresStore: RunStore {
    public func saveWorkflowVersion(_ version: WorkflowVersionRecord) async throws {
        try await rows(
            "INSERT INTO workflow_versions (hash, name, source, origin, created_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING",
            [.text(version.hash), .text(version.name), .text(version.source), .text(version.origin), .int(version.createdMs)])
    }

    public func workflowVersion(hash: String) async throws -> WorkflowVersionRecord? {
        try await rows("SELECT hash, name, source, origin, created_ms FROM workflow_versions WHERE hash = $1", [.text(hash)]).first
            .flatMap(StoreRecords.workflowVersion)
    }

    public func latestWorkflowVersions(origin: String) async throws -> [WorkflowVersionRecord] {
        try await rows(
            """
            SELECT hash, name, source, origin, created_ms FROM workflow_versions v
            WHERE origin = $1 AND pos = (SELECT MAX(pos) FROM workflow_versions w WHERE w.name = v.name AND w.origin = v.origin)
            ORDER BY name
            """, [.text(origin)]
        ).compactMap(StoreRecords.workflowVersion)
    }

    public func createRun(_ run: RunRecord, events: [RunEvent], readyAtMs: Int64) async throws -> (run: RunRecord, created: Bool) {
        var run = run
        run.lastSeq = events.last?.seq ?? 0
        let created = run
        let existing: RunRecord? = try await transaction { [self] connection in
            // Two nodes starting the same keyed run: the second waits for the first to commit,
            // inserts nothing and reads the first's run.
            let inserted = try await rows(
                """
                INSERT INTO runs (\(StoreRecords.runColumns.joined(separator: ","))) VALUES (\(Self.list(StoreRecords.runColumns.count)))
                ON CONFLICT DO NOTHING RETURNING id
                """, StoreRecords.values(created), on: connection)
            if inserted.isEmpty {
                guard let key = created.idempotencyKey,
                    let row = try await rows(
                        "SELECT \(StoreRecords.runColumns.joined(separator: ",")) FROM runs WHERE idempotency_key = $1", [.text(key)], on: connection
                    ).first
                else { throw PostgresStoreError.unavailable("run \(created.id) exists already") }
                return StoreRecords.run(row)
            }
            try await insertEvents([(created.id, events)], on: connection)
            try await rows(
                "INSERT INTO run_queue (run_id, priority, ready_at_ms, lease_owner, lease_expires_ms, woken) VALUES ($1, $2, $3, NULL, NULL, 0)",
                [.text(created.id), .int(created.priority), .int(readyAtMs)], on: connection)
            try await notifyRuns(nil, on: connection)
            return nil
        }
        if let existing { return (existing, false) }
        return (created, true)
    }

    /// Tells every node's listener (on commit) that runs became due; `runID` names the run so
    /// the node executing it can nudge it, nil for any new work.
    private func notifyRuns(_ runID: String?, on connection: PostgresConnection) async throws {
        try await rows("SELECT pg_notify('\(channel)', $1)", [.text(runID.map { "run:" + $0 } ?? "runs")], on: connection)
    }

    /// Appends events of one or more runs and keeps the waits index (as in the SQLite store).
    private func insertEvents(_ histories: [(runID: String, events: [RunEvent])], on connection: PostgresConnection) async throws {
        let waits = StoreRecords.WaitChanges(histories)
        if !waits.finished.isEmpty {
            try await rows("DELETE FROM run_waits WHERE run_id IN (\(Self.list(waits.finished.count)))", waits.finished.map(StoreValue.text), on: connection)
        }
        for chunk in stride(from: 0, to: waits.settled.count, by: 20_000) {
            let slice = waits.settled[chunk..<min(waits.settled.count, chunk + 20_000)]
            try await rows(
                "DELETE FROM run_waits WHERE (run_id, path) IN (VALUES \(Self.placeholders(rows: slice.count, columns: 2)))",
                slice.flatMap { [.text($0.runID), .text($0.path)] }, on: connection)
        }
        for (runID, path, type) in waits.waiting {
            try await rows(
                "INSERT INTO run_waits (run_id, path, event_type) VALUES ($1, $2, $3) ON CONFLICT (run_id, path) DO UPDATE SET event_type = excluded.event_type",
                [.text(runID), .text(path), .text(type)], on: connection)
        }
        let rowsToInsert = histories.flatMap { history in history.events.map { (history.runID, $0) } }
        try await insertRows(
            table: "run_events", columns: ["run_id", "seq", "ts_ms", "kind", "path", "data"], rowsToInsert, on: connection
        ) { StoreRecords.values(runID: $0.0, $0.1) }
    }

    public func run(id: String) async throws -> RunRecord? {
        try await rows("SELECT \(StoreRecords.runColumns.joined(separator: ",")) FROM runs WHERE id = $1", [.text(id)]).first.flatMap(StoreRecords.run)
    }

    public func runs(_ filter: RunFilter) async throws -> [RunRecord] {
        var conditions: [String] = []
        var values: [StoreValue] = []
        for (column, value) in [("status", filter.status?.rawValue), ("workflow", filter.workflow), ("started_by", filter.startedBy)] {
            guard let value else { continue }
            values.append(.text(value))
            conditions.append("\(column) = $\(values.count)")
        }
        if let before = filter.beforeID {
            values.append(.text(before))
            conditions.append("pos < (SELECT pos FROM runs WHERE id = $\(values.count))")
        }
        let clause = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        return try await rows(
            "SELECT \(StoreRecords.runColumns.joined(separator: ",")) FROM runs \(clause) ORDER BY pos DESC LIMIT $\(values.count + 1)",
            values + [.int(filter.limit)]
        ).compactMap(StoreRecords.run)
    }

    public func runEvents(runID: String, afterSeq: Int64) async throws -> [RunEvent] {
        try await rows("SELECT seq, ts_ms, kind, data FROM run_events WHERE run_id = $1 AND seq > $2 ORDER BY seq", [.text(runID), .int(afterSeq)])
            .map(StoreRecords.runEvent)
    }

    /// Ready runs nobody holds (or whose holder's lease ran out), taken with `SKIP LOCKED`:
    /// nodes claiming at once take different runs and never wait for each other.
    public func claimRuns(owner: String, nowMs: Int64, leaseUntilMs: Int64, limit: Int) async throws -> [String] {
        try await rows(
            """
            UPDATE run_queue q SET lease_owner = $1, lease_expires_ms = $2, woken = 0
            FROM (
                SELECT run_id FROM run_queue
                WHERE ready_at_ms <= $3 AND (lease_owner IS NULL OR lease_expires_ms < $3)
                ORDER BY priority DESC, ready_at_ms LIMIT $4
                FOR UPDATE SKIP LOCKED
            ) due
            WHERE q.run_id = due.run_id
            RETURNING q.run_id
            """, [.text(owner), .int(leaseUntilMs), .int(nowMs), .int(limit)]
        ).compactMap { $0.text("run_id") }
    }

    public func renewLeases(owner: String, runIDs: [String], leaseUntilMs: Int64) async throws -> Set<String> {
        guard !runIDs.isEmpty else { return [] }
        let rows = try await rows(
            "UPDATE run_queue SET lease_expires_ms = $1 WHERE lease_owner = $2 AND run_id IN (\(Self.list(runIDs.count, from: 3))) RETURNING run_id",
            [.int(leaseUntilMs), .text(owner)] + runIDs.map(StoreValue.text))
        return Set(rows.compactMap { $0.text("run_id") })
    }

    public func appendRunEvents(
        runID: String, owner: String, events: [RunEvent], update: RunUpdate, consumedSignals: [Int64], leaseUntilMs: Int64
    ) async throws {
        try await checkpoints.submit(
            Checkpoint(runID: runID, owner: owner, events: events, update: update, consumedSignals: consumedSignals, leaseUntilMs: leaseUntilMs))
    }

    /// Writes checkpoints of several runs in one statement (`interlock_checkpoint`, its own
    /// transaction): fencing, the waits index, the events, the summaries and the consumed
    /// signals. A checkpoint whose lease is lost fails alone; if the server refuses the
    /// batch, each is written on its own.
    func write(_ batch: [Checkpoint]) async -> [Result<Void, any Error>] {
        do {
            let waits = StoreRecords.WaitChanges(batch.map { ($0.runID, $0.events) })
            let arguments: [StoreValue] = [
                .text(Self.records(
                    StoreRecords.runUpdateColumns + ["owner", "lease_until_ms"],
                    batch.map { StoreRecords.updateValues(runID: $0.runID, $0.update, lastSeq: $0.events.last?.seq) + [.text($0.owner), .int($0.leaseUntilMs)] })),
                .text(Self.records(
                    ["run_id", "seq", "ts_ms", "kind", "path", "data"],
                    batch.flatMap { checkpoint in checkpoint.events.map { StoreRecords.values(runID: checkpoint.runID, $0) } })),
                .text(Self.records(["run_id"], waits.finished.map { [.text($0)] })),
                .text(Self.records(["run_id", "path"], waits.settled.map { [.text($0.runID), .text($0.path)] })),
                .text(Self.records(["run_id", "path", "event_type"], waits.waiting.map { [.text($0.runID), .text($0.path), .text($0.type)] })),
                .text(Self.records(["run_id", "id"], batch.flatMap { checkpoint in checkpoint.consumedSignals.map { [.text(checkpoint.runID), .int($0)] } })),
            ]
            let held = Set(
                try await statement(
                    "SELECT run_id FROM interlock_checkpoint($1::json, $2::json, $3::json, $4::json, $5::json, $6::json) AS held(run_id)", arguments
                ).compactMap { $0.text("run_id") })
            return batch.map { held.contains($0.runID) ? .success(()) : .failure(RunLeaseLost(runID: $0.runID)) }
        } catch {
            // One checkpoint the server refused must not fail the others: each on its own. A
            // store that cannot be reached or is too slow fails them all now (one at a time
            // would take a deadline each).
            guard batch.count > 1, Self.refusesOneItem(error) else { return batch.map { _ in .failure(error) } }
            var results: [Result<Void, any Error>] = []
            for checkpoint in batch { results.append(contentsOf: await write([checkpoint])) }
            return results
        }
    }

    /// An error that one item of a batch can cause (a constraint or a value the server
    /// refuses: SQLSTATE classes 22 and 23), so the others are worth writing on their own.
    static func refusesOneItem(_ error: any Error) -> Bool {
        guard let state = (error as? PostgresStoreError)?.sqlState else { return false }
        return state.hasPrefix("22") || state.hasPrefix("23")
    }

    static func dedupBytes(_ type: String, _ key: String) -> [UInt8] {
        Array(type.utf8) + [0] + Array(key.utf8)
    }

    /// Rows as a JSON array of objects (`json_to_recordset`'s argument): one parameter
    /// whatever the batch's size, so the statement's text never changes.
    static func records(_ columns: [String], _ rows: [[StoreValue]]) -> String {
        JSONWriter.string(
            .array(rows.map { row in
                .object(JSONObject(zip(columns, row).map { column, value in
                    switch value {
                    case .text(let text): (key: column, value: .string(text))
                    case .int(let int): (key: column, value: .integer(int))
                    case .double(let double): (key: column, value: .number(double))
                    case .null: (key: column, value: .null)
                    }
                }))
            }))
    }

    public func releaseRun(runID: String, owner: String, readyAtMs: Int64?, finished: Bool, nowMs: Int64) async throws {
        if finished {
            try await rows("DELETE FROM run_queue WHERE run_id = $1 AND lease_owner = $2", [.text(runID), .text(owner)])
            return
        }
        try await transaction { [self] connection in
            let released = try await rows(
                """
                UPDATE run_queue SET lease_owner = NULL, lease_expires_ms = NULL,
                    ready_at_ms = CASE WHEN woken = 1 THEN $1 ELSE $2 END, woken = 0
                WHERE run_id = $3 AND lease_owner = $4 RETURNING ready_at_ms
                """, [.int(nowMs), .int(readyAtMs), .text(runID), .text(owner)], on: connection)
            // Due now (a wake came while it was held): another node may take it.
            if let ready = released.first?.int("ready_at_ms"), ready <= nowMs { try await notifyRuns(nil, on: connection) }
        }
    }

    public func wakeRun(runID: String, atMs: Int64) async throws {
        try await transaction { [self] connection in
            try await rows(
                """
                UPDATE run_queue SET ready_at_ms = CASE WHEN ready_at_ms IS NULL OR ready_at_ms > $1 THEN $1 ELSE ready_at_ms END, woken = 1
                WHERE run_id = $2
                """, [.int(atMs), .text(runID)], on: connection)
            try await notifyRuns(runID, on: connection)
        }
    }

    public func releaseLeases(ownerPrefix: String) async throws {
        try await rows(
            "UPDATE run_queue SET lease_owner = NULL, lease_expires_ms = NULL WHERE left(lease_owner, length($1)) = $1", [.text(ownerPrefix)])
    }

    /// When the next run is due, counting runs whose holder's lease runs out (a node that died).
    public func nextRunDue() async throws -> Int64? {
        try await rows(
            """
            SELECT MIN(CASE WHEN lease_owner IS NULL THEN ready_at_ms ELSE GREATEST(ready_at_ms, lease_expires_ms + 1) END)::bigint AS due
            FROM run_queue WHERE ready_at_ms IS NOT NULL
            """
        ).first?.int("due")
    }

    public func addRunSignal(_ signal: RunSignal) async throws {
        try await transaction { [self] connection in
            try await rows(
                "INSERT INTO run_signals (run_id, kind, by, data, created_ms) VALUES ($1, $2, $3, $4, $5)",
                [.text(signal.runID), .text(signal.kind), .text(signal.by), .json(signal.data), .int(signal.createdMs)], on: connection)
            try await rows(
                """
                UPDATE run_queue SET ready_at_ms = CASE WHEN ready_at_ms IS NULL OR ready_at_ms > $1 THEN $1 ELSE ready_at_ms END, woken = 1
                WHERE run_id = $2
                """, [.int(signal.createdMs), .text(signal.runID)], on: connection)
            // A finished run has left the queue; a retry puts it back.
            if signal.kind == "retry" {
                try await rows(
                    """
                    INSERT INTO run_queue (run_id, priority, ready_at_ms, lease_owner, lease_expires_ms, woken)
                    SELECT id, priority, $1, NULL, NULL, 1 FROM runs WHERE id = $2
                    ON CONFLICT (run_id) DO NOTHING
                    """, [.int(signal.createdMs), .text(signal.runID)], on: connection)
            }
            try await notifyRuns(signal.runID, on: connection)
        }
    }

    public func runSignals(runID: String) async throws -> [RunSignal] {
        try await rows("SELECT id, run_id, kind, by, data, created_ms FROM run_signals WHERE run_id = $1 ORDER BY id", [.text(runID)])
            .map(StoreRecords.signal)
    }

    /// Events are numbered in commit order (publishers take turns on a lock), so a reader
    /// that has seen position n never later finds a smaller one. The lock is held until
    /// commit, so a node's concurrent publishes share one transaction (`writeEvents`).
    public func publishEvent(_ event: EventRecord) async throws -> (event: EventRecord, created: Bool) {
        try await publishedEvents.submit(event)
    }

    /// Publishes several events in one transaction, numbered in the order given; an event
    /// whose `(type, dedup_key)` is already stored (before or earlier in the batch) returns
    /// the stored one. If the server refuses the batch, each is published on its own.
    func writeEvents(_ batch: [EventRecord]) async -> [Result<(event: EventRecord, created: Bool), any Error>] {
        // Seven parameters an event: a very long queue goes in several transactions.
        if batch.count > 1_000 {
            var results: [Result<(event: EventRecord, created: Bool), any Error>] = []
            for start in stride(from: 0, to: batch.count, by: 1_000) {
                results.append(contentsOf: await writeEvents(Array(batch[start..<min(batch.count, start + 1_000)])))
            }
            return results
        }
        do {
            let stored: [String: (EventRecord, Bool)] = try await transaction { [self] connection in
                try await rows("SELECT pg_advisory_xact_lock(\(PostgresSchema.eventsLock))", on: connection)
                // Under the lock nobody else inserts: an event whose key is stored, or taken
                // earlier in the batch, is not inserted (no number is spent on it). Keys are
                // compared as PostgreSQL does, byte for byte.
                var keys: Set<[UInt8]> = []
                let candidates = batch.filter { event in event.dedupKey.map { keys.insert(Self.dedupBytes(event.type, $0)).inserted } ?? true }
                let columns = ["ord", "id", "type", "payload", "dedup_key", "source", "ts_ms"]
                let casts = ["bigint", "text", "text", "text", "text", "text", "bigint"]
                let inserted = try await rows(
                    """
                    INSERT INTO events (id, type, payload, dedup_key, source, ts_ms)
                    SELECT id, type, payload, dedup_key, source, ts_ms
                    FROM (VALUES \(Self.placeholders(rows: candidates.count, columns: columns.count, casts: casts))) AS v(\(columns.joined(separator: ",")))
                    WHERE v.dedup_key IS NULL OR NOT EXISTS (SELECT 1 FROM events e WHERE e.type = v.type AND e.dedup_key = v.dedup_key)
                    ORDER BY ord
                    ON CONFLICT (type, dedup_key) DO NOTHING RETURNING id, seq
                    """,
                    candidates.enumerated().flatMap { index, event -> [StoreValue] in
                        [.int(Int64(index)), .text(event.id), .text(event.type), .json(event.payload), .text(event.dedupKey), .text(event.source), .int(event.timeMs)]
                    }, on: connection)
                let byID = Dictionary(batch.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
                var result: [String: (EventRecord, Bool)] = [:]
                for row in inserted {
                    guard let id = row.text("id"), var event = byID[id] else { continue }
                    event.seq = row.int("seq") ?? 0
                    result[id] = (event, true)
                }
                // Duplicates: the stored event of the same type and key.
                let duplicates = batch.filter { result[$0.id] == nil && $0.dedupKey != nil }
                if !duplicates.isEmpty {
                    let existing = try await rows(
                        """
                        SELECT \(StoreRecords.eventColumns) FROM events
                        WHERE (type, dedup_key) IN (\(Self.placeholders(rows: duplicates.count, columns: 2)))
                        """, duplicates.flatMap { [StoreValue.text($0.type), .text($0.dedupKey)] }, on: connection
                    ).map(StoreRecords.event)
                    for event in duplicates {
                        let key = event.dedupKey.map { Self.dedupBytes(event.type, $0) }
                        if let match = existing.first(where: { stored in stored.dedupKey.map { Self.dedupBytes(stored.type, $0) } == key }) {
                            result[event.id] = (match, false)
                        }
                    }
                }
                if !inserted.isEmpty { try await self.rows("SELECT pg_notify('\(channel)', 'events')", on: connection) }
                return result
            }
            return batch.map { event in
                guard let (record, created) = stored[event.id] else {
                    return .failure(PostgresStoreError.unexpected("event '\(event.id)' was neither stored nor found"))
                }
                return .success((record, created))
            }
        } catch {
            guard batch.count > 1, Self.refusesOneItem(error) else { return batch.map { _ in .failure(error) } }
            var results: [Result<(event: EventRecord, created: Bool), any Error>] = []
            for event in batch { results.append(contentsOf: await writeEvents([event])) }
            return results
        }
    }

    public func events(afterSeq: Int64, type: String?, limit: Int) async throws -> [EventRecord] {
        if let type {
            return try await rows(
                "SELECT \(StoreRecords.eventColumns) FROM events WHERE type = $1 AND seq > $2 ORDER BY seq LIMIT $3", [.text(type), .int(afterSeq), .int(limit)]
            ).map(StoreRecords.event)
        }
        return try await rows("SELECT \(StoreRecords.eventColumns) FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", [.int(afterSeq), .int(limit)])
            .map(StoreRecords.event)
    }

    public func lastEventSeq() async throws -> Int64 {
        try await rows("SELECT COALESCE(MAX(seq), 0)::bigint AS seq FROM events").first?.int("seq") ?? 0
    }

    public func runsWaiting(eventType: String) async throws -> [String] {
        try await rows("SELECT DISTINCT run_id FROM run_waits WHERE event_type = $1", [.text(eventType)]).compactMap { $0.text("run_id") }
    }

    public func cursor(_ name: String) async throws -> Int64 {
        try await rows("SELECT value FROM cursors WHERE name = $1", [.text(name)]).first?.int("value") ?? 0
    }

    public func setCursor(_ name: String, to value: Int64) async throws {
        try await rows(
            "INSERT INTO cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value", [.text(name), .int(value)])
    }
}
