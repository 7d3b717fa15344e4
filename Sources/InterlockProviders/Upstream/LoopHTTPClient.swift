import FoundationEssentials
public import InterlockCore
public import NIOCore
public import NIOHTTP1
import NIOPosix
import NIOSSL

/// Where an HTTP upstream lives, parsed once from a deployment's endpoint URL.
public struct UpstreamTarget: Sendable, Hashable {
    public let tls: Bool
    public let host: String
    public let port: Int
    /// Path and query, as sent in the request line.
    public var path: String
    /// The `Host` header: the host, with the port when it is not the scheme's default.
    public var hostHeader: String
    /// Which kept-alive connections can carry its requests (from `tls`, `host` and `port`).
    let connection: ConnectionKey

    /// `nil` for URLs the loop client does not serve (other schemes, user info in the URL).
    public init?(url: String) {
        guard let parsed = URL(string: url), let scheme = parsed.scheme?.lowercased(), scheme == "http" || scheme == "https",
            parsed.user == nil, parsed.password == nil, var host = parsed.host, !host.isEmpty
        else { return nil }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        tls = scheme == "https"
        self.host = host
        let defaultPort = tls ? 443 : 80
        port = parsed.port ?? defaultPort
        let rawPath = parsed.path.isEmpty ? "/" : parsed.path
        path = parsed.query.map { "\(rawPath)?\($0)" } ?? rawPath
        let hostLiteral = host.contains(":") ? "[\(host)]" : host
        hostHeader = port == defaultPort ? hostLiteral : "\(hostLiteral):\(port)"
        connection = ConnectionKey(tls: tls, host: host, port: port)
    }

    var isIPAddress: Bool {
        host.contains(":") || host.allSatisfy { $0.isNumber || $0 == "." }
    }
}

/// The connections a target can use: scheme, host and port (the path does not matter). Its
/// hash is worked out once, so finding the idle connections of a call hashes one integer
/// instead of the target's strings.
struct ConnectionKey: Hashable {
    let tls: Bool
    let host: String
    let port: Int
    private let hashValueOnce: Int

    init(tls: Bool, host: String, port: Int) {
        self.tls = tls
        self.host = host
        self.port = port
        var hasher = Hasher()
        hasher.combine(tls)
        hasher.combine(host)
        hasher.combine(port)
        hashValueOnce = hasher.finalize()
    }

    static func == (lhs: ConnectionKey, rhs: ConnectionKey) -> Bool {
        lhs.hashValueOnce == rhs.hashValueOnce && lhs.tls == rhs.tls && lhs.port == rhs.port && lhs.host == rhs.host
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(hashValueOnce)
    }
}

/// A complete upstream answer.
public struct LoopHTTPResponse: Sendable {
    public var status: Int
    public var headers: HTTPHeaders
    public var body: ByteBuffer

    public init(status: Int, headers: HTTPHeaders, body: ByteBuffer) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public var retryAfter: Duration? { HTTPModelUpstream.retryAfter(headers) }
}

/// An HTTP/1.1 client whose connections belong to event loops: a request is sent and its
/// answer read on the loop that asked, over a keep-alive connection owned by that loop, so the
/// event-loop fast path never leaves its thread. TLS is NIO's (NIOSSL); answers are read by
/// `PlainHTTPDecoder`, which leaves every answer that is not plain HTTP/1.1 to NIO's
/// decoder. This type pools connections and matches one request to one answer.
///
/// Calls that must wait (retries, fallbacks, queue waits) go through AsyncHTTPClient instead.
public final class LoopHTTPClient: Sendable {
    public struct Configuration: Sendable {
        public var connectTimeout: Duration = .seconds(10)
        /// Idle keep-alive connections kept per event loop and upstream.
        public var maxIdlePerHost: Int = 128
        /// An idle connection older than this is closed instead of reused (stay under the
        /// upstream's own keep-alive timeout).
        public var idleTimeout: Duration = .seconds(30)

        public init() {}

