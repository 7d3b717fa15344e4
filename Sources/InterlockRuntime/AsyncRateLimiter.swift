public import InterlockCore
import Synchronization

/// Puts a `RateLimitGate` behind a lock and does its waiting: a caller that is queued sleeps
/// until the gate says its turn may have come, and gives up at the queue's wait bound.
public final class AsyncRateLimiter: Sendable {
    public typealias Gate = RateLimitGate<ContinuousClock.Instant>

    private let gate: Mutex<Gate>
    private let clock = ContinuousClock()
    public let name: String
    /// No per-minute limits: only an upstream's "slow down" can make a caller wait, so until
    /// the first one every call starts at once without taking the lock.
    private let unlimited: Bool
    private let everThrottled = Atomic<Bool>(false)
    /// A tokens-per-minute limit, the only thing `reconcile` changes.
    private let limitsTokens: Bool

    public init(name: String, limits: RateLimits, queue: AdmissionQueuePolicy) {
        self.name = name
        self.gate = Mutex(Gate(limits: limits, queuePolicy: queue, now: ContinuousClock.now))
        unlimited = limits.isUnlimited
        limitsTokens = limits.tokensPerMinute != nil
    }

    /// Nothing can hold a call back: no limits, never throttled.
    private var open: Bool { unlimited && !everThrottled.load(ordering: .acquiring) }

    public var queueDepth: Int { gate.withLock { $0.queueDepth } }

    public func hasCapacity(tokens: Int) -> Bool {
        let now = clock.now
        return gate.withLock { $0.hasCapacity(tokens: tokens, now: now) }
    }

    public func isThrottled() -> Bool {
        let now = clock.now
        return gate.withLock { $0.isThrottled(now: now) }
    }

    public enum Outcome: Sendable, Equatable {
        case admitted(waited: Duration)
        case rejected(retryAfter: Duration, reason: Gate.RejectionReason)
    }

    /// Starts a request only if it needs no wait; otherwise changes nothing.
    public func acquireImmediately(tokens: Int) -> Bool {
        if open { return true }
        let now = clock.now
        return gate.withLock { $0.admitImmediately(tokens: tokens, now: now) }
    }

    /// Waits (bounded) until a request of `tokens` may start.
    public func acquire(tokens: Int, priority: Int) async throws -> Outcome {
        let start = clock.now
        let admission = gate.withLock { $0.admit(tokens: tokens, priority: priority, now: start) }
        switch admission {
        case .granted:
            return .admitted(waited: .zero)
        case .rejected(let retryAfter, let reason):
            return .rejected(retryAfter: retryAfter, reason: reason)
        case .queued(let ticket, var until):
            let deadline = start.advanced(by: gate.withLock { $0.queuePolicy.maxWait })
            do {
                while true {
                    try await clock.sleep(until: min(until, deadline), tolerance: .milliseconds(1))
                    let now = clock.now
                    let poll = gate.withLock { $0.poll(ticket, now: now) }
                    switch poll {
                    case .granted:
                        return .admitted(waited: start.duration(to: now))
                    case .wait(let next):
                        if now >= deadline {
                            gate.withLock { $0.cancel(ticket) }
                            return .rejected(retryAfter: max(.seconds(1), now.duration(to: next)), reason: .queueFull)
                        }
                        until = next
                    }
                }
            } catch {
                gate.withLock { $0.cancel(ticket) }
                throw error
            }
        }
    }

    public func reconcile(estimatedTokens: Int, actualTokens: Int) {
        guard limitsTokens else { return }
        let now = clock.now
        gate.withLock { $0.reconcile(estimatedTokens: estimatedTokens, actualTokens: actualTokens, now: now) }
    }

    public func throttle(for duration: Duration) {
        let until = clock.now.advanced(by: duration)
        gate.withLock { $0.throttle(until: until) }
        everThrottled.store(true, ordering: .releasing)
    }
}
