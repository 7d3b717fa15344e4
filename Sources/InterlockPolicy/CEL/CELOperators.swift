/// CEL's equality, ordering and arithmetic.
enum CELOperators {
    // MARK: Equality (heterogeneous: numbers compare by value across int, uint and double)

    static func equals(_ a: CELValue, _ b: CELValue, _ env: CELEnvironment? = nil) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.int, .int), (.int, .uint), (.int, .double), (.uint, .int), (.uint, .uint), (.uint, .double), (.double, .int), (.double, .uint),
            (.double, .double):
            return compareNumbers(a, b) == 0
        case (.string(let x), .string(let y)): return x.utf8.elementsEqual(y.utf8)
        case (.bytes(let x), .bytes(let y)): return x == y
        case (.list(let x), .list(let y)):
            guard x.count == y.count else { return false }
            for index in x.indices where !equals(x[index], y[index], env) { return false }
            return true
        case (.map(let x), .map(let y)):
            guard x.count == y.count else { return false }
            for (key, value) in zip(x.keys, x.values) {
                guard let other = y[key], equals(value, other, env) else { return false }
            }
            return true
        case (.timestamp(let x), .timestamp(let y)): return x == y
        case (.duration(let x), .duration(let y)): return x == y
        case (.type(let x), .type(let y)): return x == y
        case (.message(let x), .message(let y)):
            guard x.typeName == y.typeName else { return false }
            let declared = env?.messageTypes[x.typeName]
            for name in Set(x.fields.keys).union(y.fields.keys) {
                let fallback = declared?.fields[name].map { env!.defaultValue(of: $0) } ?? .null
                if !equals(x.fields[name] ?? fallback, y.fields[name] ?? fallback, env) { return false }
            }
            return true
        default: return false
        }
    }

    /// -1, 0 or 1; nil when unordered (NaN).
    static func compareNumbers(_ a: CELValue, _ b: CELValue) -> Int? {
        switch (a, b) {
        case (.int(let x), .int(let y)): return x < y ? -1 : (x > y ? 1 : 0)
        case (.uint(let x), .uint(let y)): return x < y ? -1 : (x > y ? 1 : 0)
        case (.int(let x), .uint(let y)): return x < 0 ? -1 : compare(UInt64(x), y)
        case (.uint(let x), .int(let y)): return y < 0 ? 1 : compare(x, UInt64(y))
        case (.double(let x), .double(let y)):
            if x.isNaN || y.isNaN { return nil }
            return x < y ? -1 : (x > y ? 1 : 0)
        case (.double(let x), .int(let y)): return compareDouble(x, int: y)
        case (.int(let x), .double(let y)): return compareDouble(y, int: x).map { -$0 }
        case (.double(let x), .uint(let y)): return compareDouble(x, uint: y)
        case (.uint(let x), .double(let y)): return compareDouble(y, uint: x).map { -$0 }
        default: return nil
        }
    }

    private static func compare<T: Comparable>(_ x: T, _ y: T) -> Int { x < y ? -1 : (x > y ? 1 : 0) }

    /// An integer compared with a double is converted to double first (as other CEL
    /// implementations do, so `dyn(9223372036854775807) < 9223372036854775808.0` is false).
    private static func compareDouble(_ d: Double, int i: Int64) -> Int? {
        if d.isNaN { return nil }
        let other = Double(i)
        return d < other ? -1 : (d > other ? 1 : 0)
    }

    private static func compareDouble(_ d: Double, uint u: UInt64) -> Int? {
        if d.isNaN { return nil }
        let other = Double(u)
        return d < other ? -1 : (d > other ? 1 : 0)
    }

    /// Ordering for `<`, `<=`, `>`, `>=`: nil for a NaN operand (every comparison is false),
    /// an error for types without an order.
    static func order(_ a: CELValue, _ b: CELValue, _ function: String) throws(CELError) -> Int? {
        switch (a, b) {
        case (.int, .int), (.int, .uint), (.int, .double), (.uint, .int), (.uint, .uint), (.uint, .double), (.double, .int), (.double, .uint),
            (.double, .double):
            return compareNumbers(a, b)
        case (.string(let x), .string(let y)):
            if x.utf8.elementsEqual(y.utf8) { return 0 }
            return x.utf8.lexicographicallyPrecedes(y.utf8) ? -1 : 1
        case (.bytes(let x), .bytes(let y)):
            if x == y { return 0 }
            return x.lexicographicallyPrecedes(y) ? -1 : 1
        case (.bool(let x), .bool(let y)): return x == y ? 0 : (!x ? -1 : 1)
        case (.timestamp(let x), .timestamp(let y)): return compare(x, y)
        case (.duration(let x), .duration(let y)): return compare(x, y)
        default: throw CELError.noOverload(function, [a, b])
        }
    }

    // MARK: Arithmetic

    static func add(_ a: CELValue, _ b: CELValue) throws(CELError) -> CELValue {
        switch (a, b) {
        case (.int(let x), .int(let y)):
            let (sum, overflow) = x.addingReportingOverflow(y)
            if overflow { throw CELError(.overflow, "integer overflow in addition") }
            return .int(sum)
        case (.uint(let x), .uint(let y)):
            let (sum, overflow) = x.addingReportingOverflow(y)
            if overflow { throw CELError(.overflow, "unsigned integer overflow in addition") }
            return .uint(sum)
        case (.double(let x), .double(let y)): return .double(x + y)
        case (.string(let x), .string(let y)): return .string(x + y)
        case (.bytes(let x), .bytes(let y)): return .bytes(x + y)
        case (.list(let x), .list(let y)): return .list(x + y)
        case (.duration(let x), .duration(let y)): return .duration(try CELDuration.make(seconds: x.seconds &+ y.seconds, nanos: Int64(x.nanos) + Int64(y.nanos)))
        case (.timestamp(let t), .duration(let d)), (.duration(let d), .timestamp(let t)):
            let (seconds, overflow) = t.seconds.addingReportingOverflow(d.seconds)
            if overflow { throw CELError(.outOfRange, "timestamp out of range") }
            return .timestamp(try CELTimestamp.make(seconds: seconds, nanos: Int64(t.nanos) + Int64(d.nanos)))
        default: throw CELError.noOverload("_+_", [a, b])
        }
    }

    static func subtract(_ a: CELValue, _ b: CELValue) throws(CELError) -> CELValue {
        switch (a, b) {
        case (.int(let x), .int(let y)):
            let (difference, overflow) = x.subtractingReportingOverflow(y)
            if overflow { throw CELError(.overflow, "integer overflow in subtraction") }
            return .int(difference)
        case (.uint(let x), .uint(let y)):
            let (difference, overflow) = x.subtractingReportingOverflow(y)
            if overflow { throw CELError(.overflow, "unsigned integer overflow in subtraction") }
            return .uint(difference)
        case (.double(let x), .double(let y)): return .double(x - y)
        case (.duration(let x), .duration(let y)):
            return .duration(try CELDuration.make(seconds: x.seconds &- y.seconds, nanos: Int64(x.nanos) - Int64(y.nanos)))
        case (.timestamp(let t), .duration(let d)):
            let (seconds, overflow) = t.seconds.subtractingReportingOverflow(d.seconds)
            if overflow { throw CELError(.outOfRange, "timestamp out of range") }
            return .timestamp(try CELTimestamp.make(seconds: seconds, nanos: Int64(t.nanos) - Int64(d.nanos)))
        case (.timestamp(let x), .timestamp(let y)):
            let difference = try CELDuration.make(seconds: x.seconds - y.seconds, nanos: Int64(x.nanos) - Int64(y.nanos))
            // The difference must fit in 64-bit nanoseconds (about 292 years), as in other implementations.
            guard difference.totalNanos != nil else { throw CELError(.outOfRange, "timestamp difference out of range") }
            return .duration(difference)
        default: throw CELError.noOverload("_-_", [a, b])
        }
    }

    static func multiply(_ a: CELValue, _ b: CELValue) throws(CELError) -> CELValue {
        switch (a, b) {
        case (.int(let x), .int(let y)):
            let (product, overflow) = x.multipliedReportingOverflow(by: y)
            if overflow { throw CELError(.overflow, "integer overflow in multiplication") }
            return .int(product)
        case (.uint(let x), .uint(let y)):
            let (product, overflow) = x.multipliedReportingOverflow(by: y)
            if overflow { throw CELError(.overflow, "unsigned integer overflow in multiplication") }
            return .uint(product)
        case (.double(let x), .double(let y)): return .double(x * y)
        default: throw CELError.noOverload("_*_", [a, b])
        }
    }

    static func divide(_ a: CELValue, _ b: CELValue) throws(CELError) -> CELValue {
        switch (a, b) {
        case (.int(let x), .int(let y)):
            if y == 0 { throw CELError(.divisionByZero, "division by zero") }
            let (quotient, overflow) = x.dividedReportingOverflow(by: y)
            if overflow { throw CELError(.overflow, "integer overflow in division") }
            return .int(quotient)
        case (.uint(let x), .uint(let y)):
            if y == 0 { throw CELError(.divisionByZero, "division by zero") }
            return .uint(x / y)
        case (.double(let x), .double(let y)): return .double(x / y)
        default: throw CELError.noOverload("_/_", [a, b])
        }
    }

    static func modulo(_ a: CELValue, _ b: CELValue) throws(CELError) -> CELValue {
        switch (a, b) {
        case (.int(let x), .int(let y)):
            if y == 0 { throw CELError(.divisionByZero, "modulus by zero") }
            let (remainder, overflow) = x.remainderReportingOverflow(dividingBy: y)
            if overflow { throw CELError(.overflow, "integer overflow in modulus") }
            return .int(remainder)
        case (.uint(let x), .uint(let y)):
            if y == 0 { throw CELError(.divisionByZero, "modulus by zero") }
            return .uint(x % y)
        default: throw CELError.noOverload("_%_", [a, b])
        }
    }

    static func negate(_ a: CELValue) throws(CELError) -> CELValue {
        switch a {
        case .int(let x):
            if x == .min { throw CELError(.overflow, "integer overflow in negation") }
            return .int(-x)
        case .double(let x): return .double(-x)
        case .duration(let d): return .duration(try CELDuration.make(seconds: -d.seconds, nanos: -Int64(d.nanos)))
        default: throw CELError.noOverload("-_", [a])
        }
    }

    /// `x in list` (by equality) and `key in map`.
    static func contains(_ element: CELValue, in container: CELValue, _ env: CELEnvironment?) throws(CELError) -> Bool {
        switch container {
        case .list(let items): return items.contains { equals($0, element, env) }
        case .map(let map): return map[element] != nil
        default: throw CELError.noOverload("@in", [element, container])
        }
    }

    /// `a[i]`.
    static func index(_ container: CELValue, _ key: CELValue) throws(CELError) -> CELValue {
        switch container {
        case .list(let items):
            let position: Int64
            switch key {
            case .int(let i): position = i
            case .uint(let u): position = u > UInt64(Int64.max) ? .max : Int64(u)
            case .double(let d) where d.rounded() == d && abs(d) < 9.2e18: position = Int64(d)
            default: throw CELError.noOverload("_[_]", [container, key])
            }
            guard position >= 0, position < items.count else { throw CELError(.outOfRange, "index out of range: \(position)") }
            return items[Int(position)]
        case .map(let map):
            switch key {
            case .bool, .int, .uint, .string, .double: break
            default: throw CELError.noOverload("_[_]", [container, key])
            }
            guard let value = map[key] else { throw CELError(.noSuchKey, "no such key: \(CELFormat.describe(key))") }
            return value
        default: throw CELError.noOverload("_[_]", [container, key])
        }
    }
}
