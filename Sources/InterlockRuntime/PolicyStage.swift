import DequeModule
import FoundationEssentials
public import InterlockCore
public import InterlockPolicy
public import InterlockStore
public import Logging
import Metrics
import Synchronization

/// The policy stage of the governed pipeline (after the grants, before admission): the
/// configured CEL rules decide allow, deny or "wait for a human" for model, tool and agent
/// calls alike. Approvals are stored, bound to the exact call, and used once.
public final class PolicyStage: Sendable {
    public let engine: PolicyEngine
    public let settings: PolicySettings
    private let store: (any InterlockStore)?
    private let audit: AuditLog?
    private let region: String
    private let wallClockMs: @Sendable () -> Int64
    private let runs = RunTally(capacity: 100_000)
    /// Woken when an approval is decided on this node; waiters then read the store.
    private let decisions = WakeSignal()
    private let logger: Logger

    public init(
        settings: PolicySettings, store: (any InterlockStore)?, audit: AuditLog?, region: String, logger: Logger,
        wallClockMs: @escaping @Sendable () -> Int64
    ) throws(PolicyCompileErrors) {
        self.engine = try PolicyEngine(rules: settings.rules, costLimit: settings.costLimit)
        self.settings = settings
        self.store = store
        self.audit = audit
        self.region = region
        self.logger = logger
        self.wallClockMs = wallClockMs
    }

    /// No rules: the stage lets every granted call through without looking.
    public var isEmpty: Bool { engine.isEmpty }

    /// What the policy needs to know about a call besides its caller.
    public struct Call: Sendable {
        public var kind: TargetKind
        public var target: PolicyInput.Target
        /// The arguments as the agent sent them (JSON), converted only if a rule reads `args`.
        public var arguments: @Sendable () -> JSONValue
        public var argumentsHash: String
        public var requestID: String

        public init(kind: TargetKind, target: PolicyInput.Target, arguments: @escaping @Sendable () -> JSONValue, argumentsHash: String, requestID: String) {
            self.kind = kind
            self.target = target
            self.arguments = arguments
            self.argumentsHash = argumentsHash
            self.requestID = requestID
        }
    }

    // MARK: Deciding

    /// The decision for a call on the event loop, without waiting for anything: nil when it
    /// needs the async path (a rule reads a run's spend not loaded yet, or the decision is
    /// not a plain allow), so the async path decides, audits and answers it.
    public func decideOnLoop(_ caller: Caller, _ call: Call) -> Bool {
        guard !engine.isEmpty else { return true }
        var run = PolicyInput.Run()
        if let reference = caller.run {
            guard let spend = runs.cached(reference.id) else { return false }
            run = Self.run(reference, spend)
        }
        let decision = engine.decide(input(caller, call, run: run))
        return decision.effect == .allow && decision.shadowMatches.isEmpty && decision.errors.isEmpty
    }

    /// Enforces the policy on a call: returns when it may go on — with the id of the approval
    /// it goes on under, to be used (`useApproval`) once every later stage has let the call
    /// through — and throws the refusal otherwise (deny, rejected, or still pending after the
    /// wait).
    public func enforce(_ caller: Caller, _ call: Call) async throws(GatewayError) -> String? {
        guard !engine.isEmpty else { return nil }
        var run = PolicyInput.Run()
        if let reference = caller.run { run = Self.run(reference, await spend(of: reference.id)) }
        let decision = engine.decide(input(caller, call, run: run))
        Counter(
            label: "interlock_policy_decisions_total",
            dimensions: [("decision", decision.effect.rawValue), ("rule", decision.rule?.name ?? (decision.effect == .deny ? "allow_rules" : "-"))]
        ).increment()
        for rule in decision.shadowMatches {
            Counter(label: "interlock_policy_shadow_matches_total", dimensions: [("rule", rule.name)]).increment()
            record(caller, call, action: "policy.shadow", decision: rule.effect.rawValue, reason: rule.name)
        }
        for (rule, message) in decision.errors {
            logger.warning("policy rule could not be evaluated", metadata: ["interlock.policy": "\(rule)", "error": "\(message)"])
            record(caller, call, action: "policy.error", decision: "error", reason: rule)
        }
        switch decision.effect {
        case .allow:
            return nil
        case .deny:
            let name = decision.rule?.name ?? "allow_rules"
            let error = GatewayError(
                kind: .permission, code: "policy_denied", message: "Denied by policy '\(name)': \(decision.reason)",
                details: ["policy": .string(name), "reason": .string(decision.reason)])
            record(caller, call, action: call.kind.callAction, decision: "deny", reason: "policy:\(name)", status: 403)
            throw error
        case .requireApproval:
            return try await awaitApproval(caller, call, rule: decision.rule!)
        }
    }