        public init(_ settings: UpstreamPoolSettings) {
            connectTimeout = .milliseconds(settings.connectTimeoutMs)
            maxIdlePerHost = settings.maxIdlePerHost
            idleTimeout = .milliseconds(settings.idleTimeoutMs)
        }
    }

    private let pools: [ObjectIdentifier: LoopConnectionPool]

    /// One pool per event loop of `group`. Requests must come from one of those loops.
    public init(group: any EventLoopGroup, configuration: Configuration = .init()) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.applicationProtocols = ["http/1.1"]
        let context = try NIOSSLContext(configuration: tls)
        var pools: [ObjectIdentifier: LoopConnectionPool] = [:]
        for loop in group.makeIterator() {
            pools[ObjectIdentifier(loop)] = LoopConnectionPool(loop: loop, configuration: configuration, tls: context)
        }
        self.pools = pools
    }

    /// Whether requests can be sent from `loop` (it belongs to the client's group).
    public func serves(_ loop: any EventLoop) -> Bool {
        pools[ObjectIdentifier(loop)] != nil
    }

    /// Sends a POST and collects the whole answer. Call on `loop`; `completion` runs there,
    /// once. A callback rather than a future: a promise and its future per call (allocated,
    /// resolved through a callback list, released) were about 2% of a model call.
    public func post(
        on loop: any EventLoop, to target: UpstreamTarget, headers: [(String, String)], body: ByteBuffer, timeout: Duration, maxResponseBytes: Int,
        completion: @escaping (Result<LoopHTTPResponse, UpstreamFailure>) -> Void
    ) {
        loop.preconditionInEventLoop()
        guard let pool = pools[ObjectIdentifier(loop)] else {
            completion(.failure(.connection("event loop without a connection pool")))
            return
        }
        let exchange = Exchange(
            onAnswer: completion, headPromise: nil, target: target, headers: headers, body: body, maxResponseBytes: maxResponseBytes)
        pool.start(exchange, timeout: timeout)
    }

    /// Sends a POST and hands over the answer's head as soon as it arrives; the body follows
    /// through the returned stream's callbacks. `timeout` bounds the wait for the head and,
    /// after it, every gap between two reads. Call on `loop`; everything happens there.
    public func postStreaming(
        on loop: any EventLoop, to target: UpstreamTarget, headers: [(String, String)], body: ByteBuffer, timeout: Duration
    ) -> EventLoopFuture<LoopHTTPStream> {
        guard let pool = pools[ObjectIdentifier(loop)] else {
            return loop.makeFailedFuture(UpstreamFailure.connection("event loop without a connection pool"))
        }
        loop.preconditionInEventLoop()
        let exchange = Exchange(
            onAnswer: nil, headPromise: loop.makePromise(), target: target, headers: headers, body: body, maxResponseBytes: Int.max)
        pool.start(exchange, timeout: timeout)
        return exchange.headPromise!.futureResult
    }

    /// Closes every idle connection (at shutdown).
    public func closeIdleConnections() {
        for pool in pools.values {
            pool.loop.execute { pool.closeIdle() }
        }
    }
}

/// A streamed answer from the upstream. Loop-bound: set the callbacks when the head arrives
/// (before returning from the callback that received it) and call the methods on the loop.
public final class LoopHTTPStream: @unchecked Sendable {
    public let status: Int
    public let headers: HTTPHeaders
    /// Each piece of the body as it is read.
    public var onBody: ((ByteBuffer) -> Void)?
    /// The end: `nil` when the answer was complete, else why it broke off.
    public var onEnd: ((UpstreamFailure?) -> Void)?
    fileprivate let channel: any Channel
    fileprivate var cancelled = false
    fileprivate var paused = false

    init(status: Int, headers: HTTPHeaders, channel: any Channel) {
        self.status = status
        self.headers = headers
        self.channel = channel
    }

    public var retryAfter: Duration? { HTTPModelUpstream.retryAfter(headers) }

