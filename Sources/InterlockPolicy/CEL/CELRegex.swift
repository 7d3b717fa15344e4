import Synchronization

/// RE2-syntax regular expressions matched in linear time (a Pike VM over the compiled
/// program: every input character is looked at once per program instruction at most, so no
/// pattern backtracks catastrophically). Used by CEL's `matches`; the match is a search
/// anywhere in the text unless the pattern anchors itself.
public struct CELRegex: Sendable {
    public struct SyntaxError: Error, Sendable {
        public var message: String
    }

    /// Programs past this many instructions are refused (`(a{1000}){1000}` and the like).
    static let maxInstructions = 50_000
    static let maxRepeat = 1000

    enum ClassItem: Sendable {
        case range(UInt32, UInt32)
        case category(Unicode.GeneralCategory)
        case categoryGroup(Character)
    }

    struct CharClass: Sendable {
        var items: [ClassItem]
        var negated: Bool

        func contains(_ scalar: Unicode.Scalar) -> Bool {
            let value = scalar.value
            var found = false
            for item in items {
                switch item {
                case .range(let low, let high): found = value >= low && value <= high
                case .category(let category): found = scalar.properties.generalCategory == category
                case .categoryGroup(let group): found = CELRegex.group(of: scalar.properties.generalCategory) == group
                }
                if found { break }
            }
            return found != negated
        }
    }

    enum Assertion: Sendable {
        case beginLine, endLine, beginText, endText, wordBoundary, notWordBoundary
    }

    enum Instruction: Sendable {
        case scalar(UInt32)
        case charClass(CharClass)
        case any
        case anyNotNewline
        case split(Int, Int)
        case jump(Int)
        case assert(Assertion)
        case match
    }

    let program: [Instruction]

    private static let cache = Mutex<[String: CELRegex]>([:])

    /// A compiled pattern, reused across calls (at most 512 distinct patterns are kept).
    static func cached(_ pattern: String) throws(SyntaxError) -> CELRegex {
        if let hit = cache.withLock({ $0[pattern] }) { return hit }
        let compiled = try CELRegex(pattern)
        cache.withLock { entries in
            if entries.count >= 512 { entries.removeAll() }
            entries[pattern] = compiled
        }
        return compiled
    }

    public init(_ pattern: String) throws(SyntaxError) {
        var parser = RegexParser(Array(pattern.unicodeScalars))
        let node = try parser.parseAll()
        var compiler = RegexCompiler()
        try compiler.emit(node)
        compiler.instructions.append(.match)
        program = compiler.instructions
    }

    /// Whether the pattern matches anywhere in `text`.
    public func matches(_ text: String) -> Bool {
        let input = Array(text.unicodeScalars)
        let count = program.count
        var current = SparseSet(capacity: count)
        var next = SparseSet(capacity: count)
        var stack: [Int] = []
        stack.reserveCapacity(16)

        func addThread(_ set: inout SparseSet, _ start: Int, at position: Int) -> Bool {
            stack.append(start)
            while let pc = stack.popLast() {
                if set.contains(pc) { continue }
                set.insert(pc)
                switch program[pc] {
                case .jump(let target): stack.append(target)
                case .split(let first, let second):
                    stack.append(second)
                    stack.append(first)
                case .assert(let assertion):
                    if holds(assertion, input, position) { stack.append(pc + 1) }
                case .match:
                    stack.removeAll(keepingCapacity: true)
                    return true
                default: break
                }
            }
            return false
        }

        var position = 0
        while true {
            // A new thread starts at every position: an unanchored search.
            if addThread(&current, 0, at: position) { return true }
            if position == input.count { return false }
            let scalar = input[position]
            next.clear()
            for pc in current.dense {
                let advances: Bool
                switch program[pc] {
                case .scalar(let value): advances = scalar.value == value
                case .charClass(let charClass): advances = charClass.contains(scalar)
                case .any: advances = true
                case .anyNotNewline: advances = scalar != "\n"
                default: advances = false
                }
                if advances, addThread(&next, pc + 1, at: position + 1) { return true }
            }
            swap(&current, &next)
            position += 1
        }
    }

    /// Successive non-overlapping matches in UTF-8 `bytes` (leftmost, then the longest from
    /// there), at most `limit`, as byte ranges; linear time per match like `matches`, and the
    /// text is decoded once.
    public func allMatches(in bytes: [UInt8], limit: Int) -> [Range<Int>] {
        let (input, offsets) = Self.decode(bytes, from: 0)
        var found: [Range<Int>] = []
        var start = 0
        while found.count < limit, start <= input.count, let match = search(input, from: start) {
            if !match.isEmpty { found.append(offsets[match.lowerBound]..<offsets[match.upperBound]) }
            start = max(match.upperBound, match.lowerBound + 1)
        }
        return found
    }

