/// One row of the usage ledger: a model (later tool or agent) call and what it cost.
public struct UsageRecord: Sendable, Hashable {
    public enum Outcome: String, Sendable {
        case success
        /// The caller went away or the stream broke after some output was delivered.
        case partial
        case error
        case rejected
    }

    public var requestID: String
    /// Milliseconds since the Unix epoch.
    public var timestampMs: Int64
    public var agentID: String
    public var targetKind: String
    /// The alias the agent asked for.
    public var target: String
    public var deploymentID: String?
    public var provider: String?
    public var upstreamModel: String?
    public var operation: String
    public var stream: Bool
    public var usage: TokenUsage
    public var cost: USD
    public var latencyMs: Double
    public var attempts: Int
    public var outcome: Outcome
    public var status: Int
    public var errorCode: String?
    /// The run the call belonged to, if any (policy conditions read a run's spend from here).
    public var runID: String?

    public init(
        requestID: String, timestampMs: Int64, agentID: String, targetKind: String, target: String,
        deploymentID: String?, provider: String?, upstreamModel: String?, operation: String, stream: Bool,
        usage: TokenUsage, cost: USD, latencyMs: Double, attempts: Int, outcome: Outcome, status: Int, errorCode: String?,
        runID: String? = nil
    ) {
        self.runID = runID
        self.requestID = requestID
        self.timestampMs = timestampMs
        self.agentID = agentID
        self.targetKind = targetKind
        self.target = target
        self.deploymentID = deploymentID
        self.provider = provider
        self.upstreamModel = upstreamModel
        self.operation = operation
        self.stream = stream
        self.usage = usage
        self.cost = cost
        self.latencyMs = latencyMs
        self.attempts = attempts
        self.outcome = outcome
        self.status = status
        self.errorCode = errorCode
    }
}
