/// Who is making a call, established by the authenticate stage: the agent, the credential it
/// presented, the scopes that credential carries, and — for a delegated token — the user it
/// acts for and the chain of actors. Every later stage (authorize, policy, audit) reads this.
public struct Caller: Sendable, Equatable {
    public enum Credential: Sendable, Equatable {
        /// An API key, by its record id.
        case apiKey(id: String)
        /// An access token, by its `jti`.
        case accessToken(id: String)
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

    public init(agent: Agent, credential: Credential, scopes: [String]? = nil, user: String? = nil, actorChain: [String] = []) {
        self.agent = agent
        self.credential = credential
        self.scopes = scopes
        self.user = user
        self.actorChain = actorChain
    }

    /// Default deny: the agent must be granted `name` of this `kind` and the credential's
    /// scopes, if any, must include it.
    public func permits(kind: String, name: String) -> Bool {
        permits(scope: "\(kind):\(name)")
    }

    /// The same for a `<kind>:<name>` scope.
    public func permits(scope: String) -> Bool {
        guard agent.grants.covers(scope: scope) else { return false }
        guard let scopes else { return true }
        guard let colon = scope.firstIndex(of: ":") else { return scopes.contains(scope) }
        return scopes.contains(scope) || scopes.contains(scope[..<colon] + ":*")
    }
}
