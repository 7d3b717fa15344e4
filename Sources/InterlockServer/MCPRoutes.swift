import FoundationEssentials
import HTTPTypes
import Hummingbird
import InterlockCore
import InterlockRuntime
import InterlockStore
import NIOCore
import Synchronization

/// The MCP server at `/mcp` (Streamable HTTP, JSON responses): one endpoint that lists and
/// calls every tool the calling agent was granted, whatever upstream serves it. Tool calls go
/// through the same `ToolGateway` (and so the same pipeline) as `/v1/tools`.
///
/// Sessions follow the handshake protocol versions (2024-11-05 to 2025-11-25): `initialize`
/// answers with an `Mcp-Session-Id`; later requests must carry it and belong to the same
/// agent. A client that probes the 2026 `server/discover` gets -32601 and falls back to the
/// handshake, as the spec's clients do.
struct MCPRoutes {
    static let supportedVersions = MCPProtocol.versions
    static let methods: Set<String> = ["initialize", "ping", "tools/list", "tools/call"]

    let tools: ToolGateway
    let sessions: MCPSessions
    let maxBodyBytes: Int

    /// JSON-RPC error codes.
    enum Code {
        static let parse = -32700
        static let invalidRequest = -32600
        static let methodNotFound = -32601
        static let invalidParams = -32602
        static let internalError = -32603
        /// Answer to a call the client cancelled (the JSON-RPC "request cancelled" of LSP).
        static let requestCancelled = -32800
    }

    func addRoutes(to group: RouterGroup<AgentRequestContext>) {
        group.post { request, context in try await post(request, context: context) }
        // No server-initiated stream is offered.
        group.get { _, context in
            Self.rpcError(nil, Code.invalidRequest, "This server does not offer a server-to-client stream; POST JSON-RPC messages.", status: .methodNotAllowed, requestID: context.requestID)
        }
        group.delete { request, context in
            guard let id = request.headers[HTTPField.Name("mcp-session-id")!] else {
                return Self.rpcError(nil, Code.invalidRequest, "Missing Mcp-Session-Id.", status: .badRequest, requestID: context.requestID)
            }
            do throws(GatewayError) {
                guard try await sessions.end(id, agentID: context.caller.agent.id) else {
                    return Self.rpcError(nil, Code.invalidRequest, "Unknown or ended session.", status: .notFound, requestID: context.requestID)
                }
            } catch {
                return Self.rpcError(nil, Code.internalError, error.message, status: .serviceUnavailable, requestID: context.requestID)
            }
            return Response(status: .noContent)
        }
    }

    /// Whether an `Accept` header takes a JSON answer (`application/json` or `*/*`, any case).
    /// Compared byte by byte: the event-loop path asks on every tool call.
    static func acceptsJSON(_ accept: String?) -> Bool {
        guard let accept else { return false }
        return ASCIIText.contains(accept, ignoringCase: "application/json") || ASCIIText.contains(accept, ignoringCase: "*/*")
    }

