/// The parsed form of a CEL expression. Macros (`has`, `all`, `exists`, `exists_one`, `map`,
/// `filter` and the two-variable forms) are already expanded into comprehensions.
public struct CELNode: Sendable {
    public indirect enum Kind: Sendable {
        case literal(CELValue)
        /// An identifier as written; a leading `.` means "from the root, not the container".
        case ident(String)
        case select(CELNode, field: String, testOnly: Bool)
        case call(target: CELNode?, function: String, args: [CELNode])
        case list([CELNode])
        case map([(key: CELNode, value: CELNode)])
        case message(typeName: String, fields: [(name: String, value: CELNode)])
        case comprehension(CELComprehension)
    }

    public var kind: Kind
    /// Offset of the node in the source text, in Unicode scalars.
    public var offset: Int

    public init(_ kind: Kind, offset: Int) {
        self.kind = kind
        self.offset = offset
    }
}

/// CEL's one loop: fold `range` into an accumulator while `condition` holds.
public struct CELComprehension: Sendable {
    public var iterVar: String
    /// The second variable of the two-variable forms (index or key, value).
    public var iterVar2: String?
    public var range: CELNode
    public var accuVar: String
    public var accuInit: CELNode
    public var condition: CELNode
    public var step: CELNode
    public var result: CELNode
}

/// A mistake in an expression, with where it is.
public struct CELSourceError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var offset: Int
    /// 1-based line and column in the expression text.
    public var line: Int
    public var column: Int

    public var description: String { "\(line):\(column): \(message)" }

    /// An error at a known place (for text around expressions, such as templates).
    public static func at(line: Int, column: Int, message: String) -> CELSourceError {
        var error = CELSourceError(message, offset: 0, in: [])
        error.line = line
        error.column = column
        return error
    }

    init(_ message: String, offset: Int, in source: [Unicode.Scalar]) {
        self.message = message
        self.offset = offset
        var line = 1
        var column = 1
        for scalar in source.prefix(offset) {
            if scalar == "\n" {
                line += 1
                column = 1
            } else {
                column += 1
            }
        }
        self.line = line
        self.column = column
    }
}

enum CELToken: Equatable {
    case int(Int64)
    /// The magnitude of a decimal literal past Int64.max, valid only after a unary minus.
    case intOverflow(UInt64)
    case uint(UInt64)
    case double(Double)
    case string(String)
    case bytes([UInt8])
    case ident(String)
    /// A field name in backticks (`` a.`b-c` ``): any characters, never a reserved word.
    case quotedIdent(String)
    case punct(String)
    case end
}

/// Splits CEL source text into tokens.
struct CELLexer {
    let source: [Unicode.Scalar]
    var position = 0

    init(_ text: String) {
        source = Array(text.unicodeScalars)
    }

    func error(_ message: String, at offset: Int) -> CELSourceError {
        CELSourceError(message, offset: offset, in: source)
    }

    private func peek(_ ahead: Int = 0) -> Unicode.Scalar? {
        position + ahead < source.count ? source[position + ahead] : nil
    }

    mutating func skipTrivia() {
        while let scalar = peek() {
            if scalar == " " || scalar == "\t" || scalar == "\n" || scalar == "\r" || scalar == "\u{0C}" {
                position += 1
            } else if scalar == "/", peek(1) == "/" {
                while let next = peek(), next != "\n" { position += 1 }
            } else {
                return
            }
        }
    }

