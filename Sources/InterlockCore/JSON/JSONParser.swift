/// A syntax error in a JSON document, with the byte offset where it was found.
public struct JSONSyntaxError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var offset: Int

    public var description: String { "\(message) at byte \(offset)" }
}

/// The kind of a JSON value, known from its first byte.
public enum JSONKind: Sendable, Equatable {
    case null, bool, number, string, array, object

    public var name: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}

/// One member of a top-level JSON object, located without decoding its value.
public struct JSONMemberSpan: Sendable, Equatable {
    public var key: String
    /// Byte range of the member's value in the document.
    public var valueRange: Range<Int>
    /// Byte range of the whole member, from the key's opening quote to the end of the value.
    public var memberRange: Range<Int>
    public var kind: JSONKind
}

/// A validating, non-recursive-allocation JSON reader.
///
/// Two entry points: `parse` builds a `JSONValue`; `scanObject` checks that a document is
/// well-formed JSON and records where each top-level member's value lies, so the gateway's hot
/// path can read the few fields it routes on and pass the rest through as bytes.
public struct JSONParser: ~Copyable {
    /// Nesting deeper than this is refused: it protects the stack from hostile input.
    public static let maxDepth = 256

    private let bytes: UnsafeRawBufferPointer
    private var index: Int = 0
    private var depth: Int = 0

