public import HummingbirdCore
import InterlockCore
public import InterlockProviders
public import InterlockRuntime
public import Logging
public import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Synchronization

/// What the event-loop path needs: the gateway, the loop-owned upstream client, the body limit.
public struct EventLoopPath: Sendable {
    public let gateway: ModelGateway
    public let client: LoopHTTPClient
    public let maxBodyBytes: Int
    /// Tool calls (`/mcp` `tools/call`, `/v1/tools/{name}/invoke`) to Streamable HTTP MCP upstreams.
    let tools: ToolGateway?
    let mcpSessions: MCPSessions?

    public init(gateway: ModelGateway, client: LoopHTTPClient, maxBodyBytes: Int) {
        self.init(gateway: gateway, client: client, maxBodyBytes: maxBodyBytes, tools: nil, mcpSessions: nil)
    }

    init(gateway: ModelGateway, client: LoopHTTPClient, maxBodyBytes: Int, tools: ToolGateway?, mcpSessions: MCPSessions?) {
        self.gateway = gateway
        self.client = client
        self.maxBodyBytes = maxBodyBytes
        self.tools = tools
        self.mcpSessions = mcpSessions
    }
}

/// Hummingbird's HTTP/1.1 child channel with the event-loop path in front of the router.
/// The pipeline is Hummingbird's own (`HTTP1Channel`) with one handler added after the
/// HTTP/1 codec: it answers the model calls it can finish on the loop and passes every other
/// request, untouched, to the router.
public struct InterlockHTTP1Channel: ServerChildChannel, HTTPChannelHandler {
    public typealias Value = InterlockChildChannel

    public let responder: HTTPChannelHandler.Responder
    let path: EventLoopPath?
    /// Largest request head (all header names and values), in bytes.
    let maxHeaderBytes: Int

    public init(responder: @escaping HTTPChannelHandler.Responder, path: EventLoopPath?, maxHeaderBytes: Int) {
        self.responder = responder
        self.path = path
        self.maxHeaderBytes = maxHeaderBytes
    }

    public func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let pipeline = channel.pipeline.syncOperations
            var limits = NIOHTTPDecoderLimitConfiguration()
            limits.maxHeaderFieldSize = maxHeaderBytes
            limits.maxHeaderListSize = maxHeaderBytes
            /// The router's end of the pipeline: Hummingbird's codec and connection state, and
            /// the async channel its request loop reads.
            func addRouterHandlers() throws -> NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart> {
                try pipeline.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                try pipeline.addHandler(HTTPConnectionStateHandler(idleTimeout: nil, logger: logger))
                return try NIOAsyncChannel(wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
            }
            guard let path, path.client.serves(channel.eventLoop) else {
                try pipeline.configureHTTPServerPipeline(
                    withPipeliningAssistance: false, withErrorHandling: false, withOutboundHeaderValidation: false,
                    withEncoderConfiguration: .init(), withDecoderLimitConfiguration: limits)
                try pipeline.addHandler(HTTPProtocolErrorResponder(maxHeaderBytes: maxHeaderBytes))
                return InterlockChildChannel(channel: channel, router: channel.eventLoop.makeSucceededFuture(try addRouterHandlers()))
            }
            // What `configureHTTPServerPipeline` adds, except that the decoder does not tell
            // the encoder each request's method: the event-loop handler writes its answers
            // past the encoder, which would otherwise keep one method per such answer for
            // good. The handler drops the bodies of answers to HEAD itself. Plain requests are
            // read by `PlainHTTPDecoder`, which hands anything else to NIO's decoder.
            try pipeline.addHandler(HTTPResponseEncoder(configuration: .init()))
            try pipeline.addHandler(PlainHTTPDecoder.requests(limits: limits, maxHeadBytes: maxHeaderBytes))
            try pipeline.addHandler(HTTPProtocolErrorResponder(maxHeaderBytes: maxHeaderBytes))
            // The router's handlers are added when the first request goes to the router: a
            // connection that only makes model calls never builds the async channel (its
            // generic machinery cost about 70 µs of CPU per connection, a quarter of a call).
            let router = channel.eventLoop.makePromise(of: NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>?.self)
            do {
                try pipeline.addHandler(EventLoopModelHandler(path: path, router: router, addRouterHandlers: addRouterHandlers))
            } catch {
                router.fail(error)
                throw error
            }
            return InterlockChildChannel(channel: channel, router: router.futureResult)
        }
    }

    public func handle(value: Value, logger: Logger) async {
        // Nil: the connection closed without a request for the router.
        guard let asyncChannel = try? await value.router.get() else { return }
        await handleHTTP(asyncChannel: asyncChannel, logger: logger)
    }
}

