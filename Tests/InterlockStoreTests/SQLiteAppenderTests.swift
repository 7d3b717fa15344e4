import Foundation
import InterlockCore
@testable import InterlockStore
import Testing

/// The ledger and audit batches of a SQLite store: in a file they go through the second
/// connection's prepared statements (`SQLiteAppender`), in memory through sqlite-nio. Both
/// must behave the same.
@Suite struct SQLiteAppenderTests {
    static let kinds: [StoreKind] = [.sqlite, .sqliteFile]

    func usage(_ id: String) -> UsageRecord {
        UsageRecord(
            requestID: id, timestampMs: 5, agentID: "batch", targetKind: "model", target: "fast", deploymentID: nil, provider: nil,
            upstreamModel: nil, operation: "chat", stream: true, usage: TokenUsage(inputTokens: 1, outputTokens: 2, cachedInputTokens: 0),
            cost: USD(nanos: 7), latencyMs: 0.25, attempts: 2, outcome: .success, status: 200, errorCode: "", runID: "run_1")
    }

    /// Batches longer than one multi-row statement (32 rows) come back whole, in order and
    /// field for field, the rows after the last full statement included; a row refused
    /// inside a multi-row statement takes its whole batch back.
    @Test(arguments: kinds) func batchesAcrossMultiRowStatementsKeepEveryRowInOrder(kind: StoreKind) async throws {
        try await TestStores.with(kind) { store in
            let records = (0..<(SQLiteAppender.rowsPerStatement * 2 + 7)).map { index in
                var record = usage("row\(index)")
                record.usage = TokenUsage(inputTokens: index, outputTokens: index * 2, cachedInputTokens: index % 3)
                record.errorCode = index.isMultiple(of: 2) ? nil : "e\(index)"
                return record
            }
            try await store.appendUsage(records)
            #expect(try await store.recentUsage(limit: 1_000) == records.reversed())

            let sqlite = try #require(store as? SQLiteStore)
            _ = try await sqlite.connection.query(
                "CREATE TRIGGER refuse_bad BEFORE INSERT ON usage_ledger WHEN NEW.request_id = 'bad' BEGIN SELECT RAISE(ABORT, 'row refused'); END", [])
            var refused = (0..<SQLiteAppender.rowsPerStatement * 2).map { usage("late\($0)") }
            refused[SQLiteAppender.rowsPerStatement + 3] = usage("bad")
            await #expect(throws: (any Error).self) { try await store.appendUsage(refused) }
            #expect(try await store.recentUsage(limit: 1_000).count == records.count)

            let audit = (0..<(SQLiteAppender.rowsPerStatement + 5)).map { index in
                AuditRecord(timestampMs: Int64(index), node: "n", action: "a", target: "t\(index)", decision: "allow")
            }
            try await store.appendAudit(Array(audit[..<3]))
            try await store.appendAudit(Array(audit[3...]))
            let stored = try await store.auditRecords(afterPosition: 0, limit: 1_000).records
            #expect(stored.map(\.target) == audit.map(\.target))
            #expect(stored.map(\.sequence) == Array(1...Int64(audit.count)))
            var chain = AuditChain()
            #expect(chain.verify(stored) == nil)
        }
    }

    /// Texts are bound from a room of `textRoomBytes` per statement: rows whose texts
    /// overflow it (a captured tool answer of more than the room, several long ones in one
    /// statement) are stored whole, and the rows after them too.
    @Test(arguments: kinds) func textsLongerThanTheBindingRoomAreStoredWhole(kind: StoreKind) async throws {
        try await TestStores.with(kind) { store in
            let room = SQLiteAppender.textRoomBytes
            // Five times over: the first 32 rows share one multi-row statement.
            let lengths = Array(repeatElement([10, room + 1, room / 2, room / 2, 3, room * 2, 0, 64], count: 5).joined())
            let audit = lengths.enumerated().map { index, length in
                AuditRecord(
                    timestampMs: Int64(index), node: "n", action: "tool.call", target: "t\(index)", decision: "allow",
                    capture: String(repeating: Character(UnicodeScalar(UInt8(97 + index % 26))), count: length))
            }
            try await store.appendAudit(audit)
            let stored = try await store.auditRecords(afterPosition: 0, limit: 100).records
            #expect(stored.map(\.capture) == audit.map(\.capture))
            #expect(stored.map(\.target) == audit.map(\.target))
            var chain = AuditChain()
            #expect(chain.verify(stored) == nil)
        }
    }

