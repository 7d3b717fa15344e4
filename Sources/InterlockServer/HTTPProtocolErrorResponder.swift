import InterlockCore
import NIOCore
import NIOHTTP1

/// Answers a request the HTTP/1 parser rejected, in Interlock's JSON error format, then
/// closes the connection: headers over `server.max_header_bytes` get 431
/// `request_headers_too_large` (RFC 6585 §5), anything else the parser refuses 400
/// `malformed_http`. Without it the client would get a bare 400 with no body.
final class HTTPProtocolErrorResponder: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let maxHeaderBytes: Int
    /// A response has started and not ended: an error now cannot be answered cleanly.
    private var responding = false

    init(maxHeaderBytes: Int) { self.maxHeaderBytes = maxHeaderBytes }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parserError = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        guard !responding else {
            context.close(promise: nil)
            return
        }
        let refusal: GatewayError =
            switch parserError {
            case .headerOverflow:
                GatewayError(
                    kind: .invalidRequest, code: "request_headers_too_large",
                    message: "The request's headers are larger than \(maxHeaderBytes) bytes.", status: 431)
            default:
                GatewayError(kind: .invalidRequest, code: "malformed_http", message: "The request is not valid HTTP/1.1 (\(parserError)).")
            }
        let (status, pairs, body) = refusal.rendered(dialect: .openAI, requestID: "none")
        var headers = HTTPHeaders(pairs)
        headers.add(name: "content-length", value: String(body.count))
        headers.add(name: "connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head: responding = true
        case .end: responding = false
        case .body: break
        }
        context.write(data, promise: promise)
    }
}