    private func input(_ caller: Caller, _ call: Call, run: PolicyInput.Run) -> PolicyInput {
        let agent = caller.agent
        let arguments = call.arguments
        return PolicyInput(
            agent: PolicyInput.Agent(id: agent.id, owner: agent.owner, region: agent.region, description: agent.description, scopes: caller.scopes ?? agent.grants.scopes),
            user: caller.user ?? "", actors: caller.actorChain, run: run, target: call.target, args: { CELValue(json: arguments()) },
            requestID: call.requestID, timeMs: wallClockMs(), region: region)
    }

    private static func run(_ reference: RunReference, _ spend: RunSpend) -> PolicyInput.Run {
        PolicyInput.Run(
            id: reference.id, parentID: reference.parentID ?? "", step: spend.calls, calls: spend.calls, spentTokens: spend.tokens, spentUSD: spend.cost.dollars)
    }

    // MARK: Runs

    /// What a run has used so far: from memory, or loaded once from the usage ledger.
    private func spend(of runID: String) async -> RunSpend {
        if let cached = runs.cached(runID) { return cached }
        guard let store else { return RunSpend() }
        do {
            let loaded = try await store.runSpend(runID: runID)
            return runs.insertIfAbsent(runID, loaded)
        } catch {
            logger.error("could not read a run's spend", metadata: ["interlock.run.id": "\(runID)", "error": "\(error)"])
            return RunSpend()
        }
    }

    /// Adds a finished call to its run's running totals.
    public func recordRunUsage(runID: String, tokens: Int, cost: USD) {
        runs.add(runID, tokens: tokens, cost: cost)
    }

    // MARK: Approvals

    /// Holds a call for a human under `rule` (a policy rule, or a guardrail's): returns when
    /// an approval for exactly this call is given (and uses it), throws otherwise.
    func holdForApproval(_ caller: Caller, _ call: Call, rule: PolicyRule) async throws(GatewayError) -> String {
        try await awaitApproval(caller, call, rule: rule)
    }

    /// Uses an approval, once the call passed every other stage. False if another call used
    /// it first or it expired meanwhile.
    public func useApproval(_ id: String, caller: Caller, call: Call) async throws(GatewayError) {
        guard let store else { return }
        let used: Bool
        do {
            used = try await store.consumeApproval(id: id, nowMs: wallClockMs())
        } catch {
            logger.error("approval store failed", metadata: ["error": "\(error)"])
            throw GatewayError(kind: .internal, code: "internal_error", message: "Interlock could not record the use of the approval.")
        }
        guard used else {
            throw GatewayError(
                kind: .permission, code: "approval_pending",
                message: "Approval \(id) was used by another call or has expired; send the call again to ask for a new one.", retryAfterSeconds: 1,
                details: ["approval_id": .string(id), "status": "consumed_or_expired"])
        }
        record(caller, call, action: "approval.used", decision: "allow", reason: id)
    }

