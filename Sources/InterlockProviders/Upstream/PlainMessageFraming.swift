public import NIOCore

/// Where a connection read by `PlainHTTPDecoder` stands: the bytes read and not parsed yet,
/// and the place in the current message. Messages are framed by `Content-Length` only (`HTTP1PlainHead` refuses any other framing), so a
/// message is a head, then that many body bytes, then its end.
public struct PlainMessageFraming: Sendable {
    public enum Event: Sendable {
        case head(HTTP1PlainHead)
        case body(ByteBuffer)
        case end
        /// Not a plain message: these bytes, and all that follow, are NIO's decoder's.
        case handOver(ByteBuffer)
    }

    private enum State {
        case head
        case body(remaining: Int)
        /// A message without a body: its end comes next.
        case end
        case handedOver
    }

    private var state = State.head
    private var pending = ByteBuffer()
    /// Times the current head was found unfinished. Each look reads it from its start, so a
    /// head arriving a few bytes at a time (a slow or hostile peer) would cost time quadratic
    /// in its size: past `maxUnfinishedLooks` it goes to NIO's decoder, which reads on from
    /// where it is.
    private var unfinishedLooks = 0
    static let maxUnfinishedLooks = 3

    public init() {}

    /// Whether NIO's decoder reads the connection (bytes then pass through).
    public var handedOver: Bool {
        if case .handedOver = state { return true }
        return false
    }

    /// Bytes just read.
    public mutating func append(_ buffer: inout ByteBuffer) {
        if pending.readableBytes == 0 {
            pending = buffer  // most reads are parsed whole: keep the read's buffer, no copy
        } else {
            pending.writeBuffer(&buffer)
        }
    }

    /// The next event, or nil until more bytes arrive. The state has moved past the event
    /// before it is returned, so bytes read while the caller hands it on are simply appended.
    public mutating func next(scan: (ByteBuffer) -> HTTP1PlainHead.Scan) -> Event? {
        switch state {
        case .end:
            state = .head
            return .end
        case .handedOver:
            return nil
        case .head:
            guard pending.readableBytes > 0 else {
                pending = ByteBuffer()  // let go of the read's buffer
                return nil
            }
            switch scan(pending) {
            case .incomplete where unfinishedLooks < Self.maxUnfinishedLooks:
                unfinishedLooks += 1
                return nil
            case .incomplete, .other:
                state = .handedOver
                defer { pending = ByteBuffer() }
                return .handOver(pending)
            case .head(let head, let length):
                unfinishedLooks = 0
                pending.moveReaderIndex(forwardBy: length)
                let remaining = head.contentLength ?? 0
                state = remaining == 0 ? .end : .body(remaining: remaining)
                return .head(head)
            }
        case .body(let remaining):
            guard pending.readableBytes > 0 else { return nil }
            let count = min(remaining, pending.readableBytes)
            let part = pending.readSlice(length: count)!
            state = count == remaining ? .end : .body(remaining: remaining - count)
            return .body(part)
        }
    }
}
