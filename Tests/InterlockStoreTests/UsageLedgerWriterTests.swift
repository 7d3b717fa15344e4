import InterlockCore
import InterlockRuntime
import InterlockStore
import Logging
import Synchronization
import Testing

/// A store whose first writes fail, to see that the ledger writer retries instead of dropping.
final class FlakyStore: InterlockStore {
    let failuresLeft = Mutex(2)
    let rows = Mutex<[UsageRecord]>([])

    func migrate() async throws {}
    func schemaVersion() async throws -> Int { 1 }
    func appendUsage(_ records: [UsageRecord]) async throws {
        let fail = failuresLeft.withLock { left -> Bool in
            guard left > 0 else { return false }
            left -= 1
            return true
        }
        if fail { throw CancellationError() }
        rows.withLock { $0 += records }
    }
    let auditFailuresLeft = Mutex(2)
    let auditRows = Mutex<[AuditRecord]>([])
    func appendAudit(_ records: [AuditRecord]) async throws -> (sequence: Int64, hash: String) {
        let fail = auditFailuresLeft.withLock { left -> Bool in
            guard left > 0 else { return false }
            left -= 1
            return true
        }
        if fail { throw CancellationError() }
        return auditRows.withLock { rows in
            var chain = rows.last.map { AuditChain(lastSequence: $0.sequence, lastHash: $0.hash) } ?? AuditChain()
            rows += records.map { chain.link($0) }
            return (chain.lastSequence, chain.lastHash)
        }
    }
    func auditHead() async throws -> (sequence: Int64, hash: String)? {
        auditRows.withLock { rows in rows.last.map { ($0.sequence, $0.hash) } }
    }
    func auditRecords(matching filter: AuditFilter, afterPosition position: Int64, limit: Int) async throws -> AuditPage {
        let rows = auditRows.withLock { Array($0.dropFirst(Int(position)).prefix(limit)) }
        return AuditPage(records: rows, lastPosition: position + Int64(rows.count))
    }
    func signingKeys() async throws -> [SigningKeyRecord] { [] }
    func saveSigningKeys(_ keys: [SigningKeyRecord], deleting kids: [String]) async throws {}
    func agents() async throws -> [Agent] { [] }
    func toolPins() async throws -> [ToolPin] { [] }
    func saveToolPins(_ pins: [ToolPin]) async throws {}
    func apiKeys() async throws -> [APIKeyRecord] { [] }
    func saveRegistry(agents: [Agent], keys: [APIKeyRecord]) async throws {}
    func spend(agentID: String, sinceMs: Int64) async throws -> SpendTotals { SpendTotals(cost: .zero, calls: 0, usage: .zero) }
    func recentUsage(limit: Int) async throws -> [UsageRecord] { [] }
    func runSpend(runID: String) async throws -> RunSpend { RunSpend() }
    func createApproval(_ approval: ApprovalRecord) async throws {}
    func approval(id: String) async throws -> ApprovalRecord? { nil }
    func approvals(status: ApprovalRecord.Status?, agentID: String?, nowMs: Int64, limit: Int) async throws -> [ApprovalRecord] { [] }
    func decideApproval(id: String, approve: Bool, by: String, note: String?, answer: JSONValue?, nowMs: Int64, expiresMs: Int64) async throws -> (ApprovalRecord, Bool)? { nil }
    func approval(binding: ApprovalBinding, status: ApprovalRecord.Status, nowMs: Int64) async throws -> ApprovalRecord? { nil }
    func consumeApproval(id: String, nowMs: Int64) async throws -> Bool { false }
    func restoreApproval(id: String) async throws {}
    func ping() async throws {}
    func close() async throws {}
}

@Suite struct UsageLedgerWriterTests {
    func record(_ index: Int) -> UsageRecord {
        UsageRecord(
            requestID: "r\(index)", timestampMs: 0, agentID: "a", targetKind: "model", target: "fast", deploymentID: nil, provider: nil,
            upstreamModel: nil, operation: "chat", stream: false, usage: .zero, cost: .zero, latencyMs: 0, attempts: 1, outcome: .success,
            status: 200, errorCode: nil)
    }

