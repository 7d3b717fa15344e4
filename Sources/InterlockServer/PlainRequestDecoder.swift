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

    private let limits: NIOHTTPDecoderLimitConfiguration
    private let maxHeadBytes: Int
    private var framing = PlainMessageFraming()
    private var decoding = false

    init(limits: NIOHTTPDecoderLimitConfiguration, maxHeadBytes: Int) {
        self.limits = limits
        self.maxHeadBytes = maxHeadBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !framing.handedOver else {
            context.fireChannelRead(data)
            return
        }
        var buffer = unwrapInboundIn(data)
        framing.append(&buffer)
        // A request handed on can lead to another read: the loop below takes its bytes.
        guard !decoding else { return }
        decoding = true
        defer { decoding = false }
        let maxHeadBytes = self.maxHeadBytes
        while let event = framing.next(scan: { HTTP1PlainHead.request($0, maxBytes: maxHeadBytes) }) {
            switch event {
            case .head(let head): context.fireChannelRead(wrapInboundOut(.head(head.requestHead)))
            case .body(let part): context.fireChannelRead(wrapInboundOut(.body(part)))
            case .end: context.fireChannelRead(wrapInboundOut(.end(nil)))
            case .handOver(let bytes): handOver(bytes, context: context)
            }
        }
    }

    private func handOver(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: limits))
        do {
            try context.pipeline.syncOperations.addHandler(decoder, position: .after(self))
        } catch {
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(NIOAny(bytes))
    }
}
