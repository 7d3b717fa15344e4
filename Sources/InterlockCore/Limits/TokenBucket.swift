/// A token bucket holding a per-minute allowance (requests or model tokens).
///
/// It refills continuously at `limitPerMinute / 60` per second up to `limitPerMinute`.
/// `adjust(by:)` lets the caller reconcile an admission estimate with real usage afterwards;
/// an under-estimate may leave the bucket in debt (negative), which later requests wait out.
public struct TokenBucket<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration, Instant: Sendable {
    public let capacity: Double
    private let refillPerSecond: Double
    public private(set) var tokens: Double
    private var updatedAt: Instant

    public init(limitPerMinute: Int, now: Instant) {
        precondition(limitPerMinute > 0, "a token bucket needs a positive limit")
        self.capacity = Double(limitPerMinute)
        self.refillPerSecond = Double(limitPerMinute) / 60
        self.tokens = Double(limitPerMinute)
        self.updatedAt = now
    }

    private mutating func refill(now: Instant) {
        guard updatedAt < now else { return }
        let elapsed = updatedAt.duration(to: now).seconds
        tokens = min(capacity, tokens + elapsed * refillPerSecond)
        updatedAt = now
    }

    /// A request larger than the whole bucket is admitted when the bucket is full.
    private func effective(_ amount: Double) -> Double { min(amount, capacity) }

    public mutating func available(now: Instant) -> Double {
        refill(now: now)
        return tokens
    }

    public mutating func tryConsume(_ amount: Double, now: Instant) -> Bool {
        refill(now: now)
        let needed = effective(amount)
        guard tokens >= needed else { return false }
        tokens -= amount
        return true
    }

    /// How long until `amount` tokens are there, counting what is already waiting ahead.
    public mutating func timeUntilAvailable(_ amount: Double, now: Instant) -> Duration {
        refill(now: now)
        let missing = effective(amount) - tokens
        guard missing > 0 else { return .zero }
        return .seconds(missing / refillPerSecond)
    }

    /// Reconcile: positive `delta` consumes more, negative gives tokens back.
    public mutating func adjust(by delta: Double, now: Instant) {
        refill(now: now)
        tokens = min(capacity, tokens - delta)
    }
}

extension Duration {
    /// The duration in seconds as a `Double`.
    public var seconds: Double {
        let parts = components
        return Double(parts.seconds) + Double(parts.attoseconds) / 1e18
    }

    /// The duration in milliseconds as a `Double`.
    public var milliseconds: Double { seconds * 1000 }

    /// The duration in whole nanoseconds, saturating.
    public var nanoseconds: Int64 {
        let parts = components
        let (scaled, overflow) = parts.seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return parts.seconds < 0 ? .min : .max }
        return scaled &+ parts.attoseconds / 1_000_000_000
    }
}
