public import InterlockCore
import InterlockPolicy
import Yams

/// Reads a YAML tree while collecting every problem instead of stopping at the first.
final class ConfigReader {
    let file: String
    let environment: [String: String]
    /// Off for workflow definitions: their text is taken as written.
    var interpolates = true
    private(set) var diagnostics: [ConfigDiagnostic] = []

    init(file: String, environment: [String: String]) {
        self.file = file
        self.environment = environment
    }

    /// The file's text by line (1-based), when the reader was given it.
    var text: [Substring] = []

    func lines(_ range: ClosedRange<Int>) -> [Substring] {
        range.compactMap { $0 >= 1 && $0 <= text.count ? text[$0 - 1] : nil }
    }

    func report(at line: Int, column: Int, path: String, _ message: String) {
        let diagnostic = ConfigDiagnostic(file: file, line: line, column: column, path: path, message: message)
        if !diagnostics.contains(diagnostic) { diagnostics.append(diagnostic) }
    }

    /// A problem found in another file (a workflow file the configuration names).
    func add(_ diagnostic: ConfigDiagnostic) {
        if !diagnostics.contains(diagnostic) { diagnostics.append(diagnostic) }
    }

    func report(_ node: Node?, path: String, _ message: String) {
        let mark = node?.mark
        let diagnostic = ConfigDiagnostic(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1, path: path, message: message)
        // The cross-reference pass walks some nodes a second time; report each problem once.
        if !diagnostics.contains(diagnostic) { diagnostics.append(diagnostic) }
    }

    /// `${VAR}`, `${VAR:-default}` and `$$` (a literal `$`) in a scalar.
    func interpolate(_ text: String, node: Node, path: String) -> String? {
        guard interpolates, text.contains("$") else { return text }
        var output = ""
        var index = text.startIndex
        var failed = false
        while index < text.endIndex {
            let character = text[index]
            if character == "$" {
                let next = text.index(after: index)
                if next < text.endIndex, text[next] == "$" {
                    output.append("$")
                    index = text.index(after: next)
                    continue
                }
                if next < text.endIndex, text[next] == "{", let close = text[next...].firstIndex(of: "}") {
                    let expression = String(text[text.index(after: next)..<close])
                    let name: String
                    let fallback: String?
                    if let separator = expression.range(of: ":-") {
                        name = String(expression[..<separator.lowerBound])
                        fallback = String(expression[separator.upperBound...])
                    } else {
                        name = expression
                        fallback = nil
                    }
                    let validName = !name.isEmpty && name.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" }
                    if !validName {
                        report(node, path: path, "'${\(expression)}' is not a valid variable reference; expected ${NAME} or ${NAME:-default}")
                        failed = true
                    } else if let value = environment[name], !(value.isEmpty && fallback != nil) {
                        output += value
                    } else if let fallback {
                        output += fallback
                    } else {
                        report(node, path: path, "environment variable '\(name)' is not set (write ${\(name):-default} to give a default)")
                        failed = true
                    }
                    index = text.index(after: close)
                    continue
                }
            }
            output.append(character)
            index = text.index(after: index)
        }
        return failed ? nil : output
    }
}

/// A YAML node and its path in the document.
struct ConfigNode {
    let node: Node
    let path: String
    let reader: ConfigReader

    func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func report(_ message: String) { reader.report(node, path: path, message) }

    /// A problem inside a CEL expression held by this scalar, at its line and column in the
    /// file (exact for one-line and block scalars, the expression's line for folded quotes).
    func report(celError error: CELSourceError, in what: String = "the CEL condition") {
        let mark = node.mark
        var line = mark?.line ?? 1
        var column = mark?.column ?? 1
        switch node.scalar?.style {
        case .literal?, .folded?:
            // The scalar's mark is the indicator (`|`, `>`); the text starts on the next line,
            // at the block's indentation.
            column = error.column + blockIndentation(of: line + 1)
            line += error.line
        case .singleQuoted?, .doubleQuoted?:
            if error.line == 1 { column += error.column } else { (line, column) = (line + error.line - 1, error.column) }
        default:
            if error.line == 1 { column += error.column - 1 } else { (line, column) = (line + error.line - 1, error.column) }
        }
        reader.report(at: line, column: column, path: path, "\(error.message) (in \(what))")
    }

    private func blockIndentation(of line: Int) -> Int {
        guard let text = reader.lines(line...line).first else { return 0 }
        return text.prefix { $0 == " " }.count
    }

    /// The mapping's entries; reports unknown keys (with a suggestion) and a non-mapping.
    func mapping(allowed: [String]) -> [String: ConfigNode]? {
        guard case .mapping(let mapping) = node else {
            report("expected a mapping (key: value pairs), found \(kindName)")
            return nil
        }
        var result: [String: ConfigNode] = [:]
        for (keyNode, valueNode) in mapping {
            guard let key = keyNode.string else {
                reader.report(keyNode, path: path, "keys must be strings")
                continue
            }
            if !allowed.isEmpty, !allowed.contains(key) {
                var message = "unknown key '\(key)'"
                if let suggestion = Suggestion.closest(to: key, in: allowed) { message += "; did you mean '\(suggestion)'?" }
                message += " (expected one of: \(allowed.joined(separator: ", ")))"
                reader.report(keyNode, path: child(key), message)
                continue
            }
            if result[key] != nil { reader.report(keyNode, path: child(key), "duplicate key '\(key)'") }
            result[key] = ConfigNode(node: valueNode, path: child(key), reader: reader)
        }
        return result
    }