    /// Stops reading (the agent is not keeping up); `resume` reads again.
    public func pause() {
        guard !paused else { return }
        paused = true
        channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
    }

    public func resume() {
        guard paused else { return }
        paused = false
        channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        channel.read()
    }

    /// Abandons the answer and its connection (the agent went away).
    public func cancel() {
        guard !cancelled else { return }
        cancelled = true
        onBody = nil
        onEnd = nil
        channel.close(promise: nil)
    }
}

/// One request waiting for its answer.
final class Exchange {
    /// Collected answer (`post`), called once …
    private var onAnswer: ((Result<LoopHTTPResponse, UpstreamFailure>) -> Void)?
    /// … or streamed answer (`postStreaming`).
    let headPromise: EventLoopPromise<LoopHTTPStream>?
    let target: UpstreamTarget
    let headers: [(String, String)]
    let body: ByteBuffer
    let maxResponseBytes: Int
    var done = false
    /// Sent over a connection that had served an earlier request: if that connection turns out
    /// to be closed before any answer, the request is sent once more on a new one.
    var reusedConnection = false
    var retriedOnFreshConnection = false
    var channel: (any Channel)?
    /// When the answer must have arrived (a stream: its head).
    var deadline = NIODeadline.distantFuture
    /// Streaming: the idle deadline, pushed forward by every read.
    var timeout: TimeAmount = .seconds(0)
    var readDeadline = NIODeadline.distantFuture
    /// The pool that watches the deadline, and the exchange's place in its list of exchanges
    /// in flight (-1 once it left).
    var pool: LoopConnectionPool?
    var slot = -1
    var stream: LoopHTTPStream?

    init(
        onAnswer: ((Result<LoopHTTPResponse, UpstreamFailure>) -> Void)?, headPromise: EventLoopPromise<LoopHTTPStream>?, target: UpstreamTarget,
        headers: [(String, String)], body: ByteBuffer, maxResponseBytes: Int
    ) {
        self.onAnswer = onAnswer
        self.headPromise = headPromise
        self.target = target
        self.headers = headers
        self.body = body
        self.maxResponseBytes = maxResponseBytes
    }

    var isStreaming: Bool { headPromise != nil }

    /// The exchange failed or (collected) completed.
    func finish(_ result: Result<LoopHTTPResponse, UpstreamFailure>) {
        pool?.untrack(self)
        if let stream {
            // Streaming and already past the head: the failure ends the stream.
            guard !done || stream.onEnd != nil else { return }
            let end = stream.onEnd
            stream.onEnd = nil
            stream.onBody = nil
            if case .failure(let failure) = result { end?(failure) } else { end?(nil) }
            return
        }
        guard !done else { return }
        done = true
        let onAnswer = self.onAnswer
        self.onAnswer = nil  // the caller's closure holds its handler: let go of it now
        onAnswer?(result)
        if case .failure(let failure) = result { headPromise?.fail(failure) }
    }

    /// Streaming: the head arrived.
    func deliverHead(_ head: HTTPResponseHead, channel: any Channel) {
        guard !done, let headPromise else { return }
        done = true
        let stream = LoopHTTPStream(status: Int(head.status.code), headers: head.headers, channel: channel)
        self.stream = stream
        readDeadline = .now() + timeout
        headPromise.succeed(stream)
    }

    /// Streaming: a piece of the body.
    func deliverBody(_ part: ByteBuffer) {
        readDeadline = .now() + timeout
        stream?.onBody?(part)
    }
}

/// The connections of one event loop. Touched only on that loop.
final class LoopConnectionPool: @unchecked Sendable {
    private struct Idle {
        var channel: any Channel
        var handler: UpstreamConnectionHandler
        var since: NIODeadline
    }

