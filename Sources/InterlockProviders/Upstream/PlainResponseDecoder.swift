import NIOCore
import NIOHTTP1

/// Reads an upstream connection's answers: plain ones (`HTTP1PlainHead`, framed by
/// `Content-Length`) here; from the first answer that is not plain on (chunked, read until
/// close, informational, malformed), NIO's `HTTPResponseDecoder` reads the connection. It is
/// added behind this handler at that moment and told the method of the request in flight, as
/// it would have been had it read the connection from the start.
///
/// Plain answers skip NIO's parser and also the head that told it each request's method
/// (written through the pipeline per request); together they were about 8% of a model call.
final class PlainResponseDecoder: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = HTTPClientResponsePart

    /// Heads larger than this are NIO's to read (and to refuse).
    static let maxHeadBytes = 64 * 1024

    private var framing = PlainMessageFraming()
    private var decoding = false
    /// Whether a request is waiting for its answer (NIO's decoder must then be told its method).
    private let requestInFlight: () -> Bool

    init(requestInFlight: @escaping () -> Bool) {
        self.requestInFlight = requestInFlight
    }

    /// NIO's decoder reads this connection: every request's head must pass it.
    var handedOver: Bool { framing.handedOver }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !framing.handedOver else {
            context.fireChannelRead(data)
            return
        }
        var buffer = unwrapInboundIn(data)
        framing.append(&buffer)
        // A part handed on can lead to another read (a stream resumed): the loop below takes it.
        guard !decoding else { return }
        decoding = true
        defer { decoding = false }
        while let event = framing.next(scan: { HTTP1PlainHead.response($0, maxBytes: Self.maxHeadBytes) }) {
            switch event {
            case .head(let head): context.fireChannelRead(wrapInboundOut(.head(head.responseHead)))
            case .body(let part): context.fireChannelRead(wrapInboundOut(.body(part)))
            case .end: context.fireChannelRead(wrapInboundOut(.end(nil)))
            case .handOver(let bytes): handOver(bytes, context: context)
            }
        }
    }

    private func handOver(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        let decoder = ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes))
        do {
            try context.pipeline.syncOperations.addHandler(decoder, position: .after(self))
            if requestInFlight() {
                // Written from the pipeline's tail, so that it passes the decoder; the request
                // itself went out already (`EncodedRequestWriter` drops heads).
                context.channel.write(HTTPClientRequestPart.head(EncodedRequestWriter.postHead), promise: nil)
            }
        } catch {
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(NIOAny(bytes))
    }
}
