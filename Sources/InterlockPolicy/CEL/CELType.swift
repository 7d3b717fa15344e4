/// A CEL type, as the checker reasons about it.
public indirect enum CELType: Hashable, Sendable, CustomStringConvertible {
    case dyn
    case null
    case bool
    case int
    case uint
    case double
    case string
    case bytes
    case timestamp
    case duration
    case list(CELType)
    case map(CELType, CELType)
    /// The type of a type value: `type(int)` is the type of `int`.
    case type(CELType)
    case message(String)
    /// A protobuf wrapper (`google.protobuf.Int64Value`, ...): the primitive, or null.
    case wrapper(CELType)
    /// `google.protobuf.Any`.
    case any
    /// A type parameter of an overload signature, or a free type variable while checking.
    case param(String)
    /// An abstract type with type parameters (declared by an environment's functions).
    case opaque(String, [CELType])
    case error

    public var description: String {
        switch self {
        case .dyn: "dyn"
        case .null: "null_type"
        case .bool: "bool"
        case .int: "int"
        case .uint: "uint"
        case .double: "double"
        case .string: "string"
        case .bytes: "bytes"
        case .timestamp: "google.protobuf.Timestamp"
        case .duration: "google.protobuf.Duration"
        case .list(let element): "list(\(element))"
        case .map(let key, let value): "map(\(key), \(value))"
        case .type(let of): "type(\(of))"
        case .message(let name): name
        case .wrapper(let primitive): "wrapper(\(primitive))"
        case .any: "google.protobuf.Any"
        case .param(let name): name
        case .opaque(let name, let params): params.isEmpty ? name : "\(name)(\(params.map(\.description).joined(separator: ", ")))"
        case .error: "*error*"
        }
    }

    /// The runtime name of values of this type (what `type(x)` of such a value returns).
    var runtimeName: String {
        switch self {
        case .list: "list"
        case .map: "map"
        case .type: "type"
        case .wrapper(let primitive): primitive.runtimeName
        case .opaque(let name, _): name
        default: description
        }
    }

    /// The types a bare identifier names (`int`, `list`, ...).
    static let builtinTypeNames: [String: CELType] = [
        "int": .int, "uint": .uint, "double": .double, "bool": .bool, "string": .string, "bytes": .bytes, "null_type": .null,
        "list": .list(.dyn), "map": .map(.dyn, .dyn), "type": .type(.dyn),
        "google.protobuf.Timestamp": .timestamp, "google.protobuf.Duration": .duration,
    ]

    /// The protobuf well-known types CEL maps onto its own values.
    static let wellKnown: [String: CELType] = [
        "google.protobuf.BoolValue": .wrapper(.bool), "google.protobuf.BytesValue": .wrapper(.bytes),
        "google.protobuf.DoubleValue": .wrapper(.double), "google.protobuf.FloatValue": .wrapper(.double),
        "google.protobuf.Int32Value": .wrapper(.int), "google.protobuf.Int64Value": .wrapper(.int),
        "google.protobuf.UInt32Value": .wrapper(.uint), "google.protobuf.UInt64Value": .wrapper(.uint),
        "google.protobuf.StringValue": .wrapper(.string), "google.protobuf.Value": .dyn,
        "google.protobuf.Struct": .map(.string, .dyn), "google.protobuf.ListValue": .list(.dyn),
        "google.protobuf.Timestamp": .timestamp, "google.protobuf.Duration": .duration, "google.protobuf.Any": .any,
    ]
}

/// A declared message type: its fields and their types. CEL policy inputs are declared as
/// messages so that the checker catches a misspelt field.
public struct CELMessageType: Sendable {
    public struct Field: Sendable {
        public var type: CELType
        /// Whether `has()` distinguishes "set to the default" from "not set" (proto2 scalars,
        /// messages, wrappers); otherwise a field is present when it is not the default.
        public var hasPresence: Bool
        public var defaultValue: CELValue?

        public init(_ type: CELType, hasPresence: Bool = false, defaultValue: CELValue? = nil) {
            self.type = type
            self.hasPresence = hasPresence
            self.defaultValue = defaultValue
        }
    }

    public var name: String
    public var fields: [String: Field]

    public init(name: String, fields: [String: Field]) {
        self.name = name
        self.fields = fields
    }
}

/// What an expression may refer to: its variables and their types, the message types it may
/// construct or read, the container names resolve in, and the evaluation cost limit.
public struct CELEnvironment: Sendable {
    public var container: String
    public var variables: [String: CELType]
    public var messageTypes: [String: CELMessageType]
    /// Functions beyond the standard library, for the checker.
    public var functions: [String: [CELOverload]] = [:]
    /// Evaluation stops with an error past this many steps (function calls, loop iterations,
    /// elements built).
    public var costLimit: Int

    public init(container: String = "", variables: [String: CELType] = [:], messageTypes: [String: CELMessageType] = [:], costLimit: Int = 1_000_000) {
        self.container = container
        self.variables = variables
        self.messageTypes = messageTypes
        self.costLimit = costLimit
    }

    /// The names `name` may stand for in the container, most specific first (cel-spec name
    /// resolution); a leading `.` means only the name itself.
    func candidates(_ name: String) -> [String] {
        if name.hasPrefix(".") { return [String(name.dropFirst())] }
        var result: [String] = []
        var prefix = container
        while !prefix.isEmpty {
            result.append(prefix + "." + name)
            if let dot = prefix.lastIndex(of: ".") { prefix = String(prefix[..<dot]) } else { prefix = "" }
        }
        result.append(name)
        return result
    }

    /// The type a (possibly qualified) type name refers to.
    func resolveType(_ name: String) -> (String, CELType)? {
        for candidate in candidates(name) {
            if messageTypes[candidate] != nil { return (candidate, .message(candidate)) }
            if let known = CELType.wellKnown[candidate] { return (candidate, known) }
        }
        let bare = name.hasPrefix(".") ? String(name.dropFirst()) : name
        if let builtin = CELType.builtinTypeNames[bare] { return (bare, builtin) }
        return nil
    }

    /// The type a name refers to in this environment's container, if it names one.
    public func knownType(_ name: String) -> CELType? { resolveType(name)?.1 }

    /// CEL equality (`==`): numbers compare by value across int, uint and double.
    public func isEqual(_ a: CELValue, _ b: CELValue) -> Bool { CELOperators.equals(a, b, self) }

    /// The default a field reads as when unset.
    func defaultValue(of field: CELMessageType.Field) -> CELValue {
        if let value = field.defaultValue { return value }
        switch field.type {
        case .bool: return .bool(false)
        case .int: return .int(0)
        case .uint: return .uint(0)
        case .double: return .double(0)
        case .string: return .string("")
        case .bytes: return .bytes([])
        case .list: return .list([])
        case .map: return .map(CELMap())
        case .timestamp: return .timestamp(CELTimestamp(seconds: 0, nanos: 0))
        case .duration: return .duration(CELDuration(seconds: 0, nanos: 0))
        case .message(let name): return .message(CELMessage(typeName: name, fields: [:]))
        default: return .null
        }
    }
}
