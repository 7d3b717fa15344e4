/// Who is making a call, established by the authenticate stage: the agent, the credential it
/// presented, the scopes that credential carries, and — for a delegated token — the user it
/// acts for and the chain of actors. Every later stage (authorize, policy, audit) reads this.
public struct Caller: Sendable, Equatable {
    public enum Credential: Sendable, Equatable {
        /// An API key, by its record id.
        case apiKey(id: String)
        /// An access token, by its `jti`.
        case accessToken(id: String)
        /// A step of a workflow run, by the run's id: Interlock itself calls as the step's agent.
        case workflowRun(id: String)
    }

    public var agent: Agent
    public var credential: Credential
    /// What the credential allows, as `<kind>:<name>` scopes; nil allows everything the
    /// agent was granted (an API key). Both must allow a target.
    public var scopes: [String]?
    /// The user the agent acts for (`sub` of a delegated token).
    public var user: String?
    /// The actors of a delegated token, the one calling first, then those it acts for
    /// (nested `act` claims).
    public var actorChain: [String]
    /// The run the call belongs to, when the caller said (`x-interlock-run-id`) or a
    /// workflow made it.
    public var run: RunReference?

    public init(agent: Agent, credential: Credential, scopes: [String]? = nil, user: String? = nil, actorChain: [String] = [], run: RunReference? = nil) {
        self.agent = agent
        self.credential = credential
        self.scopes = scopes
        self.user = user
        self.actorChain = actorChain
        self.run = run
    }

    /// Default deny: the agent must be granted `name` of this `kind` and the credential's
    /// scopes, if any, must include it.
    public func permits(kind: String, name: String) -> Bool {
        guard agent.grants.covers(kind: kind, name: name) else { return false }
        guard let scopes else { return true }
        return AgentGrants.scopes(scopes, cover: "\(kind):\(name)")
    }

    /// The same for a `<kind>:<name>` scope.
    public func permits(scope: String) -> Bool {
        guard agent.grants.covers(scope: scope) else { return false }
        guard let scopes else { return true }
        return AgentGrants.scopes(scopes, cover: scope)
    }
}

/// A run (a multi-step task an agent works on) and the run that started it.
public struct RunReference: Sendable, Equatable {
    public var id: String
    public var parentID: String?
    /// The person whose answer the run went on with (a workflow run's human supervisor).
    public var supervisor: String?

    public init(id: String, parentID: String? = nil, supervisor: String? = nil) {
        self.id = id
        self.parentID = parentID
        self.supervisor = supervisor
    }

    /// The headers agents send: `x-interlock-run-id` and `x-interlock-parent-run-id`. Nil
    /// without a run id; a 400 naming the header when one is not 1–128 letters, digits or
    /// `-_.:`.
    public static func fromHeaders(runID: String?, parentRunID: String?) throws(GatewayError) -> RunReference? {
        func check(_ value: String, _ header: String) throws(GatewayError) -> String {
            guard !value.isEmpty, value.utf8.count <= 128,
                value.utf8.allSatisfy({ byte in
                    (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
                        || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
                        || byte == UInt8(ascii: ".") || byte == UInt8(ascii: ":")
                })
            else {
                throw GatewayError.invalidRequest("'\(header)' must be 1 to 128 letters, digits, '-', '_', '.' or ':'.", code: "invalid_header", param: header)
            }
            return value
        }
        guard let runID else {
            if parentRunID != nil {
                throw GatewayError.invalidRequest("'x-interlock-parent-run-id' needs 'x-interlock-run-id'.", code: "invalid_header", param: "x-interlock-parent-run-id")
            }
            return nil
        }
        return RunReference(id: try check(runID, "x-interlock-run-id"), parentID: try parentRunID.map { value throws(GatewayError) in try check(value, "x-interlock-parent-run-id") })
    }
}
