public import InterlockCore
public import InterlockProviders
public import NIOCore
import Synchronization
import Tracing

/// A tool call the event-loop path sends itself: `tools/call` to a Streamable HTTP MCP
/// upstream over the upstream's current session, on the loop that read the agent's request.
public final class ToolLoopAttempt: Sendable {
    public let target: UpstreamTarget
    public let headers: [(String, String)]
    public let body: ByteBuffer
    public let timeout: Duration
    public let maxResponseBytes: Int
    let tool: ToolGateway.Tool
    let remote: String
    let admission: CallGovernor.Admission
    let span: any Span
    let caller: Caller
    let arguments: JSONObject
    let argumentsBytes: [UInt8]
    let idempotencyKey: String
    let trace: [(String, String)]
    /// The JSON-RPC id of the upstream request.
    let upstreamID: JSONValue

    init(
        target: UpstreamTarget, headers: [(String, String)], body: ByteBuffer, timeout: Duration, maxResponseBytes: Int, tool: ToolGateway.Tool,
        remote: String, admission: CallGovernor.Admission, span: any Span, caller: Caller, arguments: JSONObject, argumentsBytes: [UInt8],
        idempotencyKey: String, trace: [(String, String)], upstreamID: JSONValue
    ) {
        self.target = target
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self.maxResponseBytes = maxResponseBytes
        self.tool = tool
        self.remote = remote
        self.admission = admission
        self.span = span
        self.caller = caller
        self.arguments = arguments
        self.argumentsBytes = argumentsBytes
        self.idempotencyKey = idempotencyKey
        self.trace = trace
        self.upstreamID = upstreamID
    }
}

public enum ToolLoopStart: Sendable {
    /// Not for the loop (served by the async route, before any state changed).
    case declined
    case refused(GatewayError)
    case send(ToolLoopAttempt)
}

public enum ToolLoopFinish: Sendable {
    case done(Result<ToolGateway.ToolResult, GatewayError>)
    /// Safe to try again (or the tool is idempotent): the async path takes the call over.
    case continueAsync(ToolLoopAttempt)
}

extension ToolGateway {
    /// Starts a tool call on the event loop: the same stages as `invoke`, taken only for a
    /// read-only or idempotent tool of an available Streamable HTTP MCP upstream with a live
    /// session, a static credential (or none), no per-tool rate limit, and an agent admitted
    /// without waiting. Anything else —
    /// a refusal included, so it is audited once — is declined and served by the async route.
    public func startOnLoop(
        _ name: String, arguments bytes: [UInt8], caller: Caller, requestID: String, idempotencyKey: String?, traceParent: String?, traceState: String?
    ) -> ToolLoopStart {
        // The async route refuses (and audits) whatever fails the shared checks.
        guard case .success(let (tool, arguments)) = checked(name, arguments: bytes, caller: caller) else { return .declined }
        // Only tools a duplicate send cannot hurt: the loop client resends a request once when a
        // kept-alive connection closes under it, and a write must never run twice.
        guard case .mcp(let remote) = tool.binding, tool.limiter == nil,
            tool.definition.metadata.idempotent || tool.definition.metadata.sideEffects == .read
        else { return .declined }
        let source = tool.source
        guard let credential = staticCredentialHeaders(source), source.loopEligible.load(ordering: .relaxed), let upstream = source.mcp.withLock({ $0 }), let session = upstream.currentHTTPSession()
        else { return .declined }
        guard source.inFlight.add(1, ordering: .relaxed).newValue <= source.settings.maxConcurrency else {
            source.inFlight.subtract(1, ordering: .relaxed)
            return .declined
        }
        let argumentsHash = AuditRecord.sha256Hex(bytes)
        let call = GovernedCall(
            requestID: requestID, caller: caller, targetKind: .tool, target: name, operation: "invoke", stream: false, expectedTokens: 0,
            expectedCost: .zero, traceParent: traceParent, traceState: traceState, argumentsHash: argumentsHash)
        guard !governor.guardrailsApply(caller, kind: .tool, name: name),
            governor.policyAllowsOnLoop(call, target: Self.policyTarget(tool), arguments: { .object(arguments) })
        else {
            source.inFlight.subtract(1, ordering: .relaxed)
            return .declined
        }
        let admission: CallGovernor.Admission
        do {
            guard let admitted = try governor.admitImmediately(call) else {
                source.inFlight.subtract(1, ordering: .relaxed)
                return .declined
            }
            admission = admitted
        } catch {
            source.inFlight.subtract(1, ordering: .relaxed)
            return .refused(error)
        }
        let (span, trace) = beginSpan(name, tool: tool, caller: caller, traceParent: traceParent, traceState: traceState)
        let key = scopedIdempotencyKey(idempotencyKey, caller: caller, tool: name, requestID: requestID)
        var meta: JSONObject = ["idempotencyKey": .string(key)]
        for (field, value) in trace { meta[field] = .string(value) }
        let upstreamID = upstream.nextRequestID()
        let message: JSONValue = [
            "jsonrpc": "2.0", "id": upstreamID, "method": "tools/call",
            "params": ["name": .string(remote), "arguments": .object(arguments), "_meta": .object(meta)],
        ]
        // The client adds Host and Content-Length.
        var headers: [(String, String)] = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
        if let id = session.id { headers.append(("mcp-session-id", id)) }
        if let version = session.version { headers.append(("mcp-protocol-version", version)) }
        headers += credential
        return .send(ToolLoopAttempt(
            target: session.target, headers: headers, body: ByteBuffer(bytes: JSONWriter.bytes(message)), timeout: .milliseconds(source.settings.timeoutMs),
            maxResponseBytes: source.settings.maxResponseBytes, tool: tool, remote: remote, admission: admission, span: span, caller: caller,
            arguments: arguments, argumentsBytes: bytes, idempotencyKey: key, trace: trace, upstreamID: upstreamID))
    }

