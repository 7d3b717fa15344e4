/// A CEL runtime value.
public enum CELValue: Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case string(String)
    case bytes([UInt8])
    case list([CELValue])
    case map(CELMap)
    case timestamp(CELTimestamp)
    case duration(CELDuration)
    /// A type as a value, by its runtime name (`int`, `list`, `google.protobuf.Timestamp`, ...).
    case type(String)
    case message(CELMessage)

    /// The runtime type name, as `type(x)` reports it.
    public var typeName: String {
        switch self {
        case .null: "null_type"
        case .bool: "bool"
        case .int: "int"
        case .uint: "uint"
        case .double: "double"
        case .string: "string"
        case .bytes: "bytes"
        case .list: "list"
        case .map: "map"
        case .timestamp: "google.protobuf.Timestamp"
        case .duration: "google.protobuf.Duration"
        case .type: "type"
        case .message(let message): message.typeName
        }
    }

    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }
}

/// A CEL evaluation error: the value of an expression that has none. `&&`, `||`, `?:` and
/// the `all` / `exists` macros absorb it where the spec says so.
public struct CELError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case noMatchingOverload = "no_matching_overload"
        case divisionByZero = "division_by_zero"
        case overflow
        case outOfRange = "out_of_range"
        case noSuchKey = "no_such_key"
        case noSuchField = "no_such_field"
        case invalidArgument = "invalid_argument"
        case undeclaredReference = "undeclared_reference"
        case unknownFunction = "unknown_function"
        case costLimitExceeded = "cost_limit_exceeded"
        case conversion
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }

    static func noOverload(_ function: String, _ args: [CELValue]) -> CELError {
        CELError(.noMatchingOverload, "no matching overload for '\(function)' applied to (\(args.map(\.typeName).joined(separator: ", ")))")
    }
}

/// A CEL map: keys are `bool`, `int`, `uint` or `string`; `int` and `uint` keys of equal value
/// are the same key (and a `double` with an integral value finds them). Iteration is in
/// insertion order.
public struct CELMap: Sendable {
    public private(set) var keys: [CELValue] = []
    public private(set) var values: [CELValue] = []
    private var index: [Key: Int] = [:]

    enum Key: Hashable {
        case bool(Bool)
        case int(Int64)
        /// Only values past Int64.max; smaller ones are `.int`.
        case uint(UInt64)
        case string(String)

        init?(_ value: CELValue) {
            switch value {
            case .bool(let b): self = .bool(b)
            case .int(let i): self = .int(i)
            case .uint(let u): self = u <= UInt64(Int64.max) ? .int(Int64(u)) : .uint(u)
            case .string(let s): self = .string(s)
            default: return nil
            }
        }

        /// A key for looking up with a number of any numeric type.
        init?(lookup value: CELValue) {
            if case .double(let d) = value {
                if d.rounded() == d, d >= -9.223372036854775808e18, d < 9.223372036854775808e18 {
                    self = .int(Int64(d))
                } else if d.rounded() == d, d >= 0, d < 1.8446744073709551616e19 {
                    self = .uint(UInt64(d))
                } else {
                    return nil
                }
                return
            }
            self.init(value)
        }
    }

    public init() {}

    public var count: Int { keys.count }

    /// Adds an entry; false if the key is already there or not a valid key type.
    @discardableResult
    public mutating func insert(_ key: CELValue, _ value: CELValue) -> Bool {
        guard let normalized = Key(key), index[normalized] == nil else { return false }
        index[normalized] = keys.count
        keys.append(key)
        values.append(value)
        return true
    }

    public subscript(key: CELValue) -> CELValue? {
        guard let normalized = Key(lookup: key), let position = index[normalized] else { return nil }
        return values[position]
    }

    public subscript(string key: String) -> CELValue? {
        guard let position = index[.string(key)] else { return nil }
        return values[position]
    }

    static func isValidKey(_ value: CELValue) -> Bool { Key(value) != nil }
}

/// A point in time: seconds since the Unix epoch and nanoseconds, in CEL's range
/// (0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z).
public struct CELTimestamp: Sendable, Hashable, Comparable {
    public static let minSeconds: Int64 = -62_135_596_800
    public static let maxSeconds: Int64 = 253_402_300_799

    public var seconds: Int64
    public var nanos: Int32

    public init(seconds: Int64, nanos: Int32) {
        self.seconds = seconds
        self.nanos = nanos
    }

    /// Checked against CEL's range.
    static func make(seconds: Int64, nanos: Int64) throws(CELError) -> CELTimestamp {
        var (s, n) = (seconds, nanos)
        s = s.addingReportingOverflow(n / 1_000_000_000).partialValue
        n %= 1_000_000_000
        if n < 0 {
            n += 1_000_000_000
            s -= 1
        }
        guard s >= minSeconds, s <= maxSeconds else { throw CELError(.outOfRange, "timestamp out of range") }
        return CELTimestamp(seconds: s, nanos: Int32(n))
    }

    public static func < (lhs: CELTimestamp, rhs: CELTimestamp) -> Bool {
        (lhs.seconds, lhs.nanos) < (rhs.seconds, rhs.nanos)
    }
}

/// A signed span of time, within ±10,000 years (±315,576,000,000 s).
public struct CELDuration: Sendable, Hashable, Comparable {
    public static let maxSeconds: Int64 = 315_576_000_000

    public var seconds: Int64
    /// Same sign as `seconds` (or zero).
    public var nanos: Int32

    public init(seconds: Int64, nanos: Int32) {
        self.seconds = seconds
        self.nanos = nanos
    }

    static func make(seconds: Int64, nanos: Int64) throws(CELError) -> CELDuration {
        var (s, n) = (seconds, nanos)
        let (carried, overflow) = s.addingReportingOverflow(n / 1_000_000_000)
        guard !overflow else { throw CELError(.outOfRange, "duration out of range") }
        s = carried
        n %= 1_000_000_000
        if s > 0, n < 0 {
            n += 1_000_000_000
            s -= 1
        } else if s < 0, n > 0 {
            n -= 1_000_000_000
            s += 1
        }
        guard s >= -maxSeconds, s <= maxSeconds else { throw CELError(.outOfRange, "duration out of range") }
        return CELDuration(seconds: s, nanos: Int32(n))
    }

    /// Total nanoseconds, if they fit in 64 bits.
    var totalNanos: Int64? {
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow else { return nil }
        let (sum, overflow2) = product.addingReportingOverflow(Int64(nanos))
        return overflow2 ? nil : sum
    }

    public static func < (lhs: CELDuration, rhs: CELDuration) -> Bool {
        (lhs.seconds, lhs.nanos) < (rhs.seconds, rhs.nanos)
    }
}

/// An instance of a declared message type: the fields that were set. Unset fields read as
/// their type's default.
public struct CELMessage: Sendable {
    public var typeName: String
    public var fields: [String: CELValue]

    public init(typeName: String, fields: [String: CELValue]) {
        self.typeName = typeName
        self.fields = fields
    }
}
