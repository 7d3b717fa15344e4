public import InterlockCore
import InterlockPolicy
import Metrics

/// The guard stages of the governed pipeline: detectors on what an agent sends (after
/// policy, before admission) and on what comes back (before the agent sees it), for models
/// and tools alike. Every hit is audited with its detector and span, never the text.
public final class GuardrailStage: Sendable {
    public let engine: GuardrailEngine
    private let audit: AuditLog?
    private let policy: PolicyStage?

    public init(engine: GuardrailEngine, audit: AuditLog?, policy: PolicyStage?) {
        self.engine = engine
        self.audit = audit
        self.policy = policy
    }

    public var isEmpty: Bool { engine.isEmpty }

    public func plan(_ caller: Caller, kind: TargetKind, name: String, direction: GuardrailSettings.Direction) -> GuardrailPlan? {
        engine.plan(agent: caller.agent.id, kind: kind.rawValue, name: name, direction: direction)
    }

    /// Whether any guardrail applies to calls of this agent to this target (the event-loop
    /// paths then leave the call to the async path).
    public func applies(_ caller: Caller, kind: TargetKind, name: String) -> Bool {
        plan(caller, kind: kind, name: name, direction: .in) != nil || plan(caller, kind: kind, name: name, direction: .out) != nil
    }

    /// What an agent sends: the value to send on (redacted where a rule says so; nil when
    /// unchanged), or the refusal. A `require_approval` hit waits for a human like a policy
    /// rule does; the approval it goes on under is added to `approvals` (used after admission).
    public func checkIn(
        _ value: JSONValue, keys: Set<String>? = nil, plan: GuardrailPlan, caller: Caller, kind: TargetKind, name: String, requestID: String, argumentsHash: String,
        approvals: inout [String]
    ) async throws(GatewayError) -> JSONValue? {
        let (redacted, hits) = plan.apply(to: value, only: keys)
        guard !hits.isEmpty else { return nil }
        record(hits, direction: .in, caller: caller, target: name, requestID: requestID, argumentsHash: argumentsHash)
        if let blocking = hits.first(where: { $0.action == .block }) {
            throw Self.blocked(blocking, direction: .in)
        }
        if let held = hits.first(where: { $0.action == .requireApproval }), let policy {
            let rule = PolicyRule(
                name: "guardrail:\(held.detector)", condition: "guardrail", effect: .requireApproval,
                reason: "The call contains \(Self.describe(held.detector)); a human must approve it.")
            let call = PolicyStage.Call(
                kind: kind, target: PolicyInput.Target(kind: kind.rawValue, name: name), arguments: { value }, argumentsHash: argumentsHash, requestID: requestID)
            approvals.append(try await policy.holdForApproval(caller, call, rule: rule))
        }
        return hits.contains { $0.action == .redact } ? redacted : nil
    }

    /// What comes back: the value for the agent (redacted; nil when unchanged), or the
    /// refusal when a hit blocks it.
    public func checkOut(
        _ value: JSONValue, keys: Set<String>? = nil, plan: GuardrailPlan, caller: Caller, name: String, requestID: String
    ) throws(GatewayError) -> JSONValue? {
        let (redacted, hits) = plan.apply(to: value, only: keys)
        guard !hits.isEmpty else { return nil }
        record(hits, direction: .out, caller: caller, target: name, requestID: requestID, argumentsHash: nil)
        if let blocking = hits.first(where: { $0.action == .block }) { throw Self.blocked(blocking, direction: .out) }
        return hits.contains { $0.action == .redact } ? redacted : nil
    }

    static func describe(_ detector: String) -> String {
        switch detector.prefix(while: { $0 != "." }) {
        case "secrets": "a secret (\(detector))"
        case "pii": "personal data (\(detector))"
        case "exfiltration": "a way to send data out (\(detector))"
        case "injection": "instructions injected into content (\(detector))"
        default: "a forbidden pattern (\(detector))"
        }
    }

    static func blocked(_ hit: GuardrailHit, direction: GuardrailSettings.Direction) -> GatewayError {
        let message =
            direction == .in
            ? "Blocked by a guardrail: the request contains \(describe(hit.detector)) at \(hit.path.isEmpty ? "the text" : hit.path)."
            : "Blocked by a guardrail: the answer contained \(describe(hit.detector)) and was withheld."
        return GatewayError(
            kind: .permission, code: "guardrail_blocked", message: message,
            details: ["detector": .string(hit.detector), "direction": .string(direction.rawValue), "path": .string(hit.path)])
    }

    /// One audit record per call and direction: every hit as detector@path:start-end (at most 50).
    func record(
        _ hits: [GuardrailHit], direction: GuardrailSettings.Direction, caller: Caller, target: String, requestID: String, argumentsHash: String?
    ) {
        for hit in hits {
            Counter(
                label: "interlock_guardrail_hits_total",
                dimensions: [("detector", hit.detector), ("action", hit.action.rawValue), ("direction", direction.rawValue)]
            ).increment()
        }
        guard let audit, !hits.isEmpty else { return }
        let strongest = hits.map(\.action).max() ?? .flag
        var summary = hits.prefix(50).map { "\($0.summary)=\($0.action.rawValue)" }.joined(separator: " ")
        if hits.count > 50 { summary += " +\(hits.count - 50) more" }
        audit.record(AuditRecord(
            timestampMs: 0, node: "", action: "guardrail.\(direction.rawValue)", agentID: caller.agent.id, userID: caller.user, actorChain: caller.actorChain,
            runID: caller.run?.id, parentRunID: caller.run?.parentID, supervisor: caller.run?.supervisor, target: target, decision: strongest == .block ? "deny" : strongest.rawValue,
            reason: summary, argumentsHash: argumentsHash, requestID: requestID))
    }
}