    private func post(_ request: Request, context: AgentRequestContext) async throws -> Response {
        var request = request
        guard Self.acceptsJSON(request.headers[.accept]) else {
            return Self.rpcError(nil, Code.invalidRequest, "The Accept header must include application/json (and text/event-stream).", status: .notAcceptable, requestID: context.requestID)
        }
        let body: ByteBuffer
        do {
            body = try await request.collectBody(limit: maxBodyBytes)
        } catch let error as GatewayError {
            return Self.rpcError(nil, Code.invalidRequest, error.message, status: .contentTooLarge, requestID: context.requestID)
        }
        guard let message = try? JSONParser.parse(Array(body.readableBytesView)) else {
            return Self.rpcError(nil, Code.parse, "The body is not valid JSON.", status: .badRequest, requestID: context.requestID)
        }
        // DNS-rebinding defence (transport spec): a browser's Origin must be this server.
        if let origin = request.headers[HTTPField.Name("origin")!], let host = request.head.authority,
            origin != "http://\(host)", origin != "https://\(host)"
        {
            return Self.rpcError(nil, Code.invalidRequest, "Origin '\(origin)' is not allowed.", status: .forbidden, requestID: context.requestID)
        }
        if let version = request.headers[HTTPField.Name("mcp-protocol-version")!], !Self.supportedVersions.contains(version) {
            return Self.rpcError(
                nil, Code.invalidRequest, "Unsupported MCP-Protocol-Version '\(version)'; supported: \(Self.supportedVersions.joined(separator: ", ")).",
                status: .badRequest, requestID: context.requestID)
        }
        guard case .object(let object) = message else {
            // Batches existed only in 2025-03-26; Interlock answers one message per request.
            return Self.rpcError(nil, Code.invalidRequest, "Send one JSON-RPC message per request (batches are not supported).", status: .badRequest, requestID: context.requestID)
        }
        guard object["jsonrpc"]?.stringValue == "2.0" else {
            return Self.rpcError(object["id"], Code.invalidRequest, "Not a JSON-RPC 2.0 message ('jsonrpc' must be \"2.0\").", status: .badRequest, requestID: context.requestID)
        }
        let isResponse = object["method"] == nil && object["id"] != nil && (object["result"] != nil || object["error"] != nil)
        if object["method"] != nil, object["method"]?.stringValue == nil || object["id"]?.isNull == true {
            return Self.rpcError(nil, Code.invalidRequest, "'method' must be a string and a request's 'id' must not be null.", status: .badRequest, requestID: context.requestID)
        }
        guard isResponse || object["method"] != nil else {
            return Self.rpcError(object["id"], Code.invalidRequest, "Not a JSON-RPC request, notification or response.", status: .badRequest, requestID: context.requestID)
        }
        if isResponse || object["id"] == nil {
            // A notification (initialized, cancelled, progress) or a response: accepted within a session.
            if let refusal = await sessionRefusal(request, id: nil, context: context) { return refusal }
            if object["method"]?.stringValue == "notifications/cancelled", let requestID = object["params"]?["requestId"],
                let session = request.headers[HTTPField.Name("mcp-session-id")!]
            {
                // The agent gave up on a call: it stops here, and the upstream is told in turn.
                sessions.cancel(session: session, request: requestID)
            }
            return Response(status: .accepted)
        }
        let method = object["method"]!.stringValue!
        let id = object["id"]!
        guard id.stringValue != nil || id.int64Value != nil else {
            return Self.rpcError(nil, Code.invalidRequest, "'id' must be a string or a number.", status: .badRequest, requestID: context.requestID)
        }
        let params = object["params"] ?? .object([:])
        guard Self.methods.contains(method) else {
            return Self.rpcError(id, Code.methodNotFound, "Method '\(method)' is not supported.", status: .ok, requestID: context.requestID)
        }
        if method == "initialize" {
            let requested = params["protocolVersion"]?.stringValue ?? ""
            let version = Self.supportedVersions.contains(requested) ? requested : Self.supportedVersions[0]
            let session: String
            do {
                session = try await sessions.open(agentID: context.caller.agent.id, version: version)
            } catch {
                return Self.rpcError(id, Code.internalError, error.message, status: .serviceUnavailable, requestID: context.requestID)
            }
            var response = Self.rpcResult(id, [
                "protocolVersion": .string(version), "capabilities": ["tools": ["listChanged": false]],
                "serverInfo": ["name": "interlock", "version": .string(InterlockVersion.current)],
                "instructions": "Tools of this Interlock mesh; every call is governed (grants, limits, audit).",
            ], requestID: context.requestID)
            response.headers[HTTPField.Name("mcp-session-id")!] = session
            return response
        }
        if let refusal = await sessionRefusal(request, id: id, context: context) { return refusal }
        switch method {
        case "ping":
            return Self.rpcResult(id, .object([:]), requestID: context.requestID)
        case "tools/list":
            let list: [JSONValue] = tools.catalog(for: context.caller).map(Self.mcpTool)
            return Self.rpcResult(id, ["tools": .array(list)], requestID: context.requestID)
        default:
            return await call(id: id, params: params, request: request, context: context)
        }
    }

