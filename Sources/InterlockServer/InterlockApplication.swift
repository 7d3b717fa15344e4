public import Hummingbird
public import HummingbirdCore
import HTTPTypes
import Metrics
public import InterlockCore
public import InterlockRuntime
public import InterlockStore
public import InterlockProviders
import NIOPosix
public import Logging
public import Prometheus
import NIOCore

/// Everything the HTTP layer serves, built once at start-up.
public struct InterlockServices: Sendable {
    public var configuration: InterlockConfiguration
    public var gateway: ModelGateway
    public var store: any InterlockStore
    public var ledger: UsageLedgerWriter
    public var metrics: PrometheusCollectorRegistry
    /// The event-loop path's upstream client; `nil` serves every call on the async path.
    public var loopClient: LoopHTTPClient?
    /// Tool calls; nil when no tools are configured.
    public var tools: ToolGateway?
    /// Durable workflows (`/v1/runs`, `/v1/events`); nil serves none.
    public var workflows: WorkflowEngine?
    /// MCP sessions of `/mcp`, shared by the router and the event-loop path.
    let mcpSessions: MCPSessions

    public init(
        configuration: InterlockConfiguration, gateway: ModelGateway, store: any InterlockStore, ledger: UsageLedgerWriter, metrics: PrometheusCollectorRegistry,
        loopClient: LoopHTTPClient? = nil, tools: ToolGateway? = nil, workflows: WorkflowEngine? = nil
    ) {
        self.tools = tools
        self.workflows = workflows
        self.configuration = configuration
        self.gateway = gateway
        self.store = store
        self.ledger = ledger
        self.metrics = metrics
        self.loopClient = loopClient
        let mcp = configuration.mcp
        self.mcpSessions = MCPSessions(
            maxSessions: mcp.maxSessions, maxPerAgent: mcp.maxSessionsPerAgent, idleTimeout: .seconds(mcp.sessionIdleTimeoutSeconds),
            shared: configuration.store.isShared ? store as? any SessionStore : nil,
            notifications: configuration.store.isShared ? (store as? any ClusterStore)?.notifications() : nil)
    }
}

/// The router production uses; tests drive the same one.
public func buildRouter(_ services: InterlockServices) -> Router<InterlockRequestContext> {
    let router = Router(context: InterlockRequestContext.self)
    router.add(middleware: ErrorRenderingMiddleware(publicURL: services.configuration.auth.publicURL))
    router.add(middleware: RequestIDMiddleware())

    router.get("healthz") { _, _ in
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"status":"ok"}"#)))
    }
    router.get("readyz") { _, _ in
        do {
            try await services.store.ping()
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"status":"ready"}"#)))
        } catch {
            return Response(status: .serviceUnavailable, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"status":"store unavailable"}"#)))
        }
    }
    router.get("metrics") { _, _ in
        Metrics.Gauge(label: "interlock_ledger_backlog", dimensions: []).record(Double(services.ledger.backlog))
        if let audit = services.gateway.governor.audit {
            Metrics.Gauge(label: "interlock_audit_backlog", dimensions: []).record(Double(audit.writer.backlog))
        }
        for (deployment, depth) in services.gateway.queueDepths() {
            Metrics.Gauge(label: "interlock_queue_depth", dimensions: [("scope", "deployment"), ("key", deployment)]).record(Double(depth))
        }
        for state in services.gateway.allDeployments {
            let value: Double = state.breakerState == "closed" ? 0 : state.breakerState == "half_open" ? 1 : 2
            Metrics.Gauge(label: "interlock_breaker_state", dimensions: [("deployment", state.settings.id)]).record(value)
        }
        var buffer: [UInt8] = []
        services.metrics.emit(into: &buffer)
        return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"], body: .init(byteBuffer: ByteBuffer(bytes: buffer)))
    }

    AdminRoutes(
        operators: CredentialDirectory(services.configuration.operators.map { ($0.token.reveal(), $0) }), store: services.store,
        governor: services.gateway.governor, modelAliases: Set(services.configuration.models.map(\.name)), tools: services.tools,
        nodeID: services.configuration.node.id, cluster: services.configuration.cluster
    ).addRoutes(to: router)

    ProtectedResourceRoutes(
        settings: services.configuration.auth, scopes: services.configuration.models.map { "model:\($0.name)" }.sorted()
    ).addRoutes(to: router)
    if let tokens = services.gateway.governor.tokens {
        OAuthRoutes(tokens: tokens, governor: services.gateway.governor).addRoutes(to: router)
    }

    let agentRoutes = router.group("v1")
        .add(middleware: AgentAuthenticationMiddleware(governor: services.gateway.governor))
        .group(context: AgentRequestContext.self)
    ModelRoutes(gateway: services.gateway, maxBodyBytes: services.configuration.server.maxBodyBytes).addRoutes(to: agentRoutes)
    // Routes both agents and operators use: each answers by who is asking.
    let shared = router.group("v1")
        .add(middleware: PrincipalAuthenticationMiddleware(
            operators: CredentialDirectory(services.configuration.operators.map { ($0.token.reveal(), $0) }), governor: services.gateway.governor))
        .group(context: PrincipalRequestContext.self)
    if let policy = services.gateway.governor.policy { ApprovalRoutes(policy: policy).addRoutes(to: shared) }
    if let workflows = services.workflows { WorkflowRoutes(engine: workflows, maxBodyBytes: services.configuration.server.maxBodyBytes).addRoutes(to: shared) }
    if let tools = services.tools {
        ToolRoutes(tools: tools, maxBodyBytes: services.configuration.server.maxBodyBytes).addRoutes(to: agentRoutes)
        let mcp = router.group("mcp")
            .add(middleware: AgentAuthenticationMiddleware(governor: services.gateway.governor))
            .group(context: AgentRequestContext.self)
        MCPRoutes(tools: tools, sessions: services.mcpSessions, maxBodyBytes: services.configuration.server.maxBodyBytes).addRoutes(to: mcp)
    }
    return router
}

/// The Hummingbird application that `interlock serve` runs.
public func buildApplication(
    _ services: InterlockServices, host: String, port: Int, logger: Logger,
    onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
) -> some ApplicationProtocol {
    Application(
        router: buildRouter(services),
        server: .interlock(services),
        configuration: .init(address: .hostname(host, port: port), serverName: "interlock"),
        onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? port) },
        eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton),
        logger: logger)
}

extension HTTPServerBuilder {
    /// HTTP/1.1 with the event-loop path in front of the router (when `services.loopClient`
    /// is set). The loop client must use the server's event loop group.
    public static func interlock(_ services: InterlockServices) -> HTTPServerBuilder {
        let path = services.loopClient.map {
            EventLoopPath(
                gateway: services.gateway, client: $0, maxBodyBytes: services.configuration.server.maxBodyBytes, tools: services.tools,
                mcpSessions: services.mcpSessions)
        }
        let maxHeaderBytes = services.configuration.server.maxHeaderBytes
        return HTTPServerBuilder { responder in InterlockHTTP1Channel(responder: responder, path: path, maxHeaderBytes: maxHeaderBytes) }
    }
}

/// Puts the request id in the logger's metadata for everything the request logs.
struct RequestIDMiddleware: RouterMiddleware {
    typealias Context = InterlockRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        context.logger[metadataKey: "interlock.request.id"] = .string(context.requestID)
        return try await next(request, context)
    }
}
