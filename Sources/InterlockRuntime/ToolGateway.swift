public import AsyncHTTPClient
import FoundationEssentials
import InterlockConfig
public import InterlockCore
import InterlockPolicy
public import InterlockStore
public import Logging
import NIOCore
import NIOHTTP1
public import ServiceLifecycle
import Synchronization
import Instrumentation
import Tracing

/// Tool calls through the governed pipeline: the same authenticate, authorize (grants, token
/// scopes), admission (agent limits), accounting and audit as model calls, through the one
/// `CallGovernor`; then the tool's own stages: argument validation against its schema,
/// credential injection, the upstream call with a timeout, retries only for idempotent
/// tools, and an idempotency key so a retry never repeats a side effect.
///
/// Upstreams are REST APIs (OpenAPI) and MCP servers (Streamable HTTP or stdio). Tools that
/// are only known at run time (MCP, an OpenAPI document from a URL) are listed when Interlock
/// starts and again every `refresh_interval_s`; an upstream that fails is marked unavailable
/// (its tools leave the catalogs, the others stay) and reconnected, or its process restarted,
/// with backoff. As a `Service`, the gateway stops its upstreams on shutdown.
public final class ToolGateway: Service, Sendable {
    /// A tool and everything needed to call it.
    public struct Tool: Sendable {
        public let definition: ToolDefinition
        /// What is pinned: the definition agents are told and how it is called (REST method,
        /// path, where each argument goes; the MCP tool name), so neither can change unnoticed.
        let pinHash: String
        let schema: JSONSchema
        let binding: Binding
        let source: Source
        /// The tool's own rate limit, shared by every agent.
        let limiter: AsyncRateLimiter?
    }

    enum Binding: Sendable {
        case rest(RESTOperation)
        /// The tool's name on its MCP server.
        case mcp(String)
    }

    /// An upstream's state, as operators see it.
    struct Health: Sendable {
        enum Status: String, Sendable {
            case starting
            case available
            case unavailable
        }

        var status: Status
        var reason: String?
        var sinceMs: Int64
        var lastListedMs: Int64?
        /// Times a stdio server's process ended and was started again.
        var restarts = 0
        /// Tools the upstream offers whose definitions Interlock cannot use, and why.
        var skipped: [String] = []
    }

    final class Source: Sendable {
        let settings: ToolSourceSettings
        let inFlight = Atomic<Int>(0)
        /// The client-credentials token and when to stop using it.
        let cachedToken = Mutex<(token: String, refreshAt: ContinuousClock.Instant)?>(nil)
        let fetchingToken = AsyncSerialGate()
        let health: Mutex<Health>
        /// Listed at run time (MCP, OpenAPI from a URL), by a supervising task.
        var isDynamic: Bool { settings.kind == .mcp || settings.spec.map { if case .url = $0 { true } else { false } } == true }
        let mcp = Mutex<MCPUpstream?>(nil)
        let wake = WakeSignal()
        /// Whether calls may take the event-loop path (off once the server answered in a way
        /// only the async client handles, such as a stream to resume).
        let loopEligible = Atomic<Bool>(true)

        /// Whether a 401 from the upstream is worth a new client-credentials token.
        var renewsTokens: Bool {
            if case .clientCredentials = settings.authentication { true } else { false }
        }

        /// Interlock's credentials for this upstream: never shown, even in an error it echoes.
        var secrets: [Secret?] {
            var secrets: [Secret?] = []
            switch settings.authentication {
            case .bearer(let token): secrets.append(token)
            case .header(_, let value): secrets.append(value)
            case .clientCredentials(_, _, let secret, _): secrets.append(secret)
            case .none, .onBehalfOf: break
            }
            if case .stdio(let process)? = settings.mcpTransport { secrets += process.environment.values.map { $0 } }
            return secrets
        }

        init(settings: ToolSourceSettings, nowMs: Int64) {
            self.settings = settings
            self.health = Mutex(Health(status: .starting, sinceMs: nowMs))
        }
    }

    public let governor: CallGovernor
    private let sources: [Source]
    /// Every known tool, by name (a dynamic upstream's tools are replaced when it is listed).
    let tools = Mutex<[String: Tool]>([:])
    private let client: HTTPClient
    private let store: any InterlockStore
    /// Approved definitions, by tool name; a tool whose pin has a pending change is quarantined.
    let pins: Mutex<[String: ToolPin]>
    private let retry: RetryPolicy
    private let capture: ToolGatewaySettings
    /// Spans and trace headers; no-ops when no tracer is installed.
    let tracing = CallTracing()
    private let queue: AdmissionQueuePolicy
    private let logger: Logger
    private let supervisors = Mutex<[Task<Void, Never>]>([])

    /// The gateway with every tool's definition checked against its pin: a tool seen for the
    /// first time is pinned as it is; one whose definition changed since it was approved is
    /// quarantined (hidden and refused) until an operator approves the new definition.
    /// Upstreams listed at run time get up to `tool_gateway.startup_wait_ms` to answer; slower
    /// ones join the catalog when they do.
    public static func open(
        configuration: InterlockConfiguration, governor: CallGovernor, client: HTTPClient, store: any InterlockStore, logger: Logger
    ) async throws -> ToolGateway {
        let gateway = try ToolGateway(configuration: configuration, governor: governor, client: client, store: store, logger: logger)
        let stored = Dictionary(try await store.toolPins().map { ($0.name, $0) }, uniquingKeysWith: { _, last in last })
        gateway.pins.withLock { $0 = stored }
        for source in gateway.sources where !source.isDynamic {
            let tools = try source.settings.tools.map { try gateway.tool($0.definition, binding: .rest($0.operation), source: source) }
            try await gateway.adopt(tools, from: source)
            source.health.withLock { $0 = Health(status: .available, sinceMs: governor.nowMs(), lastListedMs: governor.nowMs()) }
        }
        let dynamic = gateway.sources.filter(\.isDynamic)
        gateway.supervisors.withLock { tasks in
            tasks = dynamic.map { source in Task { await gateway.supervise(source) } }
        }
        let deadline = ContinuousClock.now.advanced(by: .milliseconds(configuration.toolGateway.startupWaitMs))
        while ContinuousClock.now < deadline, dynamic.contains(where: { $0.health.withLock(\.status) == .starting }) {
            try? await Task.sleep(for: .milliseconds(10))
        }
        return gateway
    }

