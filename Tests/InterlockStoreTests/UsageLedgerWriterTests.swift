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
    func spend(agentID: String, sinceMs: Int64) async throws -> SpendTotals { SpendTotals(cost: .zero, calls: 0, usage: .zero) }
    func recentUsage(limit: Int) async throws -> [UsageRecord] { [] }
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
}