    /// Takes the upstream's answer to a loop attempt and settles the call; a failure that is
    /// safe to retry (the server refused the request unseen, or the tool is idempotent) goes
    /// to the async path with the same admission.
    public func finishOnLoop(_ attempt: ToolLoopAttempt, _ answer: Result<LoopHTTPResponse, UpstreamFailure>) -> ToolLoopFinish {
        let tool = attempt.tool
        let source = tool.source
        let idempotent = tool.definition.metadata.idempotent
        func failed(_ error: GatewayError) -> ToolLoopFinish {
            source.inFlight.subtract(1, ordering: .relaxed)
            defer { attempt.span.end() }
            return .done(.failure(settleFailure(error, admission: attempt.admission, span: attempt.span, source: source, arguments: attempt.argumentsBytes)))
        }
        let response: LoopHTTPResponse
        switch answer {
        case .failure(.timeout):
            if idempotent { return .continueAsync(attempt) }
            cancelOnLoop(attempt, reason: "timed out after \(source.settings.timeoutMs) ms")
            return failed(GatewayError(
                kind: .upstream, code: "tool_timeout", message: "Tool '\(tool.definition.name)' did not answer within \(source.settings.timeoutMs) ms.", status: 504))
        case .failure(.responseTooLarge):
            return failed(GatewayError(
                kind: .upstream, code: "tool_response_too_large",
                message: "Tool '\(tool.definition.name)' answered with more than \(source.settings.maxResponseBytes) bytes.", status: 502))
        case .failure(.connection(let reason)):
            if idempotent { return .continueAsync(attempt) }
            markUnavailable(source, reason: "unreachable: \(reason)")
            return failed(GatewayError(kind: .upstream, code: "tool_unreachable", message: "Tool '\(tool.definition.name)' could not be reached.", status: 502))
        case .success(let answer):
            response = answer
        }
        // The session is gone or the credential refused: the server did not run the call.
        if response.status == 404 || response.status == 401 { return .continueAsync(attempt) }
        guard (200..<300).contains(response.status) else {
            if idempotent, response.status == 429 || response.status >= 500 { return .continueAsync(attempt) }
            return failed(GatewayError(
                kind: .upstream, code: "tool_upstream_error", message: "Tool '\(tool.definition.name)' failed: its server answered HTTP \(response.status).", status: 502))
        }
        guard let message = Self.rpcAnswer(in: response, id: attempt.upstreamID) else {
            // Not answered in this body (a server that resumes streams, say): later calls take the
            // async path, which resumes them; this one is retried only if that repeats nothing.
            source.loopEligible.store(false, ordering: .relaxed)
            if idempotent { return .continueAsync(attempt) }
            return failed(GatewayError(
                kind: .upstream, code: "tool_upstream_error", message: "Tool '\(tool.definition.name)' failed: its server's answer was cut off or malformed.", status: 502))
        }
        let result: ToolResult
        do {
            result = try mcpResult(message, tool: tool, source: source, attempts: 1)
        } catch {
            return failed(error)
        }
        source.inFlight.subtract(1, ordering: .relaxed)
        defer { attempt.span.end() }
        return .done(settleResult(result, tool: tool, admission: attempt.admission, span: attempt.span, arguments: attempt.argumentsBytes))
    }

    /// The async path finishing a loop attempt: `invoke`'s upstream stages (new session,
    /// retries for idempotent tools), under the admission the loop took.
    public func continueAsync(_ attempt: ToolLoopAttempt) async -> Result<ToolResult, GatewayError> {
        let tool = attempt.tool
        defer {
            tool.source.inFlight.subtract(1, ordering: .relaxed)
            attempt.span.end()
        }
        do {
            let result = try await sendMCP(
                tool, remote: attempt.remote, arguments: attempt.arguments, caller: attempt.caller, idempotencyKey: attempt.idempotencyKey,
                trace: attempt.trace, onProgress: nil)
            return settleResult(result, tool: tool, admission: attempt.admission, span: attempt.span, arguments: attempt.argumentsBytes)
        } catch {
            let failure = (error as? GatewayError) ?? GatewayError(kind: .internal, code: "internal_error", message: "Interlock failed to process the tool call.")
            return .failure(settleFailure(failure, admission: attempt.admission, span: attempt.span, source: tool.source, arguments: attempt.argumentsBytes))
        }
    }

    /// Tells the upstream to stop working on a loop attempt (the agent cancelled, or it timed out).
    public func cancelOnLoop(_ attempt: ToolLoopAttempt, reason: String) {
        guard let upstream = attempt.tool.source.mcp.withLock({ $0 }) else { return }
        let id = attempt.upstreamID
        Task { await upstream.notifyCancelled(id, reason: reason) }
    }

    /// The JSON-RPC response with `id` in a whole HTTP answer: a JSON body, or an SSE body
    /// whose events end with it.
    static func rpcAnswer(in response: LoopHTTPResponse, id: JSONValue) -> JSONObject? {
        let contentType = response.headers.first(name: "content-type")?.lowercased() ?? ""
        let bytes = Array(response.body.readableBytesView)
        if contentType.hasPrefix("text/event-stream") {
            var parser = ServerSentEventParser()
            var events = parser.consume(bytes)
            if let last = parser.finish() { events.append(last) }
            for event in events {
                if case .object(let message)? = try? JSONParser.parse(event.data), message["method"] == nil, message["id"] == id { return message }
            }
            return nil
        }
        guard case .object(let message)? = try? JSONParser.parse(bytes), message["id"] == id else { return nil }
        return message
    }
}