    /// A batch with one row SQLite refuses leaves nothing behind, says why, and the next batch
    /// still lands (the failed transaction was rolled back, not left open).
    @Test(arguments: kinds) func aRefusedRowTakesItsWholeBatchBackAndTheNextBatchLands(kind: StoreKind) async throws {
        try await TestStores.with(kind) { store in
            let sqlite = try #require(store as? SQLiteStore)
            _ = try await sqlite.connection.query(
                "CREATE TRIGGER refuse_bad BEFORE INSERT ON usage_ledger WHEN NEW.request_id = 'bad' BEGIN SELECT RAISE(ABORT, 'row refused'); END", [])
            _ = try await sqlite.connection.query(
                "CREATE TRIGGER refuse_bad_audit BEFORE INSERT ON audit_log WHEN NEW.target = 'bad' BEGIN SELECT RAISE(ABORT, 'record refused'); END", [])
            try await store.appendUsage([usage("first")])

            let error = await #expect(throws: (any Error).self) { try await store.appendUsage([usage("ok1"), usage("bad"), usage("ok2")]) }
            #expect(String(describing: error).contains("row refused"), "\(String(describing: error))")
            #expect(try await store.spend(agentID: "batch", sinceMs: 0).calls == 1)

            try await store.appendUsage([usage("after")])
            let stored = try await store.recentUsage(limit: 10)
            #expect(stored.map(\.requestID) == ["after", "first"])
            // Every field comes back as written, NULLs and empty text kept apart.
            #expect(stored.first == usage("after"))

            let audit = { (target: String) in AuditRecord(timestampMs: 1, node: "n", action: "a", target: target, decision: "allow", reason: "") }
            _ = try await store.appendAudit([audit("one")])
            await #expect(throws: (any Error).self) { try await store.appendAudit([audit("two"), audit("bad")]) }
            let head = try await store.appendAudit([audit("three")])
            #expect(head.sequence == 2, "the refused batch used no sequence numbers")
            let records = try await store.auditRecords(afterPosition: 0, limit: 10).records
            #expect(records.map(\.target) == ["one", "three"])
            #expect(records.first?.reason == "" && records.first?.userID == nil)
            var chain = AuditChain()
            #expect(chain.verify(records) == nil)
        }
    }

    @Test func databasesWithoutAFileKeepOneConnection() {
        for path in [":memory:", "", "file::memory:", "file::memory:?cache=shared", "file:ledger?mode=memory&cache=shared"] {
            #expect(SQLiteStore.isInMemory(path), "\(path)")
        }
        for path in ["/var/lib/interlock.sqlite", "file:/var/lib/interlock.sqlite?mode=rwc", "memory.sqlite"] {
            #expect(!SQLiteStore.isInMemory(path), "\(path)")
        }
    }