    private init(configuration: InterlockConfiguration, governor: CallGovernor, client: HTTPClient, store: any InterlockStore, logger: Logger) throws {
        self.store = store
        self.pins = Mutex([:])
        self.queue = AdmissionQueuePolicy(maxDepth: configuration.gateway.queueMaxDepth, maxWait: .milliseconds(configuration.gateway.queueMaxWaitMs))
        self.sources = configuration.toolSources.map { Source(settings: $0, nowMs: governor.nowMs()) }
        self.governor = governor
        self.client = client
        self.retry = RetryPolicy(configuration.gateway)
        self.capture = configuration.toolGateway
        self.logger = logger
    }

    /// A tool as the gateway keeps it: schema compiled, pin hash computed, limiter made.
    private func tool(_ definition: ToolDefinition, binding: Binding, source: Source) throws -> Tool {
        let shape: String
        switch binding {
        case .rest(let operation):
            shape = "\(operation.method) \(operation.pathTemplate) " + operation.parameters.map { "\($0.location.rawValue):\($0.name)" }.joined(separator: ",")
                + " body:\(operation.body.map { "\($0)" } ?? "none")"
        case .mcp(let remote):
            shape = "mcp:\(remote)"
        }
        // A tool listed again keeps its limiter (and what it has counted).
        let existing = tools.withLock { $0[definition.name] }
        let limiter = definition.metadata.requestsPerMinute.map { rpm in
            existing?.limiter.flatMap { existing?.definition.metadata.requestsPerMinute == rpm ? $0 : nil }
                ?? AsyncRateLimiter(name: "tool:\(definition.name)", limits: RateLimits(requestsPerMinute: rpm), queue: queue)
        }
        return Tool(
            definition: definition, pinHash: AuditRecord.sha256Hex(Array((definition.definitionHash + "\n" + shape).utf8)),
            schema: try JSONSchema(definition.inputSchema), binding: binding, source: source, limiter: limiter)
    }

    /// Makes `tools` the tools of `source` (replacing what it listed before), each checked
    /// against its pin first.
    private func adopt(_ newTools: [Tool], from source: Source) async throws {
        let now = governor.nowMs()
        let changed: [ToolPin] = pins.withLock { pins in
            var changed: [ToolPin] = []
            for tool in newTools {
                let name = tool.definition.name
                let next = pins[name].map { $0.seeing(tool.pinHash, nowMs: now) }
                    ?? ToolPin(name: name, approvedHash: tool.pinHash, approvedMs: now, approvedBy: "first-seen")
                if next != pins[name] { changed.append(next) }
                if next.isQuarantined, pins[name]?.isQuarantined != true {
                    logger.warning("tool definition changed upstream; quarantined until approved", metadata: ["interlock.tool": "\(name)"])
                }
                pins[name] = next
            }
            return changed
        }
        try await store.saveToolPins(changed)
        let namespace = source.settings.namespace
        tools.withLock { tools in
            tools = tools.filter { $0.value.source.settings.namespace != namespace }
            for tool in newTools { tools[tool.definition.name] = tool }
        }
    }

    // MARK: - Upstreams listed at run time

    /// Keeps a run-time upstream listed: lists it now and every `refresh_interval_s`; when it
    /// fails (or its process ends) marks it unavailable and tries again after a backoff that
    /// doubles up to its maximum.
    private func supervise(_ source: Source) async {
        var initialBackoff = Duration.milliseconds(500)
        var maxBackoff = Duration.seconds(30)
        if case .stdio(let process)? = source.settings.mcpTransport {
            initialBackoff = .milliseconds(process.restartInitialBackoffMs)
            maxBackoff = .milliseconds(process.restartMaxBackoffMs)
        }
        var backoff = initialBackoff
        var upSince: ContinuousClock.Instant?
        while !Task.isCancelled {
            if source.health.withLock({ $0.status == .unavailable }) {
                // The backoff starts over only after a good spell: a server that dies right after
                // answering is a crash loop, and its restarts keep backing off.
                if let upSince, ContinuousClock.now - upSince > .seconds(30) { backoff = initialBackoff }
                upSince = nil
                // After a failure or a process exit: wait, not woken early (a crash loop must back off).
                guard (try? await Task.sleep(for: backoff)) != nil else { return }
                backoff = min(backoff * 2, maxBackoff)
            }
            do {
                try await refresh(source)
                if upSince == nil { upSince = .now }
                await source.wake.wait(upTo: .seconds(source.settings.refreshIntervalSeconds))
                // At most one listing a second, however often a server says its tools changed.
                guard (try? await Task.sleep(for: .seconds(1))) != nil else { return }
            } catch {
                if Task.isCancelled { return }
                markUnavailable(source, reason: Self.describe(error))
            }
        }
    }