    private init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONSyntaxError) -> JSONValue {
        var parser = JSONParser(bytes: bytes)
        parser.skipWhitespace()
        let value = try parser.parseValue()
        parser.skipWhitespace()
        guard parser.index == bytes.count else { throw parser.error("unexpected data after the JSON value") }
        return value
    }

    public static func parse(_ bytes: [UInt8]) throws(JSONSyntaxError) -> JSONValue {
        do {
            return try bytes.withUnsafeBytes { try JSONParser.parse($0) }
        } catch let error as JSONSyntaxError {
            throw error
        } catch {
            preconditionFailure("unreachable")
        }
    }

    public static func parse(_ string: String) throws(JSONSyntaxError) -> JSONValue {
        try parse(Array(string.utf8))
    }

    /// Validates the whole document and returns the spans of its top-level object's members.
    /// Throws if the document is not well-formed or its top level is not an object.
    public static func scanObject(_ bytes: UnsafeRawBufferPointer) throws(JSONSyntaxError) -> [JSONMemberSpan] {
        var parser = JSONParser(bytes: bytes)
        try parser.beginObject()
        var spans: [JSONMemberSpan] = []
        while let member = try parser.nextMember(first: spans.isEmpty) {
            spans.append(JSONMemberSpan(key: try member.key(in: bytes), valueRange: member.valueRange, memberRange: member.start..<member.valueRange.upperBound, kind: member.kind))
        }
        try parser.endDocument()
        return spans
    }

    /// The first top-level member called `name`, without decoding the other members' names:
    /// nil if there is none. Validates the whole document like `scanObject`.
    public static func member(named name: String, in bytes: UnsafeRawBufferPointer) throws(JSONSyntaxError) -> JSONMemberSpan? {
        var parser = JSONParser(bytes: bytes)
        try parser.beginObject()
        var found: JSONMemberSpan?
        var first = true
        while let member = try parser.nextMember(first: first) {
            first = false
            if found == nil, try member.hasKey(name, in: bytes) {
                found = JSONMemberSpan(key: name, valueRange: member.valueRange, memberRange: member.start..<member.valueRange.upperBound, kind: member.kind)
            }
        }
        try parser.endDocument()
        return found
    }

    /// Calls `visit` with each top-level member of the object in `bytes`, in order: the bytes of
    /// its name (escapes decoded), its value's byte range and kind. One pass where looking up
    /// several names with `member(named:)` takes one per name. Validates the whole document like
    /// `scanObject`; if it throws, members before the fault have been visited already.
    public static func forEachMember(
        in bytes: UnsafeRawBufferPointer, _ visit: (_ name: UnsafeRawBufferPointer, _ value: Range<Int>, _ kind: JSONKind) -> Void
    ) throws(JSONSyntaxError) {
        var parser = JSONParser(bytes: bytes)
        try parser.beginObject()
        var first = true
        while let member = try parser.nextMember(first: first) {
            first = false
            let raw = UnsafeRawBufferPointer(rebasing: bytes[member.rawKey])
            if raw.contains(UInt8(ascii: "\\")) {
                var name = try member.key(in: bytes)
                name.withUTF8 { visit(UnsafeRawBufferPointer($0), member.valueRange, member.kind) }
            } else {
                visit(raw, member.valueRange, member.kind)
            }
        }
        try parser.endDocument()
    }

    /// A member found by `nextMember`: where it starts (its name's opening quote), the raw
    /// bytes of its name (escapes not decoded), and its value.
    private struct RawMember {
        var start: Int
        var rawKey: Range<Int>
        var valueRange: Range<Int>
        var kind: JSONKind

        func key(in bytes: UnsafeRawBufferPointer) throws(JSONSyntaxError) -> String {
            let raw = UnsafeRawBufferPointer(rebasing: bytes[rawKey])
            if !raw.contains(UInt8(ascii: "\\")) { return String(decoding: raw, as: UTF8.self) }
            var parser = JSONParser(bytes: bytes)
            parser.index = start
            return try parser.parseString()
        }

        func hasKey(_ name: String, in bytes: UnsafeRawBufferPointer) throws(JSONSyntaxError) -> Bool {
            let raw = UnsafeRawBufferPointer(rebasing: bytes[rawKey])
            if !raw.contains(UInt8(ascii: "\\")) {
                // Byte buffers on both sides: the comparison runs without String's UTF-8 iterator.
                return name.utf8.withContiguousStorageIfAvailable { $0.count == raw.count && $0.elementsEqual(raw) } ?? raw.elementsEqual(name.utf8)
            }
            return try key(in: bytes) == name
        }
    }

    /// Reads the opening `{` of the top-level object.
    private mutating func beginObject() throws(JSONSyntaxError) {
        skipWhitespace()
        guard peek() == UInt8(ascii: "{") else { throw error("expected a JSON object") }
        index += 1
    }

    /// The object's next member, or nil after its closing `}`; `first` for the first call.
    private mutating func nextMember(first: Bool) throws(JSONSyntaxError) -> RawMember? {
        skipWhitespace()
        if first {
            if peek() == UInt8(ascii: "}") {
                index += 1
                return nil
            }
        } else {
            if peek() != UInt8(ascii: ",") {
                try expect(UInt8(ascii: "}"), "expected ',' or '}' in object")
                return nil
            }
            index += 1
            skipWhitespace()
        }
        guard peek() == UInt8(ascii: "\"") else { throw error("expected a member name") }
        let start = index
        try skipString()
        let rawKey = (start + 1)..<(index - 1)
        skipWhitespace()
        try expect(UInt8(ascii: ":"), "expected ':' after member name")
        skipWhitespace()
        let valueStart = index
        let kind = try skipValue()
        return RawMember(start: start, rawKey: rawKey, valueRange: valueStart..<index, kind: kind)
    }

    /// Nothing but whitespace may follow the top-level value.
    private mutating func endDocument() throws(JSONSyntaxError) {
        skipWhitespace()
        guard index == bytes.count else { throw error("unexpected data after the JSON value") }
    }

    public static func scanObject(_ bytes: [UInt8]) throws(JSONSyntaxError) -> [JSONMemberSpan] {
        do {
            return try bytes.withUnsafeBytes { try JSONParser.scanObject($0) }
        } catch let error as JSONSyntaxError {
            throw error
        } catch {
            preconditionFailure("unreachable")
        }
    }

    // MARK: - Reading

    private func error(_ message: String) -> JSONSyntaxError {
        JSONSyntaxError(message: message, offset: index)
    }

    private func peek() -> UInt8? {
        index < bytes.count ? bytes[index] : nil
    }

    private mutating func expect(_ byte: UInt8, _ message: String) throws(JSONSyntaxError) {
        guard peek() == byte else { throw error(message) }
        index += 1
    }

    private mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x0A, 0x0D, 0x09: index += 1
            default: return
            }
        }
    }

    private mutating func expectLiteral(_ literal: String) throws(JSONSyntaxError) {
        let start = index
        for byte in literal.utf8 {
            guard peek() == byte else { throw JSONSyntaxError(message: "invalid literal", offset: start) }
            index += 1
        }
    }

    private mutating func enter() throws(JSONSyntaxError) {
        depth += 1
        if depth > JSONParser.maxDepth { throw error("nesting deeper than \(JSONParser.maxDepth) levels") }
    }

    private mutating func parseValue() throws(JSONSyntaxError) -> JSONValue {
        guard let byte = peek() else { throw error("unexpected end of input") }
        switch byte {
        case UInt8(ascii: "{"):
            try enter()
            index += 1
            var object = JSONObject()
            skipWhitespace()
            if peek() == UInt8(ascii: "}") {
                index += 1
            } else {
                while true {
                    skipWhitespace()
                    guard peek() == UInt8(ascii: "\"") else { throw error("expected a member name") }
                    let key = try parseString()
                    skipWhitespace()
                    try expect(UInt8(ascii: ":"), "expected ':' after member name")
                    skipWhitespace()
                    let value = try parseValue()
                    object[key] = value
                    skipWhitespace()
                    if peek() == UInt8(ascii: ",") { index += 1; continue }
                    try expect(UInt8(ascii: "}"), "expected ',' or '}' in object")
                    break
                }
            }
            depth -= 1
            return .object(object)
        case UInt8(ascii: "["):
            try enter()
            index += 1
            var array: [JSONValue] = []
            skipWhitespace()
            if peek() == UInt8(ascii: "]") {
                index += 1
            } else {
                while true {
                    skipWhitespace()
                    array.append(try parseValue())
                    skipWhitespace()
                    if peek() == UInt8(ascii: ",") { index += 1; continue }
                    try expect(UInt8(ascii: "]"), "expected ',' or ']' in array")
                    break
                }
            }
            depth -= 1
            return .array(array)
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"):
            try expectLiteral("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expectLiteral("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expectLiteral("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return try parseNumber()
        default:
            throw error("unexpected character")
        }
    }

    /// Skips a value while validating it; returns its kind.
    private mutating func skipValue() throws(JSONSyntaxError) -> JSONKind {
        guard let byte = peek() else { throw error("unexpected end of input") }
        switch byte {
        case UInt8(ascii: "{"):
            try enter()
            index += 1
            skipWhitespace()
            if peek() == UInt8(ascii: "}") {
                index += 1
            } else {
                while true {
                    skipWhitespace()
                    guard peek() == UInt8(ascii: "\"") else { throw error("expected a member name") }
                    try skipString()
                    skipWhitespace()
                    try expect(UInt8(ascii: ":"), "expected ':' after member name")
                    skipWhitespace()
                    _ = try skipValue()
                    skipWhitespace()
                    if peek() == UInt8(ascii: ",") { index += 1; continue }
                    try expect(UInt8(ascii: "}"), "expected ',' or '}' in object")
                    break
                }
            }
            depth -= 1
            return .object
        case UInt8(ascii: "["):
            try enter()
            index += 1
            skipWhitespace()
            if peek() == UInt8(ascii: "]") {
                index += 1
            } else {
                while true {
                    skipWhitespace()
                    _ = try skipValue()
                    skipWhitespace()
                    if peek() == UInt8(ascii: ",") { index += 1; continue }
                    try expect(UInt8(ascii: "]"), "expected ',' or ']' in array")
                    break
                }
            }
            depth -= 1
            return .array
        case UInt8(ascii: "\""):
            try skipString()
            return .string
        case UInt8(ascii: "t"):
            try expectLiteral("true")
            return .bool
        case UInt8(ascii: "f"):
            try expectLiteral("false")
            return .bool
        case UInt8(ascii: "n"):
            try expectLiteral("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            _ = try scanNumber()
            return .number
        default:
            throw error("unexpected character")
        }
    }

    private mutating func skipString() throws(JSONSyntaxError) {
        index += 1  // opening quote
        while true {
            skipPlainBytes()
            guard index < bytes.count else { break }
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                return
            case UInt8(ascii: "\\"):
                guard index + 1 < bytes.count else { throw error("unterminated string") }
                let escape = bytes[index + 1]
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                    UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    index += 2
                case UInt8(ascii: "u"):
                    guard index + 6 <= bytes.count else { throw error("invalid unicode escape") }
                    for offset in 2..<6 where JSONParser.hexValue(bytes[index + offset]) == nil {
                        throw error("invalid unicode escape")
                    }
                    index += 6
                default:
                    throw error("invalid escape sequence")
                }
            case 0x00..<0x20:
                throw error("control character in string")
            default:
                index += 1
            }
        }
        throw error("unterminated string")
    }

    /// Moves past the bytes of a string that need no attention (`firstSpecialByte`).
    @inline(__always)
    private mutating func skipPlainBytes() {
        index = Self.firstSpecialByte(in: bytes, from: index)
    }

    /// Where the first quote, backslash or control character at or after `start` is
    /// (`bytes.count` if none): eight bytes at a time while a whole word has none of them (most
    /// of a prompt), then byte by byte. The parser skips strings with it, the writer finds what
    /// to escape.
    @inline(__always)
    static func firstSpecialByte(in bytes: UnsafeRawBufferPointer, from start: Int) -> Int {
        var index = start
        let count = bytes.count
        while index &+ 8 <= count {
            let word = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self))
            if hasSpecialByte(word) { break }
            index &+= 8
        }
        while index < count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") || byte < 0x20 { return index }
            index &+= 1
        }
        return count
    }

    /// Whether any of a word's eight bytes is a quote, a backslash or below 0x20. The classic
    /// zero-byte test (`(x - 0x01…) & ~x & 0x80…`) on the word XORed with each byte sought, and
    /// its "less than" form for control characters: it may also flag a byte above one that
    /// matched (a borrow), never miss one, so a flagged word is read byte by byte.
    @inline(__always)
    private static func hasSpecialByte(_ word: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs: UInt64 = 0x8080_8080_8080_8080
        let quotes = word ^ (ones &* 0x22)
        let backslashes = word ^ (ones &* 0x5C)
        let zeroQuote = (quotes &- ones) & ~quotes
        let zeroBackslash = (backslashes &- ones) & ~backslashes
        let control = (word &- ones &* 0x20) & ~word
        return (zeroQuote | zeroBackslash | control) & highs != 0
    }

    private static func hexValue(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    private mutating func readHex4() throws(JSONSyntaxError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw error("invalid unicode escape") }
        var value: UInt32 = 0
        for offset in 0..<4 {
            guard let digit = JSONParser.hexValue(bytes[index + offset]) else { throw error("invalid unicode escape") }
            value = value << 4 | digit
        }
        index += 4
        return value
    }

    private mutating func parseString() throws(JSONSyntaxError) -> String {
        index += 1  // opening quote
        let start = index
        // Fast path: no escapes.
        skipPlainBytes()
        if index < bytes.count, bytes[index] == UInt8(ascii: "\"") {
            let slice = UnsafeRawBufferPointer(rebasing: bytes[start..<index])
            index += 1
            return String(decoding: slice, as: UTF8.self)
        }
        var scalars: [UInt8] = Array(UnsafeRawBufferPointer(rebasing: bytes[start..<index]))
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                return String(decoding: scalars, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard index + 1 < bytes.count else { throw error("unterminated string") }
                let escape = bytes[index + 1]
                index += 2
                switch escape {
                case UInt8(ascii: "\""): scalars.append(UInt8(ascii: "\""))
                case UInt8(ascii: "\\"): scalars.append(UInt8(ascii: "\\"))
                case UInt8(ascii: "/"): scalars.append(UInt8(ascii: "/"))
                case UInt8(ascii: "b"): scalars.append(0x08)
                case UInt8(ascii: "f"): scalars.append(0x0C)
                case UInt8(ascii: "n"): scalars.append(0x0A)
                case UInt8(ascii: "r"): scalars.append(0x0D)
                case UInt8(ascii: "t"): scalars.append(0x09)
                case UInt8(ascii: "u"):
                    var code = try readHex4()
                    if (0xD800..<0xDC00).contains(code) {
                        // A high surrogate must be followed by an escaped low surrogate.
                        if index + 6 <= bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") {
                            index += 2
                            let low = try readHex4()
                            if (0xDC00..<0xE000).contains(low) {
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                            } else {
                                code = 0xFFFD
                            }
                        } else {
                            code = 0xFFFD
                        }
                    } else if (0xDC00..<0xE000).contains(code) {
                        code = 0xFFFD
                    }
                    let scalar = Unicode.Scalar(code) ?? "\u{FFFD}"
                    scalars.append(contentsOf: Array(String(Character(scalar)).utf8))
                default:
                    throw error("invalid escape sequence")
                }
            case 0x00..<0x20:
                throw error("control character in string")
            default:
                scalars.append(byte)
                index += 1
            }
        }
        throw error("unterminated string")
    }

    /// Validates a number's grammar; returns whether it had a fraction or exponent.
    private mutating func scanNumber() throws(JSONSyntaxError) -> (range: Range<Int>, isInteger: Bool) {
        let start = index
        var isInteger = true
        if peek() == UInt8(ascii: "-") { index += 1 }
        guard let first = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) else {
            throw error("invalid number")
        }
        if first == UInt8(ascii: "0") {
            index += 1
        } else {
            while let digit = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) { index += 1 }
        }
        if peek() == UInt8(ascii: ".") {
            isInteger = false
            index += 1
            guard let digit = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) else {
                throw error("invalid number")
            }
            while let digit = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) { index += 1 }
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            isInteger = false
            index += 1
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { index += 1 }
            guard let digit = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) else {
                throw error("invalid number")
            }
            while let digit = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) { index += 1 }
        }
        return (start..<index, isInteger)
    }

    private mutating func parseNumber() throws(JSONSyntaxError) -> JSONValue {
        let (range, isInteger) = try scanNumber()
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
        if isInteger, let value = Int64(text) { return .integer(value) }
        guard let value = Double(text) else { throw JSONSyntaxError(message: "invalid number", offset: range.lowerBound) }
        return .number(value)
    }
}
