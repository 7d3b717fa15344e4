public import InterlockCore
public import InterlockStore
import FoundationEssentials
public import Logging
import Metrics
import Synchronization

/// The target-independent stages of the governed pipeline: authenticate, authorize (grants,
/// default deny), admit (agent rate limits and dollar budgets, reserved up front) and
/// account (reconcile, usage ledger, metrics). Model calls use it now; tool and agent calls
/// plug into the same instance, so there is one copy of identity, limits, budgets and audit.
public final class CallGovernor: Sendable {
    private final class AgentState: Sendable {
        let limiter: AsyncRateLimiter?
        let budget: BudgetAccount?

        init(limiter: AsyncRateLimiter?, budget: BudgetLedger?) {
            self.limiter = limiter
            self.budget = budget.map(BudgetAccount.init)
        }
    }

    /// A budget ledger behind a lock.
    private final class BudgetAccount: Sendable {
        private let ledger: Mutex<BudgetLedger>

        init(_ ledger: BudgetLedger) { self.ledger = Mutex(ledger) }

        func withLock<Result: Sendable>(_ body: (inout BudgetLedger) -> Result) -> Result {
            ledger.withLock { body(&$0) }
        }
    }

    public let directory: AgentDirectory
    private let agentStates: [String: AgentState]
    private let ledger: UsageLedgerWriter
    /// Where every governed call is recorded; nil only in tests that do not look.
    public let audit: AuditLog?
    /// Verifies access tokens from `/oauth/token`; nil accepts API keys only.
    public let tokens: TokenService?
    private let logger: Logger
    private let wallClockMs: @Sendable () -> Int64
    private let metrics = CallMetrics()

    public init(
        agents: [AgentSettings], queue: AdmissionQueuePolicy, ledger: UsageLedgerWriter, audit: AuditLog? = nil, tokens: TokenService? = nil,
        logger: Logger, wallClockMs: (@Sendable () -> Int64)? = nil
    ) {
        self.audit = audit
        self.tokens = tokens
        self.directory = AgentDirectory(agents: agents)
        var states: [String: AgentState] = [:]
        for agent in agents {
            let limits = RateLimits(requestsPerMinute: agent.requestsPerMinute, tokensPerMinute: agent.tokensPerMinute)
            let budgetLimits = BudgetLedger.Limits(daily: agent.dailyBudget, monthly: agent.monthlyBudget)
            states[agent.id] = AgentState(
                limiter: limits.isUnlimited ? nil : AsyncRateLimiter(name: "agent:\(agent.id)", limits: limits, queue: queue),
                budget: budgetLimits.isEmpty ? nil : BudgetLedger(limits: budgetLimits))
        }
        self.agentStates = states
        self.ledger = ledger
        self.logger = logger
        self.wallClockMs = wallClockMs ?? { Int64(Date().timeIntervalSince1970 * 1000) }
    }

    public func nowMs() -> Int64 { wallClockMs() }

    // MARK: Authenticate

    /// Finds the agent for a presented credential: an access token from `/oauth/token` or an
    /// API key. 401 (audited) when there is none or it is not valid.
    public func authenticate(credential: String?, requestID: String? = nil, target: String? = nil) async throws(GatewayError) -> AgentSettings {
        guard let credential, let tokens, TokenService.looksLikeJWT(credential) else {
            return try authenticate(apiKey: credential, requestID: requestID, target: target)
        }
        do throws(GatewayError) {
            let id = try await tokens.verify(credential, nowMs: wallClockMs())
            guard let agent = directory.agent(id: id) else {
                throw GatewayError(kind: .authentication, code: "invalid_token", message: "The token's agent '\(id)' is not known here.")
            }
            return agent
        } catch {
            auditRefusal(error, action: "auth.failed", agentID: nil, target: target, requestID: requestID)
            throw error
        }
    }

    /// Finds the agent for a presented API key; 401 when there is none or it is wrong, and
    /// the refusal is audited (`auth.failed`) when `audited`. The event-loop path asks
    /// without auditing: a refusal there is handed to the router, which asks again.
    public func authenticate(apiKey: String?, audited: Bool = true, requestID: String? = nil, target: String? = nil) throws(GatewayError) -> AgentSettings {
        let error: GatewayError
        if let apiKey, !apiKey.isEmpty {
            if let tokens, TokenService.looksLikeJWT(apiKey) {
                // Only a token verified before can be accepted without waiting.
                if let id = tokens.cachedAgentID(apiKey, nowMs: wallClockMs()), let agent = directory.agent(id: id) { return agent }
                if !audited { throw GatewayError.invalidCredential }
            }
            if let agent = directory.authenticate(apiKey: apiKey) { return agent }
            error = .invalidCredential
        } else {
            error = .missingCredential
        }
        if audited { auditRefusal(error, action: "auth.failed", agentID: nil, target: target, requestID: requestID) }
        throw error
    }

    // MARK: Authorize