    /// Scalars of UTF-8 bytes from `from` with their byte offsets (one more: the end).
    private static func decode(_ bytes: [UInt8], from: Int) -> ([Unicode.Scalar], [Int]) {
        var input: [Unicode.Scalar] = []
        var offsets: [Int] = []
        var iterator = bytes[from...].makeIterator()
        var decoder = UTF8()
        var offset = from
        decode: while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let scalar):
                input.append(scalar)
                offsets.append(offset)
                offset += String(scalar).utf8.count
            case .emptyInput: break decode
            case .error:
                input.append("\u{FFFD}")
                offsets.append(offset)
                offset += 1
            }
        }
        offsets.append(bytes.count)
        return (input, offsets)
    }

    /// The leftmost-longest match at or after scalar `from`, as a scalar range.
    private func search(_ input: [Unicode.Scalar], from: Int) -> Range<Int>? {
        let count = program.count
        var current: [(pc: Int, start: Int)] = []
        var next: [(pc: Int, start: Int)] = []
        var seen = [Int](repeating: -1, count: count)
        var best: (start: Int, end: Int)?
        var stack: [Int] = []

        func add(_ list: inout [(pc: Int, start: Int)], _ pc: Int, start: Int, at position: Int, generation: Int) -> Bool {
            var matched = false
            stack.append(pc)
            while let current = stack.popLast() {
                if seen[current] == generation { continue }
                seen[current] = generation
                switch program[current] {
                case .jump(let target): stack.append(target)
                case .split(let first, let second):
                    stack.append(second)
                    stack.append(first)
                case .assert(let assertion):
                    if holds(assertion, input, position) { stack.append(current + 1) }
                case .match:
                    matched = true
                default:
                    list.append((current, start))
                }
            }
            return matched
        }

        var position = from
        var generation = 0
        while true {
            if best == nil {
                if add(&current, 0, start: position, at: position, generation: generation) {
                    best = (position, position)
                }
            }
            if position == input.count || current.isEmpty && best != nil { break }
            let scalar = input[position]
            next.removeAll(keepingCapacity: true)
            generation += 1
            for thread in current {
                if let found = best, thread.start > found.start { continue }
                let advances: Bool
                switch program[thread.pc] {
                case .scalar(let value): advances = scalar.value == value
                case .charClass(let charClass): advances = charClass.contains(scalar)
                case .any: advances = true
                case .anyNotNewline: advances = scalar != "\n"
                default: advances = false
                }
                if advances, add(&next, thread.pc + 1, start: thread.start, at: position + 1, generation: generation) {
                    if best == nil || thread.start < best!.start || (thread.start == best!.start && position + 1 > best!.end) {
                        best = (thread.start, position + 1)
                    }
                }
            }
            swap(&current, &next)
            position += 1
            if let found = best { current.removeAll { $0.start != found.start } }
            generation += 1
        }
        guard let best else { return nil }
        return best.start..<best.end
    }

    private func holds(_ assertion: Assertion, _ input: [Unicode.Scalar], _ position: Int) -> Bool {
        switch assertion {
        case .beginText: return position == 0
        case .endText: return position == input.count
        case .beginLine: return position == 0 || input[position - 1] == "\n"
        case .endLine: return position == input.count || input[position] == "\n"
        case .wordBoundary, .notWordBoundary:
            let before = position > 0 && Self.isWord(input[position - 1])
            let after = position < input.count && Self.isWord(input[position])
            return (before != after) == (assertion == .wordBoundary)
        }
    }

    static func isWord(_ scalar: Unicode.Scalar) -> Bool {
        scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || scalar == "_")
    }

    static func group(of category: Unicode.GeneralCategory) -> Character {
        switch category {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: "L"
        case .nonspacingMark, .spacingMark, .enclosingMark: "M"
        case .decimalNumber, .letterNumber, .otherNumber: "N"
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation, .finalPunctuation, .otherPunctuation: "P"
        case .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol: "S"
        case .spaceSeparator, .lineSeparator, .paragraphSeparator: "Z"
        default: "C"
        }
    }
}

/// A set of program counters with O(1) insert, lookup and clear, iterated in insertion order.
struct SparseSet {
    var dense: [Int] = []
    var sparse: [Int]