    @Test func failedWritesAreRetriedInBatchesAndNothingIsLost() async throws {
        let store = FlakyStore()
        let writer = UsageLedgerWriter(store: store, flushInterval: .milliseconds(5), maxBatch: 4, logger: Logger(label: "test"))
        for index in 0..<10 { writer.append(record(index)) }
        #expect(writer.backlog == 10)
        await writer.flush()
        #expect(writer.backlog == 0)
        #expect(writer.writtenCount == 10)
        #expect(store.rows.withLock { $0.map(\.requestID) } == (0..<10).map { "r\($0)" })
    }

    /// `isBehind` once `maxBacklog` records wait (taken but unwritten ones count), not before,
    /// and no longer once they are written; without a limit, never.
    @Test func aWriterPastItsBacklogLimitSaysSoUntilItCatchesUp() async throws {
        let store = FlakyStore()
        let writer = UsageLedgerWriter(store: store, flushInterval: .seconds(60), maxBatch: 2, maxBacklog: 3, logger: Logger(label: "test"))
        writer.append(record(0))
        writer.append(record(1))
        #expect(!writer.isBehind)
        writer.append(record(2))
        #expect(writer.isBehind)
        store.failuresLeft.withLock { $0 = .max }
        let stuck = Task { await writer.flush() }
        try await Task.sleep(for: .milliseconds(120))  // taken, being retried
        #expect(writer.isBehind)
        stuck.cancel()
        await stuck.value
        store.failuresLeft.withLock { $0 = 0 }
        await writer.flush()
        #expect(!writer.isBehind)
        #expect(writer.backlog == 0)
        let unlimited = UsageLedgerWriter(store: store, flushInterval: .seconds(60), maxBatch: 2, logger: Logger(label: "test"))
        for index in 0..<50 { unlimited.append(record(index)) }
        #expect(!unlimited.isBehind)
    }

    /// A flush takes the whole buffer; what it has not written yet still counts as backlog (the
    /// shutdown report of unwritten records reads it), and a cancelled flush puts it back in order.
    @Test func recordsOfAStuckWriteStillCountAsBacklog() async throws {
        let store = FlakyStore()
        store.failuresLeft.withLock { $0 = .max }
        let writer = UsageLedgerWriter(store: store, flushInterval: .seconds(60), maxBatch: 4, logger: Logger(label: "test"))
        for index in 0..<10 { writer.append(record(index)) }
        let flush = Task { await writer.flush() }
        try await Task.sleep(for: .milliseconds(120))  // the first batch is being retried
        writer.append(record(10))
        #expect(writer.backlog == 11)
        flush.cancel()
        await flush.value
        #expect(writer.backlog == 11)
        store.failuresLeft.withLock { $0 = 0 }
        await writer.flush()
        #expect(writer.backlog == 0)
        #expect(store.rows.withLock { $0.map(\.requestID) } == (0...10).map { "r\($0)" })
    }

    /// A failed audit batch is retried: the stored chain has no gap and verifies.
    @Test func failedAuditWritesKeepTheChainIntact() async throws {
        let store = FlakyStore()
        let audit = try await AuditLog.open(store: store, node: "n", flushInterval: .milliseconds(5), maxBatch: 3, logger: Logger(label: "test"), wallClockMs: { 7 })
        let run = Task { try await audit.writer.run() }
        for index in 0..<10 { audit.record(AuditRecord(timestampMs: 0, node: "", action: "test", target: "t\(index)", decision: "allow")) }
        for _ in 0..<200 where store.auditRows.withLock({ $0.count }) < 10 { try await Task.sleep(for: .milliseconds(10)) }
        run.cancel()
        let rows = store.auditRows.withLock { $0 }
        #expect(rows.map(\.sequence) == Array(1...10))
        #expect(rows.map(\.target) == (0..<10).map { "t\($0)" })
        var chain = AuditChain()
        #expect(chain.verify(rows) == nil)
        #expect(store.auditFailuresLeft.withLock { $0 } == 0)
    }
}