    /// The next token and its offset.
    mutating func next() throws(CELSourceError) -> (CELToken, Int) {
        skipTrivia()
        let start = position
        guard let scalar = peek() else { return (.end, start) }
        if scalar.isASCIIDigit || (scalar == "." && (peek(1)?.isASCIIDigit ?? false)) {
            return (try number(), start)
        }
        if scalar.isIdentifierStart {
            // String and bytes prefixes: r, b, rb, br in any case.
            var prefix = ""
            var look = 0
            while look < 2, let letter = peek(look), "rRbB".unicodeScalars.contains(letter) {
                prefix.unicodeScalars.append(letter)
                look += 1
                if let quote = peek(look), quote == "'" || quote == "\"" {
                    let lower = prefix.lowercased()
                    if lower == "r" || lower == "b" || lower == "rb" || lower == "br" {
                        position += look
                        return (try quoted(raw: lower.contains("r"), bytes: lower.contains("b")), start)
                    }
                }
            }
            var name = ""
            while let letter = peek(), letter.isIdentifierPart {
                name.unicodeScalars.append(letter)
                position += 1
            }
            return (.ident(name), start)
        }
        if scalar == "'" || scalar == "\"" {
            return (try quoted(raw: false, bytes: false), start)
        }
        if scalar == "`" {
            position += 1
            var name = ""
            while let next = peek(), next != "`" {
                guard next.isIdentifierPart || next == "." || next == "-" || next == "/" || next == "~" || next == " " else {
                    throw error("character '\(next)' is not allowed in a quoted field name", at: position)
                }
                name.unicodeScalars.append(next)
                position += 1
            }
            guard peek() == "`", !name.isEmpty else { throw error("unterminated quoted field name", at: start) }
            position += 1
            return (.quotedIdent(name), start)
        }
        let two = peek(1).map { String(scalar) + String($0) } ?? ""
        if ["==", "!=", "<=", ">=", "&&", "||"].contains(two) {
            position += 2
            return (.punct(two), start)
        }
        if "+-*/%<>!?:.,()[]{}=".unicodeScalars.contains(scalar) {
            position += 1
            if scalar == "=" { throw error("unexpected '=' (did you mean '=='?)", at: start) }
            return (.punct(String(scalar)), start)
        }
        throw error("unexpected character '\(scalar)'", at: start)
    }

    private mutating func number() throws(CELSourceError) -> CELToken {
        let start = position
        if peek() == "0", let x = peek(1), x == "x" || x == "X" {
            position += 2
            var digits = ""
            while let digit = peek(), digit.isHexDigit {
                digits.unicodeScalars.append(digit)
                position += 1
            }
            guard !digits.isEmpty else { throw error("malformed hexadecimal literal", at: start) }
            if let u = peek(), u == "u" || u == "U" {
                position += 1
                guard let value = UInt64(digits, radix: 16) else { throw error("uint literal out of range", at: start) }
                return .uint(value)
            }
            guard let value = UInt64(digits, radix: 16) else { throw error("int literal out of range", at: start) }
            return try intToken(value, at: start)
        }
        var text = ""
        var isDouble = false
        while let digit = peek(), digit.isASCIIDigit {
            text.unicodeScalars.append(digit)
            position += 1
        }
        if peek() == ".", peek(1)?.isASCIIDigit ?? false {
            isDouble = true
            text += "."
            position += 1
            while let digit = peek(), digit.isASCIIDigit {
                text.unicodeScalars.append(digit)
                position += 1
            }
        }
        if let e = peek(), e == "e" || e == "E" {
            var look = 1
            if let sign = peek(1), sign == "+" || sign == "-" { look = 2 }
            if peek(look)?.isASCIIDigit ?? false {
                isDouble = true
                for _ in 0..<look {
                    text.unicodeScalars.append(peek()!)
                    position += 1
                }
                while let digit = peek(), digit.isASCIIDigit {
                    text.unicodeScalars.append(digit)
                    position += 1
                }
            }
        }
        if isDouble {
            guard let value = Double(text) else { throw error("malformed floating-point literal", at: start) }
            return .double(value)
        }
        if let u = peek(), u == "u" || u == "U" {
            position += 1
            guard let value = UInt64(text) else { throw error("uint literal out of range", at: start) }
            return .uint(value)
        }
        guard let value = UInt64(text) else { throw error("int literal out of range", at: start) }
        return try intToken(value, at: start)
    }

    private func intToken(_ magnitude: UInt64, at start: Int) throws(CELSourceError) -> CELToken {
        if magnitude <= UInt64(Int64.max) { return .int(Int64(magnitude)) }
        if magnitude == UInt64(Int64.max) + 1 { return .intOverflow(magnitude) }
        throw error("int literal out of range", at: start)
    }

