/// How often and how patiently a failed upstream call is tried again: attempts (the first
/// included) and exponential backoff with jitter, capped. Model and tool calls share it.
public struct RetryPolicy: Sendable, Equatable {
    public var maxAttempts: Int
    public var initialBackoffMs: Int
    public var maxBackoffMs: Int

    public init(maxAttempts: Int, initialBackoffMs: Int, maxBackoffMs: Int) {
        self.maxAttempts = maxAttempts
        self.initialBackoffMs = initialBackoffMs
        self.maxBackoffMs = maxBackoffMs
    }

    public init(_ settings: GatewaySettings) {
        self.init(maxAttempts: settings.retryMaxAttempts, initialBackoffMs: settings.retryInitialBackoffMs, maxBackoffMs: settings.retryMaxBackoffMs)
    }

    /// The wait after failed attempt `attempt` (1-based): between half and all of
    /// `initial · 2^(attempt−1)`, capped at `maxBackoffMs` (jitter keeps retries from marching in step).
    public func backoff(afterAttempt attempt: Int, using generator: inout some RandomNumberGenerator) -> Duration {
        let ceiling = min(Double(maxBackoffMs), Double(initialBackoffMs) * Double(1 << min(max(attempt - 1, 0), 20)))
        return .milliseconds(Double.random(in: ceiling / 2...max(ceiling / 2, ceiling), using: &generator))
    }

    public func backoff(afterAttempt attempt: Int) -> Duration {
        var generator = SystemRandomNumberGenerator()
        return backoff(afterAttempt: attempt, using: &generator)
    }
}
