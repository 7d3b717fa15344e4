import Foundation
import InterlockPolicy

/// Runs the official CEL conformance cases (google/cel-spec `tests/simple/testdata`, as JSON
/// under `tests/conformance/cel-spec/`) against our engine.
enum CELConformance {
    /// Files about protobuf messages and extension libraries: beyond a policy engine over
    /// JSON data. Everything else is in scope.
    static let outOfScope: [String: String] = [
        "bindings_ext.json": "extension library (cel.bind)",
        "block_ext.json": "extension library (cel.block)",
        "encoders_ext.json": "extension library (base64)",
        "math_ext.json": "extension library (math)",
        "network_ext.json": "extension library (net)",
        "optionals.json": "extension library (optional types)",
        "string_ext.json": "extension library (strings)",
        "proto2.json": "protobuf messages",
        "proto2_ext.json": "protobuf extensions",
        "proto3.json": "protobuf messages",
        "wrappers.json": "protobuf wrapper messages",
        "dynamic.json": "protobuf messages (google.protobuf.Any, Struct, Value)",
        "enums.json": "protobuf enums",
        "unknowns.json": "partial evaluation (unknowns)",
    ]

    struct FileResult {
        var file: String
        var passed = 0
        var total = 0
        var failures: [String] = []
    }

    static var directory: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../tests/conformance/cel-spec").standardized
    }

    static func runAll() throws -> [FileResult] {
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".json") }.sorted()
        return try files.map { try run(file: $0) }
    }

    static func run(file: String) throws -> FileResult {
        let data = try Data(contentsOf: directory.appendingPathComponent(file))
        var result = FileResult(file: file)
        guard let root = try JSONSerialization.jsonObject(with: data) as? [String: Any] else { return result }
        for section in root["section"] as? [[String: Any]] ?? [] {
            for test in section["test"] as? [[String: Any]] ?? [] {
                result.total += 1
                let name = "\(section["name"] ?? "")/\(test["name"] ?? "")"
                switch runCase(test) {
                case nil: result.passed += 1
                case let reason?: result.failures.append("\(name): \(reason)")
                }
            }
        }
        return result
    }

    /// nil when the case passes, else why not.
    static func runCase(_ test: [String: Any]) -> String? {
        let expression = test["expr"] as? String ?? ""
        var environment = CELEnvironment(container: test["container"] as? String ?? "", messageTypes: messageTypes)
        for entry in test["type_env"] as? [[String: Any]] ?? [] {
            guard let name = entry["name"] as? String else { continue }
            if let ident = entry["ident"] as? [String: Any] {
                environment.variables[name] = decodeType(ident["type"] as? [String: Any] ?? [:])
            }
            for overload in (entry["function"] as? [String: Any])?["overloads"] as? [[String: Any]] ?? [] {
                let params = (overload["params"] as? [[String: Any]] ?? []).map(decodeType)
                environment.functions[name, default: []].append(CELOverload(
                    overload["overload_id"] as? String ?? name, receiver: overload["is_instance_function"] as? Bool ?? false, params,
                    decodeType(overload["result_type"] as? [String: Any] ?? [:])))
            }
        }
        var bindings: [String: CELValue] = [:]
        for (name, binding) in test["bindings"] as? [String: Any] ?? [:] {
            guard let value = (binding as? [String: Any])?["value"] as? [String: Any], let decoded = decodeValue(value) else {
                return "cannot decode binding \(name)"
            }
            bindings[name] = decoded
            if environment.variables[name] == nil { environment.variables[name] = .dyn }
        }
        let checking = test["disable_check"] as? Bool != true
        let program: CELProgram
        do {
            let node = try CELParser.parse(expression)
            if checking {
                var checker = CELChecker(environment: environment)
                let type = try checker.check(node, source: expression)
                if let typed = test["typed_result"] as? [String: Any], let deduced = typed["deduced_type"] as? [String: Any] {
                    let expected = decodeType(deduced)
                    if type != expected { return "checker deduced \(type), expected \(expected)" }
                }
            }
            if test["check_only"] as? Bool == true { return nil }
            program = try CELProgram(node, source: expression, environment: environment)
        } catch {
            if test["eval_error"] != nil, !checking { return nil }
            return "did not compile: \(error)"
        }
        let expected = (test["value"] as? [String: Any]) ?? ((test["typed_result"] as? [String: Any])?["result"] as? [String: Any])
        do {
            let actual = try program.evaluate(bindings)
            if test["eval_error"] != nil { return "expected an error, got \(actual)" }
            guard let expected else { return test["value"] == nil && test["eval_error"] == nil ? (actual.boolValue == true ? nil : "expected true, got \(actual)") : "cannot decode expected value" }
            guard let expectedValue = decodeValue(expected) else { return "cannot decode expected value" }
            return strictlyEqual(actual, expectedValue) ? nil : "expected \(expectedValue), got \(actual)"
        } catch {
            return test["eval_error"] != nil ? nil : "unexpected error: \(error)"
        }
    }

    // MARK: Decoding cel.expr.Value and cel.expr.Type

    static func decodeValue(_ json: [String: Any]) -> CELValue? {
        if json.keys.contains("null_value") { return .null }
        if let b = json["bool_value"] as? Bool { return .bool(b) }
        if let i = json["int64_value"] { return Int64("\(i)").map(CELValue.int) }
        if let u = json["uint64_value"] { return UInt64("\(u)").map(CELValue.uint) }
        if let d = json["double_value"] {
            if let n = d as? NSNumber { return .double(n.doubleValue) }
            switch d as? String {
            case "NaN": return .double(.nan)
            case "Infinity": return .double(.infinity)
            case "-Infinity": return .double(-.infinity)
            default: return nil
            }
        }
        if let s = json["string_value"] as? String { return .string(s) }
        if let b = json["bytes_value"] as? String { return Data(base64Encoded: b).map { .bytes(Array($0)) } }
        if json.keys.contains("list_value") {
            let list = json["list_value"] as? [String: Any] ?? [:]
            var items: [CELValue] = []
            for item in list["values"] as? [[String: Any]] ?? [] {
                guard let value = decodeValue(item) else { return nil }
                items.append(value)
            }
            return .list(items)
        }
        if json.keys.contains("map_value") {
            let map = json["map_value"] as? [String: Any] ?? [:]
            var result = CELMap()
            for entry in map["entries"] as? [[String: Any]] ?? [] {
                guard let key = (entry["key"] as? [String: Any]).flatMap(decodeValue), let value = (entry["value"] as? [String: Any]).flatMap(decodeValue) else {
                    return nil
                }
                result.insert(key, value)
            }
            return .map(result)
        }
        if let type = json["type_value"] as? String { return .type(type) }
        if let enumValue = json["enum_value"] as? [String: Any] { return .int(Int64("\(enumValue["value"] ?? 0)") ?? 0) }
        if let object = json["object_value"] as? [String: Any] { return decodeObject(object) }
        return nil
    }

    static func decodeObject(_ object: [String: Any]) -> CELValue? {
        guard let url = object["@type"] as? String else { return nil }
        let typeName = String(url.split(separator: "/").last ?? "")
        switch typeName {
        case "google.protobuf.Duration":
            guard let text = object["value"] as? String, text.hasSuffix("s") else { return nil }
            let parts = text.dropLast().split(separator: ".")
            let seconds = Int64(parts[0]) ?? 0
            var nanos: Int64 = 0
            if parts.count == 2 { nanos = Int64(parts[1].padding(toLength: 9, withPad: "0", startingAt: 0)) ?? 0 }
            return .duration(CELDuration(seconds: seconds, nanos: Int32(seconds < 0 ? -nanos : nanos)))
        case "google.protobuf.Timestamp":
            guard let text = object["value"] as? String, let program = try? CELProgram("timestamp('\(text)')") else { return nil }
            return try? program.evaluate([:])
        case _ where typeName.hasPrefix("google.protobuf."):
            guard let value = object["value"] else { return typeName.hasSuffix("Value") ? .null : nil }
            return jsonValue(value)
        default:
            guard let declared = messageTypes[typeName] else { return nil }
            var fields: [String: CELValue] = [:]
            for (name, raw) in object where name != "@type" {
                guard let field = declared.fields[name], let value = jsonValue(raw, as: field.type) else { return nil }
                fields[name] = value
            }
            return .message(CELMessage(typeName: typeName, fields: fields))
        }
    }

    /// A protobuf-JSON field value as a CEL value of the field's type.
    static func jsonValue(_ raw: Any, as type: CELType = .dyn) -> CELValue? {
        switch (type, raw) {
        case (.int, let value): return Int64("\(value)").map(CELValue.int)
        case (.uint, let value): return UInt64("\(value)").map(CELValue.uint)
        case (.double, let value as NSNumber): return .double(value.doubleValue)
        case (.bool, let value as Bool): return .bool(value)
        case (.string, let value as String): return .string(value)
        case (.bytes, let value as String): return Data(base64Encoded: value).map { .bytes(Array($0)) }
        case (.message(let name), let value as [String: Any]):
            var object = value
            object["@type"] = "type.googleapis.com/" + name
            return decodeObject(object)
        case (.list(let element), let values as [Any]):
            var items: [CELValue] = []
            for value in values {
                guard let item = jsonValue(value, as: element) else { return nil }
                items.append(item)
            }
            return .list(items)
        case (_, is NSNull): return .null
        case (_, let value as String): return .string(value)
        case (_, let value as Bool): return .bool(value)
        case (_, let value as NSNumber): return .double(value.doubleValue)
        case (_, let values as [Any]):
            return .list(values.compactMap { jsonValue($0) })
        case (_, let object as [String: Any]):
            var map = CELMap()
            for (key, value) in object {
                guard let item = jsonValue(value) else { return nil }
                map.insert(.string(key), item)
            }
            return .map(map)
        default: return nil
        }
    }

    static func decodeType(_ json: [String: Any]) -> CELType {
        if let primitive = json["primitive"] as? String {
            switch primitive {
            case "BOOL": return .bool
            case "INT64": return .int
            case "UINT64": return .uint
            case "DOUBLE": return .double
            case "STRING": return .string
            case "BYTES": return .bytes
            default: return .dyn
            }
        }
        if let wrapper = json["wrapper"] as? String { return .wrapper(decodeType(["primitive": wrapper])) }
        if let known = json["well_known"] as? String {
            switch known {
            case "TIMESTAMP": return .timestamp
            case "DURATION": return .duration
            default: return .any
            }
        }
        if let list = json["list_type"] as? [String: Any] { return .list(decodeType(list["elem_type"] as? [String: Any] ?? [:])) }
        if let map = json["map_type"] as? [String: Any] {
            return .map(decodeType(map["key_type"] as? [String: Any] ?? [:]), decodeType(map["value_type"] as? [String: Any] ?? [:]))
        }
        if let name = json["message_type"] as? String {
            if let known = CELEnvironment().knownType(name) { return known }
            return .message(name)
        }
        if json.keys.contains("null") { return .null }
        if let type = json["type"] as? [String: Any] { return .type(decodeType(type)) }
        if let param = json["type_param"] as? String { return .param(param) }
        if let abstract = json["abstract_type"] as? [String: Any] {
            return .opaque(abstract["name"] as? String ?? "", (abstract["parameter_types"] as? [[String: Any]] ?? []).map(decodeType))
        }
        if json.keys.contains("error") { return .error }
        return .dyn
    }

    /// Equality that also compares types (1 and 1u differ), with NaN equal to itself.
    static func strictlyEqual(_ a: CELValue, _ b: CELValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.int(let x), .int(let y)): return x == y
        case (.uint(let x), .uint(let y)): return x == y
        case (.double(let x), .double(let y)): return x == y || (x.isNaN && y.isNaN)
        case (.string(let x), .string(let y)): return x.utf8.elementsEqual(y.utf8)
        case (.bytes(let x), .bytes(let y)): return x == y
        case (.list(let x), .list(let y)): return x.count == y.count && zip(x, y).allSatisfy(strictlyEqual)
        case (.map(let x), .map(let y)):
            return x.count == y.count && zip(x.keys, x.values).allSatisfy { key, value in y[key].map { strictlyEqual(value, $0) } ?? false }
        case (.timestamp(let x), .timestamp(let y)): return x == y
        case (.duration(let x), .duration(let y)): return x == y
        case (.type(let x), .type(let y)): return x == y
        case (.message, .message):
            return CELEnvironment(messageTypes: messageTypes).isEqual(a, b)
        default: return false
        }
    }
}