    init(capacity: Int) {
        sparse = Array(repeating: 0, count: capacity)
        dense.reserveCapacity(capacity)
    }

    func contains(_ value: Int) -> Bool {
        let index = sparse[value]
        return index < dense.count && dense[index] == value
    }

    mutating func insert(_ value: Int) {
        sparse[value] = dense.count
        dense.append(value)
    }

    mutating func clear() { dense.removeAll(keepingCapacity: true) }
}

indirect enum RegexNode {
    case empty
    case scalar(Unicode.Scalar, foldCase: Bool)
    case charClass(CELRegex.CharClass)
    case any(dotAll: Bool)
    case concat([RegexNode])
    case alternate([RegexNode])
    case repeated(RegexNode, min: Int, max: Int?)
    case assert(CELRegex.Assertion)
}

struct RegexParser {
    struct Flags {
        var caseInsensitive = false
        var multiLine = false
        var dotAll = false
    }

    let pattern: [Unicode.Scalar]
    var position = 0
    var flags = Flags()
    var depth = 0

    init(_ pattern: [Unicode.Scalar]) {
        self.pattern = pattern
    }

    func fail(_ message: String) -> CELRegex.SyntaxError { CELRegex.SyntaxError(message: message) }

    func peek(_ ahead: Int = 0) -> Unicode.Scalar? { position + ahead < pattern.count ? pattern[position + ahead] : nil }

    mutating func parseAll() throws(CELRegex.SyntaxError) -> RegexNode {
        let node = try alternation()
        if position < pattern.count { throw fail("unexpected ')'") }
        return node
    }

    mutating func alternation() throws(CELRegex.SyntaxError) -> RegexNode {
        depth += 1
        defer { depth -= 1 }
        if depth > 500 { throw fail("pattern nested too deeply") }
        var branches = [try concatenation()]
        while peek() == "|" {
            position += 1
            branches.append(try concatenation())
        }
        return branches.count == 1 ? branches[0] : .alternate(branches)
    }

    mutating func concatenation() throws(CELRegex.SyntaxError) -> RegexNode {
        var items: [RegexNode] = []
        while let scalar = peek(), scalar != "|", scalar != ")" {
            var atom = try self.atom()
            guard let atomNode = atom else { continue }
            atom = atomNode
            // Quantifiers.
            while let quantifier = peek() {
                var bounds: (Int, Int?)
                if quantifier == "*" {
                    bounds = (0, nil)
                    position += 1
                } else if quantifier == "+" {
                    bounds = (1, nil)
                    position += 1
                } else if quantifier == "?" {
                    bounds = (0, 1)
                    position += 1
                } else if quantifier == "{", let parsed = try counted() {
                    bounds = parsed
                } else {
                    break
                }
                if case .assert = atomNode { throw fail("missing argument to repetition operator") }
                if peek() == "?" { position += 1 }  // Lazy: the same set of matches.
                if let next = peek(), next == "*" || next == "+" || (next == "?" && false) { throw fail("bad repetition operator") }
                atom = .repeated(atom!, min: bounds.0, max: bounds.1)
            }
            items.append(atom!)
        }
        return items.count == 1 ? items[0] : .concat(items)
    }

    /// `{n}`, `{n,}`, `{n,m}`; nil if the brace is a literal.
    mutating func counted() throws(CELRegex.SyntaxError) -> (Int, Int?)? {
        var look = position + 1
        func number() -> Int? {
            var text = ""
            while look < pattern.count, pattern[look].isASCIIDigit {
                text.unicodeScalars.append(pattern[look])
                look += 1
            }
            return text.isEmpty ? nil : Int(text.prefix(6))
        }
        guard let low = number() else { return nil }
        var high: Int? = low
        if look < pattern.count, pattern[look] == "," {
            look += 1
            high = number()
        }
        guard look < pattern.count, pattern[look] == "}" else { return nil }
        position = look + 1
        if low > CELRegex.maxRepeat || (high ?? 0) > CELRegex.maxRepeat || (high.map { $0 < low } ?? false) {
            throw fail("bad repetition operator")
        }
        return (low, high)
    }

    mutating func atom() throws(CELRegex.SyntaxError) -> RegexNode? {
        let scalar = pattern[position]
        position += 1
        switch scalar {
        case "(": return try group()
        case "[": return .charClass(try bracket())
        case ".": return .any(dotAll: flags.dotAll)
        case "^": return .assert(flags.multiLine ? .beginLine : .beginText)
        case "$": return .assert(flags.multiLine ? .endLine : .endText)
        case "*", "+", "?": throw fail("missing argument to repetition operator")
        case "\\": return try escape(inClass: false).node(flags)
        default: return literal(scalar)
        }
    }

