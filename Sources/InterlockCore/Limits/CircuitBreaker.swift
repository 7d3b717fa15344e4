/// A circuit breaker for one upstream endpoint.
///
/// Closed: calls flow; it opens after `consecutiveFailures` failures in a row, or when the
/// error rate over the last `windowSize` calls reaches `errorRateThreshold` (once at least
/// `minimumCalls` were seen). Open: calls are refused until `openDuration` has passed.
/// Half-open: up to `halfOpenProbes` calls are let through; one success closes the breaker,
/// one failure opens it again.
public struct CircuitBreaker<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration, Instant: Sendable {
    public typealias Policy = CircuitBreakerPolicy

    public enum State: Sendable, Equatable {
        case closed
        case open(until: Instant)
        case halfOpen(probesInFlight: Int)

        public var name: String {
            switch self {
            case .closed: "closed"
            case .open: "open"
            case .halfOpen: "half_open"
            }
        }
    }

    public enum Permit: Sendable, Equatable {
        case allowed
        case probe
        case rejected(retryAfter: Duration)
    }

    public enum Outcome: Sendable { case success, failure }

    /// A state change worth reporting (metrics, logs, audit).
    public enum Transition: Sendable, Equatable {
        case opened(reason: String)
        case halfOpened
        case closed
    }

    public let policy: Policy
    public private(set) var state: State = .closed
    private var consecutive = 0
    /// Ring buffer of recent outcomes, `true` = failure.
    private var window: [Bool] = []
    private var windowNext = 0
    private var windowFailures = 0

    public init(policy: Policy) {
        precondition(policy.windowSize > 0 && policy.halfOpenProbes > 0, "invalid breaker policy")
        self.policy = policy
    }

    /// Whether a call may go to this endpoint now, without taking a permit.
    public func wouldAllow(now: Instant) -> Bool {
        switch state {
        case .closed: true
        case .open(let until): now >= until
        case .halfOpen(let inFlight): inFlight < policy.halfOpenProbes
        }
    }

    // Specialized here for the gateway's clock: the generic form looked up the type's
    // metadata on every call (about 0.5% of a model call, two calls each).
    @_specialize(exported: true, where Instant == ContinuousClock.Instant)
    public mutating func acquire(now: Instant) -> (Permit, Transition?) {
        switch state {
        case .closed:
            return (.allowed, nil)
        case .open(let until):
            guard now >= until else { return (.rejected(retryAfter: now.duration(to: until)), nil) }
            state = .halfOpen(probesInFlight: 1)
            return (.probe, .halfOpened)
        case .halfOpen(let inFlight):
            guard inFlight < policy.halfOpenProbes else { return (.rejected(retryAfter: .seconds(1)), nil) }
            state = .halfOpen(probesInFlight: inFlight + 1)
            return (.probe, nil)
        }
    }

    @_specialize(exported: true, where Instant == ContinuousClock.Instant)
    public mutating func record(_ outcome: Outcome, now: Instant) -> Transition? {
        switch state {
        case .halfOpen:
            resetWindow()
            switch outcome {
            case .success:
                state = .closed
                return .closed
            case .failure:
                state = .open(until: now.advanced(by: policy.openDuration))
                return .opened(reason: "half-open probe failed")
            }
        case .open:
            // A call admitted before the breaker opened finished late; it changes nothing.
            return nil
        case .closed:
            remember(failure: outcome == .failure)
            if outcome == .failure {
                consecutive += 1
                if consecutive >= policy.consecutiveFailures {
                    return trip(now: now, reason: "\(consecutive) consecutive failures")
                }
            } else {
                consecutive = 0
            }
            if window.count >= policy.minimumCalls {
                let rate = Double(windowFailures) / Double(window.count)
                if rate >= policy.errorRateThreshold {
                    return trip(now: now, reason: "error rate \(Int(rate * 100))% over the last \(window.count) calls")
                }
            }
            return nil
        }
    }

    /// A probe was abandoned without an outcome (e.g. the caller went away).
    public mutating func releaseProbe() {
        if case .halfOpen(let inFlight) = state, inFlight > 0 {
            state = .halfOpen(probesInFlight: inFlight - 1)
        }
    }

    private mutating func trip(now: Instant, reason: String) -> Transition {
        state = .open(until: now.advanced(by: policy.openDuration))
        resetWindow()
        return .opened(reason: reason)
    }

    private mutating func resetWindow() {
        window.removeAll(keepingCapacity: true)
        windowNext = 0
        windowFailures = 0
        consecutive = 0
    }

    private mutating func remember(failure: Bool) {
        if window.count < policy.windowSize {
            window.append(failure)
        } else {
            if window[windowNext] { windowFailures -= 1 }
            window[windowNext] = failure
            windowNext = (windowNext + 1) % policy.windowSize
        }
        if failure { windowFailures += 1 }
    }
}

/// When a breaker opens, how long it stays open and how it probes.
public struct CircuitBreakerPolicy: Sendable, Equatable {
    public var consecutiveFailures: Int
    public var errorRateThreshold: Double
    public var minimumCalls: Int
    public var windowSize: Int
    public var openDuration: Duration
    public var halfOpenProbes: Int

    public init(
        consecutiveFailures: Int = 5, errorRateThreshold: Double = 0.5, minimumCalls: Int = 20,
        windowSize: Int = 50, openDuration: Duration = .seconds(30), halfOpenProbes: Int = 1
    ) {
        self.consecutiveFailures = consecutiveFailures
        self.errorRateThreshold = errorRateThreshold
        self.minimumCalls = minimumCalls
        self.windowSize = windowSize
        self.openDuration = openDuration
        self.halfOpenProbes = halfOpenProbes
    }
}
