import Metrics
import Synchronization

/// The per-call metrics of the account stage, with handles made once per label set.
///
/// Asking the metrics factory for a handle hashes and looks up its labels under a lock; at
/// thousands of calls a second that was a visible share of CPU, so handles are cached here.
final class CallMetrics: Sendable {
    private struct Key: Hashable {
        var agent: String
        var target: String
        var operation: String
    }

    private final class Handles: Sendable {
        let duration: Timer
        let inputTokens: Counter
        let outputTokens: Counter
        let cachedInputTokens: Counter
        let cost: FloatingPointCounter
        let requests: Mutex<[Int: Counter]>
        let dimensions: [(String, String)]

        init(_ key: Key) {
            let dimensions = [("agent", key.agent), ("target", key.target), ("operation", key.operation)]
            self.dimensions = dimensions
            duration = Timer(label: "interlock_request_duration_seconds", dimensions: [("target", key.target), ("operation", key.operation)])
            inputTokens = Counter(label: "interlock_tokens_total", dimensions: dimensions + [("kind", "input")])
            outputTokens = Counter(label: "interlock_tokens_total", dimensions: dimensions + [("kind", "output")])
            cachedInputTokens = Counter(label: "interlock_tokens_total", dimensions: dimensions + [("kind", "cached_input")])
            cost = FloatingPointCounter(label: "interlock_cost_usd_total", dimensions: dimensions)
            requests = Mutex([:])
        }

        func requestCounter(status: Int) -> Counter {
            requests.withLock { counters in
                if let counter = counters[status] { return counter }
                let counter = Counter(label: "interlock_requests_total", dimensions: dimensions + [("status", String(status))])
                counters[status] = counter
                return counter
            }
        }
    }

    private let handles = Mutex<[Key: Handles]>([:])
    private let budgetGauges = Mutex<[String: Gauge]>([:])

    /// `interlock_budget_remaining_usd` of an agent.
    func budgetRemaining(agent: String) -> Gauge {
        budgetGauges.withLock { gauges in
            if let gauge = gauges[agent] { return gauge }
            let gauge = Gauge(label: "interlock_budget_remaining_usd", dimensions: [("agent", agent)])
            gauges[agent] = gauge
            return gauge
        }
    }

    private func handles(agent: String, target: String, operation: String) -> Handles {
        let key = Key(agent: agent, target: target, operation: operation)
        return handles.withLock { cache in
            if let found = cache[key] { return found }
            let made = Handles(key)
            cache[key] = made
            return made
        }
    }

    func record(agent: String, target: String, operation: String, status: Int, latency: Duration, inputTokens: Int, outputTokens: Int, cachedInputTokens: Int, costDollars: Double) {
        let handles = handles(agent: agent, target: target, operation: operation)
        handles.requestCounter(status: status).increment()
        handles.duration.recordNanoseconds(Int64(latency.components.seconds) * 1_000_000_000 + latency.components.attoseconds / 1_000_000_000)
        if inputTokens > 0 { handles.inputTokens.increment(by: inputTokens) }
        if outputTokens > 0 { handles.outputTokens.increment(by: outputTokens) }
        if cachedInputTokens > 0 { handles.cachedInputTokens.increment(by: cachedInputTokens) }
        if costDollars > 0 { handles.cost.increment(by: costDollars) }
    }

    func recordRejection(agent: String, target: String, operation: String, status: Int) {
        handles(agent: agent, target: target, operation: operation).requestCounter(status: status).increment()
    }
}
