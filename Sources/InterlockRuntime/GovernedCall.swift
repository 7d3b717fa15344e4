public import InterlockCore

/// The kind of thing a governed call reaches.
public enum TargetKind: String, Sendable {
    case model
    case tool
    case agent

    /// The audit action of a call to this kind of target (`model.call`, …), without building
    /// the string per call.
    public var callAction: String {
        switch self {
        case .model: "model.call"
        case .tool: "tool.call"
        case .agent: "agent.call"
        }
    }
}

/// Who asked, for what, and what it may cost: the value every pipeline stage works on,
/// whatever the target.
public struct GovernedCall: Sendable {
    public var requestID: String
    /// Who is calling (agent, credential, user, actors), from the authenticate stage.
    public var caller: Caller
    public var agent: Agent { caller.agent }
    public var targetKind: TargetKind
    /// The name the agent used: a model alias, a tool name, an agent id.
    public var target: String
    public var operation: String
    public var stream: Bool
    /// Tokens reserved against TPM limits (estimate; reconciled afterwards).
    public var expectedTokens: Int
    /// Dollars reserved against budgets (upper estimate; reconciled afterwards).
    public var expectedCost: USD
    /// Incoming W3C trace context, passed upstream when no tracer is running.
    public var traceParent: String?
    public var traceState: String?
    /// SHA-256 (hex) of the call's arguments, for the audit log (which never stores them).
    public var argumentsHash: String?

    /// The workflow run whose budgets the call counts against: only calls a run's own steps
    /// make (an agent naming a run in a header cannot spend a workflow's budget).
    public var workflowRunID: String? {
        if case .workflowRun(let id) = caller.credential { return id }
        return nil
    }

    public init(
        requestID: String, caller: Caller, targetKind: TargetKind, target: String, operation: String, stream: Bool,
        expectedTokens: Int, expectedCost: USD, traceParent: String? = nil, traceState: String? = nil, argumentsHash: String? = nil
    ) {
        self.argumentsHash = argumentsHash
        self.requestID = requestID
        self.caller = caller
        self.targetKind = targetKind
        self.target = target
        self.operation = operation
        self.stream = stream
        self.expectedTokens = expectedTokens
        self.expectedCost = expectedCost
        self.traceParent = traceParent
        self.traceState = traceState
    }
}

/// What a finished call used and how it ended, for the account stage.
public struct CallOutcome: Sendable {
    public var usage: TokenUsage
    public var cost: USD
    public var deploymentID: String?
    public var provider: String?
    public var upstreamModel: String?
    public var attempts: Int
    public var outcome: UsageRecord.Outcome
    public var status: Int
    public var errorCode: String?
    /// SHA-256 of a tool's answer, and the capture of arguments and answer (audit).
    public var resultHash: String?
    public var capture: String?

    public init(
        usage: TokenUsage = .zero, cost: USD = .zero, deploymentID: String? = nil, provider: String? = nil, upstreamModel: String? = nil,
        attempts: Int = 0, outcome: UsageRecord.Outcome, status: Int, errorCode: String? = nil, resultHash: String? = nil, capture: String? = nil
    ) {
        self.usage = usage
        self.cost = cost
        self.deploymentID = deploymentID
        self.provider = provider
        self.upstreamModel = upstreamModel
        self.attempts = attempts
        self.outcome = outcome
        self.status = status
        self.errorCode = errorCode
        self.resultHash = resultHash
        self.capture = capture
    }
}