    /// Everything after `initialize` belongs to a live session of the same agent: 400 without
    /// one, 404 for an unknown, ended or foreign one (the client initializes again).
    private func sessionRefusal(_ request: Request, id: JSONValue?, context: AgentRequestContext) async -> Response? {
        guard let sessionID = request.headers[HTTPField.Name("mcp-session-id")!] else {
            return Self.rpcError(id, Code.invalidRequest, "Missing Mcp-Session-Id: call 'initialize' first.", status: .badRequest, requestID: context.requestID)
        }
        do {
            guard try await sessions.touchOrAdopt(sessionID, agentID: context.caller.agent.id) else {
                return Self.rpcError(id, Code.invalidRequest, "Unknown or expired session; initialize again.", status: .notFound, requestID: context.requestID)
            }
        } catch {
            // The session may well exist: the client should retry, not initialize again.
            return Self.rpcError(id, Code.internalError, error.message, status: .serviceUnavailable, requestID: context.requestID)
        }
        return nil
    }

    /// `tools/call`: protocol problems (unknown or ungranted tool, invalid arguments) are
    /// JSON-RPC errors (-32602) whose message says what to fix; what the tool itself did,
    /// failures included, is the result (`isError`), so a model reads it. A call that asks for
    /// progress (`_meta.progressToken`) from a client that accepts SSE is answered with an
    /// event stream: the upstream's progress notifications, then the response. The agent can
    /// cancel it (`notifications/cancelled`) on its session.
    private func call(id: JSONValue, params: JSONValue, request: Request, context: AgentRequestContext) async -> Response {
        guard let name = params["name"]?.stringValue else {
            return Self.rpcError(id, Code.invalidParams, "'params.name' (the tool) is required.", status: .ok, requestID: context.requestID)
        }
        let arguments = params["arguments"] ?? .object([:])
        let key = params["_meta"]?["idempotencyKey"]?.stringValue ?? request.headers[HTTPField.Name("idempotency-key")!]
        let session = request.headers[HTTPField.Name("mcp-session-id")!] ?? ""
        let progressToken = params["_meta"]?["progressToken"].flatMap { $0.stringValue != nil || $0.int64Value != nil ? $0 : nil }
        // Trace context from `_meta` (the OpenTelemetry MCP conventions), else the HTTP headers.
        let trace = (
            parent: params["_meta"]?["traceparent"]?.stringValue ?? request.headers[HTTPField.Name("traceparent")!],
            state: params["_meta"]?["tracestate"]?.stringValue ?? request.headers[HTTPField.Name("tracestate")!]
        )
        let acceptsEvents = ASCIIText.contains(request.headers[.accept] ?? "", ignoringCase: "text/event-stream")
        let tools = self.tools
        let sessions = self.sessions
        let caller = context.caller
        let requestID = context.requestID
        guard let progressToken, acceptsEvents else {
            let task = Task {
                await Self.answer(
                    id: id, name: name, arguments: arguments, key: key, trace: trace, tools: tools, caller: caller, requestID: requestID, onProgress: nil)
            }
            sessions.track(session: session, request: id) { task.cancel() }
            defer { sessions.untrack(session: session, request: id) }
            let message = await withTaskCancellationHandler { await task.value } onCancel: { task.cancel() }
            return Self.json(.object(message), status: .ok, requestID: requestID)
        }
        let (events, continuation) = AsyncStream<ByteBuffer>.makeStream(bufferingPolicy: .unbounded)
        let task = Task {
            let message = await Self.answer(
                id: id, name: name, arguments: arguments, key: key, trace: trace, tools: tools, caller: caller, requestID: requestID
            ) { progress in
                var notification = progress
                notification["progressToken"] = progressToken
                continuation.yield(Self.event(["jsonrpc": "2.0", "method": "notifications/progress", "params": .object(notification)]))
            }
            continuation.yield(Self.event(message))
            continuation.finish()
            // Done with or without a reader: the agent can no longer cancel it.
            sessions.untrack(session: session, request: id)
        }
        sessions.track(session: session, request: id) { task.cancel() }
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", HTTPField.Name("x-request-id")!: requestID],
            body: ResponseBody { writer in
                // A dropped connection is not a cancellation (the transport spec): the call finishes.
                for await event in events { try await writer.write(event) }
                try await writer.finish(nil)
            })
    }

    /// The JSON-RPC answer to one `tools/call`.
    private static func answer(
        id: JSONValue, name: String, arguments: JSONValue, key: String?, trace: (parent: String?, state: String?), tools: ToolGateway, caller: Caller,
        requestID: String, onProgress: (@Sendable (JSONObject) -> Void)?
    ) async -> JSONObject {
        let outcome: Result<ToolGateway.ToolResult, GatewayError>
        do {
            outcome = .success(try await tools.invoke(
                name, arguments: JSONWriter.bytes(arguments), caller: caller, requestID: requestID, idempotencyKey: key,
                traceParent: trace.parent, traceState: trace.state, onProgress: onProgress))
        } catch {
            outcome = .failure(error)
        }
        return message(id: id, name: name, outcome: outcome)
    }

    /// The JSON-RPC answer for a tool call's outcome (both paths use it).
    static func message(id: JSONValue, name: String, outcome: Result<ToolGateway.ToolResult, GatewayError>) -> JSONObject {
        switch outcome {
        case .success(let result):
            if let passthrough = result.mcpResult {
                // An MCP upstream's answer goes to the agent as the upstream gave it.
                return ["jsonrpc": "2.0", "id": id, "result": .object(passthrough)]
            }
            var answer: JSONObject = [
                "content": [["type": "text", "text": .string(result.content.stringValue ?? JSONWriter.string(result.content))]],
                "isError": .bool(result.isError),
            ]
            if !result.isError, case .object = result.content { answer["structuredContent"] = result.content }
            return ["jsonrpc": "2.0", "id": id, "result": .object(answer)]
        case .failure(let error):
            func failure(_ code: Int, _ message: String, data: JSONValue? = nil) -> JSONObject {
                var error: JSONObject = ["code": .integer(Int64(code)), "message": .string(message)]
                if let data { error["data"] = data }
                return ["jsonrpc": "2.0", "id": id, "error": .object(error)]
            }
            switch (error.kind, error.code) {
            case (_, "policy_denied"), (_, "approval_pending"), (_, "approval_rejected"), (_, "guardrail_blocked"):
                // A policy's answer is for the agent (and its model) to read: why, and what to do.
                var meta: JSONObject = ["interlock/error": .string(error.code)]
                for (key, value) in error.details ?? [:] { meta["interlock/\(key)"] = value }
                return ["jsonrpc": "2.0", "id": id, "result": [
                    "content": [["type": "text", "text": .string(error.message)]], "isError": true, "_meta": .object(meta),
                ]]
            case (.notFound, _), (.permission, _):
                // Not granted reads like not there: an agent learns nothing about others' tools.
                return failure(Code.invalidParams, "Unknown tool: '\(name)'.")
            case (.invalidRequest, _):
                return failure(Code.invalidParams, error.message, data: ["code": .string(error.code)])
            case (.internal, _):
                return failure(Code.internalError, error.message)
            case (_, "request_cancelled"):
                return failure(Code.requestCancelled, "The request was cancelled.")
            default:
                return ["jsonrpc": "2.0", "id": id, "result": [
                    "content": [["type": "text", "text": .string(error.message)]], "isError": true,
                    "_meta": ["interlock/error": .string(error.code)],
                ]]
            }
        }
    }

    private static func event(_ message: JSONObject) -> ByteBuffer {
        ByteBuffer(bytes: Array("event: message\ndata: ".utf8) + JSONWriter.bytes(.object(message)) + Array("\n\n".utf8))
    }

    static func mcpTool(_ tool: ToolDefinition) -> JSONValue {
        var entry: JSONObject = [
            "name": .string(tool.name), "description": .string(tool.description), "inputSchema": tool.inputSchema,
            "annotations": [
                "readOnlyHint": .bool(tool.metadata.sideEffects == .read), "destructiveHint": .bool(tool.metadata.sideEffects == .write),
                "idempotentHint": .bool(tool.metadata.idempotent),
            ],
        ]
        if let output = tool.outputSchema, output["type"]?.stringValue == "object" { entry["outputSchema"] = output }
        return .object(entry)
    }

    static func rpcResult(_ id: JSONValue, _ result: JSONValue, requestID: String) -> Response {
        json(["jsonrpc": "2.0", "id": id, "result": result], status: .ok, requestID: requestID)
    }

    static func rpcError(_ id: JSONValue?, _ code: Int, _ message: String, status: HTTPResponse.Status, requestID: String, data: JSONValue? = nil) -> Response {
        var error: JSONObject = ["code": .integer(Int64(code)), "message": .string(message)]
        if let data { error["data"] = data }
        return json(["jsonrpc": "2.0", "id": id ?? .null, "error": .object(error)], status: status, requestID: requestID)
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status, requestID: String) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json", HTTPField.Name("x-request-id")!: requestID],
            body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.bytes(value))))
    }
}

