/// Per-minute request and token limits for one key (an agent or a deployment), with a bounded
/// priority queue for callers that arrive while the limits are used up.
///
/// A value-type state machine: the caller owns the clock and the sleeping. A caller that is
/// queued polls with its ticket when told to; only the head of the queue (highest priority,
/// then oldest) can be admitted, so waiters are served in order and none starves a
/// higher-priority one.
public struct RateLimitGate<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration, Instant: Sendable {
    public typealias Limits = RateLimits
    public typealias QueuePolicy = AdmissionQueuePolicy

    public typealias Ticket = UInt64

    public enum Admission: Sendable, Equatable {
        case granted
        /// Wait, then `poll` with the ticket at `until` (or earlier).
        case queued(Ticket, until: Instant)
        /// Too busy: the queue is full or the expected wait is past the bound.
        case rejected(retryAfter: Duration, reason: RejectionReason)
    }

    public enum RejectionReason: String, Sendable {
        case requestsPerMinute = "rpm"
        case tokensPerMinute = "tpm"
        case throttled
        case queueFull = "queue_full"
    }

    public enum Poll: Sendable, Equatable {
        case granted
        case wait(until: Instant)
    }

    private struct Waiter: Sendable {
        var ticket: Ticket
        var priority: Int
        var tokens: Double
    }

    public let limits: Limits
    public let queuePolicy: QueuePolicy
    private var requests: TokenBucket<Instant>?
    private var tokens: TokenBucket<Instant>?
    private var throttledUntil: Instant?
    /// Sorted: highest priority first, then by arrival.
    private var queue: [Waiter] = []
    private var nextTicket: Ticket = 0

    public init(limits: Limits, queuePolicy: QueuePolicy, now: Instant) {
        self.limits = limits
        self.queuePolicy = queuePolicy
        self.requests = limits.requestsPerMinute.map { TokenBucket(limitPerMinute: $0, now: now) }
        self.tokens = limits.tokensPerMinute.map { TokenBucket(limitPerMinute: $0, now: now) }
    }

    public var queueDepth: Int { queue.count }

    /// Asks to start one request expected to use `tokens` model tokens.
    // The hot entry points are specialized for the gateway's clock, as in `CircuitBreaker`:
    // the generic forms looked up the type's metadata on every call.
    @_specialize(exported: true, where Instant == ContinuousClock.Instant)
    public mutating func admit(tokens amount: Int, priority: Int = 0, now: Instant) -> Admission {
        let amount = Double(max(0, amount))
        if queue.isEmpty, waitForCapacity(tokens: amount, now: now) == .zero {
            consume(tokens: amount, now: now)
            return .granted
        }
        guard queue.count < queuePolicy.maxDepth else {
            let wait = estimatedWait(aheadRequests: queue.count, aheadTokens: queuedTokens + amount, now: now)
            return .rejected(retryAfter: max(wait.duration, .seconds(1)), reason: .queueFull)
        }
        // Estimate with everyone ahead of this caller (same or higher priority).
        let ahead = queue.filter { $0.priority >= priority }
        let wait = estimatedWait(aheadRequests: ahead.count, aheadTokens: ahead.reduce(0) { $0 + $1.tokens } + amount, now: now)
        guard wait.duration <= queuePolicy.maxWait else {
            return .rejected(retryAfter: wait.duration, reason: wait.reason)
        }
        nextTicket += 1
        let waiter = Waiter(ticket: nextTicket, priority: priority, tokens: amount)
        let position = queue.firstIndex { $0.priority < priority } ?? queue.endIndex
        queue.insert(waiter, at: position)
        return .queued(waiter.ticket, until: now.advanced(by: max(wait.duration, .milliseconds(1))))
    }

    /// Starts the request if it can start right now with nobody waiting; otherwise changes
    /// nothing and returns false (the caller then goes through `admit`).
    @_specialize(exported: true, where Instant == ContinuousClock.Instant)
    public mutating func admitImmediately(tokens amount: Int, now: Instant) -> Bool {
        let amount = Double(max(0, amount))
        guard queue.isEmpty, waitForCapacity(tokens: amount, now: now) == .zero else { return false }
        consume(tokens: amount, now: now)
        return true
    }

