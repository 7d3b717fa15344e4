public import Hummingbird
public import InterlockCore
import Logging

/// The context of every request. `agent` is set by `AgentAuthenticationMiddleware`.
public struct InterlockRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var agent: AgentSettings?
    public var requestID: String

    public init(source: Source) {
        self.coreContext = .init(source: source)
        self.agent = nil
        self.requestID = "req_" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
    }
}

/// The context of routes that need an agent: it can only exist after authentication succeeded.
public struct AgentRequestContext: ChildRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let agent: AgentSettings
    public let requestID: String

    public init(context: InterlockRequestContext) throws {
        guard let agent = context.agent else { throw GatewayError.missingCredential }
        self.coreContext = context.coreContext
        self.agent = agent
        self.requestID = context.requestID
    }
}
