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

    private enum State {
        case head
        case body(remaining: Int)
        /// NIO's decoder reads the connection; bytes pass through.
        case handedOver
    }

    /// Heads larger than this are NIO's to read (and to refuse).
    static let maxHeadBytes = 64 * 1024

    private var state = State.head
    /// Bytes read and not parsed yet.
    private var pending = ByteBuffer()
    private var decoding = false
    /// Whether a request is waiting for its answer (NIO's decoder must then be told its method).
    private let requestInFlight: () -> Bool

    init(requestInFlight: @escaping () -> Bool) {
        self.requestInFlight = requestInFlight
    }

    /// NIO's decoder reads this connection: every request's head must pass it.
    var handedOver: Bool {
        if case .handedOver = state { return true }
        return false
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .handedOver = state {
            context.fireChannelRead(data)
            return
        }
        var buffer = unwrapInboundIn(data)
        if pending.readableBytes == 0 {
            pending = buffer
        } else {
            pending.writeBuffer(&buffer)
        }
        // A part handed on can lead to another read (a stream resumed): the loop below takes it.
        guard !decoding else { return }
        decoding = true
        defer { decoding = false }
        decode(context: context)
    }

    private func decode(context: ChannelHandlerContext) {
        while pending.readableBytes > 0 {
            switch state {
            case .head:
                switch HTTP1PlainHead.response(pending, maxBytes: Self.maxHeadBytes) {
                case .incomplete:
                    return
                case .other:
                    handOver(context: context)
                    return
                case .head(let head, let length):
                    pending.moveReaderIndex(forwardBy: length)
                    let remaining = head.contentLength ?? 0
                    state = remaining == 0 ? .head : .body(remaining: remaining)
                    context.fireChannelRead(wrapInboundOut(.head(head.responseHead)))
                    if remaining == 0 { context.fireChannelRead(wrapInboundOut(.end(nil))) }
                }
            case .body(let remaining):
                let count = min(remaining, pending.readableBytes)
                let part = pending.readSlice(length: count)!
                state = count == remaining ? .head : .body(remaining: remaining - count)
                context.fireChannelRead(wrapInboundOut(.body(part)))
                if count == remaining { context.fireChannelRead(wrapInboundOut(.end(nil))) }
            case .handedOver:
                return
            }
        }
        // Nothing left over: let go of the read's buffer.
        pending = ByteBuffer()
    }

    private func handOver(context: ChannelHandlerContext) {
        state = .handedOver
        let decoder = ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes))
        do {
            let pipeline = context.pipeline.syncOperations
            try pipeline.addHandler(decoder, position: .after(self))
            if requestInFlight() {
                // Written from the pipeline's tail, so that it passes the decoder; the request
                // itself went out already (`EncodedRequestWriter` drops heads).
                context.channel.write(HTTPClientRequestPart.head(EncodedRequestWriter.postHead), promise: nil)
            }
        } catch {
            context.close(promise: nil)
            return
        }
        let bytes = pending
        pending = ByteBuffer()
        context.fireChannelRead(NIOAny(bytes))
    }
}