    /// Default deny: the agent must have been granted the target by name (or `*`). A refusal
    /// is audited when `audited` (see `authenticate`).
    public func authorize(_ agent: AgentSettings, kind: TargetKind, target: String, audited: Bool = true, requestID: String? = nil) throws(GatewayError) {
        let error: GatewayError
        switch kind {
        case .model:
            if agent.models.contains(target) || agent.models.contains("*") { return }
            error = GatewayError.modelNotAllowed(target)
        case .tool, .agent:
            error = GatewayError(kind: .permission, code: "target_not_allowed", message: "This agent is not granted the \(kind.rawValue) '\(target)'.")
        }
        if audited { auditRefusal(error, action: "\(kind.rawValue).call", agentID: agent.id, target: target, requestID: requestID) }
        throw error
    }

    // MARK: Admit

    /// A call that passed admission. Settle it exactly once.
    public struct Admission: Sendable {
        public var call: GovernedCall
        public var startedAt: ContinuousClock.Instant
        public var queued: Duration
        fileprivate var reservation: BudgetLedger.Reservation?
    }

    /// Agent-level limits (waiting in the bounded queue if need be), then the budget reservation.
    public func admit(_ call: GovernedCall) async throws(GatewayError) -> Admission {
        let started = ContinuousClock.now
        let state = agentStates[call.agent.id]
        var queued = Duration.zero
        if let limiter = state?.limiter {
            let outcome: AsyncRateLimiter.Outcome
            do {
                outcome = try await limiter.acquire(tokens: call.expectedTokens, priority: call.agent.priority)
            } catch {
                throw GatewayError(kind: .rateLimit, code: "request_cancelled", message: "The request was cancelled while waiting for the agent's rate limit.", status: 499)
            }
            switch outcome {
            case .admitted(let waited):
                queued = waited
            case .rejected(let retryAfter, let reason):
                recordRejection(call, status: 429, code: "agent_rate_limited")
                throw GatewayError(
                    kind: .rateLimit, code: "agent_rate_limited",
                    message: "Agent '\(call.agent.id)' is over its \(reason == .tokensPerMinute ? "tokens-per-minute" : "requests-per-minute") limit; retry after \(Self.seconds(retryAfter)) s.",
                    retryAfterSeconds: Self.seconds(retryAfter))
            }
        }
        return try reserveBudget(call, state: state, started: started, queued: queued)
    }

    /// Admission without waiting, for the event-loop path: `nil` (and nothing changed) when the
    /// agent's rate limit would make the call wait or refuse it, so the caller takes the
    /// waiting path, which also produces the refusal. Budget refusals are thrown here.
    public func admitImmediately(_ call: GovernedCall) throws(GatewayError) -> Admission? {
        let started = ContinuousClock.now
        let state = agentStates[call.agent.id]
        if let limiter = state?.limiter, !limiter.acquireImmediately(tokens: call.expectedTokens) { return nil }
        return try reserveBudget(call, state: state, started: started, queued: .zero)
    }

    /// The budget half of admission, after the agent's rate limit let the call through.
    private func reserveBudget(_ call: GovernedCall, state: AgentState?, started: ContinuousClock.Instant, queued: Duration) throws(GatewayError) -> Admission {
        var reservation: BudgetLedger.Reservation?
        if let budget = state?.budget {
            let now = wallClockMs()
            let decision = budget.withLock { $0.reserve(call.expectedCost, epochMs: now) }
            switch decision {
            case .granted(let granted):
                reservation = granted
            case .exhausted(let period, let limit, let committed, let retryAfter):
                state?.limiter?.reconcile(estimatedTokens: call.expectedTokens, actualTokens: 0)
                recordRejection(call, status: 429, code: "budget_exceeded")
                Counter(label: "interlock_budget_rejections_total", dimensions: [("agent", call.agent.id), ("period", period.rawValue)]).increment()
                throw GatewayError(
                    kind: .budget, code: "budget_exceeded",
                    message: "Agent '\(call.agent.id)' has reached its \(period == .day ? "daily" : "monthly") budget of $\(limit) ($\(committed) spent or reserved; this call may cost up to $\(call.expectedCost)).",
                    retryAfterSeconds: retryAfter)
            }
        }
        return Admission(call: call, startedAt: started, queued: queued, reservation: reservation)
    }

    // MARK: Account