    func literal(_ scalar: Unicode.Scalar) -> RegexNode {
        .scalar(scalar, foldCase: flags.caseInsensitive)
    }

    mutating func group() throws(CELRegex.SyntaxError) -> RegexNode? {
        if peek() == "?" {
            position += 1
            if peek() == "P" || peek() == "<" {
                // Named group: (?P<name>...) or (?<name>...).
                if peek() == "P" { position += 1 }
                guard peek() == "<" else { throw fail("invalid named capture") }
                while let scalar = peek(), scalar != ">" { position += 1 }
                guard peek() == ">" else { throw fail("invalid named capture") }
                position += 1
                return try groupBody(restoring: flags)
            }
            var newFlags = flags
            var negate = false
            while let scalar = peek() {
                position += 1
                switch scalar {
                case "i": newFlags.caseInsensitive = !negate
                case "m": newFlags.multiLine = !negate
                case "s": newFlags.dotAll = !negate
                case "U": break
                case "-": negate = true
                case ")":
                    flags = newFlags
                    return nil
                case ":":
                    let saved = flags
                    flags = newFlags
                    return try groupBody(restoring: saved)
                default: throw fail("invalid or unsupported Perl syntax")
                }
            }
            throw fail("missing closing )")
        }
        return try groupBody(restoring: flags)
    }

    mutating func groupBody(restoring saved: Flags) throws(CELRegex.SyntaxError) -> RegexNode {
        let inner = try alternation()
        guard peek() == ")" else { throw fail("missing closing )") }
        position += 1
        flags = saved
        return inner
    }

    enum Escape {
        case scalar(Unicode.Scalar)
        case charClass(CELRegex.CharClass)
        case assert(CELRegex.Assertion)
        case literalText([Unicode.Scalar])

        func node(_ flags: Flags) -> RegexNode {
            switch self {
            case .scalar(let s): .scalar(s, foldCase: flags.caseInsensitive)
            case .charClass(let c): .charClass(c)
            case .assert(let a): .assert(a)
            case .literalText(let text): .concat(text.map { .scalar($0, foldCase: flags.caseInsensitive) })
            }
        }
    }

    static let digit = CELRegex.CharClass(items: [.range(48, 57)], negated: false)
    static let word = CELRegex.CharClass(items: [.range(48, 57), .range(65, 90), .range(97, 122), .range(95, 95)], negated: false)
    static let space = CELRegex.CharClass(items: [.range(9, 10), .range(12, 13), .range(32, 32)], negated: false)

    mutating func escape(inClass: Bool) throws(CELRegex.SyntaxError) -> Escape {
        guard let code = peek() else { throw fail("trailing backslash at end of expression") }
        position += 1
        func negated(_ c: CELRegex.CharClass) -> CELRegex.CharClass { CELRegex.CharClass(items: c.items, negated: true) }
        switch code {
        case "d": return .charClass(Self.digit)
        case "D": return .charClass(negated(Self.digit))
        case "w": return .charClass(Self.word)
        case "W": return .charClass(negated(Self.word))
        case "s": return .charClass(Self.space)
        case "S": return .charClass(negated(Self.space))
        case "a": return .scalar("\u{07}")
        case "f": return .scalar("\u{0C}")
        case "t": return .scalar("\t")
        case "n": return .scalar("\n")
        case "r": return .scalar("\r")
        case "v": return .scalar("\u{0B}")
        case "b" where !inClass: return .assert(.wordBoundary)
        case "B" where !inClass: return .assert(.notWordBoundary)
        case "A" where !inClass: return .assert(.beginText)
        case "z" where !inClass: return .assert(.endText)
        case "Q" where !inClass:
            var text: [Unicode.Scalar] = []
            while let scalar = peek() {
                if scalar == "\\", peek(1) == "E" {
                    position += 2
                    break
                }
                text.append(scalar)
                position += 1
            }
            return .literalText(text)
        case "x":
            var digits = ""
            if peek() == "{" {
                position += 1
                while let scalar = peek(), scalar != "}" {
                    digits.unicodeScalars.append(scalar)
                    position += 1
                }
                guard peek() == "}" else { throw fail("invalid escape sequence") }
                position += 1
            } else {
                for _ in 0..<2 {
                    guard let scalar = peek() else { throw fail("invalid escape sequence") }
                    digits.unicodeScalars.append(scalar)
                    position += 1
                }
            }
            guard let value = UInt32(digits, radix: 16), let scalar = Unicode.Scalar(value) else { throw fail("invalid escape sequence") }
            return .scalar(scalar)
        case "0"..."7":
            var value = code.value - 48
            var digits = 1
            while digits < 3, let next = peek(), ("0"..."7").contains(next) {
                value = value * 8 + next.value - 48
                position += 1
                digits += 1
            }
            guard code == "0" || digits > 1 else { throw fail("invalid escape sequence (backreferences are not supported)") }
            return .scalar(Unicode.Scalar(value)!)
        case "p", "P":
            var name = ""
            if peek() == "{" {
                position += 1
                while let scalar = peek(), scalar != "}" {
                    name.unicodeScalars.append(scalar)
                    position += 1
                }
                guard peek() == "}" else { throw fail("invalid character class range") }
                position += 1
            } else if let scalar = peek() {
                name = String(scalar)
                position += 1
            }
            var negate = code == "P"
            if name.hasPrefix("^") {
                negate.toggle()
                name.removeFirst()
            }
            guard let item = Self.unicodeClass(name) else { throw fail("invalid character class range: \\p{\(name)}") }
            return .charClass(CELRegex.CharClass(items: [item], negated: negate))
        default:
            // Punctuation escapes itself; letters and digits without meaning are errors (RE2).
            if code.isASCII, !code.properties.isAlphabetic, !code.isASCIIDigit { return .scalar(code) }
            throw fail("invalid escape sequence: \\\(code)")
        }
    }