    /// A mapping whose keys are names chosen by the user (providers, model aliases).
    func namedEntries() -> [(String, ConfigNode)]? {
        guard case .mapping(let mapping) = node else {
            report("expected a mapping of names to settings, found \(kindName)")
            return nil
        }
        var result: [(String, ConfigNode)] = []
        var seen = Set<String>()
        for (keyNode, valueNode) in mapping {
            guard let key = keyNode.string else { continue }
            if !seen.insert(key).inserted { reader.report(keyNode, path: child(key), "duplicate name '\(key)'") }
            result.append((key, ConfigNode(node: valueNode, path: child(key), reader: reader)))
        }
        return result
    }

    func sequence() -> [ConfigNode]? {
        guard case .sequence(let sequence) = node else {
            report("expected a list, found \(kindName)")
            return nil
        }
        return sequence.enumerated().map { ConfigNode(node: $1, path: "\(path)[\($0)]", reader: reader) }
    }

    var kindName: String {
        switch node {
        case .scalar(let scalar): scalar.string.isEmpty || scalar.string == "null" || scalar.string == "~" ? "nothing" : "the value '\(scalar.string)'"
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .alias: "an alias"
        }
    }

    func string() -> String? {
        guard case .scalar(let scalar) = node else {
            report("expected a string, found \(kindName)")
            return nil
        }
        return reader.interpolate(scalar.string, node: node, path: path)
    }

    func nonEmptyString() -> String? {
        guard let value = string() else { return nil }
        guard !value.isEmpty else {
            report("must not be empty")
            return nil
        }
        return value
    }

    func int(minimum: Int = Int.min, maximum: Int = Int.max) -> Int? {
        guard let text = string() else { return nil }
        guard let value = Int(text.replacing("_", with: "")) else {
            report("expected an integer, found '\(text)'")
            return nil
        }
        guard value >= minimum, value <= maximum else {
            report(maximum == Int.max ? "must be at least \(minimum), found \(value)" : "must be between \(minimum) and \(maximum), found \(value)")
            return nil
        }
        return value
    }

    func double(minimum: Double = -.infinity) -> Double? {
        guard let text = string() else { return nil }
        guard let value = Double(text), value.isFinite else {
            report("expected a number, found '\(text)'")
            return nil
        }
        guard value >= minimum else {
            report("must be at least \(JSONWriter.string(.number(minimum))), found \(text)")
            return nil
        }
        return value
    }

    func bool() -> Bool? {
        guard let text = string() else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            report("expected true or false, found '\(text)'")
            return nil
        }
    }

    func stringList() -> [String]? {
        guard let items = sequence() else { return nil }
        let values = items.compactMap { $0.nonEmptyString() }
        return values.count == items.count ? values : nil
    }

    func oneOf<Value: RawRepresentable>(_ type: Value.Type, _ allowed: [Value]) -> Value? where Value.RawValue == String {
        guard let text = string() else { return nil }
        guard let value = Value(rawValue: text) else {
            let names = allowed.map(\.rawValue)
            var message = "'\(text)' is not one of: \(names.joined(separator: ", "))"
            if let suggestion = Suggestion.closest(to: text, in: names) { message += "; did you mean '\(suggestion)'?" }
            report(message)
            return nil
        }
        return value
    }

    /// Any YAML value as JSON (mock tool-call arguments).
    func json() -> JSONValue {
        switch node {
        case .scalar(let scalar):
            let text = reader.interpolate(scalar.string, node: node, path: path) ?? scalar.string
            if scalar.style == .plain {
                if let integer = Int64(text) { return .integer(integer) }
                if let number = Double(text), text.contains(".") { return .number(number) }
                if text == "true" { return .bool(true) }
                if text == "false" { return .bool(false) }
                if text == "null" || text == "~" { return .null }
            }
            return .string(text)
        case .sequence(let sequence):
            return .array(sequence.enumerated().map { ConfigNode(node: $1, path: "\(path)[\($0)]", reader: reader).json() })
        case .mapping(let mapping):
            var object = JSONObject()
            for (key, value) in mapping { object[key.string ?? ""] = ConfigNode(node: value, path: child(key.string ?? ""), reader: reader).json() }
            return .object(object)
        case .alias:
            return .null
        }
    }
}

/// A YAML (or JSON) document as a JSON value, without `${VAR}` interpolation: for documents
/// the configuration points at, such as OpenAPI descriptions.
enum YAMLJSON {
    static func value(_ node: Yams.Node) -> JSONValue {
        switch node {
        case .scalar(let scalar):
            let text = scalar.string
            if scalar.style == .plain {
                if let integer = Int64(text) { return .integer(integer) }
                if let number = Double(text), text.contains(".") || text.contains("e") || text.contains("E") { return .number(number) }
                if text == "true" { return .bool(true) }
                if text == "false" { return .bool(false) }
                if text == "null" || text == "~" || text.isEmpty { return .null }
            }
            return .string(text)
        case .sequence(let sequence):
            return .array(sequence.map(value))
        case .mapping(let mapping):
            var object = JSONObject()
            for (key, member) in mapping { object[key.string ?? ""] = value(member) }
            return .object(object)
        case .alias:
            return .null
        }
    }
}

extension OpenAPIImport {
    /// The tools of an OpenAPI 3 document given as YAML or JSON text (a file the config names,
    /// or a document fetched from a URL at start).
    public static func tools(fromDocument data: some Collection<UInt8>, namespace: String) throws(OpenAPIImportError) -> [OpenAPITool] {
        let root: Yams.Node?
        do {
            root = try Yams.compose(yaml: String(decoding: data, as: UTF8.self))
        } catch {
            throw OpenAPIImportError(path: "(document)", message: "not valid YAML or JSON: \(error)")
        }
        guard let root else { throw OpenAPIImportError(path: "(document)", message: "the document is empty") }
        return try tools(from: YAMLJSON.value(root), namespace: namespace)
    }
}
