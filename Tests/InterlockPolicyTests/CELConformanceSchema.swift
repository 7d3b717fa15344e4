import InterlockPolicy

/// The message types the conformance cases construct (cel-spec's `test_all_types.proto`, in
/// its proto2 and proto3 packages), declared as CEL message types.
extension CELConformance {
    static let messageTypes: [String: CELMessageType] = {
        var types: [String: CELMessageType] = [:]
        for package in ["cel.expr.conformance.proto2", "cel.expr.conformance.proto3"] {
            let proto2 = package.hasSuffix("proto2")
            let all = package + ".TestAllTypes"
            let nested = all + ".NestedMessage"
            let nestedAll = package + ".NestedTestAllTypes"
            func field(_ type: CELType, _ default2: CELValue? = nil) -> CELMessageType.Field {
                CELMessageType.Field(type, hasPresence: proto2 || isMessageLike(type), defaultValue: proto2 ? default2 : nil)
            }
            var fields: [String: CELMessageType.Field] = [
                "single_int32": field(.int, .int(-32)), "single_int64": field(.int, .int(-64)), "single_uint32": field(.uint, .uint(32)),
                "single_uint64": field(.uint, .uint(64)), "single_sint32": field(.int), "single_sint64": field(.int), "single_fixed32": field(.uint),
                "single_fixed64": field(.uint), "single_sfixed32": field(.int), "single_sfixed64": field(.int), "single_float": field(.double, .double(3)),
                "single_double": field(.double, .double(6.4)), "single_bool": field(.bool, .bool(true)), "single_string": field(.string, .string("empty")),
                "single_bytes": field(.bytes, .bytes(Array("none".utf8))), "optional_bool": CELMessageType.Field(.bool, hasPresence: true),
                "optional_string": CELMessageType.Field(.string, hasPresence: true),
                "single_any": field(.any), "single_duration": field(.duration), "single_timestamp": field(.timestamp),
                "single_struct": field(.map(.string, .dyn)), "single_value": field(.dyn), "list_value": field(.list(.dyn)), "null_value": field(.null),
                "optional_null_value": CELMessageType.Field(.null, hasPresence: true),
                "single_nested_message": CELMessageType.Field(.message(nested), hasPresence: true),
                "single_nested_enum": CELMessageType.Field(.int, hasPresence: true, defaultValue: proto2 ? .int(1) : nil),
                "standalone_message": field(.message(nested)), "standalone_enum": field(.int),
                "oneof_type": CELMessageType.Field(.message(nestedAll), hasPresence: true),
                "oneof_msg": CELMessageType.Field(.message(nested), hasPresence: true), "oneof_bool": CELMessageType.Field(.bool, hasPresence: true),
                "repeated_nested_message": field(.list(.message(nested))), "repeated_nested_enum": field(.list(.int)),
                "repeated_string_piece": field(.list(.string)), "repeated_cord": field(.list(.string)), "repeated_lazy_message": field(.list(.message(nested))),
                "repeated_any": field(.list(.any)), "repeated_duration": field(.list(.duration)), "repeated_timestamp": field(.list(.timestamp)),
                "repeated_struct": field(.list(.map(.string, .dyn))), "repeated_value": field(.list(.dyn)), "repeated_list_value": field(.list(.list(.dyn))),
                "repeated_null_value": field(.list(.null)), "map_int64_nested_type": field(.map(.int, .message(nestedAll))),
                "field_mask": field(.message("google.protobuf.FieldMask")), "empty": field(.message("google.protobuf.Empty")),
            ]
            let wrappers: [(String, CELType)] = [
                ("int64", .int), ("int32", .int), ("double", .double), ("float", .double), ("uint64", .uint), ("uint32", .uint), ("string", .string),
                ("bool", .bool), ("bytes", .bytes),
            ]
            for (name, primitive) in wrappers {
                fields["single_\(name)_wrapper"] = field(.wrapper(primitive))
                fields["repeated_\(name)_wrapper"] = field(.list(.wrapper(primitive)))
            }
            let scalars: [(String, CELType)] = [
                ("int32", .int), ("int64", .int), ("uint32", .uint), ("uint64", .uint), ("sint32", .int), ("sint64", .int), ("fixed32", .uint),
                ("fixed64", .uint), ("sfixed32", .int), ("sfixed64", .int), ("float", .double), ("double", .double), ("bool", .bool),
                ("string", .string), ("bytes", .bytes),
            ]
            for (name, type) in scalars { fields["repeated_\(name)"] = field(.list(type)) }
            let keys: [(String, CELType)] = [("bool", .bool), ("string", .string), ("int32", .int), ("int64", .int), ("uint32", .uint), ("uint64", .uint)]
            var values: [(String, CELType)] = scalars.filter { !$0.0.hasPrefix("s") && !$0.0.hasPrefix("fixed") }
            values += [
                ("enum", .int), ("message", .message(nested)), ("duration", .duration), ("timestamp", .timestamp), ("null_value", .null), ("any", .any),
                ("struct", .map(.string, .dyn)), ("value", .dyn), ("list_value", .list(.dyn)),
            ]
            values += wrappers.map { ("\($0.0)_wrapper", .wrapper($0.1)) }
            for (keyName, keyType) in keys {
                for (valueName, valueType) in values { fields["map_\(keyName)_\(valueName)"] = field(.map(keyType, valueType)) }
            }
            for keyword in ["as", "break", "const", "continue", "else", "for", "function", "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"] {
                fields[keyword] = field(.bool)
            }
            types[all] = CELMessageType(name: all, fields: fields)
            types[nested] = CELMessageType(name: nested, fields: ["bb": field(.int)])
            types[nestedAll] = CELMessageType(
                name: nestedAll,
                fields: ["child": CELMessageType.Field(.message(nestedAll), hasPresence: true), "payload": CELMessageType.Field(.message(all), hasPresence: true)])
        }
        types["google.protobuf.FieldMask"] = CELMessageType(name: "google.protobuf.FieldMask", fields: ["paths": CELMessageType.Field(.list(.string))])
        types["google.protobuf.Empty"] = CELMessageType(name: "google.protobuf.Empty", fields: [:])
        return types
    }()

    private static func isMessageLike(_ type: CELType) -> Bool {
        switch type {
        case .message, .wrapper, .any, .timestamp, .duration, .dyn: true
        case .map(.string, .dyn): true
        default: false
        }
    }
}
