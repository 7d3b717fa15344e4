public import InterlockCore
public import InterlockStore
public import Logging
import Synchronization

/// The tamper-evident audit log: every governed call and operator action becomes one
/// `AuditRecord`, linked into the hash chain and written in batches off the request path.
///
/// Records are linked when their batch is written, by the store in the transaction that
/// stores them (one chain for every node sharing the store), so the request path does no
/// hashing and a retried batch links onto whatever head is stored then.
public final class AuditLog: Sendable {
    public let writer: BatchedWriter<AuditRecord>
    public let node: String
    private let chain: ChainState
    private let wallClockMs: @Sendable () -> Int64

    /// Continues the chain from the store's last record.
    public static func open(
        store: any InterlockStore, node: String, flushInterval: Duration, maxBatch: Int, maxBacklog: Int = 0, logger: Logger,
        wallClockMs: @escaping @Sendable () -> Int64
    ) async throws -> AuditLog {
        let head = try await store.auditHead()
        return AuditLog(
            store: store, node: node, chain: AuditChain(lastSequence: head?.sequence ?? 0, lastHash: head?.hash ?? AuditRecord.genesisHash),
            flushInterval: flushInterval, maxBatch: maxBatch, maxBacklog: maxBacklog, logger: logger, wallClockMs: wallClockMs)
    }

    private init(
        store: any InterlockStore, node: String, chain: AuditChain, flushInterval: Duration, maxBatch: Int, maxBacklog: Int, logger: Logger,
        wallClockMs: @escaping @Sendable () -> Int64
    ) {
        let state = ChainState(chain)
        self.chain = state
        self.node = node
        self.wallClockMs = wallClockMs
        writer = BatchedWriter(name: "audit log", flushInterval: flushInterval, maxBatch: maxBatch, maxBacklog: maxBacklog, logger: logger) { batch in
            // The store links the batch onto the stored chain: other nodes may have written since.
            let head = try await store.appendAudit(batch)
            state.chain.withLock { $0 = AuditChain(lastSequence: head.sequence, lastHash: head.hash) }
        }
    }

    /// Hands a record over; `sequence`, `node` (when empty), time (when 0) and the hashes are filled in.
    public func record(_ record: consuming AuditRecord) {
        // Taken over (as `BatchedWriter.append`): completed in place, moved on without a copy.
        if record.node.isEmpty { record.node = node }
        if record.timestampMs == 0 { record.timestampMs = wallClockMs() }
        writer.append(record)
    }

    /// Hands a record over and returns once it is stored (operator actions are acknowledged
    /// only after that).
    public func recordDurably(_ record: AuditRecord) async {
        self.record(record)
        await writer.flush()
    }

    /// The chain's head as of this node's last stored batch (other nodes may have added since).
    public var head: (sequence: Int64, hash: String) {
        chain.chain.withLock { ($0.lastSequence, $0.lastHash) }
    }

    /// `Mutex` cannot be captured by the writer's closure; a class around it can.
    private final class ChainState: Sendable {
        let chain: Mutex<AuditChain>

        init(_ chain: AuditChain) { self.chain = Mutex(chain) }
    }
}
