public import InterlockCore
public import InterlockStore
public import Logging
public import ServiceLifecycle
import Synchronization

/// Writes usage records to the store in batches, off the request path.
///
/// Requests hand records over without waiting; every `flushInterval` the writer takes what
/// has gathered and writes it in statements of at most `maxBatch` records. On graceful
/// shutdown (which the service group delivers after the HTTP server has drained) it writes
/// everything still held, then returns. A failed write is retried with backoff, so a store
/// hiccup delays records but does not drop them.
public final class UsageLedgerWriter: Service, Sendable {
    private struct State {
        var buffer: [UsageRecord] = []
        var stopping = false
        var written = 0
    }

    private let store: any InterlockStore
    private let flushInterval: Duration
    private let maxBatch: Int
    private let logger: Logger
    private let state = Mutex(State())

    public init(store: any InterlockStore, flushInterval: Duration, maxBatch: Int, logger: Logger) {
        self.store = store
        self.flushInterval = flushInterval
        self.maxBatch = maxBatch
        self.logger = logger
    }

    /// Records waiting to be written.
    public var backlog: Int { state.withLock { $0.buffer.count } }
    /// Records written since start.
    public var writtenCount: Int { state.withLock { $0.written } }

    public func append(_ record: UsageRecord) {
        state.withLock { $0.buffer.append(record) }
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            await self.loop()
        } onGracefulShutdown: {
            self.stop()
        }
    }

    /// Asks `run` to write what is left and return.
    public func stop() {
        state.withLock { $0.stopping = true }
    }

    /// Writes everything buffered now (used by tests and by shutdown). A batch that cannot be
    /// written because the task was cancelled goes back to the front of the buffer.
    public func flush() async {
        while true {
            let batch: [UsageRecord] = state.withLock { state in
                let count = min(maxBatch, state.buffer.count)
                let batch = Array(state.buffer.prefix(count))
                state.buffer.removeFirst(count)
                return batch
            }
            guard !batch.isEmpty else { return }
            guard await write(batch) else {
                state.withLock { $0.buffer.insert(contentsOf: batch, at: 0) }
                return
            }
        }
    }

    private func loop() async {
        while true {
            try? await Task.sleep(for: flushInterval)
            await flush()
            if state.withLock({ $0.stopping }) || Task.isCancelled {
                await flush()
                return
            }
        }
    }

    /// Writes one batch, retrying failures with backoff; false only when cancelled before it succeeded.
    private func write(_ batch: [UsageRecord]) async -> Bool {
        var delay = Duration.milliseconds(50)
        while true {
            do {
                try await store.appendUsage(batch)
                state.withLock { $0.written += batch.count }
                return true
            } catch {
                logger.error("usage ledger write failed; retrying", metadata: ["interlock.ledger.batch": "\(batch.count)", "error": "\(error)"])
                if Task.isCancelled { return false }
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
    }
}
