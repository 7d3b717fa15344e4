public import Hummingbird
import Synchronization
public import InterlockCore
import Logging

/// The context of every request. `caller` is set by `AgentAuthenticationMiddleware`.
public struct InterlockRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var caller: Caller?
    /// Set by `OperatorAuthenticationMiddleware` on admin routes.
    public var operatorSettings: OperatorSettings?
    public var requestID: String

    public init(source: Source) {
        self.coreContext = .init(source: source)
        self.caller = nil
        self.operatorSettings = nil
        self.requestID = RequestIDGenerator.next()
    }
}

/// The context of routes that need an agent: it can only exist after authentication succeeded.
public struct AgentRequestContext: ChildRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let caller: Caller
    public let requestID: String

    public init(context: InterlockRequestContext) throws {
        guard let caller = context.caller else { throw GatewayError.missingCredential }
        self.coreContext = context.coreContext
        self.caller = caller
        self.requestID = context.requestID
    }
}

/// Request ids: a 64-bit random prefix chosen at start and a counter, so making one needs no
/// syscall and ids from different processes or restarts practically never collide.
enum RequestIDGenerator {
    private static let prefix = "req_" + String(UInt64.random(in: 0...UInt64.max), radix: 36) + "_"
    private static let counter = Atomic<UInt64>(0)

    static func next() -> String {
        ASCIIText.digits(counter.add(1, ordering: .relaxed).newValue, radix: 36, after: prefix)
    }
}
