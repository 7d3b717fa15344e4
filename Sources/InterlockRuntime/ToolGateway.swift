public import AsyncHTTPClient
import FoundationEssentials
public import InterlockCore
public import InterlockStore
public import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import Tracing

/// Tool calls through the governed pipeline: the same authenticate, authorize (grants, token
/// scopes), admission (agent limits), accounting and audit as model calls, through the one
/// `CallGovernor`; then the tool's own stages: argument validation against its schema,
/// credential injection, the upstream call with a timeout, retries only for idempotent
/// tools, and an idempotency key so a retry never repeats a side effect.
public final class ToolGateway: Sendable {
    /// A tool and everything needed to call it.
    public struct Tool: Sendable {
        public let definition: ToolDefinition
        /// What is pinned: the definition agents are told and the request it becomes (method,
        /// path, where each argument goes), so neither can change unnoticed.
        let pinHash: String
        let schema: JSONSchema
        let operation: RESTOperation
        let source: Source
        /// The tool's own rate limit, shared by every agent.
        let limiter: AsyncRateLimiter?
    }

    final class Source: Sendable {
        let settings: ToolSourceSettings
        let inFlight = Atomic<Int>(0)
        /// The client-credentials token and when to stop using it.
        let cachedToken = Mutex<(token: String, refreshAt: ContinuousClock.Instant)?>(nil)
        let fetchingToken = AsyncSerialGate()

        init(settings: ToolSourceSettings) { self.settings = settings }
    }

    public let governor: CallGovernor
    private let tools: [String: Tool]
    private let client: HTTPClient
    private let store: any InterlockStore
    /// Approved definitions, by tool name; a tool whose pin has a pending change is quarantined.
    private let pins: Mutex<[String: ToolPin]>
    private let retry: RetryPolicy
    private let logger: Logger

    /// The gateway with every tool's definition checked against its pin: a tool seen for the
    /// first time is pinned as it is; one whose definition changed since it was approved is
    /// quarantined (hidden and refused) until an operator approves the new definition.
    public static func open(
        configuration: InterlockConfiguration, governor: CallGovernor, client: HTTPClient, store: any InterlockStore, logger: Logger
    ) async throws -> ToolGateway {
        let gateway = try ToolGateway(configuration: configuration, governor: governor, client: client, store: store, logger: logger)
        let now = governor.nowMs()
        var pins = Dictionary(try await store.toolPins().map { ($0.name, $0) }, uniquingKeysWith: { _, last in last })
        var changed: [ToolPin] = []
        for tool in gateway.tools.values {
            let hash = tool.pinHash
            let next = pins[tool.definition.name].map { $0.seeing(hash, nowMs: now) }
                ?? ToolPin(name: tool.definition.name, approvedHash: hash, approvedMs: now, approvedBy: "first-seen")
            if next != pins[tool.definition.name] { changed.append(next) }
            if next.isQuarantined, pins[tool.definition.name]?.isQuarantined != true {
                logger.warning("tool definition changed upstream; quarantined until approved", metadata: ["interlock.tool": "\(tool.definition.name)"])
            }
            pins[tool.definition.name] = next
        }
        try await store.saveToolPins(changed)
        gateway.pins.withLock { $0 = pins }
        return gateway
    }

    private init(configuration: InterlockConfiguration, governor: CallGovernor, client: HTTPClient, store: any InterlockStore, logger: Logger) throws {
        self.store = store
        self.pins = Mutex([:])
        var tools: [String: Tool] = [:]
        let queue = AdmissionQueuePolicy(maxDepth: configuration.gateway.queueMaxDepth, maxWait: .milliseconds(configuration.gateway.queueMaxWaitMs))
        for settings in configuration.toolSources {
            let source = Source(settings: settings)
            for tool in settings.tools {
                let limiter = tool.definition.metadata.requestsPerMinute.map {
                    AsyncRateLimiter(name: "tool:\(tool.definition.name)", limits: RateLimits(requestsPerMinute: $0), queue: queue)
                }
                let operation = tool.operation
                let shape = "\(operation.method) \(operation.pathTemplate) " + operation.parameters.map { "\($0.location.rawValue):\($0.name)" }.joined(separator: ",")
                    + " body:\(operation.body.map { "\($0)" } ?? "none")"
                tools[tool.definition.name] = Tool(
                    definition: tool.definition, pinHash: AuditRecord.sha256Hex(Array((tool.definition.definitionHash + "\n" + shape).utf8)),
                    schema: try JSONSchema(tool.definition.inputSchema), operation: tool.operation, source: source, limiter: limiter)
            }
        }
        self.tools = tools
        self.governor = governor
        self.client = client
        self.retry = RetryPolicy(configuration.gateway)
        self.logger = logger
    }