    let loop: any EventLoop
    private let configuration: LoopHTTPClient.Configuration
    private let tls: NIOSSLContext
    /// Idle connections per upstream, oldest first. A class, so that taking or returning a
    /// connection changes the list in place instead of copying it out of the dictionary.
    private final class IdleList {
        var connections = CircularBuffer<Idle>()
    }
    private var idle: [ConnectionKey: IdleList] = [:]
    /// Exchanges in flight (free places are reused), for their deadlines. One timer watches
    /// them all, set for the earliest deadline: a timer per request (scheduled, then cancelled
    /// by a linear search of the loop's timers) cost about 1.5% of a model call.
    private var inFlight: [Exchange?] = []
    private var freeSlots: [Int] = []
    private var sweepTask: Scheduled<Void>?
    private var sweepAt = NIODeadline.distantFuture

    init(loop: any EventLoop, configuration: LoopHTTPClient.Configuration, tls: NIOSSLContext) {
        self.loop = loop
        self.configuration = configuration
        self.tls = tls
    }

    func start(_ exchange: Exchange, timeout: Duration) {
        exchange.timeout = .nanoseconds(timeout.nanoseconds)
        exchange.deadline = .now() + exchange.timeout
        track(exchange)
        dispatch(exchange)
    }

    private func track(_ exchange: Exchange) {
        exchange.pool = self
        if let slot = freeSlots.popLast() {
            exchange.slot = slot
            inFlight[slot] = exchange
        } else {
            exchange.slot = inFlight.count
            inFlight.append(exchange)
        }
        if exchange.deadline < sweepAt { scheduleSweep(at: exchange.deadline) }
    }

    /// The exchange ended (answered, failed or timed out): its deadline no longer matters.
    func untrack(_ exchange: Exchange) {
        guard exchange.slot >= 0 else { return }
        inFlight[exchange.slot] = nil
        freeSlots.append(exchange.slot)
        exchange.slot = -1
        exchange.pool = nil
    }

    private func scheduleSweep(at deadline: NIODeadline) {
        sweepTask?.cancel()
        sweepAt = deadline
        let loopBound = NIOLoopBound(self, eventLoop: loop)
        sweepTask = loop.scheduleTask(deadline: deadline) { loopBound.value.sweep() }
    }

    /// Fails the exchanges past their deadline and sets the timer for the next one. A stream
    /// that is still reading has pushed its deadline forward with every read.
    private func sweep() {
        sweepTask = nil
        sweepAt = .distantFuture
        let now = NIODeadline.now()
        var next = NIODeadline.distantFuture
        for slot in inFlight.indices {
            guard let exchange = inFlight[slot] else { continue }
            let deadline = exchange.stream != nil ? exchange.readDeadline : exchange.deadline
            if deadline <= now {
                exchange.finish(.failure(.timeout))
                exchange.channel?.close(promise: nil)
                untrack(exchange)
            } else {
                next = min(next, deadline)
            }
        }
        // Failing an exchange may have started others (and set the timer for them).
        if next < sweepAt { scheduleSweep(at: next) }
    }

    private func dispatch(_ exchange: Exchange) {
        if let connection = checkout(exchange.target) {
            exchange.reusedConnection = true
            send(exchange, on: connection.channel, handler: connection.handler)
        } else {
            connect(exchange)
        }
    }

    private func checkout(_ target: UpstreamTarget) -> Idle? {
        let oldest = NIODeadline.now() - .nanoseconds(configuration.idleTimeout.nanoseconds)
        guard let list = idle[target.connection] else { return nil }
        while let last = list.connections.popLast() {
            if last.channel.isActive, last.since > oldest { return last }
            last.channel.close(promise: nil)
        }
        return nil
    }

    /// A connection that finished an exchange and may carry another.
    func checkin(_ channel: any Channel, handler: UpstreamConnectionHandler, target: UpstreamTarget) {
        let now = NIODeadline.now()
        let oldest = now - .nanoseconds(configuration.idleTimeout.nanoseconds)
        let list: IdleList
        if let existing = idle[target.connection] {
            list = existing
        } else {
            list = IdleList()
            idle[target.connection] = list
        }
        while let first = list.connections.first, first.since <= oldest || !first.channel.isActive {
            first.channel.close(promise: nil)
            list.connections.removeFirst()
        }
        if list.connections.count < configuration.maxIdlePerHost, channel.isActive {
            list.connections.append(Idle(channel: channel, handler: handler, since: now))
        } else {
            channel.close(promise: nil)
        }
    }

