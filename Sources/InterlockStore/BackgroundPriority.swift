import InterlockCore
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Runs the ledger's and audit log's batches on one thread of their own at Linux's
/// `SCHED_IDLE` policy, so that they never keep a call's thread off a core.
///
/// On a busy two-core machine a batch (a few milliseconds of SQLite work every flush) held a
/// core while the event loops, the upstream and the clients queued for the other, and the
/// slowest calls waited for it. A `SCHED_IDLE` thread runs only on an otherwise idle core and
/// gives it up the moment another thread wakes. Such a thread can starve while it holds the
/// database's write lock, though, so a batch still running after `boostAfterMs` is raised to
/// the normal policy: other writes wait at most that long for a starved batch.
///
/// A batch that had to be raised means the cores are saturated. Batches that start within
/// `raisedForMs` of its end start at the normal policy: starting idle, every batch (at most
/// `max_batch` rows) would first wait `boostAfterMs` for its boost, which capped the writer
/// at about 24,000 rows a second, and at 25,000 calls a second (two rows each) the records
/// waiting in memory grew without bound. Once no batch has needed a boost for that long,
/// batches start idle again.
///
/// Leaving `SCHED_IDLE` needs `CAP_SYS_NICE` or `RLIMIT_NICE` of at least 20 (`ulimit -e`).
/// Without either, a batch could never be raised, so the thread stays at the normal policy
/// (`probe` finds out once, on a throwaway thread).
final class BackgroundPriority: Sendable {
    private let boostAfter: TimeAmount
    // Atomics, not a lock: the batch thread could be preempted while holding a lock (it is
    // at idle priority; the policy change itself is a preemption point), and a boost on an
    // event loop would then wait for it, for as long as the cores stay busy.
    /// The batch thread's kernel id (0 until it has run a batch): boosts go to it.
    private let thread = Atomic<Int32>(0)
    /// The latest batch, and the latest one that was raised.
    private let batches = Atomic<Int>(0)
    private let boosted = Atomic<Int>(-1)
    private let raisedFor: Int64
    /// Until when (`NIODeadline` uptime, ns) batches start raised.
    private let raisedUntil = Atomic<Int64>(0)
    private let timerLoop: any EventLoop

    /// The batch thread's kernel id, once it has run a batch.
    var threadID: pid_t? {
        let id = thread.load(ordering: .sequentiallyConsistent)
        return id == 0 ? nil : pid_t(id)
    }

    private init(boostAfterMs: Int, raisedForMs: Int, timerLoop: any EventLoop) {
        self.boostAfter = .milliseconds(Int64(boostAfterMs))
        self.raisedFor = Int64(raisedForMs) * 1_000_000
        self.timerLoop = timerLoop
    }

    /// The helper for `settings`, or nil when batches run at the normal policy: configured
    /// so, or this process may not raise a thread back out of `SCHED_IDLE`.
    static func make(_ settings: SQLiteBatchWriterSettings) async -> BackgroundPriority? {
        guard settings.priority == .idle, await probe() else { return nil }
        return BackgroundPriority(boostAfterMs: settings.boostAfterMs, raisedForMs: settings.raisedForMs, timerLoop: MultiThreadedEventLoopGroup.singleton.any())
    }

    /// Whether a thread of this process can enter `SCHED_IDLE` and leave it again.
    static func probe() async -> Bool {
        #if os(Linux)
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        defer { pool.shutdownGracefully { _ in } }
        return (try? await pool.runIfActive { setPolicy(schedIdle, of: 0) && setPolicy(SCHED_OTHER, of: 0) }) ?? false
        #else
        return false
        #endif
    }

    /// Runs `body` on `pool` (a single thread, one batch at a time) at idle priority, raised
    /// to normal if it takes longer than `boostAfterMs`, or from the start within `raisedForMs`
    /// of the end of the last batch that needed that boost. A batch started raised proves
    /// nothing about the cores, so it does not prolong the window: once it has passed, the
    /// next batch starts idle and finds out again.
    func run<T: Sendable>(on pool: NIOThreadPool, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        let batch = batches.add(1, ordering: .sequentiallyConsistent).newValue
        if startsRaised {
            raise(batch)
            return try await pool.runIfActive(body)
        }
        let boost = timerLoop.scheduleTask(in: boostAfter) { self.raise(batch) }
        defer {
            boost.cancel()
            if boosted.load(ordering: .sequentiallyConsistent) == batch {
                raisedUntil.store(Int64(NIODeadline.now().uptimeNanoseconds) + raisedFor, ordering: .sequentiallyConsistent)
            }
        }
        return try await pool.runIfActive {
            self.lowerCurrentThread(for: batch)
            return try body()
        }
    }

    /// A boost may come before the thread lowers itself, or between its check and its
    /// lowering: the second check catches the latter (the booster stores first, then raises).
    private func lowerCurrentThread(for batch: Int) {
        #if os(Linux)
        if thread.load(ordering: .sequentiallyConsistent) == 0, let id = Self.currentThreadID() {
            thread.store(Int32(id), ordering: .sequentiallyConsistent)
        }
        guard boosted.load(ordering: .sequentiallyConsistent) != batch else { return }
        _ = Self.setPolicy(Self.schedIdle, of: 0)
        if boosted.load(ordering: .sequentiallyConsistent) == batch { _ = Self.setPolicy(SCHED_OTHER, of: 0) }
        #endif
    }

    /// Whether a batch starting now starts at the normal policy: within `raisedForMs` of the
    /// end of the last batch that needed its boost.
    var startsRaised: Bool {
        Int64(NIODeadline.now().uptimeNanoseconds) < raisedUntil.load(ordering: .sequentiallyConsistent)
    }

    private func raise(_ batch: Int) {
        #if os(Linux)
        boosted.store(batch, ordering: .sequentiallyConsistent)
        let id = thread.load(ordering: .sequentiallyConsistent)
        if id != 0 { _ = Self.setPolicy(SCHED_OTHER, of: pid_t(id)) }
        #endif
    }

    #if os(Linux)
    /// Glibc declares `SCHED_IDLE` and `gettid` only for `_GNU_SOURCE`, which Swift's Glibc
    /// module does not define; the policy's value is part of Linux's ABI.
    private static let schedIdle: Int32 = 5

    /// The calling thread's kernel id, from `/proc/thread-self` (a link to `<pid>/task/<tid>`).
    private static func currentThreadID() -> pid_t? {
        var buffer = [CChar](repeating: 0, count: 64)
        let count = readlink("/proc/thread-self", &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        let link = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return link.split(separator: "/").last.flatMap { pid_t($0) }
    }

    /// `sched_setscheduler` for one thread (0: the calling one).
    private static func setPolicy(_ policy: Int32, of thread: pid_t) -> Bool {
        var parameters = sched_param(sched_priority: 0)
        return sched_setscheduler(thread, policy, &parameters) == 0
    }
    #endif
}