    /// Lists the upstream's tools and adopts them; the upstream is available after.
    private func refresh(_ source: Source) async throws {
        var adopted: [Tool] = []
        var skipped: [String] = []
        let namespace = source.settings.namespace
        func definition(_ base: ToolDefinition, remote: String) -> ToolDefinition {
            var definition = base
            if let metadata = source.settings.toolMetadata[remote] { definition.metadata = metadata }
            return definition
        }
        if source.settings.kind == .mcp {
            let upstream = mcpUpstream(source)
            let listed: [JSONObject]
            do {
                listed = try await upstream.listTools(headers: try await upstreamHeaders(source, caller: nil, tool: nil))
            } catch MCPUpstreamError.unauthorized where source.renewsTokens {
                // A revoked or early-expired client-credentials token: fetch a new one, once.
                _ = try await clientCredentialsToken(source, renew: true)
                listed = try await upstream.listTools(headers: try await upstreamHeaders(source, caller: nil, tool: nil))
            }
            for listed in listed {
                guard let remote = listed["name"]?.stringValue, !remote.isEmpty else {
                    skipped.append("a tool without a name")
                    continue
                }
                let base = ToolDefinition(
                    name: "\(namespace).\(remote)", namespace: namespace,
                    description: listed["description"]?.stringValue ?? listed["title"]?.stringValue ?? "",
                    inputSchema: listed["inputSchema"] ?? ["type": "object"], outputSchema: listed["outputSchema"])
                do {
                    adopted.append(try tool(definition(base, remote: remote), binding: .mcp(remote), source: source))
                } catch {
                    skipped.append("\(remote): \(error)")
                }
            }
        } else if case .url(let url)? = source.settings.spec {
            var request = HTTPClientRequest(url: url)
            request.headers.add(name: "accept", value: "application/json, application/yaml, text/yaml, */*")
            let body: ByteBuffer
            do {
                let response = try await client.execute(request, timeout: .milliseconds(Int64(source.settings.timeoutMs)))
                body = try await response.body.collect(upTo: max(source.settings.maxResponseBytes, 16 * 1024 * 1024))
                guard response.status == .ok else { throw MCPUpstreamError.unreachable("the OpenAPI document answered HTTP \(response.status.code)") }
            } catch let error as MCPUpstreamError {
                throw error
            } catch {
                throw MCPUpstreamError.unreachable("the OpenAPI document could not be fetched: \(error)")
            }
            let imported: [OpenAPITool]
            do {
                imported = try OpenAPIImport.tools(fromDocument: Array(body.readableBytesView), namespace: namespace)
            } catch {
                throw MCPUpstreamError.protocolViolation("the OpenAPI document: \(error.description)")
            }
            for item in imported {
                let remote = String(item.definition.name.dropFirst(namespace.count + 1))
                do {
                    adopted.append(try tool(definition(item.definition, remote: remote), binding: .rest(item.operation), source: source))
                } catch {
                    skipped.append("\(remote): \(error)")
                }
            }
        }
        let unknown = Set(source.settings.toolMetadata.keys).subtracting(adopted.map { String($0.definition.name.dropFirst(namespace.count + 1)) })
        for name in unknown.sorted() {
            logger.warning("config describes a tool the upstream does not offer", metadata: ["interlock.tool": "\(namespace).\(name)"])
        }
        try await adopt(adopted, from: source)
        let now = governor.nowMs()
        let recovered = source.health.withLock { health -> Bool in
            let recovered = health.status != .available
            health.status = .available
            health.reason = nil
            if recovered { health.sinceMs = now }
            health.lastListedMs = now
            health.skipped = skipped
            return recovered
        }
        if recovered {
            logger.info("tool upstream available", metadata: ["interlock.tools.namespace": "\(namespace)", "interlock.tools.count": "\(adopted.count)"])
        }
    }

    private func mcpUpstream(_ source: Source) -> MCPUpstream {
        source.mcp.withLock { current in
            if let current { return current }
            var upstreamLogger = logger
            upstreamLogger[metadataKey: "interlock.tools.namespace"] = "\(source.settings.namespace)"
            let upstream = MCPUpstream(settings: source.settings, client: client, logger: upstreamLogger) {
                [weak self, weak source] ended in
                guard let self, let source else { return }
                if let ended {
                    source.health.withLock { $0.restarts += 1 }
                    self.markUnavailable(source, reason: ended)
                }
                source.wake.signal()
            }
            current = upstream
            return upstream
        }
    }

    /// The upstream's tools leave the catalogs until it answers again.
    func markUnavailable(_ source: Source, reason: String) {
        let now = governor.nowMs()
        let changed = source.health.withLock { health -> Bool in
            defer { health.reason = reason }
            guard health.status != .unavailable else { return false }
            health.status = .unavailable
            health.sinceMs = now
            return true
        }
        if changed {
            logger.warning(
                "tool upstream unavailable",
                metadata: ["interlock.tools.namespace": "\(source.settings.namespace)", "reason": "\(SecretRedaction.redact(reason, secrets: source.secrets))"])
        }
        source.wake.signal()
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? MCPUpstreamError { return error.description }
        if let error = error as? GatewayError { return error.message }
        return "\(error)"
    }

    /// Runs until shutdown, then stops the upstreams (stdio processes get their grace period).
    public func run() async throws {
        try? await gracefulShutdown()
        await shutdown()
    }

    /// Stops supervising and closes every upstream: HTTP sessions are ended, stdio processes
    /// stopped (stdin closed, then SIGTERM, then SIGKILL).
    public func shutdown() async {
        let tasks = supervisors.withLock { tasks in defer { tasks = [] }; return tasks }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
        await withTaskGroup(of: Void.self) { group in
            for source in sources {
                if let upstream = source.mcp.withLock({ $0 }) { group.addTask { await upstream.stop() } }
            }
        }
    }

    /// The tools a caller may use (its agent's grants and its token's scopes), by name;
    /// quarantined tools and those of unavailable upstreams are left out.
    public func catalog(for caller: Caller) -> [ToolDefinition] {
        let quarantined = pins.withLock { pins in Set(pins.values.filter(\.isQuarantined).map(\.name)) }
        return tools.withLock { Array($0.values) }
            .filter { tool in
                !quarantined.contains(tool.definition.name) && tool.source.health.withLock({ $0.status == .available })
                    && caller.permits(kind: TargetKind.tool.rawValue, name: tool.definition.name)
            }
            .map(\.definition)
            .sorted { $0.name < $1.name }
    }

    /// Every tool with its pin and its upstream's state, for operators (`/admin/v1/tools`).
    public func registry() -> [JSONValue] {
        let pins = pins.withLock { $0 }
        return tools.withLock { Array($0.values) }.sorted { $0.definition.name < $1.definition.name }.map { tool in
            let pin = pins[tool.definition.name]
            let upstream = tool.source.health.withLock(\.status)
            let status = pin?.isQuarantined == true ? "quarantined" : upstream == .available ? "available" : "unavailable"
            return [
                "name": .string(tool.definition.name), "namespace": .string(tool.definition.namespace), "status": .string(status),
                "upstream_status": .string(upstream.rawValue),
                "definition_sha256": .string(tool.pinHash), "approved_sha256": pin.map { .string($0.approvedHash) } ?? .null,
                "approved_by": pin.map { .string($0.approvedBy) } ?? .null, "approved_ms": pin.map { .integer($0.approvedMs) } ?? .null,
                "changed_ms": pin?.pendingMs.map(JSONValue.integer) ?? .null, "side_effects": .string(tool.definition.metadata.sideEffects.rawValue),
                "idempotent": .bool(tool.definition.metadata.idempotent), "risk": .string(tool.definition.metadata.risk.rawValue),
                "in_flight": .integer(Int64(tool.source.inFlight.load(ordering: .relaxed))),
                "description": .string(tool.definition.description), "input_schema": tool.definition.inputSchema,
            ]
        }
    }