    func closeIdle() {
        for list in idle.values { for connection in list.connections { connection.channel.close(promise: nil) } }
        idle = [:]
    }

    /// The connection died before answering a request sent on a reused connection: the
    /// upstream closed it while idle, so the request never reached it. Send it once more.
    func retryOnFreshConnection(_ exchange: Exchange) -> Bool {
        guard exchange.reusedConnection, !exchange.retriedOnFreshConnection, !exchange.done else { return false }
        exchange.retriedOnFreshConnection = true
        exchange.reusedConnection = false
        connect(exchange)
        return true
    }

    private func connect(_ exchange: Exchange) {
        let target = exchange.target
        let tls = target.tls ? self.tls : nil
        let serverName = target.isIPAddress ? nil : target.host
        let loopBound = NIOLoopBound((exchange, self), eventLoop: loop)
        ClientBootstrap(group: loop)
            .connectTimeout(.nanoseconds(configuration.connectTimeout.nanoseconds))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: serverName))
                    }
                    // `send` encodes requests itself (`EncodedRequestWriter`). Answers are read
                    // by `PlainHTTPDecoder`, or by NIO's decoder once it handed over.
                    let writer = EncodedRequestWriter()
                    let handler = UpstreamConnectionHandler(writer: writer)
                    try channel.pipeline.syncOperations.addHandler(writer)
                    try channel.pipeline.syncOperations.addHandler(handler.decoder)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: target.host, port: target.port)
            .whenComplete { result in
                let (exchange, pool) = loopBound.value
                switch result {
                case .success(let channel):
                    guard !exchange.done, let handler = try? channel.pipeline.syncOperations.handler(type: UpstreamConnectionHandler.self) else {
                        channel.close(promise: nil)
                        return
                    }
                    pool.send(exchange, on: channel, handler: handler)
                case .failure(let error):
                    if case ChannelError.connectTimeout = error {
                        exchange.finish(.failure(.timeout))
                    } else {
                        exchange.finish(.failure(.connection("connect failed")))
                    }
                }
            }
    }

    private func send(_ exchange: Exchange, on channel: any Channel, handler: UpstreamConnectionHandler) {
        exchange.channel = channel
        handler.begin(exchange, pool: self)
        // The whole request in one buffer (one `write(2)`), past NIO's request encoder: the
        // head written first only tells the response decoder the method. Header values are
        // Interlock's own (validated at config load), the request id, and trace context that
        // NIO's server parser already checked.
        let target = exchange.target
        var size = 64 + target.path.utf8.count + target.hostHeader.utf8.count + exchange.body.readableBytes
        for (name, value) in exchange.headers { size += name.utf8.count + value.utf8.count + 4 }
        var request = channel.allocator.buffer(capacity: size)
        request.writeStaticString("POST ")
        request.writeString(target.path)
        request.writeStaticString(" HTTP/1.1\r\nhost: ")
        request.writeString(target.hostHeader)
        for (name, value) in exchange.headers {
            request.writeStaticString("\r\n")
            request.writeString(name)
            request.writeStaticString(": ")
            request.writeString(value)
        }
        request.writeStaticString("\r\ncontent-length: ")
        request.writeString(ASCIIText.digits(UInt64(exchange.body.readableBytes)))
        request.writeStaticString("\r\n\r\n")
        request.writeImmutableBuffer(exchange.body)
        // NIO's decoder, once it reads the connection, learns each request's method from its head.
        if handler.decoder.handedOver { channel.write(HTTPClientRequestPart.head(EncodedRequestWriter.postHead), promise: nil) }
        handler.writer.send(request)
    }
}