    private mutating func quoted(raw: Bool, bytes: Bool) throws(CELSourceError) -> CELToken {
        let start = position
        let quote = source[position]
        let triple = peek(1) == quote && peek(2) == quote
        position += triple ? 3 : 1
        var scalars: [Unicode.Scalar] = []
        var octets: [UInt8] = []
        func append(_ scalar: Unicode.Scalar) {
            if bytes { octets.append(contentsOf: Array(String(scalar).utf8)) } else { scalars.append(scalar) }
        }
        while true {
            guard let scalar = peek() else { throw error("unterminated string literal", at: start) }
            if scalar == quote {
                if !triple {
                    position += 1
                    break
                }
                if peek(1) == quote, peek(2) == quote {
                    position += 3
                    break
                }
            }
            if !triple, scalar == "\n" || scalar == "\r" { throw error("newline in a single-quoted string literal", at: position) }
            if scalar == "\\", !raw {
                try escape(bytes: bytes, scalars: &scalars, octets: &octets)
                continue
            }
            append(scalar)
            position += 1
        }
        if bytes { return .bytes(octets) }
        var text = ""
        text.unicodeScalars.append(contentsOf: scalars)
        return .string(text)
    }

    private mutating func escape(bytes: Bool, scalars: inout [Unicode.Scalar], octets: inout [UInt8]) throws(CELSourceError) {
        let start = position
        position += 1
        guard let code = peek() else { throw error("unterminated escape sequence", at: start) }
        position += 1
        func emit(_ value: UInt32, byte: Bool) throws(CELSourceError) {
            if bytes && byte {
                octets.append(UInt8(value))
                return
            }
            guard let scalar = Unicode.Scalar(value) else { throw error("invalid Unicode code point in escape sequence", at: start) }
            if bytes { octets.append(contentsOf: Array(String(scalar).utf8)) } else { scalars.append(scalar) }
        }
        func digits(_ count: Int, radix: Int) throws(CELSourceError) -> UInt32 {
            var text = ""
            for _ in 0..<count {
                guard let digit = peek(), radix == 8 ? ("0"..."7").contains(digit) : digit.isHexDigit else {
                    throw error("malformed escape sequence", at: start)
                }
                text.unicodeScalars.append(digit)
                position += 1
            }
            return UInt32(text, radix: radix)!
        }
        switch code {
        case "a": try emit(7, byte: false)
        case "b": try emit(8, byte: false)
        case "f": try emit(12, byte: false)
        case "n": try emit(10, byte: false)
        case "r": try emit(13, byte: false)
        case "t": try emit(9, byte: false)
        case "v": try emit(11, byte: false)
        case "\\", "'", "\"", "`", "?": try emit(code.value, byte: false)
        case "x", "X": try emit(try digits(2, radix: 16), byte: true)
        case "u":
            guard !bytes else { throw error("\\u escapes are not allowed in bytes literals", at: start) }
            let value = try digits(4, radix: 16)
            guard !(0xD800...0xDFFF).contains(value) else { throw error("surrogate code point in escape sequence", at: start) }
            try emit(value, byte: false)
        case "U":
            guard !bytes else { throw error("\\U escapes are not allowed in bytes literals", at: start) }
            let value = try digits(8, radix: 16)
            guard value <= 0x10FFFF, !(0xD800...0xDFFF).contains(value) else { throw error("invalid code point in escape sequence", at: start) }
            try emit(value, byte: false)
        case "0"..."3":
            position -= 1
            let value = try digits(3, radix: 8)
            try emit(value, byte: true)
        default:
            throw error("invalid escape sequence '\\\(code)'", at: start)
        }
    }
}

extension Unicode.Scalar {
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
    var isHexDigit: Bool { isASCIIDigit || ("a"..."f").contains(self) || ("A"..."F").contains(self) }
    var isIdentifierStart: Bool { ("a"..."z").contains(self) || ("A"..."Z").contains(self) || self == "_" }
    var isIdentifierPart: Bool { isIdentifierStart || isASCIIDigit }
}