    /// Every upstream and its health, for operators (`/admin/v1/tools`).
    public func upstreams() -> [JSONValue] {
        let counts = tools.withLock { tools in Dictionary(grouping: tools.values, by: \.source.settings.namespace).mapValues(\.count) }
        return sources.map { source in
            let health = source.health.withLock { $0 }
            let settings = source.settings
            var transport = settings.kind.rawValue
            // Without a query string: some APIs take keys there.
            var address = String(settings.baseURL.prefix { $0 != "?" })
            switch settings.mcpTransport {
            case .streamableHTTP(let url)?:
                transport = "mcp_streamable_http"
                address = String(url.prefix { $0 != "?" })
            case .stdio(let process)?:
                transport = "mcp_stdio"
                // The program, not its arguments or environment (they may hold secrets).
                address = process.command[0]
            case nil:
                break
            }
            return [
                "namespace": .string(settings.namespace), "transport": .string(transport), "address": .string(address),
                "status": .string(health.status.rawValue), "reason": health.reason.map { .string(SecretRedaction.redact($0, secrets: source.secrets)) } ?? .null,
                "since_ms": .integer(health.sinceMs), "last_listed_ms": health.lastListedMs.map(JSONValue.integer) ?? .null,
                "restarts": .integer(Int64(health.restarts)), "tools": .integer(Int64(counts[settings.namespace] ?? 0)),
                "skipped_tools": .array(health.skipped.map(JSONValue.string)),
                "in_flight": .integer(Int64(source.inFlight.load(ordering: .relaxed))), "max_concurrency": .integer(Int64(settings.maxConcurrency)),
            ]
        }
    }

    /// Approves the tool's current definition (an operator read it): the tool is available again.
    /// With `expectedHash` (the `definition_sha256` the operator reviewed), a definition that
    /// changed again since is refused (409), so what is approved is what was read.
    public func approve(_ name: String, by approver: String, expectedHash: String? = nil) async throws -> JSONValue {
        guard let tool = tools.withLock({ $0[name] }) else {
            throw GatewayError(kind: .notFound, code: "tool_not_found", message: "There is no tool '\(name)'.")
        }
        if let expectedHash, expectedHash != tool.pinHash {
            throw GatewayError(
                kind: .conflict, code: "definition_changed",
                message: "Tool '\(name)' changed again since it was reviewed: its definition_sha256 is now \(tool.pinHash).", param: "definition_sha256")
        }
        let pin = ToolPin(name: name, approvedHash: tool.pinHash, approvedMs: governor.nowMs(), approvedBy: approver)
        try await store.saveToolPins([pin])
        pins.withLock { $0[name] = pin }
        return registry().first { $0["name"]?.stringValue == name } ?? .null
    }

    /// The answer of a tool call.
    public struct ToolResult: Sendable {
        /// The upstream's HTTP status (200 for an MCP answer).
        public var status: Int
        /// The upstream's JSON answer, or its text as a string (MCP: the structured content, or
        /// else the content list).
        public var content: JSONValue
        /// An MCP upstream's `CallToolResult`, as it sent it.
        public var mcpResult: JSONObject?
        public var attempts: Int
        /// The upstream refused the call (a 4xx, an MCP `isError`): the agent gets its answer,
        /// to correct itself.
        public var isError: Bool
    }

    /// Runs one tool call. `arguments` is the JSON the agent sent; `idempotencyKey` the one it
    /// gave, if any (otherwise one is derived from the request id, so Interlock's own retries
    /// carry the same key). `onProgress` gets an MCP upstream's progress notifications
    /// (`progress`, `total`, `message`) while the call runs.
    public func invoke(
        _ name: String, arguments bytes: [UInt8], caller: Caller, requestID: String, idempotencyKey: String?,
        traceParent: String? = nil, traceState: String? = nil, onProgress: (@Sendable (JSONObject) -> Void)? = nil
    ) async throws(GatewayError) -> ToolResult {
        let argumentsHash = AuditRecord.sha256Hex(bytes)
        let tool: Tool
        let checkedArguments: JSONObject
        switch checked(name, arguments: bytes, caller: caller) {
        case .success(let checked):
            (tool, checkedArguments) = checked
        case .failure(let error):
            // Invalid arguments are kept (with capture on), so an operator can see what the agent got wrong.
            let capture = error.code == "invalid_arguments" ? tools.withLock({ $0[name] }).flatMap { captured($0.source, arguments: bytes, result: nil) } : nil
            governor.auditRefusal(error, action: "tool.call", caller: caller, target: name, argumentsHash: argumentsHash, capture: capture, requestID: requestID)
            throw error
        }
        let call = GovernedCall(
            requestID: requestID, caller: caller, targetKind: .tool, target: name, operation: "invoke", stream: false, expectedTokens: 0,
            expectedCost: .zero, traceParent: traceParent, traceState: traceState, argumentsHash: argumentsHash)
        var approvals = try await governor.enforcePolicy(call, target: Self.policyTarget(tool), arguments: { .object(checkedArguments) })
        // Guard (in): what the upstream is sent may be redacted, or the call refused or held.
        var arguments = checkedArguments
        var bytes = bytes
        if let guardrails = governor.guardrails, let plan = guardrails.plan(caller, kind: .tool, name: name, direction: .in),
            case .object(let redacted)? = try await guardrails.checkIn(
                .object(arguments), plan: plan, caller: caller, kind: .tool, name: name, requestID: requestID, argumentsHash: argumentsHash,
                approvals: &approvals)
        {
            arguments = redacted
            // What is captured for the audit is what the upstream got.
            bytes = JSONWriter.bytes(.object(redacted))
        }
        let admission = try await governor.admit(call)
        if let limiter = tool.limiter {
            // The tool's own limit, after the agent's: a call waits in the bounded queue, or is refused.
            let outcome: AsyncRateLimiter.Outcome
            do {
                outcome = try await limiter.acquire(tokens: 0, priority: caller.agent.priority)
            } catch {
                governor.settle(admission, CallOutcome(outcome: .rejected, status: 499, errorCode: "request_cancelled"))
                throw GatewayError(kind: .rateLimit, code: "request_cancelled", message: "The request was cancelled while waiting for the tool's limit.", status: 499)
            }
            guard case .admitted = outcome else {
                var retryAfter = 1
                if case .rejected(let wait, _) = outcome { retryAfter = max(1, Int(wait.components.seconds) + 1) }
                let error = GatewayError(
                    kind: .rateLimit, code: "tool_rate_limited",
                    message: "Tool '\(name)' is over its limit of \(tool.definition.metadata.requestsPerMinute ?? 0) calls per minute; retry after \(retryAfter) s.",
                    retryAfterSeconds: retryAfter)
                governor.settle(admission, CallOutcome(outcome: .rejected, status: 429, errorCode: error.code))
                throw error
            }
        }
        let source = tool.source
        guard source.inFlight.add(1, ordering: .relaxed).newValue <= source.settings.maxConcurrency else {
            source.inFlight.subtract(1, ordering: .relaxed)
            let error = GatewayError(
                kind: .rateLimit, code: "tool_busy",
                message: "The tools of '\(source.settings.namespace)' are at their concurrency limit (\(source.settings.maxConcurrency)); retry shortly.",
                retryAfterSeconds: 1)
            governor.settle(admission, CallOutcome(outcome: .rejected, status: 429, errorCode: error.code))
            throw error
        }
        defer { source.inFlight.subtract(1, ordering: .relaxed) }
        // Every stage let the call through: the approvals it goes on under are used now.
        try await governor.useApprovals(approvals, call: call, admission: admission)
        let (span, trace) = beginSpan(name, tool: tool, caller: caller, traceParent: traceParent, traceState: traceState)
        defer { span.end() }
        let result: ToolResult
        do {
            // The upstream sees one credential for every agent: an agent's own key is scoped to the
            // agent and the tool, so one agent's key can never fetch another's stored answer.
            let key = scopedIdempotencyKey(idempotencyKey, caller: caller, tool: name, requestID: requestID)
            switch tool.binding {
            case .rest(let operation):
                result = try await send(tool, operation: operation, arguments: arguments, caller: caller, idempotencyKey: key, trace: trace)
            case .mcp(let remote):
                result = try await sendMCP(
                    tool, remote: remote, arguments: arguments, caller: caller, idempotencyKey: key, trace: trace, onProgress: onProgress)
            }
        } catch let error as GatewayError {
            throw settleFailure(error, admission: admission, span: span, source: source, arguments: bytes)
        } catch {
            governor.settle(admission, CallOutcome(outcome: .error, status: 500, errorCode: "internal_error"))
            throw GatewayError(kind: .internal, code: "internal_error", message: "Interlock failed to process the tool call.")
        }
        // Guard (out): the agent sees the answer redacted, or not at all.
        var guarded = result
        if let guardrails = governor.guardrails, let plan = guardrails.plan(caller, kind: .tool, name: name, direction: .out) {
            do {
                if let mcp = result.mcpResult {
                    if case .object(let redacted)? = try guardrails.checkOut(.object(mcp), plan: plan, caller: caller, name: name, requestID: requestID) {
                        guarded = Self.toolResult(mcp: redacted, attempts: result.attempts)
                    }
                } else if let redacted = try guardrails.checkOut(result.content, plan: plan, caller: caller, name: name, requestID: requestID) {
                    guarded.content = redacted
                }
            } catch {
                throw settleFailure(error, admission: admission, span: span, source: source, arguments: bytes)
            }
        }
        return try settleResult(guarded, tool: tool, admission: admission, span: span, arguments: bytes).get()
    }

