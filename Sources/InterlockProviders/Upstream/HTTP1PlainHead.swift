import InterlockCore
public import NIOCore
public import NIOHTTP1

/// The head of an HTTP/1.1 message in its plainest form, read without NIO's parser.
///
/// A model call crosses two HTTP/1.1 parsers (the agent's request, the upstream's answer), and
/// NIO's decoder (`llhttp`, its callbacks, `ByteToMessageHandler`'s buffering) was about 14%
/// of the CPU of a model call. Nearly all traffic is the plainest form of HTTP/1.1, which a
/// single pass reads: version exactly `HTTP/1.1`, every line ended by CRLF, header names that
/// are tokens, values of visible ASCII, at most one `Content-Length`, no `Transfer-Encoding`.
///
/// Anything else is `.other`, and the connection is handed to NIO's decoder from that message
/// on (`PlainHTTPDecoder`): NIO stays the parser of record for every message this type does
/// not fully understand, including every malformed one, so the two can never disagree about
/// where a message ends.
public struct HTTP1PlainHead: Sendable {
    /// What the start of a buffer holds.
    public enum Scan: Sendable {
        /// A plain head, `length` bytes long (up to and including the blank line).
        case head(HTTP1PlainHead, length: Int)
        /// Not a whole head yet; nothing seen so far rules the plain form out.
        case incomplete
        /// Not the plain form (or not within `maxBytes`): NIO's decoder takes over.
        case other
    }

    /// A request's method and target (empty for an answer).
    public let method: String
    public let uri: String
    /// An answer's status code (0 for a request).
    public let statusCode: Int
    public let headers: HTTPHeaders
    /// `Content-Length`, if the message had one.
    public let contentLength: Int?

    /// Reads a request head (`method SP request-target SP HTTP/1.1`) from the start of `buffer`.
    /// `Expect` and `Upgrade` also make it `.other`: NIO's server pipeline answers those.
    public static func request(_ buffer: ByteBuffer, maxBytes: Int) -> Scan {
        buffer.withUnsafeReadableBytes { scan($0, maxBytes: maxBytes, request: true) }
    }

    /// Reads a response head (`HTTP/1.1 SP 3DIGIT SP reason`) from the start of `buffer`.
    /// Informational, 204 and 304 answers are `.other` (their framing is NIO's to know).
    public static func response(_ buffer: ByteBuffer, maxBytes: Int) -> Scan {
        buffer.withUnsafeReadableBytes { scan($0, maxBytes: maxBytes, request: false) }
    }