/// MCP sessions: which agent opened each, and when it was last used. Bounded: past
/// `maxSessions` the least recently used one is dropped; idle ones expire.
final class MCPSessions: Sendable {
    private struct Session {
        var agentID: String
        var version: String
        var lastUsed: ContinuousClock.Instant
        /// When the shared store last heard that it is in use.
        var storedTouch: ContinuousClock.Instant
    }

    private let sessions = Mutex<[String: Session]>([:])
    /// Calls in flight, by session and JSON-RPC id: how to cancel each.
    private let calls = Mutex<[CallKey: @Sendable () -> Void]>([:])

    private struct CallKey: Hashable {
        var session: String
        var request: JSONValue
    }
    private let maxSessions: Int
    private let maxPerAgent: Int
    private let idleTimeout: Duration
    /// In a cluster: sessions every node can find (a client's requests may land anywhere).
    private let shared: (any SessionStore)?

    /// `notifications`: the store's, so that a session ended on another node ends here too
    /// (the stream ends when the store closes).
    init(
        maxSessions: Int, maxPerAgent: Int, idleTimeout: Duration, shared: (any SessionStore)? = nil,
        notifications: AsyncStream<StoreNotification>? = nil
    ) {
        self.maxSessions = maxSessions
        self.maxPerAgent = maxPerAgent
        self.idleTimeout = idleTimeout
        self.shared = shared
        if let stream = notifications {
            Task { [weak self] in
                for await notification in stream {
                    if case .sessionEnded(let id) = notification { self?.forget(id) }
                }
            }
        }
    }

