/// One Server-Sent Event.
public struct ServerSentEvent: Sendable, Equatable {
    public var event: String?
    public var data: [UInt8]

    public init(event: String? = nil, data: [UInt8]) {
        self.event = event
        self.data = data
    }

    public init(event: String? = nil, data: String) {
        self.init(event: event, data: Array(data.utf8))
    }

    /// The event as it goes on the wire. Each line of the data is a `data:` field of its own
    /// (a reader joins them with a line feed), so data with line breaks arrives whole.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(data.count + (event?.utf8.count ?? 0) + 16)
        if let event {
            out.append(contentsOf: "event: ".utf8)
            out.append(contentsOf: event.utf8)
            out.append(0x0A)
        }
        var start = data.startIndex
        while true {
            let end = data[start...].firstIndex(of: 0x0A) ?? data.endIndex
            out.append(contentsOf: "data: ".utf8)
            out.append(contentsOf: data[start..<end])
            out.append(0x0A)
            guard end < data.endIndex else { break }
            start = end + 1
        }
        out.append(0x0A)
        return out
    }

    public var isDone: Bool { data.elementsEqual("[DONE]".utf8) }
}

/// Splits a byte stream into Server-Sent Events as chunks arrive, whatever the chunk
/// boundaries. Lines may end in LF, CRLF or CR; comment lines and unknown fields are ignored.
///
/// An event is held in memory until its blank line arrives, so its size is bounded: once the
/// line being read and the event's data together exceed `maxEventBytes`, the parser drops
/// them, sets `overflowed` and reads nothing more (an upstream that never ends a line must
/// not grow Interlock's memory without limit).
public struct ServerSentEventParser: Sendable {
    /// The most bytes an event may hold before its end (its current line and data together).
    public let maxEventBytes: Int
    /// An event outgrew `maxEventBytes`; the rest of the stream is ignored.
    public private(set) var overflowed = false
    private var line: [UInt8] = []
    private var event: String?
    private var data: [UInt8] = []
    private var hasData = false
    private var lastWasCR = false
    /// The last `id:` seen (it carries over to later events, per the SSE standard): what a
    /// client sends as `Last-Event-ID` to resume a stream.
    public private(set) var lastEventID: String?
    /// The last `retry:` (milliseconds to wait before reconnecting).
    public private(set) var retryMs: Int?

    public init(maxEventBytes: Int = .max) {
        self.maxEventBytes = maxEventBytes
    }

    /// The events completed by `bytes`. Contiguous bytes (a `ByteBufferView`, an array) are
    /// read in place; other sequences are copied first.
    public mutating func consume(_ bytes: some Sequence<UInt8>) -> [ServerSentEvent] {
        if let events = bytes.withContiguousStorageIfAvailable({ consume(contiguous: $0) }) { return events }
        return Array(bytes).withUnsafeBufferPointer { consume(contiguous: $0) }
    }

    /// The run up to the next line end is appended at once, not byte by byte (a stream's
    /// events are mostly long `data:` lines: walking a `ByteBufferView` a byte at a time cost
    /// about 90 ns a byte).
    private mutating func consume(contiguous bytes: UnsafeBufferPointer<UInt8>) -> [ServerSentEvent] {
        var events: [ServerSentEvent] = []
        var index = 0
        let count = bytes.count
        while index < count, !overflowed {
            let byte = bytes[index]
            if byte == 0x0A || byte == 0x0D {
                let skipped = byte == 0x0A && lastWasCR
                lastWasCR = byte == 0x0D
                index += 1
                if !skipped, let event = endLine() { events.append(event) }
                continue
            }
            lastWasCR = false
            var end = index + 1
            while end < count, bytes[end] != 0x0A, bytes[end] != 0x0D { end += 1 }
            guard end - index <= maxEventBytes - line.count - data.count else {
                overflow()
                break
            }
            line.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[index..<end]))
            index = end
        }
        return events
    }

    private mutating func overflow() {
        overflowed = true
        line = []
        data = []
        event = nil
        hasData = false
    }

    /// Ends the stream: an event without its final blank line is still delivered (unless the
    /// parser overflowed).
    public mutating func finish() -> ServerSentEvent? {
        guard !overflowed else { return nil }
        if !line.isEmpty { _ = endLine() }
        return dispatch()
    }

    private mutating func endLine() -> ServerSentEvent? {
        defer { line.removeAll(keepingCapacity: true) }
        if line.isEmpty { return dispatch() }
        if line.first == UInt8(ascii: ":") { return nil }
        let colon = line.firstIndex(of: UInt8(ascii: ":"))
        let field = line[..<(colon ?? line.endIndex)]
        var valueStart = colon.map { $0 + 1 } ?? line.endIndex
        if valueStart < line.endIndex, line[valueStart] == 0x20 { valueStart += 1 }
        let value = line[valueStart...]
        if field.elementsEqual("data".utf8) {
            if hasData { data.append(0x0A) }
            data.append(contentsOf: value)
            hasData = true
        } else if field.elementsEqual("event".utf8) {
            event = String(decoding: value, as: UTF8.self)
        } else if field.elementsEqual("id".utf8), !value.contains(0) {
            lastEventID = String(decoding: value, as: UTF8.self)
        } else if field.elementsEqual("retry".utf8), !value.isEmpty, value.allSatisfy({ (0x30...0x39).contains($0) }) {
            retryMs = Int(String(decoding: value, as: UTF8.self))
        }
        return nil
    }

    private mutating func dispatch() -> ServerSentEvent? {
        defer {
            event = nil
            data.removeAll(keepingCapacity: true)
            hasData = false
        }
        guard hasData else { return nil }
        return ServerSentEvent(event: event, data: data)
    }
}