    static func unicodeClass(_ name: String) -> CELRegex.ClassItem? {
        if name.count == 1, "LMNPSZC".contains(name) { return .categoryGroup(Character(name)) }
        let categories: [String: Unicode.GeneralCategory] = [
            "Lu": .uppercaseLetter, "Ll": .lowercaseLetter, "Lt": .titlecaseLetter, "Lm": .modifierLetter, "Lo": .otherLetter,
            "Nd": .decimalNumber, "Nl": .letterNumber, "No": .otherNumber, "Zs": .spaceSeparator, "Cc": .control, "Cf": .format,
            "Pd": .dashPunctuation, "Ps": .openPunctuation, "Pe": .closePunctuation, "Po": .otherPunctuation, "Sm": .mathSymbol,
            "Sc": .currencySymbol, "Mn": .nonspacingMark,
        ]
        if let category = categories[name] { return .category(category) }
        if name == "Any" { return .range(0, 0x10FFFF) }
        return nil
    }

    mutating func bracket() throws(CELRegex.SyntaxError) -> CELRegex.CharClass {
        var items: [CELRegex.ClassItem] = []
        var negated = false
        if peek() == "^" {
            negated = true
            position += 1
        }
        var first = true
        while true {
            guard let scalar = peek() else { throw fail("missing closing ]") }
            if scalar == "]", !first {
                position += 1
                break
            }
            first = false
            if scalar == "[", peek(1) == ":" {
                // POSIX class [:alpha:].
                var look = position + 2
                var name = ""
                var negate = false
                if look < pattern.count, pattern[look] == "^" {
                    negate = true
                    look += 1
                }
                while look < pattern.count, pattern[look] != ":" {
                    name.unicodeScalars.append(pattern[look])
                    look += 1
                }
                if look + 1 < pattern.count, pattern[look + 1] == "]", let posix = Self.posix[name] {
                    position = look + 2
                    if negate {
                        items.append(contentsOf: Self.complement(posix))
                    } else {
                        items.append(contentsOf: posix)
                    }
                    continue
                }
            }
            var low: Unicode.Scalar
            position += 1
            if scalar == "\\" {
                switch try escape(inClass: true) {
                case .scalar(let s): low = s
                case .charClass(let c):
                    items.append(contentsOf: c.negated ? Self.complement(c.items) : c.items)
                    continue
                default: throw fail("invalid escape in character class")
                }
            } else {
                low = scalar
            }
            var high = low
            if peek() == "-", let after = peek(1), after != "]" {
                position += 1
                let next = pattern[position]
                position += 1
                if next == "\\" {
                    guard case .scalar(let s) = try escape(inClass: true) else { throw fail("invalid character class range") }
                    high = s
                } else {
                    high = next
                }
                guard high.value >= low.value else { throw fail("invalid character class range") }
            }
            items.append(.range(low.value, high.value))
            if flags.caseInsensitive {
                for value in low.value...min(high.value, low.value + 512) {
                    guard let s = Unicode.Scalar(value) else { continue }
                    for variant in RegexCompiler.caseVariants(s) where variant != s { items.append(.range(variant.value, variant.value)) }
                }
            }
        }
        return CELRegex.CharClass(items: items, negated: negated)
    }