    /// Puts used approvals back: the call they let through was refused before it ran.
    public func restoreApprovals(_ ids: [String], caller: Caller, call: Call) async {
        guard let store else { return }
        for id in ids {
            do {
                try await store.restoreApproval(id: id)
                record(caller, call, action: "approval.restored", decision: "allow", reason: id)
            } catch {
                logger.error("approval store failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Waits for (or finds) an approval of exactly this call; returns its id, not yet used.
    private func awaitApproval(_ caller: Caller, _ call: Call, rule: PolicyRule) async throws(GatewayError) -> String {
        guard let store else {
            throw GatewayError(kind: .internal, code: "approvals_unavailable", message: "Approvals need a store.")
        }
        let binding = ApprovalBinding(
            agentID: caller.agent.id, targetKind: call.kind.rawValue, target: call.target.name, argumentsHash: call.argumentsHash, policyVersion: rule.version)
        let now = wallClockMs()
        do {
            // An approval already given for exactly this call lets it on (used once it passes
            // every later stage).
            if let approved = try await store.approval(binding: binding, status: .approved, nowMs: now) {
                return approved.id
            }
            var approval: ApprovalRecord
            if let pending = try await store.approval(binding: binding, status: .pending, nowMs: now) {
                approval = pending
            } else {
                approval = ApprovalRecord(
                    id: Self.newApprovalID(), agentID: caller.agent.id, targetKind: call.kind.rawValue, target: call.target.name,
                    argumentsHash: call.argumentsHash, arguments: Self.capped(JSONWriter.string(call.arguments())), policy: rule.name,
                    policyVersion: rule.version, reason: rule.reason, requestID: call.requestID, userID: caller.user, runID: caller.run?.id, createdMs: now,
                    expiresMs: now + Int64(settings.approvalTTLSeconds) * 1000)
                try await store.createApproval(approval)
                record(caller, call, action: "approval.requested", decision: "require_approval", reason: "\(rule.name):\(approval.id)")
                Self.log(logger, approval)
            }
            // The request stays open until a human decides or the wait is over. A workflow step
            // does not hold its worker: its run waits durably and is woken by the decision.
            let waitMs = if case .workflowRun = caller.credential { 0 } else { settings.approvalWaitMs }
            let deadline = ContinuousClock.now + .milliseconds(waitMs)
            while approval.status(at: wallClockMs()) == .pending, ContinuousClock.now < deadline {
                if Task.isCancelled { break }
                await decisions.wait(upTo: min(.seconds(1), deadline - ContinuousClock.now))
                approval = try await store.approval(id: approval.id) ?? approval
            }
            switch approval.status(at: wallClockMs()) {
            case .approved:
                return approval.id
            case .rejected:
                record(caller, call, action: call.kind.callAction, decision: "deny", reason: "approval_rejected:\(approval.id)", status: 403)
                throw GatewayError(
                    kind: .permission, code: "approval_rejected",
                    message: "An operator rejected this call (approval \(approval.id))\(approval.note.map { ": \($0)" } ?? ".")",
                    details: approvalDetails(approval))
            default:
                throw GatewayError(
                    kind: .permission, code: "approval_pending",
                    message: "This call needs a human's approval (policy '\(rule.name)': \(rule.reason)). Approval \(approval.id) is pending; send the same call again once it is approved, or poll GET /v1/approvals/\(approval.id).",
                    retryAfterSeconds: 5, details: approvalDetails(approval))
            }
        } catch let error as GatewayError {
            throw error
        } catch {
            logger.error("approval store failed", metadata: ["error": "\(error)"])
            throw GatewayError(kind: .internal, code: "internal_error", message: "Interlock could not record the approval request.")
        }
    }

    private func approvalDetails(_ approval: ApprovalRecord) -> JSONObject {
        [
            "approval_id": .string(approval.id), "status": .string(approval.status(at: wallClockMs()).rawValue), "policy": .string(approval.policy),
            "expires_ms": .integer(approval.expiresMs),
        ]
    }

    private static func log(_ logger: Logger, _ approval: ApprovalRecord) {
        logger.notice(
            "approval requested",
            metadata: [
                "interlock.approval.id": "\(approval.id)", "interlock.agent.id": "\(approval.agentID)", "interlock.target": "\(approval.target)",
                "interlock.policy": "\(approval.policy)",
            ])
    }

    static func newApprovalID() -> String {
        var generator = SystemRandomNumberGenerator()
        let digits = Array("0123456789abcdefghijklmnopqrstuvwxyz".utf8)
        return "apr_" + String(decoding: (0..<20).map { _ in digits[Int(generator.next(upperBound: UInt64(digits.count)))] }, as: UTF8.self)
    }

    /// Arguments kept for the approver, at most 16 KiB.
    static func capped(_ text: String) -> String {
        guard text.utf8.count > 16 * 1024 else { return text }
        var end = text.utf8.index(text.utf8.startIndex, offsetBy: 16 * 1024)
        while end > text.utf8.startIndex, !text.unicodeScalars.indices.contains(end) { end = text.utf8.index(before: end) }
        return String(text[..<end]) + "…"
    }

    /// An operator decided: approve or reject a pending approval (an input step's approval
    /// carries the `answer`, checked against the step's schema). The record afterwards and
    /// whether this decision changed it (false: it was already decided or expired); nil if
    /// there is no such approval.
    public func decide(
        approvalID: String, approve: Bool, by: String, note: String?, answer: JSONValue? = nil
    ) async throws -> (record: ApprovalRecord, changed: Bool)? {
        guard let store else { return nil }
        guard let before = try await store.approval(id: approvalID) else { return nil }
        var answer = answer
        if before.kind == .input, approve {
            guard let given = answer else {
                throw GatewayError.invalidRequest("This is an input request: send the data asked for in 'answer'.", code: "answer_required", param: "answer")
            }
            if let document = before.answerSchema, let schema = try? JSONSchema(document) {
                let violations = schema.validate(given)
                if !violations.isEmpty {
                    throw GatewayError.invalidRequest(
                        "The answer does not match the schema asked for: \(violations.map(\.description).joined(separator: "; ")).", code: "invalid_answer",
                        param: "answer")
                }
            }
        } else if before.kind != .input {
            answer = nil
        }
        let now = wallClockMs()
        // An approval once given is valid for the full TTL from the decision (a workflow step's
        // answer is read by its run, which is woken at once).
        let expires = max(before.kind == .policy ? 0 : before.expiresMs, now + Int64(settings.approvalTTLSeconds) * 1000)
        guard let (after, changed) = try await store.decideApproval(
            id: approvalID, approve: approve, by: by, note: note, answer: answer, nowMs: now, expiresMs: expires)
        else { return nil }
        if changed {
            audit?.record(AuditRecord(
                timestampMs: 0, node: "", action: approve ? "approval.approve" : "approval.reject", agentID: after.agentID, userID: after.userID,
                runID: after.runID, supervisor: by, target: after.target, decision: approve ? "allow" : "deny", reason: after.id,
                argumentsHash: after.argumentsHash, requestID: after.requestID))
            decisions.signal()
            let observers = decisionObservers.withLock { $0 }
            for observer in observers { observer(after) }
        }
        return (after, changed)
    }

    private let decisionObservers = Mutex<[@Sendable (ApprovalRecord) -> Void]>([])

    /// Calls `observer` after every decision this node records (the workflow engine wakes
    /// the run that waits for it).
    public func observeDecisions(_ observer: @escaping @Sendable (ApprovalRecord) -> Void) {
        decisionObservers.withLock { $0.append(observer) }
    }

    public func approval(id: String) async throws -> ApprovalRecord? {
        try await store?.approval(id: id)
    }

    public func approvals(status: ApprovalRecord.Status?, agentID: String?, limit: Int) async throws -> [ApprovalRecord] {
        try await store?.approvals(status: status, agentID: agentID, nowMs: wallClockMs(), limit: limit) ?? []
    }

    public func nowMs() -> Int64 { wallClockMs() }

    private func record(_ caller: Caller, _ call: Call, action: String, decision: String, reason: String, status: Int? = nil) {
        audit?.record(AuditRecord(
            timestampMs: 0, node: "", action: action, agentID: caller.agent.id, userID: caller.user, actorChain: caller.actorChain, runID: caller.run?.id,
            parentRunID: caller.run?.parentID, supervisor: caller.run?.supervisor, target: call.target.name, decision: decision, reason: reason, argumentsHash: call.argumentsHash,
            outcome: status == nil ? nil : UsageRecord.Outcome.rejected.rawValue, status: status, requestID: call.requestID))
    }
}

/// Per-run running totals for policy conditions (`run.spent_usd`, ...), loaded once per run
/// from the usage ledger and kept up to date in memory; at most `capacity` runs are kept
/// (the first loaded is dropped first; a run seen again is loaded again from the ledger).
final class RunTally: Sendable {
    private struct State {
        var entries: [String: RunSpend] = [:]
        var order = Deque<String>()
    }

    private let state = Mutex(State())
    private let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
    }

    func cached(_ id: String) -> RunSpend? {
        state.withLock { $0.entries[id] }
    }

    /// Keeps `spend` unless another task loaded the run first; the value kept.
    func insertIfAbsent(_ id: String, _ spend: RunSpend) -> RunSpend {
        state.withLock { state in
            if let existing = state.entries[id] { return existing }
            state.entries[id] = spend
            state.order.append(id)
            while state.order.count > capacity, let oldest = state.order.popFirst() { state.entries.removeValue(forKey: oldest) }
            return spend
        }
    }

    func add(_ id: String, tokens: Int, cost: USD) {
        state.withLock { state in
            guard var spend = state.entries[id] else { return }
            spend.calls += 1
            spend.tokens += tokens
            spend.cost += cost
            state.entries[id] = spend
        }
    }
}
