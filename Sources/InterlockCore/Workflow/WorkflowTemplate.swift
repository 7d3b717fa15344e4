import FoundationEssentials
public import InterlockPolicy

/// A JSON value some of whose strings hold CEL expressions in `{{ … }}`: a string that is one
/// expression becomes the expression's value (a number stays a number, a list a list); a
/// string with text around expressions becomes text, each value written in (strings as they
/// are, anything else as JSON). Compiled once, when the workflow is loaded.
public indirect enum WorkflowTemplate: Sendable {
    case literal(JSONValue)
    case expression(CELProgram)
    case text([TextPart])
    case array([WorkflowTemplate])
    case object([(key: String, value: WorkflowTemplate)])

    public enum TextPart: Sendable {
        case literal(String)
        case expression(CELProgram)
    }

    /// A problem in one expression of a template string, at its offset in the string.
    public struct CompileError: Error, Sendable {
        /// Where the expression starts in the string (characters from its first one).
        public var offset: Int
        public var errors: [CELSourceError]
        public var message: String?
    }

    /// Compiles one string: plain text, `{{ expr }}`, or text with expressions. `{{` without a
    /// closing `}}` is an error; `\{{` writes `{{`.
    public static func compile(string: String, environment: CELEnvironment) throws(CompileError) -> WorkflowTemplate {
        var parts: [TextPart] = []
        var literal = ""
        let characters = Array(string)
        var index = 0
        while index < characters.count {
            if characters[index] == "\\", index + 2 < characters.count, characters[index + 1] == "{", characters[index + 2] == "{" {
                literal += "{{"
                index += 3
                continue
            }
            guard characters[index] == "{", index + 1 < characters.count, characters[index + 1] == "{" else {
                literal.append(characters[index])
                index += 1
                continue
            }
            var end = index + 2
            while end + 1 < characters.count, !(characters[end] == "}" && characters[end + 1] == "}") { end += 1 }
            guard end + 1 < characters.count else {
                throw CompileError(offset: index, errors: [], message: "'{{' has no closing '}}'")
            }
            let source = String(characters[(index + 2)..<end]).trimmingWhitespace
            guard !source.isEmpty else { throw CompileError(offset: index, errors: [], message: "'{{ }}' holds no expression") }
            do {
                if !literal.isEmpty { parts.append(.literal(literal)) }
                literal = ""
                parts.append(.expression(try CELProgram.checked(source, environment: environment)))
            } catch {
                throw CompileError(offset: index + 2, errors: error.errors, message: nil)
            }
            index = end + 2
        }
        if !literal.isEmpty { parts.append(.literal(literal)) }
        switch parts.count {
        case 0: return .literal(.string(""))
        case 1:
            switch parts[0] {
            case .literal(let text): return .literal(.string(text))
            case .expression(let program): return .expression(program)
            }
        default: return .text(parts)
        }
    }

    /// Whether the template has no expression in it.
    public var isConstant: Bool {
        switch self {
        case .literal: true
        case .expression, .text: false
        case .array(let items): items.allSatisfy(\.isConstant)
        case .object(let members): members.allSatisfy { $0.value.isConstant }
        }
    }

    /// The value, with every expression evaluated over `bindings`.
    public func render(_ bindings: [String: CELValue]) throws(StepError) -> JSONValue {
        switch self {
        case .literal(let value):
            return value
        case .expression(let program):
            return try Self.evaluate(program, bindings)
        case .text(let parts):
            var text = ""
            for part in parts {
                switch part {
                case .literal(let literal): text += literal
                case .expression(let program):
                    let value = try Self.evaluate(program, bindings)
                    if case .string(let string) = value { text += string } else { text += JSONWriter.string(value) }
                }
            }
            return .string(text)
        case .array(let items):
            var values: [JSONValue] = []
            values.reserveCapacity(items.count)
            for item in items { values.append(try item.render(bindings)) }
            return .array(values)
        case .object(let members):
            var object = JSONObject()
            for member in members { object[member.key] = try member.value.render(bindings) }
            return .object(object)
        }
    }

    private static func evaluate(_ program: CELProgram, _ bindings: [String: CELValue]) throws(StepError) -> JSONValue {
        do {
            return try JSONValue(cel: program.evaluate(bindings))
        } catch {
            throw StepError(code: "expression_error", message: "'{{ \(program.source) }}' failed: \(error.message)", retryable: false)
        }
    }
}

extension String {
    var trimmingWhitespace: String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}

extension JSONValue {
    /// A CEL value as JSON: timestamps as RFC 3339 text, durations as `1.5s`, bytes as base64,
    /// uints as integers (or numbers past `Int64.max`). Types and messages have no JSON form.
    public init(cel value: CELValue) throws(CELError) {
        switch value {
        case .null: self = .null
        case .bool(let bool): self = .bool(bool)
        case .int(let int): self = .integer(int)
        case .uint(let uint): self = uint <= UInt64(Int64.max) ? .integer(Int64(uint)) : .number(Double(uint))
        case .double(let double):
            guard double.isFinite else { throw CELError(.conversion, "\(double) has no JSON form") }
            self = .number(double)
        case .string(let string): self = .string(string)
        case .bytes(let bytes): self = .string(Data(bytes).base64EncodedString())
        case .list(let items):
            var values: [JSONValue] = []
            values.reserveCapacity(items.count)
            for item in items { values.append(try JSONValue(cel: item)) }
            self = .array(values)
        case .map(let map):
            var object = JSONObject()
            for (key, member) in zip(map.keys, map.values) {
                let name: String
                switch key {
                case .string(let string): name = string
                case .int(let int): name = String(int)
                case .uint(let uint): name = String(uint)
                case .bool(let bool): name = String(bool)
                default: throw CELError(.conversion, "a map key of type \(key.typeName) has no JSON form")
                }
                object[name] = try JSONValue(cel: member)
            }
            self = .object(object)
        case .timestamp(let timestamp): self = .string(timestamp.rfc3339)
        case .duration(let duration): self = .string(duration.text)
        case .type(let name): self = .string(name)
        case .message(let message): throw CELError(.conversion, "a \(message.typeName) message has no JSON form")
        }
    }
}
