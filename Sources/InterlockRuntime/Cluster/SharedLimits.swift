public import InterlockCore
public import InterlockStore
import FoundationEssentials
public import Logging
import Metrics
public import ServiceLifecycle
import Synchronization

/// Rate limits and dollar budgets counted in the shared store, so that N nodes do not
/// multiply a limit by N. Used only with a shared store (PostgreSQL); one node counts in
/// memory (`AsyncRateLimiter`, `BudgetLedger`).
///
/// - Rate limits (agent and deployment RPM/TPM) are GCRA counters: one round trip per
///   request; a request over the limit waits for its slot up to `gateway.queue.max_wait_ms`.
///   If the store cannot be reached they fail open to the node's own limiter (logged,
///   counted in `interlock_shared_limit_errors_total`).
/// - Budgets are reserved in the store before the call (one round trip) and settled after
///   it off the request path. Unreachable store: the call is refused (503), never let through
///   unbudgeted. A reservation whose node dies expires after `cluster.budget_reservation_ttl_ms`.
public final class SharedLimits: Service, Sendable {
    private let store: any SharedLimitStore
    private let owner: String
    private let reservationTTLMs: Int64
    private let maxWait: Duration
    private let logger: Logger
    private let wallClockMs: @Sendable () -> Int64
    /// Settlements on their way to the store (with the agent they settle for), awaited at
    /// shutdown and, briefly, before the same agent's next reservation on this node.
    private let pending = Mutex<[Int: (agentID: String?, task: Task<Void, Never>)]>([:])
    private let counter = Atomic<Int>(0)

    /// How long a reservation waits for this node's unwritten settlements of the same agent.
    private let settleWait: Duration

    public init(
        store: any SharedLimitStore, owner: String, configuration: InterlockConfiguration, logger: Logger, wallClockMs: @escaping @Sendable () -> Int64,
        settleWait: Duration = .milliseconds(250)
    ) {
        self.settleWait = settleWait
        self.store = store
        self.owner = owner
        self.reservationTTLMs = Int64(configuration.cluster.budgetReservationTTLMs)
        self.maxWait = .milliseconds(configuration.gateway.queueMaxWaitMs)
        self.logger = logger
        self.wallClockMs = wallClockMs
    }

    public func run() async throws {
        try? await gracefulShutdown()
        for entry in pending.withLock({ Array($0.values) }) { await entry.task.value }
    }

    // MARK: Rate limits

    private static let minuteMicros: Int64 = 60_000_000