    private func forget(_ id: String) {
        _ = sessions.withLock { $0.removeValue(forKey: id) }
    }

    private static func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// A new session id: 128 random bits, hex. In a cluster it is stored before it is
    /// answered, so the client's next request finds it on any node.
    func open(agentID: String, version: String) async throws(GatewayError) -> String {
        var generator = SystemRandomNumberGenerator()
        let id = (0..<2).map { _ in String(generator.next() as UInt64, radix: 16).leftPadded(to: 16) }.joined()
        if let shared {
            do {
                try await shared.saveSession(id: id, agentID: agentID, version: version, nowMs: Self.nowMs())
            } catch {
                throw Self.storeUnavailable
            }
        }
        insert(id, Session(agentID: agentID, version: version, lastUsed: .now, storedTouch: .now))
        return id
    }

    private func insert(_ id: String, _ session: Session) {
        let agentID = session.agentID
        sessions.withLock { sessions in
            let now = ContinuousClock.now
            // An agent's sessions make room among themselves: one agent cannot push out the others'.
            let own = sessions.filter { $0.value.agentID == agentID }
            if own.count >= maxPerAgent, let oldest = own.min(by: { $0.value.lastUsed < $1.value.lastUsed })?.key {
                sessions[oldest] = nil
            }
            if sessions.count >= maxSessions {
                sessions = sessions.filter { now - $0.value.lastUsed < idleTimeout }
                if sessions.count >= maxSessions, let oldest = sessions.min(by: { $0.value.lastUsed < $1.value.lastUsed })?.key {
                    sessions[oldest] = nil
                }
            }
            sessions[id] = session
        }
    }