/// A connection as the server's accept loop holds it: the channel, and the async channel of
/// the router once a request needs it (nil if the connection closes first).
public struct InterlockChildChannel: ServerChildChannelValue {
    public let channel: any Channel
    let router: EventLoopFuture<NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>?>
}

/// Serves model calls on the event loop that read them: authenticate, parse,
/// `ModelGateway.startOnLoop` (grants, admission, routing, breaker and limiter, all without
/// waiting), the upstream call over the loop's own keep-alive connection, and
/// `finishOnLoop` or a `LoopStreamSession` (usage, cost, settlement). A request it cannot
/// take — another route, an unknown key, a call that would wait — goes to the router before any state
/// changes; a call whose first attempt fails continues on the async path (retries, fallbacks).
///
/// Responses leave in request order: while a call of its own is in flight the handler holds
/// later requests (and stops reading), and it does not take a request while one it passed on
/// is still being answered.
final class EventLoopModelHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum Route {
        case model(format: WireFormat, operation: ModelOperation)
        /// `POST /mcp`: taken when it is a `tools/call` the loop can serve.
        case mcp
        case toolInvoke(String)
    }

    private enum Mode {
        case idle
        case collecting(HTTPRequestHead, ByteBuffer, Route)
        /// Passing a request's remaining parts to the router.
        case forwarding
        /// A call of its own is in flight.
        case busy(keepAlive: Bool, version: HTTPVersion)
    }

    private let path: EventLoopPath
    private var mode = Mode.idle
    /// Requests passed to the router whose response has not ended yet.
    private var routerResponsesPending = 0
    private var held = CircularBuffer<HTTPServerRequestPart>()
    private var readPending = false
    private var quiescePending = false
    private var active = true
    /// The stream this handler is relaying, if any.
    private var streaming: StreamState?
    /// The response encoder's context. Whole answers of the handler's own calls are written as
    /// bytes from there (past the encoder): building `HTTPHeaders` and encoding them again,
    /// in three writes through the pipeline, was about 4% of a model call.
    private var rawOutput: ChannelHandlerContext?
    /// For each request passed to the router whose response head has not gone out yet: whether
    /// it was a HEAD (or CONNECT), whose response must not carry a body (RFC 9110 §9.3.2).
    /// NIO's encoder would know this from the decoder; that link is off (see `setup`).
    private var routerHeadsWithoutBody = CircularBuffer<Bool>()
    private var droppingRouterBody = false
    /// Whether a request part went to the router since the last read-complete. Only then do the
    /// handlers behind this one (Hummingbird's, the async channel's) hear of read-complete:
    /// a read cycle of this handler's own calls is nothing to them.
    private var passedSinceReadComplete = false

    private final class StreamState {
        let upstream: LoopHTTPStream
        let session: LoopStreamSession
        /// The head went out with the first event.
        var committed = false
        /// Stops the stream when its agent is disabled.
        var cutOffWatch: CutOffSignal.Registration?

        init(upstream: LoopHTTPStream, session: LoopStreamSession) {
            self.upstream = upstream
            self.session = session
        }
    }

    /// The router's part of the pipeline: not built yet (how to build it), built, or never
    /// to be (the connection ended first).
    private enum RouterHandlers {
        case absent(() throws -> NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        case attached
        case gone
    }

    /// Completed with the router's async channel when the first request goes to the router,
    /// with nil when the connection ends before.
    private let router: EventLoopPromise<NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>?>
    private var routerHandlers: RouterHandlers

    init(
        path: EventLoopPath, router: EventLoopPromise<NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>?>,
        addRouterHandlers: @escaping () throws -> NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>
    ) {
        self.path = path
        self.router = router
        self.routerHandlers = .absent(addRouterHandlers)
    }

    /// Whether nobody behind this handler would close an idle connection on graceful shutdown.
    private var routerAbsent: Bool {
        if case .absent = routerHandlers { return true }
        return false
    }

    /// Adds the router's handlers before the first part goes to them.
    private func attachRouter(context: ChannelHandlerContext) {
        guard case .absent(let add) = routerHandlers else { return }
        do {
            let asyncChannel = try add()
            routerHandlers = .attached
            router.succeed(asyncChannel)
        } catch {
            routerHandlers = .gone
            router.succeed(nil)
            context.close(promise: nil)
        }
    }

    /// The connection ended without a request for the router: its task in the server ends.
    private func detachRouter() {
        guard case .absent = routerHandlers else { return }
        routerHandlers = .gone
        router.succeed(nil)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        rawOutput = try? context.pipeline.syncOperations.context(handlerType: HTTPResponseEncoder.self)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        rawOutput = nil
        detachRouter()
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if case .busy = mode {
            held.append(part)
            return
        }
        process(part, context: context)
    }

    private func process(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch (mode, part) {
        case (.idle, .head(let head)):
            if routerResponsesPending == 0, let route = route(head), !Self.declaresLargerBody(head, than: path.maxBodyBytes) {
                mode = .collecting(head, ByteBuffer(), route)
            } else {
                mode = .forwarding
                passOn(head, context: context)
            }
        case (.collecting(let head, var body, let route), .body(var chunk)):
            if body.readableBytes + chunk.readableBytes > path.maxBodyBytes {
                // The router answers 413.
                body.writeBuffer(&chunk)
                forward(head: head, body: body, end: false, context: context)
                mode = .forwarding
            } else if body.readableBytes == 0 {
                // Most bodies arrive in one piece: keep it as it came, without a copy.
                mode = .collecting(head, chunk, route)
            } else {
                mode = .idle  // drop the buffer's second reference before appending
                body.writeBuffer(&chunk)
                mode = .collecting(head, body, route)
            }
        case (.collecting(let head, let body, let route), .end):
            start(head: head, body: body, route: route, context: context)
        case (.forwarding, .end):
            mode = .idle
            pass(part, context: context)
        default:
            pass(part, context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        guard passedSinceReadComplete else { return }
        passedSinceReadComplete = false
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        active = false
        detachRouter()
        if let streaming {
            // The agent hung up mid-stream: stop the upstream, bill what was delivered.
            self.streaming = nil
            streaming.cutOffWatch?.cancel()
            streaming.upstream.cancel()
            streaming.session.end(upstreamBroke: false, agentGone: true)
        }
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { streaming?.upstream.resume() }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Graceful shutdown: the connection-state handler closes idle connections, and it does
        // not see this handler's calls, so the event waits until ours is answered.
        if event is ChannelShouldQuiesceEvent {
            switch mode {
            case .busy, .collecting:
                quiescePending = true
                return
            case .idle, .forwarding:
                // Without the router's handlers nobody else would close the idle connection.
                if routerAbsent {
                    context.close(promise: nil)
                    return
                }
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            // An informational head (1xx but 101) is followed by the real one.
            if head.status.code >= 200 || head.status.code == 101 { droppingRouterBody = routerHeadsWithoutBody.popFirst() ?? false }
        case .body where droppingRouterBody:
            promise?.succeed(())
            return
        case .body:
            break
        case .end:
            droppingRouterBody = false
            routerResponsesPending = max(0, routerResponsesPending - 1)
        }
        context.write(data, promise: promise)
    }

    /// While a call is in flight the connection keeps reading until a later request has
    /// arrived, then stops (backpressure on a pipelining client). Withholding every read
    /// would cost two `epoll_ctl` calls per request on an ordinary keep-alive connection.
    func read(context: ChannelHandlerContext) {
        if case .busy = mode, !held.isEmpty {
            readPending = true
            return
        }
        context.read()
    }

    // MARK: The call

    private func route(_ head: HTTPRequestHead) -> Route? {
        guard head.method == .POST, !head.headers.contains(name: "expect") else { return nil }
        let uri = head.uri.utf8.firstIndex(of: UInt8(ascii: "?")).map { head.uri[..<$0] } ?? Substring(head.uri)
        switch uri {
        case "/v1/chat/completions": return .model(format: .openAI, operation: .chat)
        case "/v1/embeddings": return .model(format: .openAI, operation: .embeddings)
        case "/v1/messages": return .model(format: .anthropic, operation: .chat)
        case "/mcp" where path.tools != nil && path.mcpSessions != nil: return .mcp
        default:
            guard path.tools != nil, uri.hasPrefix("/v1/tools/"), uri.hasSuffix("/invoke") else { return nil }
            let name = uri.dropFirst("/v1/tools/".count).dropLast("/invoke".count)
            guard !name.isEmpty, !name.contains("/"), !name.contains("%") else { return nil }
            return .toolInvoke(String(name))
        }
    }

    private static func declaresLargerBody(_ head: HTTPRequestHead, than limit: Int) -> Bool {
        guard let length = head.headers.first(name: "content-length") else { return false }
        guard let value = Int(length) else { return true }
        return value > limit
    }

    /// Hands a request head to the router; its response is counted until it ends.
    private func passOn(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        routerResponsesPending += 1
        routerHeadsWithoutBody.append(head.method == .HEAD || head.method == .CONNECT)
        pass(.head(head), context: context)
    }

    /// Hands a request part to the router.
    private func pass(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        attachRouter(context: context)
        passedSinceReadComplete = true
        context.fireChannelRead(wrapInboundOut(part))
    }

    /// Hands a request to the router, as it arrived.
    private func forward(head: HTTPRequestHead, body: ByteBuffer, end: Bool, context: ChannelHandlerContext) {
        passOn(head, context: context)
        if body.readableBytes > 0 { pass(.body(body), context: context) }
        if end { pass(.end(nil), context: context) }
        releaseQuiesce(context: context)
    }

    private func start(head: HTTPRequestHead, body: ByteBuffer, route: Route, context: ChannelHandlerContext) {
        switch route {
        case .model(let format, let operation):
            startModel(head: head, body: body, format: format, operation: operation, context: context)
        case .mcp, .toolInvoke:
            startTool(head: head, body: body, route: route, context: context)
        }
    }

    private func startModel(head: HTTPRequestHead, body: ByteBuffer, format: WireFormat, operation: ModelOperation, context: ChannelHandlerContext) {
        mode = .idle
        let gateway = path.gateway
        let key = AgentAuthenticationMiddleware.apiKey(authorization: head.headers.first(name: "authorization"), xAPIKey: head.headers.first(name: "x-api-key"))
        // A bad run header is the router's to answer (400), like every other refusal here.
        let run = Result { () throws(GatewayError) in
            try RunReference.fromHeaders(runID: head.headers.first(name: "x-interlock-run-id"), parentRunID: head.headers.first(name: "x-interlock-parent-run-id"))
        }
        guard var caller = try? gateway.governor.authenticate(apiKey: key, audited: false), case .success(let run) = run,
            let request = try? ModelRequest.parse(body: Array(body.readableBytesView), format: format, operation: operation)
        else {
            forward(head: head, body: body, end: true, context: context)
            return
        }
        caller.run = run
        let requestID = RequestIDGenerator.next()
        let decision = gateway.startOnLoop(
            request, caller: caller, requestID: requestID, traceParent: head.headers.first(name: "traceparent"),
            traceState: head.headers.first(name: "tracestate"), maxResponseBytes: Int.max)
        let dialect: ErrorDialect = format == .anthropic ? .anthropic : .openAI
        mode = .busy(keepAlive: head.persistsConnection, version: head.version)
        switch decision {
        case .declined:
            mode = .idle
            forward(head: head, body: body, end: true, context: context)
        case .refused(let error):
            respond(error: error, dialect: dialect, requestID: requestID, context: context)
        case .send(let attempt) where attempt.stream:
            sendStream(attempt, dialect: dialect, requestID: requestID, context: context)
        case .send(let attempt):
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            path.client.post(
                on: context.eventLoop, to: attempt.target, headers: attempt.headers, body: attempt.body, timeout: attempt.timeout,
                maxResponseBytes: attempt.maxResponseBytes
            ) { answer in
                let (handler, context) = loopBound.value
                handler.take(gateway.finishOnLoop(attempt, answer), dialect: dialect, requestID: requestID, context: context)
            }
        case .continueAsync(let continuation):
            continueAsync(continuation, dialect: dialect, requestID: requestID, context: context)
        }
    }

    /// A tool call on the loop: the request must be one the async route would accept as it
    /// is (authenticated, a live MCP session of this agent, a plain `tools/call`); anything
    /// else goes to the router untouched, which answers or refuses it.
    private func startTool(head: HTTPRequestHead, body: ByteBuffer, route: Route, context: ChannelHandlerContext) {
        mode = .idle
        guard let tools = path.tools else { return forward(head: head, body: body, end: true, context: context) }
        let key = AgentAuthenticationMiddleware.apiKey(authorization: head.headers.first(name: "authorization"), xAPIKey: head.headers.first(name: "x-api-key"))
        let run = Result { () throws(GatewayError) in
            try RunReference.fromHeaders(runID: head.headers.first(name: "x-interlock-run-id"), parentRunID: head.headers.first(name: "x-interlock-parent-run-id"))
        }
        guard var caller = try? path.gateway.governor.authenticate(apiKey: key, audited: false), case .success(let runReference) = run,
            case .object(let message)? = try? JSONParser.parse(Array(body.readableBytesView))
        else { return forward(head: head, body: body, end: true, context: context) }
        caller.run = runReference
        let name: String
        let arguments: JSONValue
        var idempotencyKey = head.headers.first(name: "idempotency-key")
        var traceParent = head.headers.first(name: "traceparent")
        var traceState = head.headers.first(name: "tracestate")
        var rpc: (id: JSONValue, session: String)?
        switch route {
        case .mcp:
            let version = head.headers.first(name: "mcp-protocol-version")
            guard let sessions = path.mcpSessions, head.headers.first(name: "origin") == nil,
                MCPRoutes.acceptsJSON(head.headers.first(name: "accept")), version.map(MCPRoutes.supportedVersions.contains) ?? true,
                let session = head.headers.first(name: "mcp-session-id"), message["jsonrpc"] == "2.0", message["method"] == "tools/call",
                let id = message["id"], id.stringValue != nil || id.int64Value != nil, case .object(let params)? = message["params"],
                let tool = params["name"]?.stringValue, params["_meta"]?["progressToken"] == nil,
                sessions.touch(session, agentID: caller.agent.id)
            else { return forward(head: head, body: body, end: true, context: context) }
            name = tool
            arguments = params["arguments"] ?? .object([:])
            idempotencyKey = params["_meta"]?["idempotencyKey"]?.stringValue ?? idempotencyKey
            traceParent = params["_meta"]?["traceparent"]?.stringValue ?? traceParent
            traceState = params["_meta"]?["tracestate"]?.stringValue ?? traceState
            rpc = (id, session)
        case .toolInvoke(let tool):
            guard message.keys.allSatisfy({ $0 == "arguments" }) else { return forward(head: head, body: body, end: true, context: context) }
            name = tool
            arguments = message["arguments"] ?? .object([:])
        case .model:
            return forward(head: head, body: body, end: true, context: context)
        }
        let requestID = RequestIDGenerator.next()
        let start = tools.startOnLoop(
            name, arguments: JSONWriter.bytes(arguments), caller: caller, requestID: requestID, idempotencyKey: idempotencyKey,
            traceParent: traceParent, traceState: traceState)
        mode = .busy(keepAlive: head.persistsConnection, version: head.version)
        switch start {
        case .declined:
            mode = .idle
            forward(head: head, body: body, end: true, context: context)
        case .refused(let error):
            respondTool(.failure(error), name: name, rpcID: rpc?.id, requestID: requestID, servedBy: "event-loop", context: context)
        case .send(let attempt):
            // The agent may cancel it on its session: the upstream is told, the agent gets -32800.
            let cancelled = CancelledFlag()
            if let rpc, let sessions = path.mcpSessions {
                sessions.track(session: rpc.session, request: rpc.id) {
                    cancelled.set()
                    tools.cancelOnLoop(attempt, reason: "the caller cancelled")
                }
            }
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let rpc = rpc
            path.client.post(
                on: context.eventLoop, to: attempt.target, headers: attempt.headers, body: attempt.body, timeout: attempt.timeout,
                maxResponseBytes: attempt.maxResponseBytes
            ) { answer in
                let (handler, context) = loopBound.value
                switch tools.finishOnLoop(attempt, answer) {
                case .done(let outcome):
                    handler.finishTool(outcome, name: name, rpc: rpc, cancelled: cancelled, requestID: requestID, servedBy: "event-loop", context: context)
                case .continueAsync(let attempt):
                    let promise = context.eventLoop.makePromise(of: Result<ToolGateway.ToolResult, GatewayError>.self)
                    promise.completeWithTask { await tools.continueAsync(attempt) }
                    promise.futureResult.whenSuccess { outcome in
                        let (handler, context) = loopBound.value
                        handler.finishTool(outcome, name: name, rpc: rpc, cancelled: cancelled, requestID: requestID, servedBy: "event-loop,async", context: context)
                    }
                }
            }
        }
    }

    /// Answers a loop tool call: the agent gets -32800 if it cancelled meanwhile.
    private func finishTool(
        _ outcome: Result<ToolGateway.ToolResult, GatewayError>, name: String, rpc: (id: JSONValue, session: String)?, cancelled: CancelledFlag,
        requestID: String, servedBy: String, context: ChannelHandlerContext
    ) {
        if let rpc { path.mcpSessions?.untrack(session: rpc.session, request: rpc.id) }
        let outcome = cancelled.isSet
            ? .failure(GatewayError(kind: .rateLimit, code: "request_cancelled", message: "The request was cancelled.", status: 499)) : outcome
        respondTool(outcome, name: name, rpcID: rpc?.id, requestID: requestID, servedBy: servedBy, context: context)
    }

    /// A tool call's answer in its route's shape: JSON-RPC for `/mcp`, the invoke body or an
    /// OpenAI-shaped error for `/v1/tools/{name}/invoke`.
    private func respondTool(
        _ outcome: Result<ToolGateway.ToolResult, GatewayError>, name: String, rpcID: JSONValue?, requestID: String, servedBy: String,
        context: ChannelHandlerContext
    ) {
        let headers = [("content-type", "application/json"), ("x-request-id", requestID), ("x-interlock-path", servedBy)]
        if let rpcID {
            let message = MCPRoutes.message(id: rpcID, name: name, outcome: outcome)
            write(status: .ok, headers: headers, body: ByteBuffer(bytes: JSONWriter.bytes(.object(message))), context: context)
            return
        }
        switch outcome {
        case .success(let result):
            write(status: .ok, headers: headers, body: ByteBuffer(bytes: JSONWriter.bytes(ToolRoutes.answer(name: name, result: result))), context: context)
        case .failure(let error):
            respond(error: error, dialect: .openAI, requestID: requestID, context: context)
        }
    }

    private func take(_ finish: LoopFinish, dialect: ErrorDialect, requestID: String, context: ChannelHandlerContext) {
        switch finish {
        case .done(let result):
            respond(result, dialect: dialect, requestID: requestID, servedBy: "event-loop", context: context)
        case .continueAsync(let continuation):
            continueAsync(continuation, dialect: dialect, requestID: requestID, context: context)
        }
    }

    /// Retries, fallbacks and queue waits happen on the async path; the answer comes back here.
    private func continueAsync(_ continuation: LoopContinuation, dialect: ErrorDialect, requestID: String, context: ChannelHandlerContext) {
        let gateway = path.gateway
        let promise = context.eventLoop.makePromise(of: ModelResult.self)
        promise.completeWithTask { try await gateway.continueAsync(continuation) }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        promise.futureResult.whenComplete { result in
            let (handler, context) = loopBound.value
            switch result {
            case .success(let answer):
                handler.respond(answer, dialect: dialect, requestID: requestID, servedBy: "event-loop,async", context: context)
            case .failure(let error):
                let gatewayError = (error as? GatewayError) ?? GatewayError(kind: .internal, code: "internal_error", message: "Interlock failed to process the request.")
                handler.respond(error: gatewayError, dialect: dialect, requestID: requestID, context: context)
            }
        }
    }

    /// `servedBy` becomes `x-interlock-path`: `event-loop` when the whole call ran on the loop,
    /// `event-loop,async` when it continued on the async path (retry, fallback, queue wait).
    private func respond(_ result: ModelResult, dialect: ErrorDialect, requestID: String, servedBy: String, context: ChannelHandlerContext) {
        switch result {
        case .complete(let info, let body):
            write(status: .ok, headerCount: 9, body: body, context: context) { add in
                ModelRoutes.forEachHeader(info, add)
                add("content-type", "application/json")
                add("x-interlock-path", servedBy)
            }
        case .stream(let info, let stream):
            respond(stream: stream, info: info, context: context)
        }
    }

    private func respond(error: GatewayError, dialect: ErrorDialect, requestID: String, context: ChannelHandlerContext) {
        let (status, headers, body) = error.rendered(dialect: dialect, requestID: requestID)
        write(status: HTTPResponseStatus(statusCode: status), headers: headers, body: ByteBuffer(bytes: body), context: context)
    }

    private func write(status: HTTPResponseStatus, headers pairs: [(String, String)], body: ByteBuffer, context: ChannelHandlerContext) {
        write(status: status, headerCount: pairs.count, body: body, context: context) { add in
            for (name, value) in pairs { add(name, value) }
        }
    }

    /// Headers handed over one by one (no array built for them).
    typealias HeaderList = ((String, String) -> Void) -> Void

    private func write(status: HTTPResponseStatus, headerCount: Int, body: ByteBuffer, context: ChannelHandlerContext, headers: HeaderList) {
        guard case .busy(let keepAlive, let version) = mode else { return }
        if active {
            if let rawOutput {
                // Small bodies go out in the head's buffer: one write, one piece for `writev`.
                let inline = body.readableBytes <= Self.inlineBodyBytes
                var out = context.channel.allocator.buffer(capacity: 160 + headerCount * 48 + (inline ? body.readableBytes : 0))
                Self.writeHead(into: &out, version: version, status: status, headers: headers, contentLength: body.readableBytes, keepAlive: keepAlive)
                if inline {
                    out.writeImmutableBuffer(body)
                } else {
                    rawOutput.write(NIOAny(IOData.byteBuffer(out)), promise: nil)
                    out = body
                }
                rawOutput.writeAndFlush(NIOAny(IOData.byteBuffer(out)), promise: nil)
            } else {
                var pairs: [(String, String)] = []
                headers { pairs.append(($0, $1)) }
                writeHead(status: status, headers: pairs, contentLength: body.readableBytes, keepAlive: keepAlive, context: context)
                context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
        finishExchange(context: context)
    }

    /// Bodies up to this size are copied into the buffer of the response head.
    static let inlineBodyBytes = 16 * 1024

    /// An HTTP/1 response head with a `content-length`, as `HTTPResponseEncoder` writes it for
    /// the same head (status line, the headers in order, `content-length`, `server`, and
    /// `connection: close` when the connection ends after it).
    ///
    /// Written through one pointer into the buffer's free space: a `ByteBuffer` write per piece
    /// (forty for a model call's head) checked capacity and uniqueness each time, about 1.5% of
    /// a call. A head longer than the space reserved is written again into as much as it needed.
    static func writeHead(
        into out: inout ByteBuffer, version: HTTPVersion, status: HTTPResponseStatus, headers: HeaderList, contentLength: Int, keepAlive: Bool
    ) {
        var reserve = max(out.writableBytes, 256)
        while true {
            var needed = 0
            let written = out.writeWithUnsafeMutableBytes(minimumWritableBytes: reserve) { space in
                var head = HeadWriter(space)
                if version.major == 1, version.minor == 1 {
                    head.append("HTTP/1.1 ")
                } else if version.major == 1, version.minor == 0 {
                    head.append("HTTP/1.0 ")
                } else {
                    head.append("HTTP/\(version.major).\(version.minor) ")
                }
                head.append(ASCIIText.digits(UInt64(status.code)))
                head.append(" ")
                head.append(status.reasonPhrase)
                head.append("\r\n")
                headers { name, value in
                    head.append(name)
                    head.append(": ")
                    head.append(value)
                    head.append("\r\n")
                }
                head.append("content-length: ")
                head.append(ASCIIText.digits(UInt64(contentLength)))
                head.append(keepAlive ? "\r\nserver: interlock\r\n\r\n" : "\r\nserver: interlock\r\nconnection: close\r\n\r\n")
                needed = head.needed
                return head.needed <= space.count ? head.needed : 0
            }
            if written > 0 || needed == 0 { return }
            reserve = needed
        }
    }

    /// Bytes appended into a fixed space; past its end only counted (`needed`).
    private struct HeadWriter {
        let space: UnsafeMutableRawBufferPointer
        var needed = 0

        init(_ space: UnsafeMutableRawBufferPointer) { self.space = space }

        mutating func append(_ text: StaticString) {
            append(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
        }

        mutating func append(_ text: String) {
            var text = text
            text.withUTF8 { append(UnsafeRawBufferPointer($0)) }
        }

        private mutating func append(_ bytes: UnsafeRawBufferPointer) {
            if needed + bytes.count <= space.count, let source = bytes.baseAddress, let target = space.baseAddress {
                (target + needed).copyMemory(from: source, byteCount: bytes.count)
            }
            needed += bytes.count
        }
    }

    /// `contentLength` nil: a stream, sent chunked.
    private func writeHead(status: HTTPResponseStatus, headers pairs: [(String, String)], contentLength: Int?, keepAlive: Bool, context: ChannelHandlerContext) {
        guard case .busy(_, let version) = mode else { return }
        var headers = HTTPHeaders()
        headers.reserveCapacity(pairs.count + 3)
        for (name, value) in pairs { headers.add(name: name, value: value) }
        if let contentLength { headers.add(name: "content-length", value: ASCIIText.digits(UInt64(contentLength))) }
        headers.add(name: "server", value: "interlock")
        if !keepAlive { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
    }

    /// The response has been written: on to the requests that waited behind it.
    private func finishExchange(context: ChannelHandlerContext) {
        guard case .busy(let keepAlive, _) = mode else { return }
        mode = .idle
        streaming = nil
        guard keepAlive, active else {
            context.close(promise: nil)
            return
        }
        releaseQuiesce(context: context)
        // Requests that arrived meanwhile, in order. What goes to the router is delivered at
        // read-complete, which this replay outside a read cycle must send itself.
        let replaying = !held.isEmpty
        while !held.isEmpty {
            if case .busy = mode { break }
            process(held.removeFirst(), context: context)
        }
        if replaying { channelReadComplete(context: context) }
        if readPending {
            if case .busy = mode { return }
            readPending = false
            context.read()
        }
    }

    // MARK: Streams

    /// Relays a streamed answer read on this loop. Nothing is sent to the agent before the
    /// first event, so a stream that breaks off earlier is retried on the async path.
    private func sendStream(_ attempt: LoopAttempt, dialect: ErrorDialect, requestID: String, context: ChannelHandlerContext) {
        let gateway = path.gateway
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        path.client.postStreaming(on: context.eventLoop, to: attempt.target, headers: attempt.headers, body: attempt.body, timeout: attempt.timeout)
            .whenComplete { result in
                let (handler, context) = loopBound.value
                let upstream: LoopHTTPStream
                switch result {
                case .failure(let error):
                    let failure = (error as? UpstreamFailure) ?? .connection("upstream client error")
                    handler.take(gateway.finishOnLoop(attempt, .failure(failure)), dialect: dialect, requestID: requestID, context: context)
                    return
                case .success(let answer):
                    upstream = answer
                }
                guard (200..<300).contains(upstream.status) else {
                    // The error body says why; the async path decides what happens next.
                    var body = ByteBuffer()
                    upstream.onBody = { part in
                        var part = part
                        if body.readableBytes < 1 << 20 { body.writeBuffer(&part) }
                    }
                    upstream.onEnd = { _ in
                        let response = LoopHTTPResponse(status: upstream.status, headers: upstream.headers, body: body)
                        handler.take(gateway.finishOnLoop(attempt, .success(response)), dialect: dialect, requestID: requestID, context: context)
                    }
                    return
                }
                handler.relay(upstream, session: gateway.openStreamOnLoop(attempt), attempt: attempt, dialect: dialect, requestID: requestID, context: context)
            }
    }

    private func relay(_ upstream: LoopHTTPStream, session: LoopStreamSession, attempt: LoopAttempt, dialect: ErrorDialect, requestID: String, context: ChannelHandlerContext) {
        guard case .busy(let keepAlive, _) = mode else { return }
        let state = StreamState(upstream: upstream, session: session)
        streaming = state
        let ended: (UpstreamFailure?) -> Void = { [unowned self] failure in
            state.cutOffWatch?.cancel()
            guard state.committed else {
                // Ended before its first event: nothing reached the agent, the async path retries.
                streaming = nil
                continueAsync(path.gateway.streamFailedOnLoop(attempt, session), dialect: dialect, requestID: requestID, context: context)
                return
            }
            let tail = session.finish(completed: failure == nil)
            if active {
                if !tail.isEmpty { context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: tail)))), promise: nil) }
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
            session.end(upstreamBroke: failure != nil, agentGone: !active)
            finishExchange(context: context)
        }
        upstream.onEnd = ended
        upstream.onBody = { [unowned self] chunk in
            let bytes = session.consume(chunk)
            if !bytes.isEmpty, active {
                if !state.committed {
                    state.committed = true
                    var headers = ModelRoutes.headerPairs(session.info)
                    headers += [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("x-interlock-path", "event-loop")]
                    writeHead(status: .ok, headers: headers, contentLength: nil, keepAlive: keepAlive, context: context)
                }
                context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: bytes)))), promise: nil)
                // The agent reads slower than the upstream writes: stop reading the upstream.
                if !context.channel.isWritable { upstream.pause() }
            }
            // An event outgrew `gateway.max_stream_event_bytes`: nothing more is read.
            if session.overflowed {
                upstream.cancel()
                ended(.responseTooLarge)
            }
        }
        let loopBound = NIOLoopBound((self, context, state), eventLoop: context.eventLoop)
        state.cutOffWatch = session.watchCutOff {
            loopBound.eventLoop.execute {
                let (handler, context, state) = loopBound.value
                handler.cut(state, dialect: dialect, requestID: requestID, context: context)
            }
        }
    }

    /// The stream's agent was disabled: stop the upstream and end the agent's stream with an
    /// error event (or answer 401 if nothing was sent yet).
    private func cut(_ state: StreamState, dialect: ErrorDialect, requestID: String, context: ChannelHandlerContext) {
        guard streaming === state else { return }
        streaming = nil
        state.cutOffWatch?.cancel()
        state.upstream.cancel()
        let tail = state.session.cutOff(status: state.committed ? 200 : 401)
        guard state.committed else {
            respond(error: GatewayError(kind: .authentication, code: "agent_disabled", message: "Agent '\(state.session.agentID)' is disabled."),
                dialect: dialect, requestID: requestID, context: context)
            return
        }
        if active {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: tail)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        finishExchange(context: context)
    }

    /// A streamed answer from the async path (after a retry or fallback), written as it comes.
    private func respond(stream: ModelStream, info: ModelResponseInfo, context: ChannelHandlerContext) {
        guard case .busy(let keepAlive, _) = mode else { return }
        var headers = ModelRoutes.headerPairs(info)
        headers += [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("x-interlock-path", "event-loop,async")]
        if active { writeHead(status: .ok, headers: headers, contentLength: nil, keepAlive: keepAlive, context: context) }
        let loop = context.eventLoop
        let loopBound = NIOLoopBound((self, context), eventLoop: loop)
        let done = loop.makePromise(of: Void.self)
        done.completeWithTask {
            await stream.run { buffer in
                try await loop.flatSubmit { () -> EventLoopFuture<Void> in
                    let (handler, context) = loopBound.value
                    guard handler.active else { return loop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
                    return context.writeAndFlush(handler.wrapOutboundOut(.body(.byteBuffer(buffer))))
                }.get()
            }
        }
        done.futureResult.whenComplete { _ in
            let (handler, context) = loopBound.value
            if handler.active { context.writeAndFlush(handler.wrapOutboundOut(.end(nil)), promise: nil) }
            handler.finishExchange(context: context)
        }
    }

    private func releaseQuiesce(context: ChannelHandlerContext) {
        guard quiescePending else { return }
        quiescePending = false
        if routerAbsent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
    }
}

/// Set once, from any thread: a loop call its agent cancelled.
private final class CancelledFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .relaxed) }
    var isSet: Bool { flag.load(ordering: .relaxed) }
}
