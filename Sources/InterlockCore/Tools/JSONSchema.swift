/// A JSON Schema (the subset tool definitions use: draft 2020-12 and OpenAPI 3 flavours),
/// compiled once and checked against every call's arguments.
///
/// Supported: `type` (one or a list; OpenAPI's `nullable`), `enum`, `const`, `properties`,
/// `required`, `additionalProperties`, `patternProperties`, `items` (and
/// `prefixItems`), `minItems`, `maxItems`, `uniqueItems`, `minimum`, `maximum`,
/// `exclusiveMinimum`, `exclusiveMaximum` (number or draft-4 boolean), `multipleOf`,
/// `minLength`, `maxLength`, `pattern`, `allOf`, `anyOf`, `oneOf`, `not`, and local `$ref`s
/// (`#/$defs/…`, `#/definitions/…`, `#/components/schemas/…`). Other keywords (`format`,
/// `description`, …) do not constrain.
public struct JSONSchema: Sendable {
    /// The schema as written, kept for catalogs.
    public let document: JSONValue
    private let root: Node
    private let definitions: [String: Node]

    /// A schema that is not one: names where and why.
    public struct CompileError: Error, Sendable, Equatable, CustomStringConvertible {
        public var path: String
        public var message: String
        public var description: String { "\(path.isEmpty ? "schema" : path): \(message)" }
    }

    public init(_ document: JSONValue) throws(CompileError) {
        self.document = document
        var definitions: [String: Node] = [:]
        for container in ["$defs", "definitions"] {
            for (name, value) in document[container]?.objectValue ?? [:] {
                definitions["#/\(container)/\(name)"] = try Node.compile(value, path: "\(container).\(name)")
            }
        }
        for (name, value) in document["components"]?["schemas"]?.objectValue ?? [:] {
            definitions["#/components/schemas/\(name)"] = try Node.compile(value, path: "components.schemas.\(name)")
        }
        self.definitions = definitions
        self.root = try Node.compile(document, path: "")
        for reference in root.references + definitions.values.flatMap(\.references) where definitions[reference] == nil {
            throw CompileError(path: "", message: "'$ref' \(reference) points nowhere (only local #/$defs, #/definitions and #/components/schemas are supported)")
        }
    }

    /// One way the value breaks the schema.
    public struct Violation: Sendable, Equatable, CustomStringConvertible {
        /// Where, as a dotted path with `[index]` for array items (empty for the value itself).
        public var path: String
        public var message: String

        public var description: String { path.isEmpty ? message : "'\(path)' \(message)" }
    }

    /// Every violation (up to `limit`), in document order; empty when the value conforms.
    public func validate(_ value: JSONValue, limit: Int = 20) -> [Violation] {
        var violations: [Violation] = []
        root.check(value, path: "", definitions: definitions, into: &violations, limit: limit, depth: 0)
        return violations
    }
}

extension JSONSchema {
    fileprivate indirect enum Node: Sendable {
        case anything
        case nothing
        case constraints(Constraints)

        var references: [String] {
            guard case .constraints(let constraints) = self else { return [] }
            var found = constraints.reference.map { [$0] } ?? []
            for child in constraints.children { found += child.references }
            return found
        }

        static func compile(_ value: JSONValue, path: String) throws(CompileError) -> Node {
            switch value {
            case .bool(true): return .anything
            case .bool(false): return .nothing
            case .object(let object):
                return .constraints(try Constraints(object, path: path))
            default:
                throw CompileError(path: path, message: "a schema must be an object or a boolean, found \(value.typeName)")
            }
        }

        func check(_ value: JSONValue, path: String, definitions: [String: Node], into violations: inout [Violation], limit: Int, depth: Int) {
            guard violations.count < limit else { return }
            switch self {
            case .anything: return
            case .nothing: violations.append(Violation(path: path, message: "is not allowed here"))
            case .constraints(let constraints):
                constraints.check(value, path: path, definitions: definitions, into: &violations, limit: limit, depth: depth)
            }
        }
    }

