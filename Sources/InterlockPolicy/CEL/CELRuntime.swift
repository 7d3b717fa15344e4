enum CELLoopStep {
    case next
    case stop
}

/// Field access, presence tests, message construction and iteration.
enum CELRuntime {
    /// Runs `body` once per element (list) or key (map); with two variables, index and
    /// element or key and value. True if the body stopped the loop.
    static func iterate(
        _ range: CELValue, _ activation: CELActivation, _ slot: Int, _ slot2: Int?, _ body: () throws(CELError) -> CELLoopStep
    ) throws(CELError) -> Bool {
        switch range {
        case .list(let items):
            for (index, item) in items.enumerated() {
                try activation.spend(1)
                if let slot2 {
                    activation.locals[slot] = .int(Int64(index))
                    activation.locals[slot2] = item
                } else {
                    activation.locals[slot] = item
                }
                if try body() == .stop { return true }
            }
        case .map(let map):
            for (key, value) in zip(map.keys, map.values) {
                try activation.spend(1)
                activation.locals[slot] = key
                if let slot2 { activation.locals[slot2] = value }
                if try body() == .stop { return true }
            }
        default:
            throw CELError.noOverload("comprehension", [range])
        }
        return false
    }

    static func select(_ value: CELValue, _ field: String, _ env: CELEnvironment) throws(CELError) -> CELValue {
        switch value {
        case .map(let map):
            guard let found = map[string: field] else { throw CELError(.noSuchKey, "no such key: '\(field)'") }
            return found
        case .message(let message):
            if let set = message.fields[field] { return set }
            guard let declaration = env.messageTypes[message.typeName]?.fields[field] else {
                throw CELError(.noSuchField, "no such field '\(field)' in \(message.typeName)")
            }
            return env.defaultValue(of: declaration)
        default:
            throw CELError(.noMatchingOverload, "type '\(value.typeName)' does not support field selection")
        }
    }

    static func has(_ value: CELValue, _ field: String, _ env: CELEnvironment) throws(CELError) -> CELValue {
        switch value {
        case .map(let map):
            return .bool(map[string: field] != nil)
        case .message(let message):
            guard let declaration = env.messageTypes[message.typeName]?.fields[field] else {
                throw CELError(.noSuchField, "no such field '\(field)' in \(message.typeName)")
            }
            guard let set = message.fields[field] else { return .bool(false) }
            if declaration.hasPresence { return .bool(true) }
            return .bool(!CELOperators.equals(set, env.defaultValue(of: declaration), env) || isMessage(declaration.type))
        default:
            throw CELError(.noMatchingOverload, "type '\(value.typeName)' does not support field presence tests")
        }
    }

    private static func isMessage(_ type: CELType) -> Bool {
        if case .message = type { return true }
        return false
    }

    /// A value stored in a message field of the declared type.
    static func assign(_ value: CELValue, to field: CELMessageType.Field, field name: String) throws(CELError) -> CELValue {
        switch (field.type, value) {
        case (.dyn, _), (.wrapper, .null), (.any, _): return value
        case (_, .null):
            if case .message = field.type { return value }
            throw CELError(.invalidArgument, "unsupported field type: null for field '\(name)'")
        default: return value
        }
    }

    /// A protobuf well-known type built from its fields: CEL represents it as the plain value.
    static func wellKnown(_ name: String, _ fields: [String: CELValue]) throws(CELError) -> CELValue {
        switch CELType.wellKnown[name] {
        case .wrapper(let primitive)?:
            if let value = fields["value"] { return value }
            switch primitive {
            case .bool: return .bool(false)
            case .int: return .int(0)
            case .uint: return .uint(0)
            case .double: return .double(0)
            case .string: return .string("")
            default: return .bytes([])
            }
        case .timestamp?:
            let (seconds, nanos) = secondsAndNanos(fields)
            return .timestamp(try CELTimestamp.make(seconds: seconds, nanos: nanos))
        case .duration?:
            let (seconds, nanos) = secondsAndNanos(fields)
            return .duration(try CELDuration.make(seconds: seconds, nanos: nanos))
        case .map?:
            return fields["fields"] ?? .map(CELMap())
        case .list?:
            return fields["values"] ?? .list([])
        case .dyn?:
            // google.protobuf.Value: whichever kind is set.
            for kind in ["null_value", "number_value", "string_value", "bool_value", "struct_value", "list_value"] {
                if let value = fields[kind] { return kind == "null_value" ? .null : value }
            }
            return .null
        default:
            throw CELError(.invalidArgument, "cannot construct '\(name)'")
        }
    }

    private static func secondsAndNanos(_ fields: [String: CELValue]) -> (Int64, Int64) {
        var seconds: Int64 = 0
        var nanos: Int64 = 0
        if case .int(let value)? = fields["seconds"] { seconds = value }
        if case .int(let value)? = fields["nanos"] { nanos = value }
        return (seconds, nanos)
    }
}
