/// CEL's standard functions: conversions, strings, sizes, time fields.
enum CELLibrary {
    typealias Function = @Sendable ([CELValue]) throws(CELError) -> CELValue

    /// How a function may be called.
    struct Entry: Sendable {
        var global: Bool
        var receiver: Bool
        var arities: ClosedRange<Int>
        var body: Function
    }

    static let functions: [String: Entry] = {
        var table: [String: Entry] = [:]
        func add(_ name: String, global: Bool, receiver: Bool, arity: ClosedRange<Int>, _ body: @escaping Function) {
            table[name] = Entry(global: global, receiver: receiver, arities: arity, body: body)
        }
        add("size", global: true, receiver: true, arity: 1...1) { (args) throws(CELError) in .int(try size(args[0])) }
        add("contains", global: false, receiver: true, arity: 2...2) { (args) throws(CELError) in
            guard case .string(let s) = args[0], case .string(let t) = args[1] else { throw CELError.noOverload("contains", args) }
            return .bool(utf8Contains(s, t))
        }
        add("startsWith", global: false, receiver: true, arity: 2...2) { (args) throws(CELError) in
            guard case .string(let s) = args[0], case .string(let t) = args[1] else { throw CELError.noOverload("startsWith", args) }
            return .bool(s.utf8.starts(with: t.utf8))
        }
        add("endsWith", global: false, receiver: true, arity: 2...2) { (args) throws(CELError) in
            guard case .string(let s) = args[0], case .string(let t) = args[1] else { throw CELError.noOverload("endsWith", args) }
            return .bool(s.utf8.count >= t.utf8.count && s.utf8.reversed().starts(with: t.utf8.reversed()))
        }
        add("matches", global: true, receiver: true, arity: 2...2) { (args) throws(CELError) in
            guard case .string(let s) = args[0], case .string(let pattern) = args[1] else { throw CELError.noOverload("matches", args) }
            let regex: CELRegex
            do throws(CELRegex.SyntaxError) {
                regex = try CELRegex.cached(pattern)
            } catch {
                throw CELError(.invalidArgument, "invalid regular expression '\(pattern)': \(error.message)")
            }
            return .bool(regex.matches(s))
        }
        add("int", global: true, receiver: false, arity: 1...1) { (args) throws(CELError) in try toInt(args[0]) }
        add("uint", global: true, receiver: false, arity: 1...1) { (args) throws(CELError) in try toUint(args[0]) }
        add("double", global: true, receiver: false, arity: 1...1) { (args) throws(CELError) in try toDouble(args[0]) }
        add("string", global: true, receiver: false, arity: 1...1) { (args) throws(CELError) in try toString(args[0]) }
        add("bytes", global: true, receiver: false, arity: 1...1) { (args) throws(CELError) in
            switch args[0] {
            case .bytes: return args[0]
            case .string(let s): return .bytes(Array(s.utf8))
            default: throw CELError.noOverload("bytes", args)
            }
        }
        add("bool", global: true, receiver: false, arity: 1...1) { (args) throws(CELError) in
            switch args[0] {
            case .bool: return args[0]
            case .string(let s):
                switch s {
                case "true", "True", "TRUE", "t", "1": return .bool(true)
                case "false", "False", "FALSE", "f", "0": return .bool(false)
                default: throw CELError(.invalidArgument, "cannot convert '\(s)' to bool")
                }
            default: throw CELError.noOverload("bool", args)
            }
        }
        add("dyn", global: true, receiver: false, arity: 1...1) { (args) throws(CELError) in args[0] }
        add("type", global: true, receiver: false, arity: 1...1) { (args) throws(CELError) in .type(args[0].typeName) }
        add("timestamp", global: true, receiver: false, arity: 1...1) { (args) throws(CELError) in
            switch args[0] {
            case .timestamp: return args[0]
            case .string(let s): return .timestamp(try CELTime.parseTimestamp(s))
            case .int(let seconds): return .timestamp(try CELTimestamp.make(seconds: seconds, nanos: 0))
            default: throw CELError.noOverload("timestamp", args)
            }
        }
        add("duration", global: true, receiver: false, arity: 1...1) { (args) throws(CELError) in
            switch args[0] {
            case .duration: return args[0]
            case .string(let s): return .duration(try CELTime.parseDuration(s))
            case .int(let seconds): return .duration(try CELDuration.make(seconds: seconds, nanos: 0))
            default: throw CELError.noOverload("duration", args)
            }
        }
        for name in ["getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfYear", "getDayOfWeek", "getHours", "getMinutes", "getSeconds", "getMilliseconds"] {
            add(name, global: false, receiver: true, arity: 1...2) { (args) throws(CELError) in
                switch args[0] {
                case .timestamp(let t):
                    var zone: String?
                    if args.count == 2 {
                        guard case .string(let name) = args[1] else { throw CELError.noOverload(name, args) }
                        zone = name
                    }
                    guard let value = try CELTime.field(name, of: t, timeZone: zone) else { throw CELError.noOverload(name, args) }
                    return .int(value)
                case .duration(let d) where args.count == 1:
                    guard let value = CELTime.field(name, of: d) else { throw CELError.noOverload(name, args) }
                    return .int(value)
                default: throw CELError.noOverload(name, args)
                }
            }
        }
        return table
    }()