    /// Whether `id` is a live session of `agentID` on this node (and marks it used).
    func touch(_ id: String, agentID: String) -> Bool {
        let refresh = sessions.withLock { sessions -> Bool? in
            guard var session = sessions[id], session.agentID == agentID else { return nil }
            let now = ContinuousClock.now
            guard now - session.lastUsed < idleTimeout else {
                sessions[id] = nil
                return nil
            }
            session.lastUsed = now
            // The shared store hears of use now and then, not on every request.
            let refresh = shared != nil && now - session.storedTouch > idleTimeout / 4
            if refresh { session.storedTouch = now }
            sessions[id] = session
            return refresh
        }
        guard let refresh else { return false }
        if refresh, let shared {
            let now = Self.nowMs()
            Task { try? await shared.touchSession(id: id, nowMs: now) }
        }
        return true
    }

    private static let storeUnavailable = GatewayError(
        kind: .internal, code: "store_unavailable", message: "Interlock could not reach the sessions' store; try again.", status: 503)

    /// `touch`, or in a cluster a session another node opened, taken over from the store.
    /// Throws (503) when the store cannot say: the session may exist.
    func touchOrAdopt(_ id: String, agentID: String) async throws(GatewayError) -> Bool {
        if touch(id, agentID: agentID) { return true }
        guard let shared else { return false }
        let stored: (agentID: String, version: String, touchedMs: Int64)?
        do {
            stored = try await shared.session(id: id)
        } catch {
            throw Self.storeUnavailable
        }
        guard let stored, stored.agentID == agentID, Self.nowMs() - stored.touchedMs < Int64(idleTimeout.components.seconds) * 1000 else {
            return false
        }
        insert(id, Session(agentID: agentID, version: stored.version, lastUsed: .now, storedTouch: .now - idleTimeout))
        return touch(id, agentID: agentID)
    }

    func track(session: String, request: JSONValue, cancel: @escaping @Sendable () -> Void) {
        calls.withLock { $0[CallKey(session: session, request: request)] = cancel }
    }

    func untrack(session: String, request: JSONValue) {
        _ = calls.withLock { $0.removeValue(forKey: CallKey(session: session, request: request)) }
    }

    /// Cancels a call of this session (another session's ids are out of reach).
    func cancel(session: String, request: JSONValue) {
        calls.withLock { $0.removeValue(forKey: CallKey(session: session, request: request)) }?()
    }

    /// Ends a session of `agentID` everywhere; false when there is none. In a cluster the
    /// store's row goes first: a session still stored could be taken over by another node.
    func end(_ id: String, agentID: String) async throws(GatewayError) -> Bool {
        guard try await touchOrAdopt(id, agentID: agentID) else { return false }
        if let shared {
            do {
                try await shared.deleteSession(id: id)
            } catch {
                throw Self.storeUnavailable
            }
        }
        sessions.withLock { _ = $0.removeValue(forKey: id) }
        return true
    }
}

extension String {
    fileprivate func leftPadded(to length: Int) -> String {
        count >= length ? self : String(repeating: "0", count: length - count) + self
    }
}