    /// Waits until `limits` under `key` (`agent:<id>`, `deployment:<id>`) let a request of
    /// `tokens` through: nil when it may go, else how long until it could (more than the
    /// queue's wait bound away).
    public func acquire(_ key: String, limits: RateLimits, tokens: Int) async throws -> Duration? {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: maxWait)
        while true {
            let waitMicros: Int64
            do {
                waitMicros = try await take(key, limits: limits, tokens: tokens)
            } catch {
                Counter(label: "interlock_shared_limit_errors_total", dimensions: [("kind", "rate")]).increment()
                logger.warning("shared rate limit unavailable; the node's own limit applies", metadata: ["interlock.limit": "\(key)", "error": "\(error)"])
                return nil
            }
            if waitMicros == 0 { return nil }
            let wait = Duration.microseconds(waitMicros)
            if clock.now.advanced(by: wait) > deadline { return wait }
            try await Task.sleep(for: wait, tolerance: .milliseconds(1))
        }
    }

    /// Takes the request (and its tokens) from both limits, or neither: 0, or µs to wait.
    private func take(_ key: String, limits: RateLimits, tokens: Int) async throws -> Int64 {
        let now = wallClockMs() * 1_000
        var taken: Int64?
        if let rpm = limits.requestsPerMinute {
            let cost = Self.minuteMicros / Int64(max(1, rpm))
            let wait = try await store.takeRate(key: key + ":rpm", nowMicros: now, costMicros: cost, burstMicros: Self.minuteMicros)
            if wait > 0 { return wait }
            taken = cost
        }
        if let tpm = limits.tokensPerMinute, tokens > 0 {
            let wait = try await store.takeRate(
                key: key + ":tpm", nowMicros: now, costMicros: Self.tokenMicros(tokens, tpm: tpm), burstMicros: Self.minuteMicros)
            if wait > 0 {
                if let taken { try await store.adjustRate(key: key + ":rpm", deltaMicros: -taken, nowMicros: now) }
                return wait
            }
        }
        return 0
    }

    private static func tokenMicros(_ tokens: Int, tpm: Int) -> Int64 {
        Int64(tokens) * minuteMicros / Int64(max(1, tpm))
    }

    /// After the call: the tokens it really used replace the estimate it was admitted with.
    public func reconcile(_ key: String, limits: RateLimits, estimatedTokens: Int, actualTokens: Int) {
        guard let tpm = limits.tokensPerMinute, estimatedTokens != actualTokens else { return }
        let delta = Self.tokenMicros(actualTokens, tpm: tpm) - Self.tokenMicros(estimatedTokens, tpm: tpm)
        let now = wallClockMs() * 1_000
        background { try await self.store.adjustRate(key: key + ":tpm", deltaMicros: delta, nowMicros: now) }
    }

    // MARK: Budgets

    /// A reservation held in the store for one call.
    public struct Reservation: Sendable {
        public var id: String
        public var agentID: String
        public var amount: USD
        var limits: BudgetLedger.Limits
    }

    /// Reserves the call's worst-case cost against the agent's budgets in every node's view.
    /// A settlement for the agent that this node has not written yet is waited for first
    /// (a store round trip, at most `settleWait`, 250 ms): a client that waits for one call before
    /// it sends the next, through the same node, is not refused for a reservation already
    /// spent. A slow or unreachable store does not hold the call longer than that.
    public func reserve(agentID: String, limits: BudgetLedger.Limits, amount: USD) async throws(GatewayError) -> Reservation {
        await awaitSettlements(of: agentID)
        let now = wallClockMs()
        let periods = Self.periods(limits, nowMs: now)
        var generator = SystemRandomNumberGenerator()
        let id = "\(owner)/\(String(generator.next(), radix: 36))"
        let decision: SharedBudgetDecision
        do {
            decision = try await store.reserveBudget(
                agentID: agentID, periods: periods.map(\.shared), amountNanos: amount.nanos, reservationID: id, owner: owner, expiresMs: now + reservationTTLMs)
        } catch {
            Counter(label: "interlock_shared_limit_errors_total", dimensions: [("kind", "budget")]).increment()
            logger.error("shared budget unavailable; refusing the call", metadata: ["interlock.agent.id": "\(agentID)", "error": "\(error)"])
            throw GatewayError(
                kind: .internal, code: "budget_unavailable", message: "Interlock could not check the agent's budget with the cluster's store; try again.",
                status: 503, retryAfterSeconds: 1)
        }
        switch decision {
        case .granted:
            return Reservation(id: id, agentID: agentID, amount: amount, limits: limits)
        case .exhausted(let index, let committed):
            let (period, limit) = periods[min(index, periods.count - 1)].limit
            let retry = Int((period.end(epochMs: now) - now + 999) / 1000)
            throw GatewayError(
                kind: .budget, code: "budget_exceeded",
                message: "Agent '\(agentID)' has reached its \(period == .day ? "daily" : "monthly") budget of $\(limit) ($\(USD(nanos: committed)) spent or reserved across the cluster; this call may cost up to $\(amount)).",
                retryAfterSeconds: retry)
        }
    }

    private func awaitSettlements(of agentID: String) async {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: settleWait)
        while pending.withLock({ $0.values.contains { $0.agentID == agentID } }), clock.now < deadline, !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(1), tolerance: .microseconds(500))
        }
    }

    /// Replaces the reservation with what the call cost, off the request path.
    public func settle(_ reservation: Reservation, actual: USD) {
        let periods = Self.periods(reservation.limits, nowMs: wallClockMs()).map(\.shared)
        background(agentID: reservation.agentID) {
            try await self.store.settleBudget(reservationID: reservation.id, agentID: reservation.agentID, periods: periods, actualNanos: actual.nanos)
        }
    }

    /// Spent and reserved today across the cluster (admin, tests).
    public func today(agentID: String) async throws -> (spent: USD, reserved: USD) {
        let counter = try await store.budgetCounter(agentID: agentID, periodKey: BudgetPeriod.day.key(epochMs: wallClockMs()))
        return (USD(nanos: counter.spentNanos), USD(nanos: counter.reservedNanos))
    }

    private static func periods(_ limits: BudgetLedger.Limits, nowMs: Int64) -> [(shared: SharedBudgetPeriod, limit: (BudgetPeriod, USD))] {
        BudgetPeriod.allCases.compactMap { period in
            guard let limit = limits.perPeriod[period] else { return nil }
            return (SharedBudgetPeriod(key: period.key(epochMs: nowMs), startMs: period.start(epochMs: nowMs), limitNanos: limit.nanos), (period, limit))
        }
    }

    /// A store write after the fact, retried a few times, awaited at shutdown.
    private func background(agentID: String? = nil, _ write: @escaping @Sendable () async throws -> Void) {
        let key = counter.add(1, ordering: .relaxed).newValue
        pending.withLock { tasks in
            let task = Task {
                for attempt in 1...3 {
                    do {
                        try await write()
                        break
                    } catch {
                        if attempt == 3 {
                            Counter(label: "interlock_shared_limit_errors_total", dimensions: [("kind", "settle")]).increment()
                            self.logger.error("a shared limit update was lost", metadata: ["error": "\(error)"])
                        }
                        try? await Task.sleep(for: .milliseconds(100 * attempt))
                    }
                }
                _ = self.pending.withLock { $0.removeValue(forKey: key) }
            }
            tasks[key] = (agentID, task)
        }
    }
}