    static func size(_ value: CELValue) throws(CELError) -> Int64 {
        switch value {
        case .string(let s): return Int64(s.unicodeScalars.count)
        case .bytes(let b): return Int64(b.count)
        case .list(let l): return Int64(l.count)
        case .map(let m): return Int64(m.count)
        default: throw CELError.noOverload("size", [value])
        }
    }

    static func utf8Contains(_ haystack: String, _ needle: String) -> Bool {
        let h = Array(haystack.utf8), n = Array(needle.utf8)
        if n.isEmpty { return true }
        if n.count > h.count { return false }
        let first = n[0]
        var i = 0
        while i <= h.count - n.count {
            if h[i] == first {
                var j = 1
                while j < n.count, h[i + j] == n[j] { j += 1 }
                if j == n.count { return true }
            }
            i += 1
        }
        return false
    }

    // MARK: Conversions

    static func toInt(_ value: CELValue) throws(CELError) -> CELValue {
        switch value {
        case .int: return value
        case .uint(let u):
            guard u <= UInt64(Int64.max) else { throw CELError(.outOfRange, "range error converting \(u) to int") }
            return .int(Int64(u))
        case .double(let d):
            guard d.isFinite, d > -9.223372036854775808e18, d < 9.223372036854775807e18 else { throw CELError(.outOfRange, "range error converting \(d) to int") }
            return .int(Int64(d.rounded(.towardZero)))
        case .string(let s):
            guard let i = Int64(s) else { throw CELError(.invalidArgument, "cannot convert '\(s)' to int") }
            return .int(i)
        case .timestamp(let t): return .int(t.seconds)
        default: throw CELError.noOverload("int", [value])
        }
    }

    static func toUint(_ value: CELValue) throws(CELError) -> CELValue {
        switch value {
        case .uint: return value
        case .int(let i):
            guard i >= 0 else { throw CELError(.outOfRange, "range error converting \(i) to uint") }
            return .uint(UInt64(i))
        case .double(let d):
            guard d.isFinite, d > -1, d < 1.8446744073709551615e19 else { throw CELError(.outOfRange, "range error converting \(d) to uint") }
            return .uint(UInt64(d.rounded(.towardZero)))
        case .string(let s):
            guard let u = UInt64(s) else { throw CELError(.invalidArgument, "cannot convert '\(s)' to uint") }
            return .uint(u)
        default: throw CELError.noOverload("uint", [value])
        }
    }

    static func toDouble(_ value: CELValue) throws(CELError) -> CELValue {
        switch value {
        case .double: return value
        case .int(let i): return .double(Double(i))
        case .uint(let u): return .double(Double(u))
        case .string(let s):
            switch s {
            case "NaN": return .double(.nan)
            case "Infinity", "+Infinity", "inf", "+inf": return .double(.infinity)
            case "-Infinity", "-inf": return .double(-.infinity)
            default:
                guard let d = Double(s), !s.lowercased().contains("nan"), !s.lowercased().contains("inf") else {
                    throw CELError(.invalidArgument, "cannot convert '\(s)' to double")
                }
                return .double(d)
            }
        default: throw CELError.noOverload("double", [value])
        }
    }

    static func toString(_ value: CELValue) throws(CELError) -> CELValue {
        switch value {
        case .string: return value
        case .int(let i): return .string(String(i))
        case .uint(let u): return .string(String(u))
        case .double(let d): return .string(CELFormat.double(d))
        case .bool(let b): return .string(b ? "true" : "false")
        case .bytes(let b):
            guard let s = String(validating: b, as: UTF8.self) else { throw CELError(.invalidArgument, "invalid UTF-8 in bytes converted to string") }
            return .string(s)
        case .timestamp(let t): return .string(CELTime.format(t))
        case .duration(let d): return .string(CELTime.format(d))
        case .type(let name): return .string(name)
        default: throw CELError.noOverload("string", [value])
        }
    }
}

/// Text forms of values, for errors and `string()`.
enum CELFormat {
    static func double(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
        var text = "\(d)"
        if text.hasSuffix(".0") { text.removeLast(2) }
        return text
    }

    static func describe(_ value: CELValue) -> String {
        switch value {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .uint(let u): return "\(u)u"
        case .double(let d): return double(d)
        case .string(let s): return "'\(s)'"
        case .bytes(let b): return "b'\(String(decoding: b, as: UTF8.self))'"
        case .list(let items): return "[" + items.map(describe).joined(separator: ", ") + "]"
        case .map(let map): return "{" + zip(map.keys, map.values).map { describe($0) + ": " + describe($1) }.joined(separator: ", ") + "}"
        case .timestamp(let t): return "timestamp('\(CELTime.format(t))')"
        case .duration(let d): return "duration('\(CELTime.format(d))')"
        case .type(let name): return name
        case .message(let m): return m.typeName + "{" + m.fields.sorted { $0.key < $1.key }.map { "\($0.key): \(describe($0.value))" }.joined(separator: ", ") + "}"
        }
    }
}