    /// The checks before admission, the same on both paths: the tool exists, the caller may
    /// use it (grants, token scopes), it is not quarantined, its upstream is available, and
    /// the arguments are a JSON object its schema accepts. Nothing is audited here.
    func checked(_ name: String, arguments bytes: [UInt8], caller: Caller) -> Result<(Tool, JSONObject), GatewayError> {
        guard let tool = tools.withLock({ $0[name] }) else {
            return .failure(GatewayError(kind: .notFound, code: "tool_not_found", message: "There is no tool '\(name)'.", param: "name"))
        }
        do {
            try governor.authorize(caller, kind: .tool, target: name, audited: false)
        } catch {
            return .failure(error)
        }
        if pins.withLock({ $0[name]?.isQuarantined == true }) {
            return .failure(GatewayError(
                kind: .permission, code: "tool_quarantined",
                message: "Tool '\(name)' changed its definition upstream and is held until an operator approves the new one."))
        }
        guard tool.source.health.withLock({ $0.status == .available }) else {
            return .failure(GatewayError(
                kind: .unavailable, code: "tool_unavailable",
                message: "Tool '\(name)' is unavailable: its upstream '\(tool.source.settings.namespace)' is not answering; Interlock is reconnecting. Retry later.",
                status: 503, retryAfterSeconds: 5))
        }
        guard case .object(let object) = try? JSONParser.parse(bytes) else {
            return .failure(GatewayError.invalidRequest("The arguments must be a JSON object.", code: "invalid_arguments", param: "arguments"))
        }
        let violations = tool.schema.validate(.object(object))
        guard violations.isEmpty else {
            return .failure(GatewayError.invalidRequest(
                "Invalid arguments for tool '\(name)': " + violations.map(\.description).joined(separator: "; ") + ".",
                code: "invalid_arguments", param: violations.first.map { $0.path.isEmpty ? "arguments" : $0.path }))
        }
        return .success((tool, object))
    }

    /// What policy conditions see as `target` for a tool call.
    static func policyTarget(_ tool: Tool) -> PolicyInput.Target {
        let metadata = tool.definition.metadata
        return PolicyInput.Target(
            kind: TargetKind.tool.rawValue, name: tool.definition.name, namespace: tool.source.settings.namespace, operation: "invoke",
            sideEffects: metadata.sideEffects.rawValue, risk: metadata.risk.rawValue, idempotent: metadata.idempotent, owner: metadata.owner)
    }

    /// The span of a tool call, and the trace context for its upstream (this span's, else
    /// the agent's).
    func beginSpan(_ name: String, tool: Tool, caller: Caller, traceParent: String?, traceState: String?) -> (any Span, [(String, String)]) {
        let span = tracing.startSpan("execute_tool \(name)")
        // Setting an attribute builds a dictionary even on a span that records nothing.
        if span.isRecording {
            span.attributes["gen_ai.operation.name"] = "execute_tool"
            span.attributes["gen_ai.tool.name"] = name
            span.attributes["gen_ai.tool.type"] = "function"
            span.attributes["interlock.agent.id"] = caller.agent.id
            span.attributes["interlock.tools.namespace"] = tool.source.settings.namespace
            if case .mcp = tool.binding {
                span.attributes["mcp.method.name"] = "tools/call"
                if case .stdio? = tool.source.settings.mcpTransport { span.attributes["network.transport"] = "pipe" } else { span.attributes["network.transport"] = "tcp" }
            }
        }
        return (span, tracing.traceHeaders(span, traceParent: traceParent, traceState: traceState))
    }

