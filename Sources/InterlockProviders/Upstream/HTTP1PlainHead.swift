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
/// on (`PlainRequestDecoder`, `PlainResponseDecoder`): NIO stays the parser of record for every
/// message this type does not fully understand, including every malformed one, so the two
/// can never disagree about where a message ends.
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

    /// Request line: method, request-target, version. Status line: version, code, reason.
    public let first: String
    public let second: String
    public let third: String
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
        HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: first), uri: second, headers: headers)
    }

    public var responseHead: HTTPResponseHead {
        HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: Int(second) ?? 0, reasonPhrase: third), headers: headers)
    }

    private init(first: String, second: String, third: String, headers: HTTPHeaders, contentLength: Int?) {
        self.first = first
        self.second = second
        self.third = third
        self.headers = headers
        self.contentLength = contentLength
    }

    private static let cr = UInt8(ascii: "\r")
    private static let lf = UInt8(ascii: "\n")
    private static let space = UInt8(ascii: " ")
    private static let tab = UInt8(ascii: "\t")
    /// `HTTP/1.1`, the only version read here.
    private static let versionLength = 8

    private static func scan(_ bytes: UnsafeRawBufferPointer, maxBytes: Int, request: Bool) -> Scan {
        // The end of the head, checking on the way that every line ends with CRLF: a bare LF
        // would otherwise leave the scan waiting for a blank line that never comes.
        let limit = min(bytes.count, maxBytes)
        var end = -1
        var index = 0
        while index < limit {
            if bytes[index] == lf {
                guard index > 0, bytes[index - 1] == cr else { return .other }
                if index >= 3, bytes[index - 2] == lf {
                    end = index + 1
                    break
                }
            }
            index += 1
        }
        guard end > 0 else { return bytes.count >= maxBytes ? .other : .incomplete }

        // Start line.
        guard let lineEnd = lineEnd(bytes, from: 0), lineEnd > 0 else { return .other }
        let first: Range<Int>
        let second: Range<Int>
        let third: Range<Int>
        if request {
            var cursor = 0
            while cursor < lineEnd, isToken(bytes[cursor]) { cursor += 1 }
            guard cursor > 0, cursor < lineEnd, bytes[cursor] == space, isCommonMethod(bytes, 0..<cursor) else { return .other }
            first = 0..<cursor
            cursor += 1
            let targetStart = cursor
            while cursor < lineEnd, bytes[cursor] > space, bytes[cursor] < 0x7F { cursor += 1 }
            guard cursor > targetStart, cursor < lineEnd, bytes[cursor] == space else { return .other }
            second = targetStart..<cursor
            cursor += 1
            guard lineEnd - cursor == versionLength, matches(bytes, cursor..<lineEnd, "HTTP/1.1") else { return .other }
            third = cursor..<lineEnd
        } else {
            let codeStart = versionLength + 1
            guard lineEnd >= codeStart + 4, matches(bytes, 0..<versionLength, "HTTP/1.1"), bytes[versionLength] == space,
                (codeStart..<codeStart + 3).allSatisfy({ isDigit(bytes[$0]) }), bytes[codeStart + 3] == space
            else { return .other }
            // 1xx, 204 and 304 have no body whatever their headers say.
            let code = (codeStart..<codeStart + 3).reduce(0) { $0 * 10 + Int(bytes[$1] - UInt8(ascii: "0")) }
            guard code >= 200, code != 204, code != 304 else { return .other }
            first = 0..<versionLength
            second = codeStart..<codeStart + 3
            var cursor = codeStart + 4
            while cursor < lineEnd, bytes[cursor] == tab || (bytes[cursor] >= space && bytes[cursor] < 0x7F) { cursor += 1 }
            guard cursor == lineEnd else { return .other }
            third = codeStart + 4..<lineEnd
        }

        // Header lines, up to the blank line.
        var pairs: [(String, String)] = []
        pairs.reserveCapacity(12)
        var contentLength: Int?
        var lineStart = lineEnd + 2
        while lineStart < end - 2 {
            guard let stop = Self.lineEnd(bytes, from: lineStart) else { return .other }
            var cursor = lineStart
            while cursor < stop, isToken(bytes[cursor]) { cursor += 1 }
            // No name (an obsolete line folding starts with whitespace), or no colon right after it.
            guard cursor > lineStart, cursor < stop, bytes[cursor] == UInt8(ascii: ":") else { return .other }
            let name = lineStart..<cursor
            cursor += 1
            while cursor < stop, bytes[cursor] == space || bytes[cursor] == tab { cursor += 1 }
            let valueStart = cursor
            var valueEnd = cursor
            while cursor < stop {
                let byte = bytes[cursor]
                guard byte == tab || (byte >= space && byte < 0x7F) else { return .other }
                cursor += 1
                if byte != space, byte != tab { valueEnd = cursor }
            }
            let value = valueStart..<valueEnd
            if equalsLowercased(bytes, name, "content-length") {
                guard contentLength == nil, let length = decimal(bytes, value) else { return .other }
                contentLength = length
            } else if equalsLowercased(bytes, name, "transfer-encoding") {
                return .other
            } else if request, equalsLowercased(bytes, name, "expect") || equalsLowercased(bytes, name, "upgrade") {
                return .other
            }
            pairs.append((string(bytes, name), string(bytes, value)))
            lineStart = stop + 2
        }
        // Without a length, a response's body runs until the connection closes.
        if !request, contentLength == nil { return .other }
        let head = HTTP1PlainHead(
            first: string(bytes, first), second: string(bytes, second), third: string(bytes, third), headers: HTTPHeaders(pairs),
            contentLength: contentLength)
        return .head(head, length: end)
    }

    /// The methods read here; NIO's parser knows (or refuses) any other.
    private static func isCommonMethod(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        switch range.count {
        case 3: return matches(bytes, range, "GET") || matches(bytes, range, "PUT")
        case 4: return matches(bytes, range, "POST") || matches(bytes, range, "HEAD")
        case 5: return matches(bytes, range, "PATCH")
        case 6: return matches(bytes, range, "DELETE")
        case 7: return matches(bytes, range, "OPTIONS")
        default: return false
        }
    }

    private static func matches(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ expected: StaticString) -> Bool {
        guard range.count == expected.utf8CodeUnitCount else { return false }
        let start = expected.utf8Start
        for offset in 0..<range.count where bytes[range.lowerBound + offset] != start[offset] { return false }
        return true
    }

    /// The index of the CR of the line starting at `start` (lines were checked to end in CRLF).
    private static func lineEnd(_ bytes: UnsafeRawBufferPointer, from start: Int) -> Int? {
        var index = start
        while index + 1 < bytes.count {
            if bytes[index] == cr { return bytes[index + 1] == lf ? index : nil }
            index += 1
        }
        return nil
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

    /// RFC 9110 §5.6.2 `tchar`.
    private static func isToken(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "*"),
            UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"),
            UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }
}
