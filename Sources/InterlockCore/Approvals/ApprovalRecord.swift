/// A human decision a call waits for: raised when a `require_approval` policy rule holds a
/// call, bound to that exact call (agent, target, hash of the arguments, the rule and its
/// version) and valid until it expires. An approval is used once.
public struct ApprovalRecord: Sendable, Equatable {
    /// What the human is asked.
    public enum Kind: String, Sendable, CaseIterable {
        /// A `require_approval` policy rule holds a call.
        case policy
        /// A workflow's `approval` step.
        case approval
        /// A workflow's `input` step: the answer is data (`answer`), checked against `answerSchema`.
        case input
    }

    public enum Status: String, Sendable, CaseIterable {
        case pending
        case approved
        case rejected
        /// Approved and used by the call it was for.
        case consumed
        /// Not decided (or not used) before `expiresMs`.
        case expired
    }

    public var id: String
    public var agentID: String
    /// `model`, `tool` or `agent`.
    public var targetKind: String
    public var target: String
    /// SHA-256 (hex) of the call's arguments as the agent sent them.
    public var argumentsHash: String
    /// The arguments (JSON text, capped), for the operator deciding.
    public var arguments: String
    /// The rule that asked for the approval, and its version.
    public var policy: String
    public var policyVersion: String
    /// The rule's reason, shown to the approver and the agent.
    public var reason: String
    public var requestID: String
    public var userID: String?
    public var runID: String?
    public var createdMs: Int64
    public var expiresMs: Int64
    public var status: Status
    public var decidedBy: String?
    public var decidedMs: Int64?
    public var note: String?
    public var kind: Kind = .policy
    /// The workflow step that asked (approval and input steps).
    public var stepPath: String?
    /// An input step's answer.
    public var answer: JSONValue?
    /// The JSON schema an input step's answer must satisfy.
    public var answerSchema: JSONValue?

    public init(
        id: String, agentID: String, targetKind: String, target: String, argumentsHash: String, arguments: String, policy: String, policyVersion: String,
        reason: String, requestID: String, userID: String? = nil, runID: String? = nil, createdMs: Int64, expiresMs: Int64, status: Status = .pending,
        decidedBy: String? = nil, decidedMs: Int64? = nil, note: String? = nil
    ) {
        self.id = id
        self.agentID = agentID
        self.targetKind = targetKind
        self.target = target
        self.argumentsHash = argumentsHash
        self.arguments = arguments
        self.policy = policy
        self.policyVersion = policyVersion
        self.reason = reason
        self.requestID = requestID
        self.userID = userID
        self.runID = runID
        self.createdMs = createdMs
        self.expiresMs = expiresMs
        self.status = status
        self.decidedBy = decidedBy
        self.decidedMs = decidedMs
        self.note = note
    }

    /// The status at `nowMs`: a pending or approved record past its expiry is expired.
    public func status(at nowMs: Int64) -> Status {
        if (status == .pending || status == .approved), nowMs >= expiresMs { return .expired }
        return status
    }

    /// What identifies the call an approval is for.
    public var binding: ApprovalBinding {
        ApprovalBinding(agentID: agentID, targetKind: targetKind, target: target, argumentsHash: argumentsHash, policyVersion: policyVersion)
    }

    /// The record as the approvals API shows it.
    public func json(at nowMs: Int64) -> JSONValue {
        var object: JSONObject = [
            "id": .string(id), "status": .string(status(at: nowMs).rawValue), "agent": .string(agentID), "target_kind": .string(targetKind),
            "target": .string(target), "arguments_sha256": .string(argumentsHash), "policy": .string(policy), "policy_version": .string(policyVersion),
            "reason": .string(reason), "request_id": .string(requestID), "created_ms": .integer(createdMs), "expires_ms": .integer(expiresMs),
        ]
        if let userID { object["user"] = .string(userID) }
        if let runID { object["run"] = .string(runID) }
        if let decidedBy { object["decided_by"] = .string(decidedBy) }
        if let decidedMs { object["decided_ms"] = .integer(decidedMs) }
        if let note { object["note"] = .string(note) }
        object["kind"] = .string(kind.rawValue)
        if let stepPath { object["step"] = .string(stepPath) }
        if let answer { object["answer"] = answer }
        if let answerSchema { object["answer_schema"] = answerSchema }
        return .object(object)
    }
}

/// The exact call an approval is bound to.
public struct ApprovalBinding: Sendable, Hashable {
    public var agentID: String
    public var targetKind: String
    public var target: String
    public var argumentsHash: String
    public var policyVersion: String

    public init(agentID: String, targetKind: String, target: String, argumentsHash: String, policyVersion: String) {
        self.agentID = agentID
        self.targetKind = targetKind
        self.target = target
        self.argumentsHash = argumentsHash
        self.policyVersion = policyVersion
    }
}

/// What a run has used so far, from the usage ledger.
public struct RunSpend: Sendable, Equatable {
    public var calls: Int
    public var tokens: Int
    public var cost: USD

    public init(calls: Int = 0, tokens: Int = 0, cost: USD = .zero) {
        self.calls = calls
        self.tokens = tokens
        self.cost = cost
    }
}