    /// The key the upstream sees: an agent's own key scoped to the agent and the tool (one
    /// agent's key can never fetch another's stored answer), else one from the request id.
    func scopedIdempotencyKey(_ key: String?, caller: Caller, tool: String, requestID: String) -> String {
        key.map { "ik_" + String(AuditRecord.sha256Hex(Array("\(caller.agent.id)\n\(tool)\n\($0)".utf8)).prefix(40)) } ?? "\(requestID):\(tool)"
    }

    /// Settles a call that failed after admission; returns the error for the agent.
    func settleFailure(_ error: GatewayError, admission: CallGovernor.Admission, span: any Span, source: Source, arguments: [UInt8]) -> GatewayError {
        span.attributes["error.type"] = error.code
        governor.settle(admission, CallOutcome(outcome: .error, status: error.status, errorCode: error.code, capture: captured(source, arguments: arguments, result: nil)))
        return error
    }

    /// Settles a call the upstream answered: a REST 5xx (or other non-answer) is the agent's
    /// 502; a refusal (4xx, MCP `isError`) is the tool's answer, for the agent to read.
    func settleResult(
        _ result: ToolResult, tool: Tool, admission: CallGovernor.Admission, span: any Span, arguments: [UInt8]
    ) -> Result<ToolResult, GatewayError> {
        let name = tool.definition.name
        if result.status >= 500 || result.status < 200 || (300..<400).contains(result.status) {
            span.attributes["error.type"] = "\(result.status)"
            governor.settle(admission, CallOutcome(attempts: result.attempts, outcome: .error, status: 502, errorCode: "tool_upstream_error"))
            return .failure(GatewayError(kind: .upstream, code: "tool_upstream_error", message: "Tool '\(name)' failed: its upstream answered \(result.status).", status: 502))
        }
        if result.isError { span.attributes["error.type"] = "tool_error" }
        let answer = result.mcpResult.map(JSONValue.object) ?? result.content
        governor.settle(admission, CallOutcome(
            attempts: result.attempts, outcome: result.isError ? .error : .success, status: result.status,
            errorCode: result.isError ? "tool_refused" : nil, resultHash: AuditRecord.sha256Hex(JSONWriter.bytes(answer)),
            capture: captured(tool.source, arguments: arguments, result: answer)))
        return .success(result)
    }

    /// A tool's answer from an MCP JSON-RPC response message: its result, or, for an error
    /// about the request itself (-32600/-32601/-32602), the refusal the agent reads.
    func mcpResult(_ message: JSONObject, tool: Tool, source: Source, attempts: Int) throws(GatewayError) -> ToolResult {
        if let error = message["error"] {
            let code = Int(error["code"]?.int64Value ?? -32603)
            guard let refusal = mcpRefusal(code: code, message: error["message"]?.stringValue ?? "", tool: tool, source: source, attempts: attempts) else {
                throw GatewayError(kind: .upstream, code: "tool_upstream_error", message: "Tool '\(tool.definition.name)' failed: its server answered error \(code).", status: 502)
            }
            return refusal
        }
        guard case .object(let result)? = message["result"] else {
            throw GatewayError(
                kind: .upstream, code: "tool_upstream_error", message: "Tool '\(tool.definition.name)' failed: its server's answer was cut off or malformed.", status: 502)
        }
        return Self.toolResult(mcp: result, attempts: attempts)
    }

    static func toolResult(mcp answer: JSONObject, attempts: Int) -> ToolResult {
        let isError = answer["isError"]?.boolValue == true
        let content = (isError ? nil : answer["structuredContent"]) ?? answer["content"] ?? .array([])
        return ToolResult(status: 200, content: content, mcpResult: answer, attempts: attempts, isError: isError)
    }

    /// The server refused the request (an argument it does not accept): the agent reads why.
    func mcpRefusal(code: Int, message: String, tool: Tool, source: Source, attempts: Int) -> ToolResult? {
        guard [-32600, -32601, -32602].contains(code) else { return nil }
        let text = "Tool '\(tool.definition.name)' refused the call: \(SecretRedaction.redact(message, secrets: source.secrets))"
        return ToolResult(
            status: 200, content: .string(text), mcpResult: ["content": [["type": "text", "text": .string(text)]], "isError": true],
            attempts: attempts, isError: true)
    }

    /// With `tool_gateway.capture: full`, the arguments and the answer for the audit record
    /// (JSON text), with Interlock's upstream credentials and key-like strings redacted and
    /// each cut at `capture_max_bytes`; nil otherwise (only hashes are kept).
    private func captured(_ source: Source, arguments: [UInt8], result: JSONValue?) -> String? {
        guard capture.capture == .full else { return nil }
        func cut(_ text: String) -> JSONValue {
            let redacted = SecretRedaction.redact(text, secrets: source.secrets)
            let bytes = Array(redacted.utf8)
            guard bytes.count > capture.captureMaxBytes else { return .string(redacted) }
            // Cut on a character boundary.
            var end = capture.captureMaxBytes
            while end > 0, bytes[end] & 0xC0 == 0x80 { end -= 1 }
            return .string(String(decoding: bytes[..<end], as: UTF8.self) + "…[cut \(bytes.count - end) bytes]")
        }
        var document: JSONObject = ["arguments": cut(String(decoding: arguments, as: UTF8.self))]
        if let result { document["result"] = cut(JSONWriter.string(result)) }
        return JSONWriter.string(.object(document))
    }

