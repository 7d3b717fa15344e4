// Benchmark prototype only (bench/run): the ceiling of an event-loop-native proxy on this
// machine. Each request is read, forwarded and answered on the event loop that accepted it,
// over an upstream keep-alive connection owned by that loop, with no Swift-concurrency hop.
// It exists to size the transport choice recorded in BENCHMARKS.md; Interlock does not use it.
import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count >= 4, let port = Int(arguments[1]), let upstreamPort = Int(arguments[2]) else {
    print("usage: interlock-bench-nio-proxy PORT UPSTREAM_PORT UPSTREAM_PATH")
    exit(2)
}
let upstreamPath = arguments[3]
/// `ahc`: forward with AsyncHTTPClient's delegate API pinned to the accepting loop instead.
let useAHC = arguments.count > 4 && arguments[4] == "ahc"
let upstreamAddress = try SocketAddress(ipAddress: "127.0.0.1", port: upstreamPort)
let group = MultiThreadedEventLoopGroup.singleton
var ahcConfiguration = HTTPClient.Configuration()
ahcConfiguration.redirectConfiguration = .disallow
ahcConfiguration.tracing.tracer = nil
ahcConfiguration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 256
let ahc = HTTPClient(eventLoopGroupProvider: .shared(group), configuration: ahcConfiguration)
let upstreamURL = "http://127.0.0.1:\(upstreamPort)\(upstreamPath)"
/// `BENCH_SPIN_US`: CPU burnt on the event loop per request before it is forwarded, to see
/// how added per-call work moves throughput and latency (BENCHMARKS.md, fifteenth session).
let spinNanoseconds = (getenv("BENCH_SPIN_US").flatMap { Int(String(cString: $0)) } ?? 0) * 1_000

func spin() {
    guard spinNanoseconds > 0 else { return }
    let start = NIODeadline.now()
    while (NIODeadline.now() - start).nanoseconds < Int64(spinNanoseconds) {}
}

/// Idle upstream connections of one event loop. Touched only on that loop.
final class UpstreamPool {
    var idle: [Channel] = []
}

/// Reads one upstream response and hands it to whoever is waiting for it.
final class UpstreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    var head: HTTPResponseHead?
    var body: ByteBuffer?
    var completion: ((HTTPResponseHead, ByteBuffer?) -> Void)?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body(var part):
            if body == nil { body = part } else { body!.writeBuffer(&part) }
        case .end:
            let done = completion
            completion = nil
            let head = self.head!
            let body = self.body
            self.head = nil
            self.body = nil
            done?(head, body)
        }
    }
}

final class ProxyHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let pool: UpstreamPool
    var requestHead: HTTPRequestHead?
    var body: ByteBuffer?

    init(pool: UpstreamPool) { self.pool = pool }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            requestHead = head
            body = nil
        case .body(var part):
            if body == nil { body = part } else { body!.writeBuffer(&part) }
        case .end:
            spin()
            if useAHC { forwardWithAHC(context: context) } else { forward(context: context) }
        }
    }

    private func forwardWithAHC(context: ChannelHandlerContext) {
        let keepAlive = requestHead?.isKeepAlive ?? true
        let body = self.body ?? ByteBuffer()
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        var request = try! HTTPClient.Request(url: upstreamURL, method: .POST)
        request.headers.add(name: "content-type", value: "application/json")
        request.body = .byteBuffer(body)
        let task = ahc.execute(request: request, delegate: ResponseAccumulator(request: request), eventLoop: .delegateAndChannel(on: context.eventLoop))
        task.futureResult.whenSuccess { response in
            let context = loopBoundContext.value
            var responseHeaders = HTTPHeaders()
            responseHeaders.add(name: "content-type", value: "application/json")
            responseHeaders.add(name: "content-length", value: String(response.body?.readableBytes ?? 0))
            if !keepAlive { responseHeaders.add(name: "connection", value: "close") }
            context.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: responseHeaders))), promise: nil)
            if let responseBody = response.body { context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(responseBody))), promise: nil) }
            context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: nil)
            if !keepAlive { context.close(promise: nil) }
        }
    }

    private func withUpstream(on loop: EventLoop, _ use: @escaping (Channel) -> Void) {
        if let channel = pool.idle.popLast(), channel.isActive {
            use(channel)
            return
        }
        ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.pipeline.addHTTPClientHandlers().flatMap { channel.pipeline.addHandler(UpstreamHandler()) }
            }
            .connect(to: upstreamAddress)
            .whenSuccess(use)
    }

    private func forward(context: ChannelHandlerContext) {
        let keepAlive = requestHead?.isKeepAlive ?? true
        let body = self.body ?? ByteBuffer()
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        let pool = self.pool
        withUpstream(on: context.eventLoop) { upstream in
            var headers = HTTPHeaders()
            headers.add(name: "host", value: "127.0.0.1")
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "content-length", value: String(body.readableBytes))
            let handler = try! upstream.pipeline.syncOperations.handler(type: UpstreamHandler.self)
            handler.completion = { head, responseBody in
                pool.idle.append(upstream)
                let context = loopBoundContext.value
                var responseHeaders = HTTPHeaders()
                responseHeaders.add(name: "content-type", value: "application/json")
                responseHeaders.add(name: "content-length", value: String(responseBody?.readableBytes ?? 0))
                if !keepAlive { responseHeaders.add(name: "connection", value: "close") }
                context.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: head.status, headers: responseHeaders))), promise: nil)
                if let responseBody { context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(responseBody))), promise: nil) }
                context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: nil)
                if !keepAlive { context.close(promise: nil) }
            }
            upstream.write(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: upstreamPath, headers: headers)), promise: nil)
            upstream.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil)
            upstream.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
    }
}

// One pool per event loop, created up front; a child channel uses its own loop's pool.
var pools: [ObjectIdentifier: UpstreamPool] = [:]
for loop in group.makeIterator() { pools[ObjectIdentifier(loop)] = UpstreamPool() }
let poolsByLoop = pools

let server = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 1024)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { channel in
        let pool = poolsByLoop[ObjectIdentifier(channel.eventLoop)]!
        return channel.pipeline.configureHTTPServerPipeline().flatMap {
            channel.pipeline.addHandler(ProxyHandler(pool: pool))
        }
    }
    .bind(host: "127.0.0.1", port: port)
    .wait()
try server.closeFuture.wait()
