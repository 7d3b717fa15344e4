public import InterlockCore
public import InterlockPolicy
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
    /// The agents, their keys and their live limit and budget state.
    public let registry: AgentRegistry
    private let ledger: UsageLedgerWriter
    /// Where every governed call is recorded; nil only in tests that do not look.
    public let audit: AuditLog?
    /// Verifies access tokens from `/oauth/token`; nil accepts API keys only.
    public let tokens: TokenService?
    /// The policy rules and approvals; nil (or empty) lets every granted call through.
    public let policy: PolicyStage?
    /// The guardrail detectors on what agents send and what comes back; nil or empty: none.
    public let guardrails: GuardrailStage?
    private let logger: Logger
    private let wallClockMs: @Sendable () -> Int64
    private let metrics = CallMetrics()
    /// When the last `store_backlog` refusal was logged (wall clock, ms).
    private let backlogWarnedMs = Atomic<Int64>(0)
    /// Budgets of the workflow runs executing on this node, by run id.
    private let runBudgets = Mutex<[String: RunBudget]>([:])
    /// Agent and deployment limits counted across the cluster (shared store only).
    public let shared: SharedLimits?

    public init(
        registry: AgentRegistry, ledger: UsageLedgerWriter, audit: AuditLog? = nil, tokens: TokenService? = nil, policy: PolicyStage? = nil,
        guardrails: GuardrailStage? = nil, shared: SharedLimits? = nil, logger: Logger, wallClockMs: (@Sendable () -> Int64)? = nil
    ) {
        self.registry = registry
        self.shared = shared
        self.policy = policy
        self.guardrails = guardrails
        self.audit = audit
        self.tokens = tokens
        self.ledger = ledger
        self.logger = logger
        self.wallClockMs = wallClockMs ?? { Int64(Date().timeIntervalSince1970 * 1000) }
    }

    /// The governor of a node: the registry opened from the store and reconciled with the
    /// config's agents, budgets restored from the usage ledger.
    public static func open(
        configuration: InterlockConfiguration, store: any InterlockStore, ledger: UsageLedgerWriter, audit: AuditLog?, tokens: TokenService?,
        shared: SharedLimits? = nil, logger: Logger, wallClockMs: (@Sendable () -> Int64)? = nil
    ) async throws -> CallGovernor {
        let clock = wallClockMs ?? { Int64(Date().timeIntervalSince1970 * 1000) }
        let queue = AdmissionQueuePolicy(maxDepth: configuration.gateway.queueMaxDepth, maxWait: .milliseconds(configuration.gateway.queueMaxWaitMs))
        let registry = try await AgentRegistry.open(
            store: store, declared: configuration.agents, queue: queue, settings: configuration.auth, nowMs: clock(), logger: logger)
        let policy = try PolicyStage(
            settings: configuration.policy, store: store, audit: audit, region: configuration.node.region, logger: logger, wallClockMs: clock)
        let guardrails = GuardrailStage(engine: try GuardrailEngine(settings: configuration.guardrails), audit: audit, policy: policy)
        let governor = CallGovernor(
            registry: registry, ledger: ledger, audit: audit, tokens: tokens, policy: policy, guardrails: guardrails, shared: shared, logger: logger,
            wallClockMs: clock)
        try await governor.restoreBudgets(from: store)
        return governor
    }

    public func nowMs() -> Int64 { wallClockMs() }

    // MARK: Authenticate

    /// Who is calling, from a presented credential: an access token from `/oauth/token` or an
    /// API key. 401 (audited) when there is none or it is not valid, or the agent is disabled.
    public func authenticate(credential: String?, requestID: String? = nil, target: String? = nil) async throws(GatewayError) -> Caller {
        guard let credential, let tokens, TokenService.looksLikeJWT(credential), credential.utf8.count <= registry.settings.maxCredentialBytes else {
            return try authenticate(apiKey: credential, requestID: requestID, target: target)
        }
        do throws(GatewayError) {
            return try caller(for: await tokens.verify(credential, nowMs: wallClockMs()))
        } catch {
            auditRefusal(error, action: "auth.failed", agentID: nil, target: target, requestID: requestID)
            throw error
        }
    }

    /// Who is calling, without waiting: an API key, or an access token verified before. 401
    /// when there is no valid credential, audited (`auth.failed`) when `audited`. The
    /// event-loop path asks without auditing: a refusal there is handed to the router, which
    /// asks again (and verifies a token it has not seen).
    public func authenticate(apiKey: String?, audited: Bool = true, requestID: String? = nil, target: String? = nil) throws(GatewayError) -> Caller {
        let error: GatewayError
        do throws(GatewayError) {
            guard let apiKey, !apiKey.isEmpty else { throw GatewayError.missingCredential }
            guard apiKey.utf8.count <= registry.settings.maxCredentialBytes else {
                throw GatewayError(
                    kind: .authentication, code: "invalid_token",
                    message: "The credential is \(apiKey.utf8.count) bytes long; Interlock reads at most \(registry.settings.maxCredentialBytes).")
            }
            if let tokens, TokenService.looksLikeJWT(apiKey) {
                guard let verified = tokens.cachedToken(apiKey, nowMs: wallClockMs()) else { throw GatewayError.invalidCredential }
                return try caller(for: verified)
            }
            let now = wallClockMs()
            switch registry.match(apiKey: apiKey, nowMs: now) {
            case .valid(let entry, let key):
                try Self.requireEnabled(entry.agent)
                return Caller(agent: entry.agent, credential: .apiKey(id: key.id))
            case .unknown:
                throw GatewayError.invalidCredential
            case .expired(let key):
                throw GatewayError(kind: .authentication, code: "api_key_expired", message: "The API key '\(key.prefix.isEmpty ? key.id : key.prefix)' has expired.")
            case .revoked(let key):
                throw GatewayError(kind: .authentication, code: "api_key_revoked", message: "The API key '\(key.prefix.isEmpty ? key.id : key.prefix)' was revoked.")
            }
        } catch let refusal {
            error = refusal
        }
        if audited { auditRefusal(error, action: "auth.failed", agentID: nil, target: target, requestID: requestID) }
        throw error
    }

    /// The caller a verified token stands for: its agent (the acting one, for a delegated
    /// token), if every agent it names is still known and enabled and the token was not issued
    /// before the acting agent was last disabled.
    public func caller(for token: TokenService.VerifiedToken) throws(GatewayError) -> Caller {
        let actingID: String
        var user: String?
        if let outermost = token.actors.first {
            guard let id = tokens?.agentID(spiffeID: outermost) else {
                throw TokenService.refuse("The token's actor '\(outermost)' is not an agent of this Interlock.")
            }
            actingID = id
            switch token.subject {
            case .user(let id): user = id
            case .agent(let id): user = tokens?.spiffeID(agentID: id) ?? id
            }
        } else {
            switch token.subject {
            case .agent(let id): actingID = id
            case .user:
                throw TokenService.refuse("A user's token cannot call Interlock by itself; an agent exchanges it for a delegated token at /oauth/token (RFC 8693).")
            }
        }
        guard let agent = registry.entry(id: actingID)?.agent else {
            throw TokenService.refuse("The token's agent '\(actingID)' is not known here.")
        }
        try requireUsable(agent, issuedAtMs: token.issuedAtMs)
        try requireUsableAgents(in: token)
        return Caller(agent: agent, credential: .accessToken(id: token.id), scopes: token.scopes, user: user, actorChain: token.actors)
    }

    /// Every agent a token names besides the one acting — its subject when that is an agent,
    /// the earlier actors of a delegation — must still be enabled and must not have been
    /// disabled since the token was issued: disabling an agent ends what was done in its name.
    public func requireUsableAgents(in token: TokenService.VerifiedToken) throws(GatewayError) {
        var named: [String] = token.actors.dropFirst().compactMap { tokens?.agentID(spiffeID: $0) }
        if case .agent(let id) = token.subject, !token.actors.isEmpty { named.append(id) }
        for id in named {
            guard let agent = registry.entry(id: id)?.agent else { throw TokenService.refuse("The token names agent '\(id)', which is not known here.") }
            try requireUsable(agent, issuedAtMs: token.issuedAtMs)
        }
    }

    /// Enabled, and the token was not issued before the agent was last disabled. `iat` has
    /// whole seconds: a token from the second of the disable is refused too.
    private func requireUsable(_ agent: Agent, issuedAtMs: Int64) throws(GatewayError) {
        try Self.requireEnabled(agent)
        guard issuedAtMs >= (agent.tokensValidFromMs + 999) / 1000 * 1000 else {
            throw TokenService.refuse("The token was issued before agent '\(agent.id)' was disabled; get a new one.")
        }
    }

    static func requireEnabled(_ agent: Agent) throws(GatewayError) {
        guard !agent.disabled else {
            throw GatewayError(kind: .authentication, code: "agent_disabled", message: "Agent '\(agent.id)' is disabled.")
        }
    }

    // MARK: Authorize

    /// Default deny: the agent must have been granted the target by name (or `*`), and the
    /// credential's scopes must include it. A refusal is audited when `audited` (see
    /// `authenticate`).
    public func authorize(_ caller: Caller, kind: TargetKind, target: String, audited: Bool = true, requestID: String? = nil) throws(GatewayError) {
        if caller.permits(kind: kind.rawValue, name: target) { return }
        let error: GatewayError
        if !caller.agent.grants.covers(kind: kind.rawValue, name: target) {
            error = kind == .model
                ? GatewayError.modelNotAllowed(target)
                : GatewayError(kind: .permission, code: "target_not_allowed", message: "This agent is not granted the \(kind.rawValue) '\(target)'.")
        } else {
            error = GatewayError(
                kind: .permission, code: "insufficient_scope",
                message: "The access token does not carry the scope '\(kind.rawValue):\(target)'.", param: kind == .model ? "model" : nil)
        }
        if audited {
            auditRefusal(error, action: kind.callAction, caller: caller, target: target, requestID: requestID)
        }
        throw error
    }

    // MARK: Policy

    /// The policy stage for a call that passed the grants: returns when it may go on, throws
    /// the refusal (audited) otherwise. Waits, up to `policy.approval_wait_ms`, when a rule
    /// holds the call for a human.
    /// The result: the approvals the call goes on under, to pass to `useApprovals` once it
    /// is admitted.
    public func enforcePolicy(_ call: GovernedCall, target: PolicyInput.Target, arguments: @escaping @Sendable () -> JSONValue) async throws(GatewayError)
        -> [String]
    {
        guard let policy, !policy.isEmpty else { return [] }
        return try await policy.enforce(call.caller, Self.policyCall(call, target: target, arguments: arguments)).map { [$0] } ?? []
    }

    /// Uses the approvals a call was let on under, now that every other stage let it
    /// through (so a refusal there leaves the approval unused). If one was used by another
    /// call meanwhile, the admission is settled as refused and the call answered
    /// `approval_pending`.
    public func useApprovals(_ approvals: [String], call: GovernedCall, admission: Admission) async throws(GatewayError) {
        guard let policy, !approvals.isEmpty else { return }
        let policyCall = Self.policyCall(call, target: PolicyInput.Target(kind: call.targetKind.rawValue, name: call.target), arguments: { .null })
        var used: [String] = []
        for id in approvals {
            do {
                try await policy.useApproval(id, caller: call.caller, call: policyCall)
                used.append(id)
            } catch {
                // All or none: the ones already used are put back.
                await policy.restoreApprovals(used, caller: call.caller, call: policyCall)
                settle(admission, CallOutcome(outcome: .rejected, status: error.status, errorCode: error.code))
                throw error
            }
        }
    }

    /// Puts back the approvals of a call that was refused after they were used, before it
    /// reached its target (no deployment available, a deployment's limit, cancelled in queue).
    public func restoreApprovals(_ approvals: [String], call: GovernedCall) async {
        guard let policy, !approvals.isEmpty else { return }
        await policy.restoreApprovals(
            approvals, caller: call.caller,
            call: Self.policyCall(call, target: PolicyInput.Target(kind: call.targetKind.rawValue, name: call.target), arguments: { .null }))
    }

    /// Whether the event-loop path may take a call as far as policy goes: false when a rule
    /// refuses, holds or flags it, or needs state the loop cannot wait for (the async path
    /// then decides and answers).
    public func policyAllowsOnLoop(_ call: GovernedCall, target: PolicyInput.Target, arguments: @escaping @Sendable () -> JSONValue) -> Bool {
        guard let policy, !policy.isEmpty else { return true }
        return policy.decideOnLoop(call.caller, Self.policyCall(call, target: target, arguments: arguments))
    }

    private static func policyCall(_ call: GovernedCall, target: PolicyInput.Target, arguments: @escaping @Sendable () -> JSONValue) -> PolicyStage.Call {
        PolicyStage.Call(kind: call.targetKind, target: target, arguments: arguments, argumentsHash: call.argumentsHash ?? "", requestID: call.requestID)
    }

    /// Whether calls need the hash of their arguments (audit, or approvals binding to it).
    public var needsArgumentsHash: Bool { audit != nil || !(policy?.isEmpty ?? true) || !(guardrails?.isEmpty ?? true) }

    /// Whether the event-loop path must leave this call to the async path for the guard stages.
    public func guardrailsApply(_ caller: Caller, kind: TargetKind, name: String) -> Bool {
        guard let guardrails, !guardrails.isEmpty else { return false }
        return guardrails.applies(caller, kind: kind, name: name)
    }

    // MARK: Admit

    /// A call that passed admission. Settle it exactly once.
    ///
    /// A class: it is handed from stage to stage and kept by attempts and streams, and a copy
    /// of the value (the call, its caller and agent, the reservations) retained every string
    /// and array in it.
    public final class Admission: Sendable {
        public let call: GovernedCall
        public let startedAt: ContinuousClock.Instant
        public let queued: Duration
        fileprivate let reservation: BudgetLedger.Reservation?
        /// What the call reserved of its workflow run's budgets.
        fileprivate let runReservation: RunUsage?
        /// What the call reserved of the agent's budgets in the shared store (cluster).
        fileprivate let sharedReservation: SharedLimits.Reservation?
        /// The agent's state the call was admitted against (kept if the agent changes meanwhile).
        fileprivate let entry: AgentRegistry.Entry
        /// The agent's cut-off generation at admission: a stream watches from here.
        let cutOffGeneration: UInt64

        fileprivate init(
            call: GovernedCall, startedAt: ContinuousClock.Instant, queued: Duration, reservation: BudgetLedger.Reservation?,
            runReservation: RunUsage?, sharedReservation: SharedLimits.Reservation? = nil, entry: AgentRegistry.Entry, cutOffGeneration: UInt64
        ) {
            self.call = call
            self.startedAt = startedAt
            self.queued = queued
            self.reservation = reservation
            self.runReservation = runReservation
            self.sharedReservation = sharedReservation
            self.entry = entry
            self.cutOffGeneration = cutOffGeneration
        }

        /// Calls `handler` when the agent is disabled while this call runs (at once, if it
        /// was disabled since admission). Streams use it to stop.
        public func watchCutOff(_ handler: @escaping @Sendable () -> Void) -> CutOffSignal.Registration? {
            guard let registration = entry.cutOff.register(since: cutOffGeneration, handler) else {
                handler()
                return nil
            }
            return registration
        }

        /// Whether the agent was disabled since admission.
        public var isCutOff: Bool { entry.cutOff.generation != cutOffGeneration }

        /// Waits until the agent is disabled (or the task is cancelled).
        func waitForCutOff() async {
            await entry.cutOff.wait(since: cutOffGeneration)
        }
    }

    /// The agent as it stands now: a call whose agent was disabled after it authenticated
    /// is refused here, before it costs anything.
    private func currentEntry(_ call: GovernedCall) throws(GatewayError) -> (AgentRegistry.Entry, UInt64) {
        guard let entry = registry.entry(id: call.agent.id) else {
            throw GatewayError(kind: .authentication, code: "invalid_api_key", message: "Agent '\(call.agent.id)' is not known here.")
        }
        // The generation first: a disable that lands after this read moves it on.
        let generation = entry.cutOff.generation
        guard let current = registry.entry(id: call.agent.id) else { throw GatewayError.invalidCredential }
        do {
            try Self.requireEnabled(current.agent)
        } catch {
            auditRefusal(error, action: call.targetKind.callAction, caller: call.caller, target: call.target, requestID: call.requestID)
            throw error
        }
        return (current, generation)
    }

    /// Refuses new calls while the usage ledger or the audit log has more records waiting for
    /// the store than it may hold (`max_backlog_records`): memory stays bounded while the store
    /// is slow or away, and no call goes unrecorded. The refusal itself writes no record (it
    /// would add to the backlog); it is counted in `interlock_store_backlog_rejections_total`.
    private func requireRecordsKeepingUp() throws(GatewayError) {
        guard ledger.isBehind || audit?.writer.isBehind == true else { return }
        Counter(label: "interlock_store_backlog_rejections_total").increment()
        // At most one line a second: refusals come at the rate of calls.
        let now = wallClockMs()
        let last = backlogWarnedMs.load(ordering: .relaxed)
        if now - last >= 1_000, backlogWarnedMs.compareExchange(expected: last, desired: now, ordering: .relaxed).exchanged {
            logger.warning(
                "refusing calls: records wait for the store past max_backlog_records",
                metadata: ["interlock.ledger.backlog": "\(ledger.backlog)", "interlock.audit.backlog": "\(audit?.writer.backlog ?? 0)"])
        }
        throw GatewayError(
            kind: .unavailable, code: "store_backlog",
            message: "Interlock cannot record calls as fast as they arrive (its store is slow or unreachable); retry shortly.",
            retryAfterSeconds: 1)
    }

    /// Agent-level limits (waiting in the bounded queue if need be), then the budget reservation.
    public func admit(_ call: GovernedCall) async throws(GatewayError) -> Admission {
        let started = ContinuousClock.now
        try requireRecordsKeepingUp()
        let (entry, generation) = try currentEntry(call)
        var queued = Duration.zero
        if let limiter = entry.limiter {
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
                throw rateLimited(call, limit: reason == .tokensPerMinute ? "tokens-per-minute limit" : "requests-per-minute limit", retryAfter: retryAfter)
            }
        }
        if let shared {
            return try await admitShared(shared, call, entry: entry, generation: generation, started: started, queued: queued)
        }
        return try reserveBudget(call, entry: entry, generation: generation, started: started, queued: queued)
    }

    /// The refusal of a call over the agent's rate limit (recorded and audited), whichever
    /// count refused it.
    private func rateLimited(_ call: GovernedCall, limit: String, retryAfter: Duration) -> GatewayError {
        recordRejection(call, status: 429, code: "agent_rate_limited")
        return GatewayError(
            kind: .rateLimit, code: "agent_rate_limited",
            message: "Agent '\(call.agent.id)' is over its \(limit); retry after \(Self.seconds(retryAfter)) s.", retryAfterSeconds: Self.seconds(retryAfter))
    }

    /// The cluster half of admission: the agent's limits and budget as every node counts them.
    private func admitShared(
        _ shared: SharedLimits, _ call: GovernedCall, entry: AgentRegistry.Entry, generation: UInt64, started: ContinuousClock.Instant, queued: Duration
    ) async throws(GatewayError) -> Admission {
        let limits = entry.agent.limits
        let key = "agent:\(call.agent.id)"
        if !limits.isUnlimited {
            let refusal: Duration?
            do {
                refusal = try await shared.acquire(key, limits: limits, tokens: call.expectedTokens)
            } catch {
                entry.limiter?.reconcile(estimatedTokens: call.expectedTokens, actualTokens: 0)
                throw GatewayError(kind: .rateLimit, code: "request_cancelled", message: "The request was cancelled while waiting for the agent's rate limit.", status: 499)
            }
            if let retryAfter = refusal {
                entry.limiter?.reconcile(estimatedTokens: call.expectedTokens, actualTokens: 0)
                throw rateLimited(call, limit: "rate limit across the cluster", retryAfter: retryAfter)
            }
        }
        let runReservation = try reserveRunBudget(call)
        var reservation: SharedLimits.Reservation?
        if let budget = entry.budget {
            let budgetLimits = budget.withLock { $0.limits }
            if !budgetLimits.isEmpty {
                do {
                    reservation = try await shared.reserve(agentID: call.agent.id, limits: budgetLimits, amount: call.expectedCost)
                } catch {
                    entry.limiter?.reconcile(estimatedTokens: call.expectedTokens, actualTokens: 0)
                    shared.reconcile(key, limits: limits, estimatedTokens: call.expectedTokens, actualTokens: 0)
                    if let runReservation, let runID = call.workflowRunID {
                        runBudgets.withLock { $0[runID]?.settle(runReservation, actual: .zero) }
                    }
                    // Refused for the budget, or because the budget could not be checked: audited either way.
                    recordRejection(call, status: error.status, code: error.code)
                    if error.code == "budget_exceeded" {
                        Counter(label: "interlock_budget_rejections_total", dimensions: [("agent", call.agent.id), ("period", "shared")]).increment()
                    }
                    throw error
                }
            }
        }
        return Admission(
            call: call, startedAt: started, queued: queued, reservation: nil, runReservation: runReservation, sharedReservation: reservation,
            entry: entry, cutOffGeneration: generation)
    }

    /// Admission without waiting, for the event-loop path: `nil` (and nothing changed) when the
    /// agent's rate limit would make the call wait or refuse it, so the caller takes the
    /// waiting path, which also produces the refusal. Budget refusals are thrown here.
    public func admitImmediately(_ call: GovernedCall) throws(GatewayError) -> Admission? {
        let started = ContinuousClock.now
        try requireRecordsKeepingUp()
        let (entry, generation) = try currentEntry(call)
        // Cluster limits and budgets take a round trip to the store: the waiting path.
        if shared != nil, !entry.agent.limits.isUnlimited || entry.budget != nil { return nil }
        if let limiter = entry.limiter, !limiter.acquireImmediately(tokens: call.expectedTokens) { return nil }
        return try reserveBudget(call, entry: entry, generation: generation, started: started, queued: .zero)
    }

    /// The budget half of admission, after the agent's rate limit let the call through.
    private func reserveBudget(
        _ call: GovernedCall, entry: AgentRegistry.Entry, generation: UInt64, started: ContinuousClock.Instant, queued: Duration
    ) throws(GatewayError) -> Admission {
        let runReservation = try reserveRunBudget(call)
        var reservation: BudgetLedger.Reservation?
        if let budget = entry.budget {
            let now = wallClockMs()
            let decision = budget.withLock { $0.reserve(call.expectedCost, epochMs: now) }
            switch decision {
            case .granted(let granted):
                reservation = granted
            case .exhausted(let period, let limit, let committed, let retryAfter):
                entry.limiter?.reconcile(estimatedTokens: call.expectedTokens, actualTokens: 0)
                if let runReservation, let runID = call.workflowRunID {
                    runBudgets.withLock { $0[runID]?.settle(runReservation, actual: .zero) }
                }
                recordRejection(call, status: 429, code: "budget_exceeded")
                Counter(label: "interlock_budget_rejections_total", dimensions: [("agent", call.agent.id), ("period", period.rawValue)]).increment()
                throw GatewayError(
                    kind: .budget, code: "budget_exceeded",
                    message: "Agent '\(call.agent.id)' has reached its \(period == .day ? "daily" : "monthly") budget of $\(limit) ($\(committed) spent or reserved; this call may cost up to $\(call.expectedCost)).",
                    retryAfterSeconds: retryAfter)
            }
        }
        return Admission(
            call: call, startedAt: started, queued: queued, reservation: reservation, runReservation: runReservation, entry: entry, cutOffGeneration: generation)
    }

    /// A workflow run's budgets: the call reserves its worst case, or is refused (and the run
    /// stopped by its worker) when that would pass a limit.
    private func reserveRunBudget(_ call: GovernedCall) throws(GatewayError) -> RunUsage? {
        guard let runID = call.workflowRunID else { return nil }
        let model = call.targetKind == .model
        let decision = runBudgets.withLock { budgets -> RunBudget.Decision? in
            budgets[runID]?.reserve(model: model, tokens: model ? call.expectedTokens : 0, cost: call.expectedCost)
        }
        switch decision {
        case nil:
            return nil
        case .granted(let reservation)?:
            return reservation
        case .exceeded(let limit, let message)?:
            recordRejection(call, status: 429, code: "run_budget_exceeded")
            throw GatewayError(kind: .budget, code: "run_budget_exceeded", message: message, details: ["limit": .string(limit), "run": .string(runID)])
        }
    }

    /// Starts enforcing a run's budgets on the calls its steps make (the worker that executes
    /// the run opens them, with the usage checkpointed so far).
    public func openRunBudget(runID: String, limits: RunBudgetLimits, used: RunUsage) {
        runBudgets.withLock { $0[runID] = RunBudget(limits: limits, used: used) }
    }

    /// Stops enforcing them; what the run used, as this node counted it.
    @discardableResult
    public func closeRunBudget(runID: String) -> RunUsage? {
        runBudgets.withLock { $0.removeValue(forKey: runID)?.used }
    }

    /// What a run executing here has used so far (settled calls) and holds reserved.
    public func runUsage(runID: String) -> (used: RunUsage, reserved: RunUsage)? {
        runBudgets.withLock { budgets in budgets[runID].map { ($0.used, $0.reserved) } }
    }

    // MARK: Account

    /// Reconciles reservations with what the call really used and records it.
    public func settle(_ admission: Admission, _ outcome: CallOutcome) {
        let call = admission.call
        let now = wallClockMs()
        let entry = admission.entry
        entry.limiter?.reconcile(estimatedTokens: call.expectedTokens, actualTokens: outcome.usage.totalTokens)
        if let shared {
            shared.reconcile("agent:\(call.agent.id)", limits: entry.agent.limits, estimatedTokens: call.expectedTokens, actualTokens: outcome.usage.totalTokens)
            if let reservation = admission.sharedReservation { shared.settle(reservation, actual: outcome.cost) }
        }
        if let runReservation = admission.runReservation, let runID = call.workflowRunID {
            // A call refused before it reached its target counts as no call.
            let reached = outcome.outcome != .rejected
            let actual = RunUsage(
                modelCalls: reached ? runReservation.modelCalls : 0, toolCalls: reached ? runReservation.toolCalls : 0, tokens: outcome.usage.totalTokens,
                cost: outcome.cost)
            runBudgets.withLock { $0[runID]?.settle(runReservation, actual: actual) }
        }
        if let budget = entry.budget {
            let remaining: USD? = budget.withLock { ledger in
                if let reservation = admission.reservation {
                    ledger.settle(reservation, actual: outcome.cost, epochMs: now)
                } else {
                    ledger.record(outcome.cost, epochMs: now)
                }
                return ledger.remaining(epochMs: now)
            }
            if let remaining {
                metrics.budgetRemaining(agent: call.agent.id).record(remaining.dollars)
            }
        }
        let latency = admission.startedAt.duration(to: .now)
        if let audit {
            audit.record(AuditRecord(
                timestampMs: now, node: audit.node, action: call.targetKind.callAction, agentID: call.agent.id, userID: call.caller.user,
                actorChain: call.caller.actorChain, runID: call.caller.run?.id, parentRunID: call.caller.run?.parentID,
                supervisor: call.caller.run?.supervisor, target: call.target, decision: "allow", reason: outcome.errorCode,
                argumentsHash: call.argumentsHash, outcome: outcome.outcome.rawValue, status: outcome.status, costNanos: outcome.cost.nanos,
                requestID: call.requestID, resultHash: outcome.resultHash, capture: outcome.capture))
        }
        ledger.append(UsageRecord(
            requestID: call.requestID, timestampMs: now, agentID: call.agent.id, targetKind: call.targetKind.rawValue,
            target: call.target, deploymentID: outcome.deploymentID, provider: outcome.provider, upstreamModel: outcome.upstreamModel,
            operation: call.operation, stream: call.stream, usage: outcome.usage, cost: outcome.cost, latencyMs: latency.milliseconds,
            attempts: outcome.attempts, outcome: outcome.outcome, status: outcome.status, errorCode: outcome.errorCode, runID: call.caller.run?.id))
        if let runID = call.caller.run?.id { policy?.recordRunUsage(runID: runID, tokens: outcome.usage.totalTokens, cost: outcome.cost) }
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
        for entry in registry.entries {
            guard let budget = entry.budget else { continue }
            for period in BudgetPeriod.allCases {
                let spent = try await store.spend(agentID: entry.agent.id, sinceMs: period.start(epochMs: now))
                budget.withLock { $0.restore(period: period, epochMs: now, spent: spent.cost) }
            }
        }
    }

    /// Spending and reservations of an agent right now (tests, admin).
    public func budgetSnapshot(agentID: String) -> (spentToday: USD, reserved: USD)? {
        guard let budget = registry.entry(id: agentID)?.budget else { return nil }
        let now = wallClockMs()
        return budget.withLock { ($0.spent(in: .day, epochMs: now), $0.reserved) }
    }

    public func agentQueueDepth(agentID: String) -> Int {
        registry.entry(id: agentID)?.limiter?.queueDepth ?? 0
    }

    /// The audit record of a refused call, whichever stage refused it. Refusals before an
    /// agent is known (`auth.failed`) carry no agent and no outcome.
    public func auditRefusal(
        _ error: GatewayError, action: String, agentID: String?, target: String?, argumentsHash: String? = nil, requestID: String?
    ) {
        record(refusal: error.code, status: error.status, action: action, agentID: agentID, user: nil, actors: [], run: nil, target: target,
            argumentsHash: argumentsHash, requestID: requestID)
    }

    /// The audit record of a credential being issued (`token.issue`, `token.exchange`), or of
    /// a request for one refused with `refusal` (an RFC 6749 / 8693 error code).
    public func auditCredential(
        _ action: String, agentID: String?, user: String? = nil, actors: [String] = [], refusal: String? = nil, status: Int, requestID: String
    ) {
        audit?.record(AuditRecord(
            timestampMs: 0, node: "", action: action, agentID: agentID, userID: user, actorChain: actors, target: "/oauth/token",
            decision: refusal == nil ? "allow" : "deny", reason: refusal, outcome: refusal == nil ? "success" : nil, status: status, requestID: requestID))
    }

    /// The audit record of a call refused after authentication: who, for whom, through whom.
    public func auditRefusal(
        _ error: GatewayError, action: String, caller: Caller, target: String?, argumentsHash: String? = nil, capture: String? = nil, requestID: String?
    ) {
        record(refusal: error.code, status: error.status, action: action, agentID: caller.agent.id, user: caller.user, actors: caller.actorChain,
            run: caller.run, target: target, argumentsHash: argumentsHash, capture: capture, requestID: requestID)
    }

    private func record(
        refusal reason: String, status: Int, action: String, agentID: String?, user: String?, actors: [String], run: RunReference?, target: String?,
        argumentsHash: String?, capture: String? = nil, requestID: String?
    ) {
        audit?.record(AuditRecord(
            timestampMs: 0, node: "", action: action, agentID: agentID, userID: user, actorChain: actors, runID: run?.id, parentRunID: run?.parentID, supervisor: run?.supervisor,
            target: target, decision: "deny",
            reason: reason, argumentsHash: argumentsHash, outcome: agentID == nil ? nil : UsageRecord.Outcome.rejected.rawValue, status: status,
            requestID: requestID, capture: capture))
    }

    private func recordRejection(_ call: GovernedCall, status: Int, code: String) {
        record(refusal: code, status: status, action: call.targetKind.callAction, agentID: call.agent.id, user: call.caller.user,
            actors: call.caller.actorChain, run: call.caller.run, target: call.target, argumentsHash: call.argumentsHash, requestID: call.requestID)
        ledger.append(UsageRecord(
            requestID: call.requestID, timestampMs: wallClockMs(), agentID: call.agent.id, targetKind: call.targetKind.rawValue,
            target: call.target, deploymentID: nil, provider: nil, upstreamModel: nil, operation: call.operation, stream: call.stream,
            usage: .zero, cost: .zero, latencyMs: 0, attempts: 0, outcome: .rejected, status: status, errorCode: code, runID: call.caller.run?.id))
        metrics.recordRejection(agent: call.agent.id, target: call.target, operation: call.operation, status: status)
    }

    static func seconds(_ duration: Duration) -> Int {
        max(1, Int(duration.seconds.rounded(.up)))
    }
}
