import Metrics
import Synchronization

/// The per-call metrics of the account stage, with handles made once per label set.
///
/// Asking the metrics factory for a handle hashes and looks up its labels under a lock; at
/// thousands of calls a second that was a visible share of CPU, so handles are cached here.
final class CallMetrics: Sendable {
    /// Values made once per key, under a lock.
    private final class Made<Key: Hashable & Sendable, Value: Sendable>: Sendable {
        private let values = Mutex<[Key: Value]>([:])

        func value(_ key: Key, make: (Key) -> Value) -> Value {
            values.withLock { values in
                if let value = values[key] { return value }
                let value = make(key)
                values[key] = value
                return value
            }
        }
    }

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
        let requests = Made<Int, Counter>()
        let dimensions: [(String, String)]

        init(_ key: Key) {
            let dimensions = [("agent", key.agent), ("target", key.target), ("operation", key.operation)]
            self.dimensions = dimensions
            duration = Timer(label: "interlock_request_duration_seconds", dimensions: [("target", key.target), ("operation", key.operation)])
            inputTokens = Counter(label: "interlock_tokens_total", dimensions: dimensions + [("kind", "input")])
            outputTokens = Counter(label: "interlock_tokens_total", dimensions: dimensions + [("kind", "output")])
            cachedInputTokens = Counter(label: "interlock_tokens_total", dimensions: dimensions + [("kind", "cached_input")])
            cost = FloatingPointCounter(label: "interlock_cost_usd_total", dimensions: dimensions)
        }

        func requestCounter(status: Int) -> Counter {
            requests.value(status) { Counter(label: "interlock_requests_total", dimensions: dimensions + [("status", String($0))]) }
        }
    }

    private let handles = Made<Key, Handles>()
    private let budgetGauges = Made<String, Gauge>()

    /// `interlock_budget_remaining_usd` of an agent.
    func budgetRemaining(agent: String) -> Gauge {
        budgetGauges.value(agent) { Gauge(label: "interlock_budget_remaining_usd", dimensions: [("agent", $0)]) }
    }

    private func handles(agent: String, target: String, operation: String) -> Handles {
        handles.value(Key(agent: agent, target: target, operation: operation), make: Handles.init)
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