    fileprivate struct Constraints: Sendable {
        var types: [String]?
        var nullable = false
        var enumValues: [JSONValue]?
        var constValue: JSONValue?
        var properties: [(String, Node)] = []
        var required: [String] = []
        var additionalProperties: Node?
        var patternProperties: [(CompiledPattern, Node)] = []
        var items: Node?
        var prefixItems: [Node] = []
        var minItems: Int?
        var maxItems: Int?
        var uniqueItems = false
        var minimum: Double?
        var maximum: Double?
        var exclusiveMinimum: Double?
        var exclusiveMaximum: Double?
        var multipleOf: Double?
        var minLength: Int?
        var maxLength: Int?
        var pattern: CompiledPattern?
        var allOf: [Node] = []
        var anyOf: [Node] = []
        var oneOf: [Node] = []
        var not: Node?
        var reference: String?
        /// For messages: what the property is about.
        var describing: String?

        var children: [Node] {
            properties.map(\.1) + patternProperties.map(\.1) + [additionalProperties, items, not].compactMap { $0 } + prefixItems + allOf + anyOf + oneOf
        }

        init(_ object: JSONObject, path: String) throws(CompileError) {
            func sub(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
            func count(_ key: String) throws(CompileError) -> Int? {
                guard let value = object[key] else { return nil }
                guard let number = value.int64Value, number >= 0 else { throw CompileError(path: sub(key), message: "must be a non-negative integer") }
                return Int(number)
            }
            func number(_ key: String) throws(CompileError) -> Double? {
                guard let value = object[key], !(value.boolValue != nil) else { return nil }
                guard let number = value.doubleValue else { throw CompileError(path: sub(key), message: "must be a number") }
                return number
            }
            func list(_ key: String) throws(CompileError) -> [Node] {
                guard let value = object[key] else { return [] }
                guard let items = value.arrayValue, !items.isEmpty else { throw CompileError(path: sub(key), message: "must be a non-empty list of schemas") }
                var nodes: [Node] = []
                for (index, item) in items.enumerated() { nodes.append(try Node.compile(item, path: "\(sub(key))[\(index)]")) }
                return nodes
            }

            switch object["type"] {
            case nil: break
            case .string(let type)?: types = [type]
            case .array(let list)?: types = list.compactMap(\.stringValue)
            default: throw CompileError(path: sub("type"), message: "must be a type name or a list of them")
            }
            let known: Set<String> = ["object", "array", "string", "number", "integer", "boolean", "null"]
            if let unknown = types?.first(where: { !known.contains($0) }) {
                throw CompileError(path: sub("type"), message: "unknown type '\(unknown)'")
            }
            nullable = object["nullable"]?.boolValue ?? false
            enumValues = object["enum"]?.arrayValue
            constValue = object["const"]
            if let props = object["properties"] {
                guard let members = props.objectValue else { throw CompileError(path: sub("properties"), message: "must be an object of schemas") }
                for (name, schema) in members { properties.append((name, try Node.compile(schema, path: sub("properties.\(name)")))) }
            }
            if let names = object["required"] {
                guard let list = names.arrayValue?.compactMap(\.stringValue), list.count == names.arrayValue?.count else {
                    throw CompileError(path: sub("required"), message: "must be a list of property names")
                }
                required = list
            }
            if let additional = object["additionalProperties"] { additionalProperties = try Node.compile(additional, path: sub("additionalProperties")) }
            for (source, schema) in object["patternProperties"]?.objectValue ?? [:] {
                patternProperties.append((try CompiledPattern.compile(source, path: sub("patternProperties")), try Node.compile(schema, path: sub("patternProperties.\(source)"))))
            }
            if let itemSchema = object["items"] {
                if let tuple = itemSchema.arrayValue {  // draft 4–2019 tuple form
                    for (index, item) in tuple.enumerated() { prefixItems.append(try Node.compile(item, path: "\(sub("items"))[\(index)]")) }
                } else {
                    items = try Node.compile(itemSchema, path: sub("items"))
                }
            }
            if object["prefixItems"] != nil { prefixItems = try list("prefixItems") }
            minItems = try count("minItems")
            maxItems = try count("maxItems")
            uniqueItems = object["uniqueItems"]?.boolValue ?? false
            minimum = try number("minimum")
            maximum = try number("maximum")
            // Draft 4: booleans that make minimum/maximum exclusive.
            if object["exclusiveMinimum"]?.boolValue == true { exclusiveMinimum = minimum; minimum = nil } else { exclusiveMinimum = try number("exclusiveMinimum") }
            if object["exclusiveMaximum"]?.boolValue == true { exclusiveMaximum = maximum; maximum = nil } else { exclusiveMaximum = try number("exclusiveMaximum") }
            multipleOf = try number("multipleOf")
            if let multipleOf, multipleOf <= 0 { throw CompileError(path: sub("multipleOf"), message: "must be greater than 0") }
            minLength = try count("minLength")
            maxLength = try count("maxLength")
            if let source = object["pattern"]?.stringValue { pattern = try CompiledPattern.compile(source, path: sub("pattern")) }
            allOf = try list("allOf")
            anyOf = try list("anyOf")
            oneOf = try list("oneOf")
            if let negated = object["not"] { not = try Node.compile(negated, path: sub("not")) }
            if let ref = object["$ref"] {
                guard let target = ref.stringValue, target.hasPrefix("#/") else {
                    throw CompileError(path: sub("$ref"), message: "only local references ('#/…') are supported")
                }
                reference = target
            }
            describing = object["description"]?.stringValue
        }

        func check(_ value: JSONValue, path: String, definitions: [String: Node], into violations: inout [Violation], limit: Int, depth: Int) {
            guard depth < 64 else {
                violations.append(Violation(path: path, message: "is nested too deeply to check"))
                return
            }
            if let reference, let target = definitions[reference] {
                target.check(value, path: path, definitions: definitions, into: &violations, limit: limit, depth: depth + 1)
            }
            if let types, !(nullable && value.isNull), !types.contains(where: { Self.matches(value, type: $0) }) {
                violations.append(Violation(path: path, message: "must be \(Self.describe(types))\(describing.map { " (\($0))" } ?? ""), got \(Self.show(value))"))
                return
            }
            if let enumValues, !enumValues.contains(where: { Self.equal($0, value) }) {
                violations.append(Violation(path: path, message: "must be one of \(enumValues.map(Self.show).joined(separator: ", ")), got \(Self.show(value))"))
            }
            if let constValue, !Self.equal(constValue, value) {
                violations.append(Violation(path: path, message: "must be \(Self.show(constValue)), got \(Self.show(value))"))
            }
            switch value {
            case .object(let object): checkObject(object, path: path, definitions: definitions, into: &violations, limit: limit, depth: depth)
            case .array(let array): checkArray(array, path: path, definitions: definitions, into: &violations, limit: limit, depth: depth)
            case .string(let text): checkString(text, path: path, into: &violations)
            case .integer, .number: if let number = value.doubleValue { checkNumber(number, path: path, into: &violations) }
            default: break
            }
            for node in allOf { node.check(value, path: path, definitions: definitions, into: &violations, limit: limit, depth: depth + 1) }
            if !anyOf.isEmpty, !anyOf.contains(where: { Self.conforms(value, to: $0, definitions: definitions, depth: depth) }) {
                violations.append(Violation(path: path, message: "does not match any of the \(anyOf.count) allowed forms"))
            }
            if !oneOf.isEmpty {
                let matching = oneOf.filter { Self.conforms(value, to: $0, definitions: definitions, depth: depth) }.count
                if matching != 1 {
                    violations.append(Violation(path: path, message: matching == 0 ? "does not match any of the \(oneOf.count) allowed forms" : "matches \(matching) of the forms, but must match exactly one"))
                }
            }
            if let not, Self.conforms(value, to: not, definitions: definitions, depth: depth) {
                violations.append(Violation(path: path, message: "must not match the excluded form"))
            }
        }

        private func checkObject(_ object: JSONObject, path: String, definitions: [String: Node], into violations: inout [Violation], limit: Int, depth: Int) {
            func child(_ name: String) -> String { path.isEmpty ? name : "\(path).\(name)" }
            for name in required where object[name] == nil {
                let about = properties.first { $0.0 == name }.flatMap { Self.summary($0.1) }
                violations.append(Violation(path: child(name), message: "is required\(about.map { " (\($0))" } ?? "") but missing"))
            }
            for (name, member) in object {
                let byPattern = patternProperties.filter { $0.0.matches(name) }
                for (_, schema) in byPattern { schema.check(member, path: child(name), definitions: definitions, into: &violations, limit: limit, depth: depth + 1) }
                if let schema = properties.first(where: { $0.0 == name })?.1 {
                    schema.check(member, path: child(name), definitions: definitions, into: &violations, limit: limit, depth: depth + 1)
                } else if !byPattern.isEmpty {
                    continue
                } else if let additionalProperties {
                    if case .nothing = additionalProperties {
                        let known = properties.map(\.0)
                        let hint = known.isEmpty ? "" : "; known parameters: \(known.joined(separator: ", "))"
                        violations.append(Violation(path: child(name), message: "is not a parameter of this tool\(hint)"))
                    } else {
                        additionalProperties.check(member, path: child(name), definitions: definitions, into: &violations, limit: limit, depth: depth + 1)
                    }
                }
            }
        }

        private func checkArray(_ array: [JSONValue], path: String, definitions: [String: Node], into violations: inout [Violation], limit: Int, depth: Int) {
            if let minItems, array.count < minItems { violations.append(Violation(path: path, message: "must have at least \(minItems) items, got \(array.count)")) }
            if let maxItems, array.count > maxItems { violations.append(Violation(path: path, message: "must have at most \(maxItems) items, got \(array.count)")) }
            if uniqueItems {
                for index in array.indices where array[..<index].contains(where: { Self.equal($0, array[index]) }) {
                    violations.append(Violation(path: "\(path)[\(index)]", message: "repeats an earlier item; items must be unique"))
                    break
                }
            }
            for (index, item) in array.enumerated() {
                let node = index < prefixItems.count ? prefixItems[index] : items
                node?.check(item, path: "\(path)[\(index)]", definitions: definitions, into: &violations, limit: limit, depth: depth + 1)
            }
        }

        private func checkString(_ text: String, path: String, into violations: inout [Violation]) {
            let length = text.unicodeScalars.count
            if let minLength, length < minLength { violations.append(Violation(path: path, message: "must be at least \(minLength) characters long, got \(length)")) }
            if let maxLength, length > maxLength { violations.append(Violation(path: path, message: "must be at most \(maxLength) characters long, got \(length)")) }
            if let pattern, !pattern.matches(text) {
                violations.append(Violation(path: path, message: "must match the pattern \(pattern.source), got \(Self.show(.string(text)))"))
            }
        }

        private func checkNumber(_ number: Double, path: String, into violations: inout [Violation]) {
            if let minimum, number < minimum { violations.append(Violation(path: path, message: "must be at least \(Self.format(minimum)), got \(Self.format(number))")) }
            if let maximum, number > maximum { violations.append(Violation(path: path, message: "must be at most \(Self.format(maximum)), got \(Self.format(number))")) }
            if let exclusiveMinimum, number <= exclusiveMinimum {
                violations.append(Violation(path: path, message: "must be greater than \(Self.format(exclusiveMinimum)), got \(Self.format(number))"))
            }
            if let exclusiveMaximum, number >= exclusiveMaximum {
                violations.append(Violation(path: path, message: "must be less than \(Self.format(exclusiveMaximum)), got \(Self.format(number))"))
            }
            if let multipleOf {
                let quotient = number / multipleOf
                if abs(quotient - quotient.rounded()) > 1e-9 { violations.append(Violation(path: path, message: "must be a multiple of \(Self.format(multipleOf))")) }
            }
        }

        static func conforms(_ value: JSONValue, to node: Node, definitions: [String: Node], depth: Int) -> Bool {
            var found: [Violation] = []
            node.check(value, path: "", definitions: definitions, into: &found, limit: 1, depth: depth + 1)
            return found.isEmpty
        }

        static func matches(_ value: JSONValue, type: String) -> Bool {
            switch (type, value) {
            case ("object", .object), ("array", .array), ("string", .string), ("boolean", .bool), ("null", .null): true
            case ("number", .number), ("number", .integer), ("integer", .integer): true
            case ("integer", .number(let number)): number.rounded() == number && abs(number) < 9.0e15
            default: false
            }
        }

        /// JSON equality: 1 and 1.0 are the same number.
        static func equal(_ lhs: JSONValue, _ rhs: JSONValue) -> Bool {
            if let left = lhs.doubleValue, let right = rhs.doubleValue { return left == right }
            if case .object(let left) = lhs, case .object(let right) = rhs {
                return left.keys.count == right.keys.count && left.allSatisfy { key, value in right[key].map { equal(value, $0) } ?? false }
            }
            if case .array(let left) = lhs, case .array(let right) = rhs {
                return left.count == right.count && zip(left, right).allSatisfy { equal($0, $1) }
            }
            return lhs == rhs
        }

        static func describe(_ types: [String]) -> String {
            let words = types.map { type in
                switch type {
                case "object": "an object"
                case "array": "a list"
                case "integer": "an integer"
                default: "a \(type)"
                }
            }
            return words.count == 1 ? words[0] : words.dropLast().joined(separator: ", ") + " or " + words.last!
        }

        static func summary(_ node: Node) -> String? {
            guard case .constraints(let constraints) = node else { return nil }
            let type = constraints.types.map(describe)
            switch (type, constraints.describing) {
            case (let type?, let about?): return "\(type): \(about)"
            case (let type?, nil): return type
            case (nil, let about?): return about
            case (nil, nil): return nil
            }
        }

        static func show(_ value: JSONValue) -> String {
            let text = JSONWriter.string(value)
            return text.count > 60 ? String(text.prefix(57)) + "…" : text
        }

        static func format(_ number: Double) -> String {
            number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : String(number)
        }
    }
}

/// A compiled `pattern`. `@unchecked Sendable`: `Regex<AnyRegexOutput>` is not marked Sendable
/// because its captures could hold anything, but this one is built once, never mutated, and
/// only asked whether a string matches (matching keeps its state per call).
final class CompiledPattern: @unchecked Sendable {
    let source: String
    private let regex: Regex<AnyRegexOutput>

    init(source: String, regex: Regex<AnyRegexOutput>) {
        self.source = source
        self.regex = regex
    }

    /// ECMA-262 semantics where Swift differs: `\d`, `\w`, `\s` are ASCII classes.
    static func compile(_ source: String, path: String) throws(JSONSchema.CompileError) -> CompiledPattern {
        do {
            return CompiledPattern(source: source, regex: try Regex(source).asciiOnlyDigits().asciiOnlyWordCharacters().asciiOnlyWhitespace())
        } catch {
            throw JSONSchema.CompileError(path: path, message: "is not a valid regular expression")
        }
    }

    func matches(_ text: String) -> Bool {
        (try? regex.firstMatch(in: text)) != nil
    }
}