    /// The tools a caller may use (its agent's grants and its token's scopes), by name;
    /// quarantined tools are left out.
    public func catalog(for caller: Caller) -> [ToolDefinition] {
        let quarantined = pins.withLock { pins in Set(pins.values.filter(\.isQuarantined).map(\.name)) }
        return tools.values.map(\.definition)
            .filter { !quarantined.contains($0.name) && caller.permits(kind: TargetKind.tool.rawValue, name: $0.name) }
            .sorted { $0.name < $1.name }
    }

    /// Every tool with its pin, for operators (`/admin/v1/tools`).
    public func registry() -> [JSONValue] {
        let pins = pins.withLock { $0 }
        return tools.values.sorted { $0.definition.name < $1.definition.name }.map { tool in
            let pin = pins[tool.definition.name]
            return [
                "name": .string(tool.definition.name), "namespace": .string(tool.definition.namespace),
                "status": .string(pin?.isQuarantined == true ? "quarantined" : "available"),
                "definition_sha256": .string(tool.pinHash), "approved_sha256": pin.map { .string($0.approvedHash) } ?? .null,
                "approved_by": pin.map { .string($0.approvedBy) } ?? .null, "approved_ms": pin.map { .integer($0.approvedMs) } ?? .null,
                "changed_ms": pin?.pendingMs.map(JSONValue.integer) ?? .null, "side_effects": .string(tool.definition.metadata.sideEffects.rawValue),
                "risk": .string(tool.definition.metadata.risk.rawValue), "base_url": .string(tool.source.settings.baseURL),
                "in_flight": .integer(Int64(tool.source.inFlight.load(ordering: .relaxed))),
                "description": .string(tool.definition.description), "input_schema": tool.definition.inputSchema,
            ]
        }
    }

    /// Approves the tool's current definition (an operator read it): the tool is available again.
    public func approve(_ name: String, by approver: String) async throws -> JSONValue {
        guard let tool = tools[name] else { throw GatewayError(kind: .notFound, code: "tool_not_found", message: "There is no tool '\(name)'.") }
        let pin = ToolPin(name: name, approvedHash: tool.pinHash, approvedMs: governor.nowMs(), approvedBy: approver)
        try await store.saveToolPins([pin])
        pins.withLock { $0[name] = pin }
        return registry().first { $0["name"]?.stringValue == name } ?? .null
    }

    /// The answer of a tool call.
    public struct ToolResult: Sendable {
        /// The upstream's status.
        public var status: Int
        /// The upstream's JSON answer, or its text as a string.
        public var content: JSONValue
        public var attempts: Int
        /// The upstream refused the call (4xx): the agent gets its answer, to correct itself.
        public var isError: Bool { !(200..<300).contains(status) }
    }