    /// A batch that reaches a closed file store fails; it does not touch the closed handle.
    @Test func aBatchAfterCloseFails() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("interlock-closed-\(UInt64.random(in: 0...UInt64.max)).sqlite").path
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let store = try await SQLiteStore.open(path: path)
        try await store.migrate()
        try await store.appendUsage([usage("before")])
        try await store.close()
        let error = await #expect(throws: SQLiteWriteError.self) { try await store.appendUsage([usage("after")]) }
        #expect(error?.description.contains("closed") == true)
        await #expect(throws: SQLiteWriteError.self) { try await store.appendAudit([AuditRecord(timestampMs: 1, node: "n", action: "a", decision: "allow")]) }
    }

    /// Linux's scheduling policy of one of this process's threads (field 41 of its `stat`).
    static func policy(ofThread id: pid_t) throws -> Int {
        let stat = try String(contentsOfFile: "/proc/self/task/\(id)/stat", encoding: .utf8)
        let fields = stat[stat.index(after: stat.lastIndex(of: ")")!)...].split(separator: " ")
        return Int(fields[41 - 3])!  // fields after the name start at field 3
    }

    /// After a batch had to be raised, the batches that start within `raised_for_ms` of its end
    /// start at the normal policy (on saturated cores each would otherwise wait for its boost),
    /// and once that long has passed they start idle again. The window is long against what a
    /// loaded CI machine takes between the batch's end and the check.
    @Test func batchesAfterARaisedOneStartRaisedForAWhile() async throws {
        #if os(Linux)
        guard await BackgroundPriority.probe() else { return }  // no CAP_SYS_NICE: nothing to raise
        for raisedForMs in [2_000, 0] {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("interlock-raised-\(UInt64.random(in: 0...UInt64.max)).sqlite").path
            defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
            let store = try await SQLiteStore.open(
                path: path, batchWriter: SQLiteBatchWriterSettings(priority: .idle, boostAfterMs: 1, raisedForMs: raisedForMs))
            try await store.migrate()
            let writer = try #require(store.appender?.priority)
            #expect(!writer.startsRaised, "no batch has needed a boost yet")
            // 20,000 rows take far longer than 1 ms: this batch is raised.
            try await store.appendUsage((0..<20_000).map { usage("big\($0)") })
            let thread = try #require(writer.threadID)
            #expect(try Self.policy(ofThread: thread) == 0, "a batch past boost_after_ms runs at the normal policy")
            if raisedForMs > 0 {
                #expect(writer.startsRaised, "within raised_for_ms of a raised batch")
                try await store.appendUsage([usage("after")])
                #expect(try Self.policy(ofThread: thread) == 0, "a batch started within the window starts raised")
                try await Task.sleep(for: .milliseconds(raisedForMs + 200))
            }
            #expect(!writer.startsRaised, "raised_for_ms \(raisedForMs) after the raised batch")
            try await store.close()
        }
        #endif
    }

    /// Batches run on their own thread at `SCHED_IDLE` (5); one that outlasts `boost_after_ms`
    /// is raised to the normal policy (0), and the next one starts idle again. With
    /// `priority: normal` the thread never leaves the normal policy.
    @Test func batchesRunAtIdlePriorityAndALongBatchIsRaised() async throws {
        #if os(Linux)
        guard await BackgroundPriority.probe() else {
            // No CAP_SYS_NICE (nor RLIMIT_NICE ≥ 20): idle is asked for, normal is what runs.
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("interlock-priority-\(UInt64.random(in: 0...UInt64.max)).sqlite").path
            defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
            let store = try await SQLiteStore.open(path: path, batchWriter: SQLiteBatchWriterSettings(priority: .idle))
            #expect(store.appender != nil && store.appender?.priority == nil)
            try await store.close()
            return
        }
        for (priority, boostMs) in [(SQLiteBatchWriterSettings.Priority.idle, 1), (.normal, 1)] {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("interlock-priority-\(UInt64.random(in: 0...UInt64.max)).sqlite").path
            defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
            let store = try await SQLiteStore.open(path: path, batchWriter: SQLiteBatchWriterSettings(priority: priority, boostAfterMs: boostMs))
            try await store.migrate()
            guard priority == .idle else {
                #expect(store.appender?.priority == nil)
                try await store.close()
                continue
            }
            let writer = try #require(store.appender?.priority)
            try await store.appendUsage([usage("small")])
            let thread = try #require(writer.threadID)
            // 20,000 rows take far longer than 1 ms.
            try await store.appendUsage((0..<20_000).map { usage("big\($0)") })
            #expect(try Self.policy(ofThread: thread) == 0, "a batch past boost_after_ms runs at the normal policy")
            try await store.close()
        }
        // A batch well inside its boost time leaves the thread idle.
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("interlock-priority-\(UInt64.random(in: 0...UInt64.max)).sqlite").path
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let store = try await SQLiteStore.open(path: path, batchWriter: SQLiteBatchWriterSettings(priority: .idle, boostAfterMs: 10_000))
        try await store.migrate()
        try await store.appendUsage([usage("one")])
        let thread = try #require(store.appender?.priority?.threadID)
        #expect(try Self.policy(ofThread: thread) == 5)
        _ = try await store.appendAudit([AuditRecord(timestampMs: 1, node: "n", action: "a", decision: "allow")])
        #expect(try Self.policy(ofThread: thread) == 5)
        #expect(try await store.recentUsage(limit: 5).map(\.requestID) == ["one"])
        try await store.close()
        #endif
    }
}