/// Sends requests that `LoopConnectionPool` encoded itself. It sits between the socket (or
/// TLS) and the answers' decoders. Once NIO's response decoder reads the connection (see
/// `PlainHTTPDecoder`), each request's `.head` is written through the pipeline: it passes
/// that decoder, which queues the method to know how the answer is framed, and stops here.
/// The whole encoded request is written from here by `send`, so it does not cross the
/// decoders. Parts written through the pipeline other than `.head` go on to the socket as
/// they are (`.body`) or are dropped (`.end`).
final class EncodedRequestWriter: ChannelOutboundHandler {
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = IOData

    /// The head handed to the decoder for every request (Interlock's upstream calls are POSTs).
    static let postHead = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/")

    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// Writes and flushes one encoded request towards the socket (on the channel's loop).
    func send(_ request: ByteBuffer) {
        context?.writeAndFlush(wrapOutboundOut(.byteBuffer(request)), promise: nil)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .body(let request): context.write(wrapOutboundOut(request), promise: promise)
        case .head, .end: promise?.succeed(())
        }
    }
}

/// Reads the answer to the exchange in flight on one upstream connection.
final class UpstreamConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    /// Where this connection's encoded requests are written from.
    let writer: EncodedRequestWriter
    /// Reads the answers (and hands the connection to NIO's decoder when one is not plain).
    private(set) var decoder: PlainHTTPDecoder!

    private var exchange: Exchange?
    /// Strong, and let go when the connection closes. No weak references to the pool or this
    /// handler: a weakly referenced object keeps its counts in a side table for good, and every
    /// retain and release of it then takes the slow path (about 2% of a model call's CPU).
    private var pool: LoopConnectionPool?
    private var head: HTTPResponseHead?
    private var body = ByteBuffer()
    private var closing = false

    init(writer: EncodedRequestWriter) {
        self.writer = writer
        // Unowned: the decoder asks only while reading this connection, where this handler
        // (in the same pipeline, never removed from it) is alive.
        decoder = PlainHTTPDecoder.answers { [unowned self] in self.exchange != nil }
    }

    func begin(_ exchange: Exchange, pool: LoopConnectionPool) {
        self.exchange = exchange
        self.pool = pool
        head = nil
        body.clear()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let exchange else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            closing = !head.persistsConnection
            if exchange.isStreaming { exchange.deliverHead(head, channel: context.channel) }
        case .body(let part) where exchange.isStreaming:
            exchange.deliverBody(part)
        case .body(var part):
            guard body.readableBytes + part.readableBytes <= exchange.maxResponseBytes else {
                self.exchange = nil
                exchange.finish(.failure(.responseTooLarge))
                context.close(promise: nil)
                return
            }
            if body.readableBytes == 0 {
                // Most answers arrive in one piece: keep it as it came, without a copy.
                body = part
            } else {
                body.writeBuffer(&part)
            }
        case .end:
            self.exchange = nil
            guard let head else { return }
            let response = LoopHTTPResponse(status: Int(head.status.code), headers: head.headers, body: body)
            body = ByteBuffer()
            self.head = nil
            let finishedInTime = exchange.isStreaming ? !(exchange.stream?.cancelled ?? true) && exchange.stream?.onEnd != nil : !exchange.done
            exchange.finish(.success(response))
            // A connection goes back to the pool reading again.
            exchange.stream?.resume()
            if closing || !finishedInTime {
                context.close(promise: nil)
            } else if let pool {
                pool.checkin(context.channel, handler: self, target: exchange.target)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failInFlight(answerStarted: head != nil)
        pool = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failInFlight(answerStarted: head != nil)
        context.close(promise: nil)
    }

    private func failInFlight(answerStarted: Bool) {
        guard let exchange else { return }
        self.exchange = nil
        if !answerStarted, let pool, pool.retryOnFreshConnection(exchange) { return }
        exchange.finish(.failure(.connection(answerStarted ? "connection closed mid-answer" : "connection closed")))
    }
}