    public var requestHead: HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: uri, headers: headers)
    }

    public var responseHead: HTTPResponseHead {
        // The status's own reason phrase, not the wire's, as NIO's decoder gives it.
        HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: statusCode), headers: headers)
    }

    private init(method: String, uri: String, statusCode: Int, headers: HTTPHeaders, contentLength: Int?) {
        self.method = method
        self.uri = uri
        self.statusCode = statusCode
        self.headers = headers
        self.contentLength = contentLength
    }

    private static let cr = UInt8(ascii: "\r")
    private static let lf = UInt8(ascii: "\n")
    private static let space = UInt8(ascii: " ")
    private static let tab = UInt8(ascii: "\t")
    private static let commonMethods: [StaticString] = ["GET", "PUT", "POST", "HEAD", "PATCH", "DELETE", "OPTIONS"]
    /// `HTTP/1.1`, the only version read here.
    private static let versionLength = 8

    private static func scan(_ bytes: UnsafeRawBufferPointer, maxBytes: Int, request: Bool) -> Scan {
        // Line by line. A line not ended yet must be a possible start of a plain line: input
        // NIO would refuse at once is handed to it at once, not waited on.
        var lineStart = 0
        var startLine: (Range<Int>, Range<Int>, Range<Int>)?
        var pairs: [(String, String)] = []
        pairs.reserveCapacity(12)  // grown one doubling at a time, it was reallocated three times for a usual head
        var contentLength: Int?
        while true {
            let line = Self.line(bytes, from: lineStart)
            let stop: Int
            switch line {
            case .invalid:
                return .other
            case .partial:
                // Up to a CR that may be followed by its LF.
                let tail = lineStart..<(bytes.last == cr ? bytes.count - 1 : bytes.count)
                let plausible = startLine == nil ? (request ? requestLine(bytes, tail, complete: false) : statusLine(bytes, tail, complete: false)) != nil
                    : headerLine(bytes, tail, complete: false) != nil
                return plausible && bytes.count < maxBytes ? .incomplete : .other
            case .ended(let at):
                stop = at
            }
            guard stop + 2 <= maxBytes else { return .other }
            let range = lineStart..<stop
            lineStart = stop + 2
            guard startLine != nil else {
                guard let parts = request ? requestLine(bytes, range, complete: true) : statusLine(bytes, range, complete: true) else { return .other }
                startLine = parts
                continue
            }
            if range.isEmpty { break }
            guard let (name, value) = headerLine(bytes, range, complete: true) else { return .other }
            if equalsLowercased(bytes, name, "content-length") {
                guard contentLength == nil, let length = decimal(bytes, value) else { return .other }
                contentLength = length
            } else if equalsLowercased(bytes, name, "transfer-encoding") {
                return .other
            } else if request, equalsLowercased(bytes, name, "expect") || equalsLowercased(bytes, name, "upgrade") {
                return .other
            }
            pairs.append((string(bytes, name), string(bytes, value)))
        }
        guard let (first, second, _) = startLine else { return .other }
        // Without a length, a response's body runs until the connection closes.
        if !request, contentLength == nil { return .other }
        let head =
            request
            ? HTTP1PlainHead(method: string(bytes, first), uri: string(bytes, second), statusCode: 0, headers: HTTPHeaders(pairs), contentLength: contentLength)
            : HTTP1PlainHead(method: "", uri: "", statusCode: decimal(bytes, second) ?? 0, headers: HTTPHeaders(pairs), contentLength: contentLength)
        return .head(head, length: lineStart)
    }

    private enum Line {
        /// The index of the line's CR.
        case ended(Int)
        /// No CRLF yet.
        case partial
        /// A bare LF, or a CR followed by anything but LF.
        case invalid
    }

    private static func line(_ bytes: UnsafeRawBufferPointer, from start: Int) -> Line {
        var index = start
        while index < bytes.count {
            switch bytes[index] {
            case cr:
                guard index + 1 < bytes.count else { return .partial }
                return bytes[index + 1] == lf ? .ended(index) : .invalid
            case lf:
                return .invalid
            default:
                index += 1
            }
        }
        return .partial
    }

    /// `method SP origin-form SP HTTP/1.1`, or (`complete` false) a start of one.
    private static func requestLine(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, complete: Bool) -> (Range<Int>, Range<Int>, Range<Int>)? {
        var cursor = range.lowerBound
        while cursor < range.upperBound, ASCIIText.isHTTPToken(bytes[cursor]) { cursor += 1 }
        let method = range.lowerBound..<cursor
        guard cursor < range.upperBound else { return !complete && isCommonMethod(bytes, method, prefix: true) ? (method, cursor..<cursor, cursor..<cursor) : nil }
        guard bytes[cursor] == space, isCommonMethod(bytes, method, prefix: false) else { return nil }
        cursor += 1
        // Origin form only (`/path?query`); absolute form, `*` and the rest are NIO's.
        let targetStart = cursor
        guard cursor < range.upperBound else { return complete ? nil : (method, cursor..<cursor, cursor..<cursor) }
        guard bytes[cursor] == UInt8(ascii: "/") else { return nil }
        while cursor < range.upperBound, bytes[cursor] > space, bytes[cursor] < 0x7F { cursor += 1 }
        let target = targetStart..<cursor
        guard cursor < range.upperBound else { return complete ? nil : (method, target, cursor..<cursor) }
        guard bytes[cursor] == space else { return nil }
        let version = cursor + 1..<range.upperBound
        if complete {
            guard matches(bytes, version, "HTTP/1.1") else { return nil }
        } else {
            guard version.count <= versionLength, matches(bytes, version, prefixOf: "HTTP/1.1") else { return nil }
        }
        return (method, target, version)
    }

    /// `HTTP/1.1 SP 3DIGIT SP reason` (a final answer that may have a body), or a start of one.
    private static func statusLine(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, complete: Bool) -> (Range<Int>, Range<Int>, Range<Int>)? {
        let prefix = range.lowerBound..<min(range.upperBound, range.lowerBound + versionLength + 5)
        let expected: StaticString = "HTTP/1.1 DDD "
        for index in prefix {
            let want = expected.utf8Start[index - range.lowerBound]
            guard want == UInt8(ascii: "D") ? isDigit(bytes[index]) : bytes[index] == want else { return nil }
        }
        let codeStart = range.lowerBound + versionLength + 1
        guard prefix.count == versionLength + 5 else { return complete ? nil : (prefix, prefix, prefix) }
        // 1xx, 204 and 304 have no body whatever their headers say.
        let code = (codeStart..<codeStart + 3).reduce(0) { $0 * 10 + Int(bytes[$1] - UInt8(ascii: "0")) }
        guard code >= 200, code != 204, code != 304 else { return nil }
        var cursor = prefix.upperBound
        while cursor < range.upperBound, bytes[cursor] == tab || (bytes[cursor] >= space && bytes[cursor] < 0x7F) { cursor += 1 }
        guard cursor == range.upperBound else { return nil }
        return (range.lowerBound..<range.lowerBound + versionLength, codeStart..<codeStart + 3, prefix.upperBound..<range.upperBound)
    }

    /// `name: value` (the value without its leading whitespace), or a start of one.
    private static func headerLine(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, complete: Bool) -> (Range<Int>, Range<Int>)? {
        var cursor = range.lowerBound
        while cursor < range.upperBound, ASCIIText.isHTTPToken(bytes[cursor]) { cursor += 1 }
        let name = range.lowerBound..<cursor
        guard cursor < range.upperBound else { return complete ? nil : (name, cursor..<cursor) }
        // No name (an obsolete line folding starts with whitespace), or no colon right after it.
        guard !name.isEmpty, bytes[cursor] == UInt8(ascii: ":") else { return nil }
        cursor += 1
        while cursor < range.upperBound, bytes[cursor] == space || bytes[cursor] == tab { cursor += 1 }
        let valueStart = cursor
        while cursor < range.upperBound {
            let byte = bytes[cursor]
            guard byte == tab || (byte >= space && byte < 0x7F) else { return nil }
            cursor += 1
        }
        // Trailing whitespace stays, as NIO's parser leaves it.
        return (name, valueStart..<range.upperBound)
    }

    /// The methods read here (`prefix`: or a start of one); NIO's parser knows (or refuses) any other.
    private static func isCommonMethod(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, prefix: Bool) -> Bool {
        commonMethods.contains { prefix ? matches(bytes, range, prefixOf: $0) : matches(bytes, range, $0) }
    }

    private static func matches(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ expected: StaticString) -> Bool {
        ASCIIText.equals(UnsafeRawBufferPointer(rebasing: bytes[range]), expected)
    }

    /// Whether the bytes in `range` are the start of `expected`.
    private static func matches(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, prefixOf expected: StaticString) -> Bool {
        guard range.count <= expected.utf8CodeUnitCount else { return false }
        let start = expected.utf8Start
        for offset in 0..<range.count where bytes[range.lowerBound + offset] != start[offset] { return false }
        return true
    }

    /// ASCII case-insensitive comparison with a lowercase name.
    private static func equalsLowercased(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ name: StaticString) -> Bool {
        guard range.count == name.utf8CodeUnitCount else { return false }
        let expected = name.utf8Start
        for offset in 0..<range.count {
            var byte = bytes[range.lowerBound + offset]
            if byte >= UInt8(ascii: "A"), byte <= UInt8(ascii: "Z") { byte |= 0x20 }
            if byte != expected[offset] { return false }
        }
        return true
    }

    /// A `Content-Length` value: 1 to 15 digits (anything larger is no plain message).
    private static func decimal(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int? {
        guard (1...15).contains(range.count) else { return nil }
        var value = 0
        for index in range {
            guard isDigit(bytes[index]) else { return nil }
            value = value * 10 + Int(bytes[index] - UInt8(ascii: "0"))
        }
        return value
    }

    private static func string(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }

    private static func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }
}