    static let posix: [String: [CELRegex.ClassItem]] = [
        "alnum": [.range(48, 57), .range(65, 90), .range(97, 122)], "alpha": [.range(65, 90), .range(97, 122)], "ascii": [.range(0, 127)],
        "blank": [.range(9, 9), .range(32, 32)], "cntrl": [.range(0, 31), .range(127, 127)], "digit": [.range(48, 57)],
        "graph": [.range(33, 126)], "lower": [.range(97, 122)], "print": [.range(32, 126)],
        "punct": [.range(33, 47), .range(58, 64), .range(91, 96), .range(123, 126)], "space": [.range(9, 13), .range(32, 32)],
        "upper": [.range(65, 90)], "word": [.range(48, 57), .range(65, 90), .range(97, 122), .range(95, 95)],
        "xdigit": [.range(48, 57), .range(65, 70), .range(97, 102)],
    ]

    /// The complement of plain ranges (used for negated classes inside brackets).
    static func complement(_ items: [CELRegex.ClassItem]) -> [CELRegex.ClassItem] {
        var ranges: [(UInt32, UInt32)] = []
        for case .range(let low, let high) in items { ranges.append((low, high)) }
        ranges.sort { $0.0 < $1.0 }
        var result: [CELRegex.ClassItem] = []
        var next: UInt32 = 0
        for (low, high) in ranges {
            if low > next { result.append(.range(next, low - 1)) }
            next = max(next, high + 1)
        }
        if next <= 0x10FFFF { result.append(.range(next, 0x10FFFF)) }
        return result
    }
}

struct RegexCompiler {
    var instructions: [CELRegex.Instruction] = []

    static func caseVariants(_ scalar: Unicode.Scalar) -> [Unicode.Scalar] {
        var variants = [scalar]
        for mapping in [scalar.properties.lowercaseMapping, scalar.properties.uppercaseMapping] {
            let scalars = Array(mapping.unicodeScalars)
            if scalars.count == 1, !variants.contains(scalars[0]) { variants.append(scalars[0]) }
        }
        return variants
    }

    mutating func append(_ instruction: CELRegex.Instruction) throws(CELRegex.SyntaxError) {
        guard instructions.count < CELRegex.maxInstructions else { throw CELRegex.SyntaxError(message: "expression too large") }
        instructions.append(instruction)
    }

    mutating func emit(_ node: RegexNode) throws(CELRegex.SyntaxError) {
        switch node {
        case .empty: break
        case .scalar(let scalar, let fold):
            let variants = fold ? Self.caseVariants(scalar) : [scalar]
            if variants.count == 1 {
                try append(.scalar(scalar.value))
            } else {
                try append(.charClass(CELRegex.CharClass(items: variants.map { .range($0.value, $0.value) }, negated: false)))
            }
        case .charClass(let charClass): try append(.charClass(charClass))
        case .any(let dotAll): try append(dotAll ? .any : .anyNotNewline)
        case .assert(let assertion): try append(.assert(assertion))
        case .concat(let items):
            for item in items { try emit(item) }
        case .alternate(let branches):
            var jumps: [Int] = []
            for (index, branch) in branches.enumerated() {
                if index < branches.count - 1 {
                    let split = instructions.count
                    try append(.split(split + 1, 0))
                    try emit(branch)
                    jumps.append(instructions.count)
                    try append(.jump(0))
                    instructions[split] = .split(split + 1, instructions.count)
                } else {
                    try emit(branch)
                }
            }
            for jump in jumps { instructions[jump] = .jump(instructions.count) }
        case .repeated(let inner, let min, let max):
            for _ in 0..<min { try emit(inner) }
            if let max {
                // (inner (inner (...)?)?)?
                var splits: [Int] = []
                for _ in min..<max {
                    splits.append(instructions.count)
                    try append(.split(0, 0))
                    try emit(inner)
                }
                for split in splits { instructions[split] = .split(split + 1, instructions.count) }
            } else {
                let loop = instructions.count
                try append(.split(0, 0))
                try emit(inner)
                try append(.jump(loop))
                instructions[loop] = .split(loop + 1, instructions.count)
            }
        }
    }
}
