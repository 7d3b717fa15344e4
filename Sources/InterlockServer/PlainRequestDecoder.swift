import InterlockProviders
import NIOCore
import NIOHTTP1

/// Reads an agent connection's requests on the event-loop path: plain ones (`HTTP1PlainHead`:
/// HTTP/1.1, a `Content-Length` or no body) here; from the first request that is not plain on
/// (chunked, `Expect`, an upgrade, HTTP/1.0, headers past the limit, anything malformed),
/// NIO's `HTTPRequestDecoder` reads the connection. It is added behind this handler at that
/// moment, at a message boundary, and answers or refuses that request exactly as it would have
/// had it read the connection from the start.
final class PlainRequestDecoder: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = HTTPServerRequestPart

    private enum State {
        case head
        case body(remaining: Int)
        /// NIO's decoder reads the connection; bytes pass through.
        case handedOver
    }

    private let limits: NIOHTTPDecoderLimitConfiguration
    private let maxHeadBytes: Int
    private var state = State.head
    /// Bytes read and not parsed yet.
    private var pending = ByteBuffer()
    private var decoding = false

    init(limits: NIOHTTPDecoderLimitConfiguration, maxHeadBytes: Int) {
        self.limits = limits
        self.maxHeadBytes = maxHeadBytes
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
        // A request handed on can lead to another read: the loop below takes its bytes.
        guard !decoding else { return }
        decoding = true
        defer { decoding = false }
        decode(context: context)
    }

    private func decode(context: ChannelHandlerContext) {
        while pending.readableBytes > 0 {
            switch state {
            case .head:
                switch HTTP1PlainHead.request(pending, maxBytes: maxHeadBytes) {
                case .incomplete:
                    return
                case .other:
                    handOver(context: context)
                    return
                case .head(let head, let length):
                    pending.moveReaderIndex(forwardBy: length)
                    let remaining = head.contentLength ?? 0
                    state = remaining == 0 ? .head : .body(remaining: remaining)
                    context.fireChannelRead(wrapInboundOut(.head(head.requestHead)))
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
        let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: limits))
        do {
            try context.pipeline.syncOperations.addHandler(decoder, position: .after(self))
        } catch {
            context.close(promise: nil)
            return
        }
        let bytes = pending
        pending = ByteBuffer()
        context.fireChannelRead(NIOAny(bytes))
    }
}