    /// A queued caller checks whether it may start now.
    @_specialize(exported: true, where Instant == ContinuousClock.Instant)
    public mutating func poll(_ ticket: Ticket, now: Instant) -> Poll {
        guard let position = queue.firstIndex(where: { $0.ticket == ticket }) else {
            preconditionFailure("polled a ticket that is not queued")
        }
        let waiter = queue[position]
        if position == 0 {
            let wait = waitForCapacity(tokens: waiter.tokens, now: now)
            if wait == .zero {
                queue.removeFirst()
                consume(tokens: waiter.tokens, now: now)
                return .granted
            }
            return .wait(until: now.advanced(by: max(wait, .milliseconds(1))))
        }
        let ahead = queue[..<position]
        let wait = estimatedWait(aheadRequests: ahead.count, aheadTokens: ahead.reduce(0) { $0 + $1.tokens } + waiter.tokens, now: now)
        return .wait(until: now.advanced(by: max(wait.duration, .milliseconds(1))))
    }

    /// A queued caller gives up (timed out or went away).
    public mutating func cancel(_ ticket: Ticket) {
        queue.removeAll { $0.ticket == ticket }
    }

    /// Reconcile an admitted request's token estimate with what it really used.
    @_specialize(exported: true, where Instant == ContinuousClock.Instant)
    public mutating func reconcile(estimatedTokens: Int, actualTokens: Int, now: Instant) {
        tokens?.adjust(by: Double(actualTokens - estimatedTokens), now: now)
    }

    /// The upstream said "slow down": admit nothing before `until`.
    public mutating func throttle(until: Instant) {
        if let current = throttledUntil, current >= until { return }
        throttledUntil = until
    }

    public func isThrottled(now: Instant) -> Bool {
        if let until = throttledUntil { return now < until }
        return false
    }

    /// Whether a request of this size could start right now with nobody waiting.
    public mutating func hasCapacity(tokens amount: Int, now: Instant) -> Bool {
        queue.isEmpty && waitForCapacity(tokens: Double(amount), now: now) == .zero
    }

    // MARK: - Internals

    private var queuedTokens: Double { queue.reduce(0) { $0 + $1.tokens } }

    private mutating func consume(tokens amount: Double, now: Instant) {
        let requestOK = requests?.tryConsume(1, now: now) ?? true
        let tokenOK = tokens?.tryConsume(amount, now: now) ?? true
        assert(requestOK && tokenOK, "consume called without capacity")
    }

    private mutating func waitForCapacity(tokens amount: Double, now: Instant) -> Duration {
        var wait = Duration.zero
        if let until = throttledUntil, now < until { wait = max(wait, now.duration(to: until)) }
        if let requestWait = requests?.timeUntilAvailable(1, now: now) { wait = max(wait, requestWait) }
        if let tokenWait = tokens?.timeUntilAvailable(amount, now: now) { wait = max(wait, tokenWait) }
        return wait
    }

    private mutating func estimatedWait(aheadRequests: Int, aheadTokens: Double, now: Instant) -> (duration: Duration, reason: RejectionReason) {
        var wait = Duration.zero
        var reason = RejectionReason.requestsPerMinute
        if let until = throttledUntil, now < until {
            wait = now.duration(to: until)
            reason = .throttled
        }
        if var requestBucket = requests {
            // Time for aheadRequests + 1 requests: those ahead and this one.
            let needed = Double(aheadRequests + 1)
            let perSecond = requestBucket.capacity / 60
            let missing = needed - requestBucket.available(now: now)
            let requestWait = missing > 0 ? Duration.seconds(missing / perSecond) : .zero
            if requestWait > wait { wait = requestWait; reason = .requestsPerMinute }
        }
        if var tokenBucket = tokens {
            let perSecond = tokenBucket.capacity / 60
            let missing = min(aheadTokens, tokenBucket.capacity * Double(aheadRequests + 1)) - tokenBucket.available(now: now)
            let tokenWait = missing > 0 ? Duration.seconds(missing / perSecond) : .zero
            if tokenWait > wait { wait = tokenWait; reason = .tokensPerMinute }
        }
        return (wait, reason)
    }
}

/// Per-minute limits of one key. `nil` means unlimited.
public struct RateLimits: Sendable, Equatable {
    public var requestsPerMinute: Int?
    public var tokensPerMinute: Int?

    public init(requestsPerMinute: Int? = nil, tokensPerMinute: Int? = nil) {
        self.requestsPerMinute = requestsPerMinute
        self.tokensPerMinute = tokensPerMinute
    }

    public var isUnlimited: Bool { requestsPerMinute == nil && tokensPerMinute == nil }
}

public struct AdmissionQueuePolicy: Sendable, Equatable {
    /// Callers allowed to wait at once; the next one is refused.
    public var maxDepth: Int
    /// Longest a caller may wait; a caller whose expected wait is longer is refused at once.
    public var maxWait: Duration

    public init(maxDepth: Int, maxWait: Duration) {
        self.maxDepth = maxDepth
        self.maxWait = maxWait
    }
}
