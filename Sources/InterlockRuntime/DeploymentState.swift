public import InterlockCore
import InterlockProviders
import Metrics
import Synchronization

/// The live state of one deployment: its limits and queue, breaker and latency estimate.
public final class DeploymentState: Sendable {
    public let settings: DeploymentSettings
    public let provider: ProviderSettings
    public let limiter: AsyncRateLimiter
    let chatEndpoint: UpstreamEndpoint
    let embeddingsEndpoint: UpstreamEndpoint
    private let breaker: Mutex<CircuitBreaker<ContinuousClock.Instant>>
    private let latency = Mutex(LatencyEstimate())

    public init(settings: DeploymentSettings, provider: ProviderSettings, breaker: CircuitBreakerPolicy, queue: AdmissionQueuePolicy) {
        self.settings = settings
        self.provider = provider
        self.limiter = AsyncRateLimiter(name: "deployment:\(settings.id)", limits: settings.limits, queue: queue)
        self.breaker = Mutex(CircuitBreaker(policy: breaker))
        self.chatEndpoint = RequestPreparation.endpoint(provider: provider, deployment: settings, operation: .chat)
        self.embeddingsEndpoint = RequestPreparation.endpoint(provider: provider, deployment: settings, operation: .embeddings)
    }

    public var breakerState: String { breaker.withLock { $0.state.name } }

    public var latencyMs: Double? { latency.withLock { $0.milliseconds } }

    func wouldAllow() -> Bool {
        let now = ContinuousClock.now
        return breaker.withLock { $0.wouldAllow(now: now) }
    }

    func acquireBreaker() -> CircuitBreaker<ContinuousClock.Instant>.Permit {
        let now = ContinuousClock.now
        let (permit, transition) = breaker.withLock { $0.acquire(now: now) }
        if let transition { report(transition) }
        return permit
    }

    func record(success: Bool) {
        let now = ContinuousClock.now
        let transition = breaker.withLock { $0.record(success ? .success : .failure, now: now) }
        if let transition { report(transition) }
    }

    func releaseProbe() {
        breaker.withLock { $0.releaseProbe() }
    }

    func observe(latency duration: Duration) {
        latency.withLock { $0.observe(milliseconds: duration.milliseconds) }
    }

    private func report(_ transition: CircuitBreaker<ContinuousClock.Instant>.Transition) {
        let value: Double
        switch transition {
        case .closed: value = 0
        case .halfOpened: value = 1
        case .opened: value = 2
        }
        Gauge(label: "interlock_breaker_state", dimensions: [("deployment", settings.id)]).record(value)
        Counter(label: "interlock_breaker_transitions_total", dimensions: [("deployment", settings.id), ("to", value == 0 ? "closed" : value == 1 ? "half_open" : "open")]).increment()
    }
}