/// `isKeepAlive`, cheap for heads built outside NIO's parser. NIO's parser records the
/// `Connection` header's meaning as it reads; heads built by `HTTP1PlainHead` (and by hand) do
/// not have that record, and `isKeepAlive` then splits the header's values into a new array on
/// every call (about 2% of a model call's CPU for the two heads of a call). No `Connection`
/// header, or one that is exactly `keep-alive` or `close` (any case), is read here; anything
/// else is NIO's to read.
extension HTTPRequestHead {
    @inlinable
    public var persistsConnection: Bool { HTTP1PlainHead.persists(headers, version: version) ?? isKeepAlive }
}

extension HTTPResponseHead {
    @inlinable
    public var persistsConnection: Bool { HTTP1PlainHead.persists(headers, version: version) ?? isKeepAlive }
}

extension HTTP1PlainHead {
    /// Whether the connection persists after a message with these headers, when that is plain
    /// to see (nil otherwise).
    @usableFromInline
    static func persists(_ headers: HTTPHeaders, version: HTTPVersion) -> Bool? {
        var connection: String?
        for (name, value) in headers where equalsLowercased(name, "connection") {
            guard connection == nil else { return nil }
            connection = value
        }
        guard let connection else { return version.major == 1 && version.minor >= 1 }
        if equalsLowercased(connection, "keep-alive") { return true }
        if equalsLowercased(connection, "close") { return false }
        return nil
    }

    private static func equalsLowercased(_ text: String, _ name: StaticString) -> Bool {
        guard text.utf8.count == name.utf8CodeUnitCount else { return false }
        var text = text
        return text.withUTF8 { equalsLowercased(UnsafeRawBufferPointer($0), 0..<$0.count, name) }
    }
}
