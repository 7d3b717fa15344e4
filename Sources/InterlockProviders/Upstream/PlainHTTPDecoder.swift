public import NIOCore
public import NIOHTTP1

/// Reads a connection's HTTP/1.1 messages — an agent's requests or an upstream's answers —
/// when they are plain (`HTTP1PlainHead`: HTTP/1.1, framed by `Content-Length`), and passes
/// on the same parts NIO's decoder would. From the first message that is not plain on
/// (chunked, `Expect`, an upgrade, HTTP/1.0, an informational answer, a head past the limit
/// or trickled in, anything malformed), NIO's decoder reads the connection: it is added
/// behind this handler at that message boundary and answers or refuses the message exactly as
/// it would have had it read the connection from the start.
///
/// NIO's decoder, and the head that told the upstream side's decoder each request's method
/// (written through the pipeline per request), were about 14% of a model call's CPU.
public final class PlainHTTPDecoder: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    /// Unused: parts are `HTTPServerRequestPart` (requests) or `HTTPClientResponsePart` (answers).
    public typealias InboundOut = Never

    private enum Side {
        case requests(limits: NIOHTTPDecoderLimitConfiguration)
        /// Whether a request waits for its answer: NIO's decoder, once added, is told its method.
        case answers(requestInFlight: () -> Bool)
    }

    /// Heads of answers larger than this are NIO's to read (and to refuse).
    static let maxAnswerHeadBytes = 64 * 1024

    private let side: Side
    private let maxHeadBytes: Int
    private var framing = PlainMessageFraming()
    private var decoding = false

    /// An agent connection's requests; `maxHeadBytes` is `server.max_header_bytes`.
    public static func requests(limits: NIOHTTPDecoderLimitConfiguration, maxHeadBytes: Int) -> PlainHTTPDecoder {
        PlainHTTPDecoder(side: .requests(limits: limits), maxHeadBytes: maxHeadBytes)
    }

    /// An upstream connection's answers.
    static func answers(requestInFlight: @escaping () -> Bool) -> PlainHTTPDecoder {
        PlainHTTPDecoder(side: .answers(requestInFlight: requestInFlight), maxHeadBytes: maxAnswerHeadBytes)
    }

    private init(side: Side, maxHeadBytes: Int) {
        self.side = side
        self.maxHeadBytes = maxHeadBytes
    }

    /// NIO's decoder reads this connection (on the upstream side every request's head must then pass it).
    var handedOver: Bool { framing.handedOver }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !framing.handedOver else {
            context.fireChannelRead(data)
            return
        }
        var buffer = unwrapInboundIn(data)
        framing.append(&buffer)
        // A part handed on can lead to another read (a stream resumed, a held request): the
        // loop below takes its bytes.
        guard !decoding else { return }
        decoding = true
        defer { decoding = false }
        let maxHeadBytes = self.maxHeadBytes
        switch side {
        case .requests(let limits):
            while let event = framing.next(scan: { HTTP1PlainHead.request($0, maxBytes: maxHeadBytes) }) {
                switch event {
                case .head(let head): context.fireChannelRead(NIOAny(HTTPServerRequestPart.head(head.requestHead)))
                case .body(let part): context.fireChannelRead(NIOAny(HTTPServerRequestPart.body(part)))
                case .end: context.fireChannelRead(NIOAny(HTTPServerRequestPart.end(nil)))
                case .handOver(let bytes):
                    handOver(bytes, to: ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: limits)), context: context)
                }
            }
        case .answers(let requestInFlight):
            while let event = framing.next(scan: { HTTP1PlainHead.response($0, maxBytes: maxHeadBytes) }) {
                switch event {
                case .head(let head): context.fireChannelRead(NIOAny(HTTPClientResponsePart.head(head.responseHead)))
                case .body(let part): context.fireChannelRead(NIOAny(HTTPClientResponsePart.body(part)))
                case .end: context.fireChannelRead(NIOAny(HTTPClientResponsePart.end(nil)))
                case .handOver(let bytes):
                    let decoder = ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes))
                    handOver(bytes, to: decoder, context: context) {
                        // Written from the pipeline's tail, so that it passes the decoder; the
                        // request itself went out already (`EncodedRequestWriter` drops heads).
                        if requestInFlight() { context.channel.write(HTTPClientRequestPart.head(EncodedRequestWriter.postHead), promise: nil) }
                    }
                }
            }
        }
    }

    /// Adds NIO's decoder behind this handler (`added` runs then) and gives it the bytes.
    private func handOver(_ bytes: ByteBuffer, to decoder: some ChannelHandler, context: ChannelHandlerContext, added: () -> Void = {}) {
        do {
            try context.pipeline.syncOperations.addHandler(decoder, position: .after(self))
        } catch {
            context.close(promise: nil)
            return
        }
        added()
        context.fireChannelRead(NIOAny(bytes))
    }
}