    /// An MCP `tools/call`, retried (only for idempotent tools) when the upstream could not be
    /// reached or timed out; the idempotency key (`_meta.idempotencyKey`) is the same on every
    /// attempt. A JSON-RPC error about the request itself comes back as the tool's refusal.
    func sendMCP(
        _ tool: Tool, remote: String, arguments: JSONObject, caller: Caller, idempotencyKey: String, trace: [(String, String)],
        onProgress: (@Sendable (JSONObject) -> Void)?
    ) async throws -> ToolResult {
        let source = tool.source
        let upstream = mcpUpstream(source)
        var headers = try await upstreamHeaders(source, caller: caller, tool: tool.definition.name)
        // Progress must only increase (the spec): a retry starts the upstream's count again.
        let floor = ProgressFloor()
        var forward: (@Sendable (JSONObject) -> Void)?
        if let onProgress {
            forward = { @Sendable (progress: JSONObject) in
                guard let value = progress["progress"]?.doubleValue, floor.passes(value) else { return }
                onProgress(progress)
            }
        }
        // The trace context travels in `_meta` (the OpenTelemetry MCP conventions), whatever the transport.
        var meta: JSONObject = ["idempotencyKey": .string(idempotencyKey)]
        for (name, value) in trace { meta[name] = .string(value) }
        let attempts = tool.definition.metadata.idempotent ? max(1, retry.maxAttempts) : 1
        var attempt = 0
        var renewedToken = false
        while true {
            attempt += 1
            let failure: GatewayError
            let retryable: Bool
            do {
                let answer = try await upstream.callTool(
                    remote, arguments: arguments, meta: meta, headers: headers,
                    sessionKey: sessionKey(source, caller: caller), onProgress: forward)
                return Self.toolResult(mcp: answer, attempts: attempt)
            } catch MCPUpstreamError.rpc(let code, let message) where mcpRefusal(code: code, message: message, tool: tool, source: source, attempts: attempt) != nil {
                return mcpRefusal(code: code, message: message, tool: tool, source: source, attempts: attempt)!
            } catch MCPUpstreamError.rpc(let code, _) {
                failure = GatewayError(
                    kind: .upstream, code: "tool_upstream_error", message: "Tool '\(tool.definition.name)' failed: its server answered error \(code).", status: 502)
                retryable = false
            } catch MCPUpstreamError.timeout {
                failure = GatewayError(
                    kind: .upstream, code: "tool_timeout", message: "Tool '\(tool.definition.name)' did not answer within \(source.settings.timeoutMs) ms.", status: 504)
                retryable = true
            } catch MCPUpstreamError.tooLarge {
                failure = GatewayError(
                    kind: .upstream, code: "tool_response_too_large",
                    message: "Tool '\(tool.definition.name)' answered with more than \(source.settings.maxResponseBytes) bytes.", status: 502)
                retryable = false
            } catch MCPUpstreamError.cancelled {
                throw GatewayError(kind: .rateLimit, code: "request_cancelled", message: "The request was cancelled.", status: 499)
            } catch MCPUpstreamError.unauthorized {
                // Refused before it ran: with client credentials, a new token and one more try.
                guard source.renewsTokens, !renewedToken else {
                    throw GatewayError(
                        kind: .upstream, code: "tool_auth_failed", message: "Tool '\(tool.definition.name)': its server refused Interlock's credential.", status: 502)
                }
                renewedToken = true
                _ = try await clientCredentialsToken(source, renew: true)
                headers = try await upstreamHeaders(source, caller: caller, tool: tool.definition.name)
                attempt -= 1
                continue
            } catch MCPUpstreamError.httpStatus(let status) {
                // The server is there but failed this call; only a transient status is retried.
                failure = GatewayError(
                    kind: .upstream, code: "tool_upstream_error", message: "Tool '\(tool.definition.name)' failed: its server answered HTTP \(status).", status: 502)
                retryable = status == 429 || status >= 500
            } catch MCPUpstreamError.protocolViolation {
                // This answer was broken (cut off, not JSON-RPC); the server and its session stay.
                failure = GatewayError(
                    kind: .upstream, code: "tool_upstream_error", message: "Tool '\(tool.definition.name)' failed: its server's answer was cut off or malformed.",
                    status: 502)
                retryable = true
            } catch let error as MCPUpstreamError {
                // Unreachable or its session lost for good: the upstream is reconnected.
                markUnavailable(source, reason: error.description)
                failure = GatewayError(kind: .upstream, code: "tool_unreachable", message: "Tool '\(tool.definition.name)' could not be reached.", status: 502)
                retryable = true
            }
            guard retryable, attempt < attempts else { throw failure }
            try await pause(retry.backoff(afterAttempt: attempt))
        }
    }

    /// Which upstream session a call uses: one shared session, or, when the upstream sees the
    /// caller's identity (on behalf of), one per user or agent, since a server binds a session
    /// to whoever opened it.
    private func sessionKey(_ source: Source, caller: Caller?) -> String {
        guard case .onBehalfOf = source.settings.authentication, let caller else { return "" }
        return caller.user.map { "user:\($0)" } ?? "agent:\(caller.agent.id)"
    }

    /// The headers that carry Interlock's credential for the upstream (never the agent's).
    /// Without a caller (listing tools) an on-behalf-of token names Interlock itself.
    private func upstreamHeaders(_ source: Source, caller: Caller?, tool: String?) async throws -> [(String, String)] {
        if let headers = staticCredentialHeaders(source) { return headers }
        switch source.settings.authentication {
        case .clientCredentials: return [("authorization", "Bearer \(try await clientCredentialsToken(source, renew: false))")]
        case .onBehalfOf(let audience):
            return [("authorization", "Bearer \(try await onBehalfOfToken(caller: caller, audience: audience, tool: tool))")]
        case .none, .bearer, .header: return []
        }
    }

    /// The credential headers that need no work per call (none, bearer, API-key header); nil
    /// for tokens that are fetched or minted.
    func staticCredentialHeaders(_ source: Source) -> [(String, String)]? {
        switch source.settings.authentication {
        case .none: []
        case .bearer(let token): [("authorization", "Bearer \(token.reveal())")]
        case .header(let name, let value): [(name, value.reveal())]
        case .clientCredentials, .onBehalfOf: nil
        }
    }