    /// Reconciles reservations with what the call really used and records it.
    public func settle(_ admission: Admission, _ outcome: CallOutcome) {
        let call = admission.call
        let now = wallClockMs()
        let state = agentStates[call.agent.id]
        state?.limiter?.reconcile(estimatedTokens: call.expectedTokens, actualTokens: outcome.usage.totalTokens)
        if let budget = state?.budget {
            let remaining: USD? = budget.withLock { ledger in
                if let reservation = admission.reservation {
                    ledger.settle(reservation, actual: outcome.cost, epochMs: now)
                } else {
                    ledger.record(outcome.cost, epochMs: now)
                }
                return ledger.remaining(epochMs: now)
            }
            if let remaining {
                Gauge(label: "interlock_budget_remaining_usd", dimensions: [("agent", call.agent.id)]).record(remaining.dollars)
            }
        }
        let latency = admission.startedAt.duration(to: .now)
        audit?.record(AuditRecord(
            timestampMs: now, node: "", action: "\(call.targetKind.rawValue).call", agentID: call.agent.id, target: call.target, decision: "allow",
            reason: outcome.errorCode, argumentsHash: call.argumentsHash, outcome: outcome.outcome.rawValue, status: outcome.status,
            costNanos: outcome.cost.nanos, requestID: call.requestID))
        ledger.append(UsageRecord(
            requestID: call.requestID, timestampMs: now, agentID: call.agent.id, targetKind: call.targetKind.rawValue,
            target: call.target, deploymentID: outcome.deploymentID, provider: outcome.provider, upstreamModel: outcome.upstreamModel,
            operation: call.operation, stream: call.stream, usage: outcome.usage, cost: outcome.cost, latencyMs: latency.milliseconds,
            attempts: outcome.attempts, outcome: outcome.outcome, status: outcome.status, errorCode: outcome.errorCode))
        metrics.record(
            agent: call.agent.id, target: call.target, operation: call.operation, status: outcome.status, latency: latency,
            inputTokens: outcome.usage.inputTokens, outputTokens: outcome.usage.outputTokens,
            cachedInputTokens: outcome.usage.cachedInputTokens, costDollars: outcome.cost.dollars)
        // The usage ledger is the per-call record; this line is for debugging and stays off the hot path by default.
        logger.debug(
            "call finished",
            metadata: [
                "interlock.request.id": "\(call.requestID)", "interlock.agent.id": "\(call.agent.id)", "interlock.target": "\(call.target)",
                "interlock.deployment": "\(outcome.deploymentID ?? "-")", "interlock.status": "\(outcome.status)",
                "interlock.tokens.input": "\(outcome.usage.inputTokens)", "interlock.tokens.output": "\(outcome.usage.outputTokens)",
                "interlock.cost_usd": "\(outcome.cost)", "interlock.latency_ms": "\(Int(latency.milliseconds))",
            ])
    }

    /// Restores today's and this month's spending from the usage ledger (at start-up).
    public func restoreBudgets(from store: any InterlockStore) async throws {
        let now = wallClockMs()
        for (agentID, state) in agentStates {
            guard let budget = state.budget else { continue }
            for period in BudgetPeriod.allCases {
                let spent = try await store.spend(agentID: agentID, sinceMs: period.start(epochMs: now))
                budget.withLock { $0.restore(period: period, key: period.key(epochMs: now), spent: spent.cost) }
            }
        }
    }

    /// Spending and reservations of an agent right now (tests, admin).
    public func budgetSnapshot(agentID: String) -> (spentToday: USD, reserved: USD)? {
        guard let budget = agentStates[agentID]?.budget else { return nil }
        let now = wallClockMs()
        return budget.withLock { ($0.spent(in: .day, epochMs: now), $0.reserved) }
    }

    public func agentQueueDepth(agentID: String) -> Int {
        agentStates[agentID]?.limiter?.queueDepth ?? 0
    }

    /// The audit record of a refused call, whichever stage refused it. Refusals before an
    /// agent is known (`auth.failed`) carry no agent and no outcome.
    public func auditRefusal(
        _ error: GatewayError, action: String, agentID: String?, target: String?, argumentsHash: String? = nil, requestID: String?
    ) {
        auditRefusal(reason: error.code, status: error.status, action: action, agentID: agentID, target: target, argumentsHash: argumentsHash, requestID: requestID)
    }

    private func auditRefusal(reason: String, status: Int, action: String, agentID: String?, target: String?, argumentsHash: String?, requestID: String?) {
        audit?.record(AuditRecord(
            timestampMs: 0, node: "", action: action, agentID: agentID, target: target, decision: "deny", reason: reason,
            argumentsHash: argumentsHash, outcome: agentID == nil ? nil : UsageRecord.Outcome.rejected.rawValue, status: status,
            requestID: requestID))
    }

    private func recordRejection(_ call: GovernedCall, status: Int, code: String) {
        auditRefusal(
            reason: code, status: status, action: "\(call.targetKind.rawValue).call", agentID: call.agent.id, target: call.target,
            argumentsHash: call.argumentsHash, requestID: call.requestID)
        ledger.append(UsageRecord(
            requestID: call.requestID, timestampMs: wallClockMs(), agentID: call.agent.id, targetKind: call.targetKind.rawValue,
            target: call.target, deploymentID: nil, provider: nil, upstreamModel: nil, operation: call.operation, stream: call.stream,
            usage: .zero, cost: .zero, latencyMs: 0, attempts: 0, outcome: .rejected, status: status, errorCode: code))
        metrics.recordRejection(agent: call.agent.id, target: call.target, operation: call.operation, status: status)
    }

    static func seconds(_ duration: Duration) -> Int {
        max(1, Int(duration.seconds.rounded(.up)))
    }
}