    /// Runs one tool call. `arguments` is the JSON the agent sent; `idempotencyKey` the one it
    /// gave, if any (otherwise one is derived from the request id, so Interlock's own retries
    /// carry the same key).
    public func invoke(
        _ name: String, arguments bytes: [UInt8], caller: Caller, requestID: String, idempotencyKey: String?
    ) async throws(GatewayError) -> ToolResult {
        let argumentsHash = AuditRecord.sha256Hex(bytes)
        guard let tool = tools[name] else {
            let error = GatewayError(kind: .notFound, code: "tool_not_found", message: "There is no tool '\(name)'.", param: "name")
            governor.auditRefusal(error, action: "tool.call", caller: caller, target: name, argumentsHash: argumentsHash, requestID: requestID)
            throw error
        }
        try governor.authorize(caller, kind: .tool, target: name, requestID: requestID)
        if pins.withLock({ $0[name]?.isQuarantined == true }) {
            let error = GatewayError(
                kind: .permission, code: "tool_quarantined",
                message: "Tool '\(name)' changed its definition upstream and is held until an operator approves the new one.")
            governor.auditRefusal(error, action: "tool.call", caller: caller, target: name, argumentsHash: argumentsHash, requestID: requestID)
            throw error
        }
        let arguments: JSONObject
        do throws(GatewayError) {
            guard case .object(let object) = try? JSONParser.parse(bytes) else {
                throw GatewayError.invalidRequest("The arguments must be a JSON object.", code: "invalid_arguments", param: "arguments")
            }
            let violations = tool.schema.validate(.object(object))
            guard violations.isEmpty else {
                throw GatewayError.invalidRequest(
                    "Invalid arguments for tool '\(name)': " + violations.map(\.description).joined(separator: "; ") + ".",
                    code: "invalid_arguments", param: violations.first.map { $0.path.isEmpty ? "arguments" : $0.path })
            }
            arguments = object
        } catch {
            governor.auditRefusal(error, action: "tool.call", caller: caller, target: name, argumentsHash: argumentsHash, requestID: requestID)
            throw error
        }
        let call = GovernedCall(
            requestID: requestID, caller: caller, targetKind: .tool, target: name, operation: "invoke", stream: false, expectedTokens: 0,
            expectedCost: .zero, argumentsHash: argumentsHash)
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
        let span = startSpan("execute_tool \(name)", ofKind: .client)
        defer { span.end() }
        span.attributes["gen_ai.operation.name"] = "execute_tool"
        span.attributes["gen_ai.tool.name"] = name
        span.attributes["interlock.agent.id"] = caller.agent.id
        let result: ToolResult
        do {
            // The upstream sees one credential for every agent: an agent's own key is scoped to the
            // agent and the tool, so one agent's key can never fetch another's stored answer.
            let key = idempotencyKey.map { "ik_" + AuditRecord.sha256Hex(Array("\(caller.agent.id)\n\(name)\n\($0)".utf8)).prefix(40) } ?? "\(requestID):\(name)"
            result = try await send(tool, arguments: arguments, caller: caller, idempotencyKey: String(key))
        } catch let error as GatewayError {
            span.attributes["error.type"] = error.code
            governor.settle(admission, CallOutcome(outcome: .error, status: error.status, errorCode: error.code))
            throw error
        } catch {
            governor.settle(admission, CallOutcome(outcome: .error, status: 500, errorCode: "internal_error"))
            throw GatewayError(kind: .internal, code: "internal_error", message: "Interlock failed to process the tool call.")
        }
        if result.status >= 500 || result.status < 200 || (300..<400).contains(result.status) {
            span.attributes["error.type"] = "\(result.status)"
            governor.settle(admission, CallOutcome(attempts: result.attempts, outcome: .error, status: 502, errorCode: "tool_upstream_error"))
            throw GatewayError(kind: .upstream, code: "tool_upstream_error", message: "Tool '\(name)' failed: its upstream answered \(result.status).", status: 502)
        }
        if result.isError { span.attributes["error.type"] = "\(result.status)" }
        governor.settle(admission, CallOutcome(
            attempts: result.attempts, outcome: result.isError ? .error : .success, status: result.status,
            errorCode: result.isError ? "tool_refused" : nil))
        return result
    }

    /// The HTTP request, retried (only for idempotent tools) on connection failures, 429 and
    /// 5xx answers, with backoff; the idempotency key is the same on every attempt.
    private func send(_ tool: Tool, arguments: JSONObject, caller: Caller, idempotencyKey: String) async throws -> ToolResult {
        let settings = tool.source.settings
        let built = tool.operation.request(arguments: arguments)
        var request = HTTPClientRequest(url: settings.baseURL + built.path)
        request.method = HTTPMethod(rawValue: tool.operation.method)
        request.headers.add(name: "accept", value: "application/json")
        request.headers.add(name: "idempotency-key", value: idempotencyKey)
        for (name, value) in built.headers { request.headers.add(name: name, value: value) }
        switch settings.authentication {
        case .none: break
        case .bearer(let token): request.headers.replaceOrAdd(name: "authorization", value: "Bearer \(token.reveal())")
        case .header(let name, let value): request.headers.replaceOrAdd(name: name, value: value.reveal())
        case .clientCredentials:
            request.headers.replaceOrAdd(name: "authorization", value: "Bearer \(try await clientCredentialsToken(tool.source, renew: false))")
        case .onBehalfOf(let audience):
            request.headers.replaceOrAdd(
                name: "authorization", value: "Bearer \(try await onBehalfOfToken(caller: caller, audience: audience, tool: tool.definition.name))")
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
                return ToolResult(status: status, content: content, attempts: attempt)
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
    private func onBehalfOfToken(caller: Caller, audience: String, tool: String) async throws -> String {
        guard let tokens = governor.tokens else {
            throw GatewayError(kind: .internal, code: "internal_error", message: "On-behalf-of upstream authentication needs Interlock's token service.")
        }
        let agent = tokens.subject(for: caller.agent)
        let now = governor.nowMs()
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