    /// The HTTP request, retried (only for idempotent tools) on connection failures, 429 and
    /// 5xx answers, with backoff; the idempotency key is the same on every attempt.
    private func send(
        _ tool: Tool, operation: RESTOperation, arguments: JSONObject, caller: Caller, idempotencyKey: String, trace: [(String, String)]
    ) async throws -> ToolResult {
        let settings = tool.source.settings
        let built = operation.request(arguments: arguments)
        var request = HTTPClientRequest(url: settings.baseURL + built.path)
        request.method = HTTPMethod(rawValue: operation.method)
        request.headers.add(name: "accept", value: "application/json")
        request.headers.add(name: "idempotency-key", value: idempotencyKey)
        for (name, value) in trace { request.headers.add(name: name, value: value) }
        for (name, value) in built.headers { request.headers.add(name: name, value: value) }
        for (name, value) in try await upstreamHeaders(tool.source, caller: caller, tool: tool.definition.name) {
            request.headers.replaceOrAdd(name: name, value: value)
        }
        if let body = built.body {
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(JSONWriter.bytes(body))
        }
        let attempts = tool.definition.metadata.idempotent ? max(1, retry.maxAttempts) : 1
        var attempt = 0
        var renewedToken = false
        while true {
            attempt += 1
            let retryable: Bool
            let failure: GatewayError
            do {
                let response = try await client.execute(request, timeout: .milliseconds(Int64(settings.timeoutMs)))
                let body = try await response.body.collect(upTo: settings.maxResponseBytes)
                let status = Int(response.status.code)
                if status == 401, case .clientCredentials = settings.authentication, !renewedToken {
                    // The cached token was revoked or expired early: fetch a new one, once.
                    renewedToken = true
                    request.headers.replaceOrAdd(name: "authorization", value: "Bearer \(try await clientCredentialsToken(tool.source, renew: true))")
                    attempt -= 1
                    continue
                }
                if status == 429 || status >= 500, attempt < attempts {
                    try await pause(retry.backoff(afterAttempt: attempt))
                    continue
                }
                let bytes = Array(body.readableBytesView)
                let content = (try? JSONParser.parse(bytes)) ?? .string(String(decoding: bytes, as: UTF8.self))
                return ToolResult(status: status, content: content, attempts: attempt, isError: !(200..<300).contains(status))
            } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout {
                retryable = true
                failure = GatewayError(
                    kind: .upstream, code: "tool_timeout", message: "Tool '\(tool.definition.name)' did not answer within \(settings.timeoutMs) ms.", status: 504)
            } catch is NIOTooManyBytesError {
                retryable = false
                failure = GatewayError(
                    kind: .upstream, code: "tool_response_too_large",
                    message: "Tool '\(tool.definition.name)' answered with more than \(settings.maxResponseBytes) bytes.", status: 502)
            } catch is CancellationError {
                throw GatewayError(kind: .rateLimit, code: "request_cancelled", message: "The request was cancelled.", status: 499)
            } catch let error as GatewayError {
                // Interlock's own failure (a token it could not get): not the upstream's.
                throw error
            } catch {
                retryable = true
                failure = GatewayError(kind: .upstream, code: "tool_unreachable", message: "Tool '\(tool.definition.name)' could not be reached.", status: 502)
            }
            guard retryable, attempt < attempts else { throw failure }
            try await pause(retry.backoff(afterAttempt: attempt))
        }
    }

    /// A token for the upstream, minted per call: who the agent acts for (or the agent), the
    /// chain of actors, the upstream's audience, and only the scope of this tool.
    private func onBehalfOfToken(caller: Caller?, audience: String, tool: String?) async throws -> String {
        guard let tokens = governor.tokens else {
            throw GatewayError(kind: .internal, code: "internal_error", message: "On-behalf-of upstream authentication needs Interlock's token service.")
        }
        let now = governor.nowMs()
        guard let caller, let tool else {
            // Interlock itself, listing the upstream's tools.
            return try await tokens.issueDelegated(
                subject: "interlock", actors: [], mayAct: nil, scopes: ["tools:list"], audiences: [audience], nowMs: now, expiresMs: now + 60_000)
        }
        let agent = tokens.subject(for: caller.agent)
        let subject = caller.user ?? agent
        // The agent calling now, then the actors it already acts through.
        let actors = caller.user == nil ? [] : [agent] + caller.actorChain.filter { $0 != agent }
        return try await tokens.issueDelegated(
            subject: subject, actors: actors, mayAct: nil, scopes: ["tool:\(tool)"], audiences: [audience], nowMs: now,
            expiresMs: now + Int64(min(tokens.settings.tokenTTLSeconds, 300)) * 1000)
    }

    /// The source's client-credentials token: cached, fetched when missing, near expiry, or
    /// `renew`ed after a 401. One fetch at a time per source.
    private func clientCredentialsToken(_ source: Source, renew: Bool) async throws -> String {
        guard case .clientCredentials(let tokenURL, let clientID, let secret, let scope) = source.settings.authentication else { return "" }
        let stale = source.cachedToken.withLock { $0?.token }
        if !renew, let cached = source.cachedToken.withLock({ $0 }), ContinuousClock.now < cached.refreshAt { return cached.token }
        return try await source.fetchingToken.run {
            // Another call may have fetched it meanwhile.
            if let cached = source.cachedToken.withLock({ $0 }), ContinuousClock.now < cached.refreshAt, cached.token != (renew ? stale : nil) {
                return cached.token
            }
            var request = HTTPClientRequest(url: tokenURL)
            request.method = .POST
            request.headers.add(name: "content-type", value: "application/x-www-form-urlencoded")
            request.headers.add(name: "accept", value: "application/json")
            var form = "grant_type=client_credentials&client_id=\(RESTOperation.formEncode(clientID))&client_secret=\(RESTOperation.formEncode(secret.reveal()))"
            if let scope { form += "&scope=\(RESTOperation.formEncode(scope))" }
            request.body = .bytes(Array(form.utf8))
            let response: HTTPClientResponse
            let body: ByteBuffer
            do {
                response = try await client.execute(request, timeout: .milliseconds(Int64(source.settings.timeoutMs)))
                body = try await response.body.collect(upTo: 64 * 1024)
            } catch {
                throw GatewayError(kind: .upstream, code: "tool_auth_failed", message: "The token endpoint of '\(source.settings.namespace)' could not be reached.", status: 502)
            }
            guard response.status == .ok, case .object(let answer)? = try? JSONParser.parse(Array(body.readableBytesView)),
                let token = answer["access_token"]?.stringValue
            else {
                // Never the body: it may echo the secret.
                throw GatewayError(
                    kind: .upstream, code: "tool_auth_failed",
                    message: "The token endpoint of '\(source.settings.namespace)' refused Interlock's credentials (\(response.status.code)).", status: 502)
            }
            let lifetime = max(1, Int(answer["expires_in"]?.int64Value ?? 300))
            // Renewed before it expires: a tenth of its life or 30 s, whichever is less.
            let refreshAt = ContinuousClock.now.advanced(by: .seconds(lifetime - min(30, lifetime / 10)))
            source.cachedToken.withLock { $0 = (token, refreshAt) }
            return token
        }
    }

    private func pause(_ duration: Duration) async throws(GatewayError) {
        do {
            try await Task.sleep(for: duration)
        } catch {
            throw GatewayError(kind: .rateLimit, code: "request_cancelled", message: "The request was cancelled.", status: 499)
        }
    }
}

/// The highest progress forwarded so far: only higher values pass.
private final class ProgressFloor: Sendable {
    private let last = Mutex<Double>(-.infinity)

    func passes(_ value: Double) -> Bool {
        last.withLock { last in
            guard value > last else { return false }
            last = value
            return true
        }
    }
}
