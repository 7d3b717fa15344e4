/// An OpenAPI 3 document turned into tools: each operation with an `operationId` becomes
/// `<namespace>.<operationId>`, whose arguments join the path, query and header parameters
/// and the JSON body's properties (a body that is not an object, or whose properties clash
/// with a parameter, is the argument `body`).
public struct OpenAPITool: Sendable {
    public var definition: ToolDefinition
    public var operation: RESTOperation
}

/// How a REST tool call becomes an HTTP request.
public struct RESTOperation: Sendable, Equatable {
    public enum Location: String, Sendable {
        case path, query, header
    }

    public struct Parameter: Sendable, Equatable {
        public var name: String
        public var location: Location
    }

    /// Headers an argument may never set.
    public static let reservedHeaders: Set<String> = [
        "authorization", "accept", "content-type", "content-length", "host", "connection", "transfer-encoding", "idempotency-key", "cookie",
        "proxy-authorization", "te", "upgrade", "expect",
    ]

    /// `GET`, `POST`, …
    public var method: String
    /// `/forecast/{city}`.
    public var pathTemplate: String
    public var parameters: [Parameter]
    /// Where the JSON body comes from: nil (none), the argument `body`, or the arguments that
    /// are not parameters (`mergedBody`).
    public var body: BodySource?

    public enum BodySource: Sendable, Equatable {
        case argument
        case merged
    }

    /// The request for `arguments` (already validated against the tool's schema): the path
    /// with its parameters filled in and escaped, the query string, headers, and the body.
    public func request(arguments: JSONObject) -> (path: String, headers: [(String, String)], body: JSONValue?) {
        var path = pathTemplate
        var query: [String] = []
        var headers: [(String, String)] = []
        for parameter in parameters {
            guard let value = arguments[parameter.name], !value.isNull else { continue }
            let text = Self.text(value)
            switch parameter.location {
            // Dots are encoded too: a value of ".." must not climb out of the operation's path.
            case .path: path = path.replacing("{\(parameter.name)}", with: Self.percentEncode(text).replacing(".", with: "%2E"))
            case .query:
                if case .array(let items) = value {
                    for item in items { query.append(Self.percentEncode(parameter.name) + "=" + Self.percentEncode(Self.text(item))) }
                } else {
                    query.append(Self.percentEncode(parameter.name) + "=" + Self.percentEncode(text))
                }
            case .header:
                // A header value cannot carry a line break (the schema check cannot know that).
                headers.append((parameter.name, String(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7F || $0 == "\t" })))
            }
        }
        if !query.isEmpty { path += "?" + query.joined(separator: "&") }
        var body: JSONValue?
        switch self.body {
        case .argument?: body = arguments["body"]
        case .merged?:
            let parameterNames = Set(parameters.map(\.name))
            body = .object(JSONObject(arguments.filter { !parameterNames.contains($0.key) }.map { (key: $0.key, value: $0.value) }))
        case nil: body = nil
        }
        return (path, headers, body)
    }

    static func text(_ value: JSONValue) -> String {
        switch value {
        case .string(let text): text
        case .integer(let number): String(number)
        case .number(let number): CanonicalJSON.number(number)
        case .bool(let flag): flag ? "true" : "false"
        case .null: ""
        default: JSONWriter.string(value)
        }
    }

    /// application/x-www-form-urlencoded value (unreserved characters pass, the rest percent-encoded).
    public static func formEncode(_ text: String) -> String { percentEncode(text) }

    /// RFC 3986 unreserved characters pass; everything else is percent-encoded.
    static func percentEncode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = Array("0123456789ABCDEF".unicodeScalars)
                out += "%"
                out.unicodeScalars.append(hex[Int(byte >> 4)])
                out.unicodeScalars.append(hex[Int(byte & 0x0F)])
            }
        }
        return out
    }
}

/// Why a document could not be turned into tools, with where.
public struct OpenAPIImportError: Error, Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var message: String
    public var description: String { "\(path): \(message)" }

    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }
}

public enum OpenAPIImport {
    static let methods = ["get", "put", "post", "delete", "patch", "head", "options"]

    /// The tools of an OpenAPI 3.x document (JSON value of the JSON or YAML document).
    public static func tools(from document: JSONValue, namespace: String) throws(OpenAPIImportError) -> [OpenAPITool] {
        guard let version = document["openapi"]?.stringValue, version.hasPrefix("3.") else {
            throw OpenAPIImportError(path: "openapi", message: "expected an OpenAPI 3 document ('openapi: 3.x')")
        }
        guard let paths = document["paths"]?.objectValue else { throw OpenAPIImportError(path: "paths", message: "the document has no paths") }
        var tools: [OpenAPITool] = []
        var seen = Set<String>()
        for (path, item) in paths {
            let shared = item["parameters"]?.arrayValue ?? []
            for method in methods {
                guard let operation = item[method] else { continue }
                let location = "paths.\(path).\(method)"
                guard let operationID = operation["operationId"]?.stringValue, !operationID.isEmpty else { continue }
                guard seen.insert(operationID).inserted else {
                    throw OpenAPIImportError(path: location, message: "operationId '\(operationID)' is used twice")
                }
                tools.append(try tool(
                    operation, operationID: operationID, method: method.uppercased(), path: path, shared: shared, document: document,
                    namespace: namespace, location: location))
            }
        }
        return tools.sorted { $0.definition.name < $1.definition.name }
    }

    private static func tool(
        _ operation: JSONValue, operationID: String, method: String, path: String, shared: [JSONValue], document: JSONValue, namespace: String,
        location: String
    ) throws(OpenAPIImportError) -> OpenAPITool {
        var properties = JSONObject()
        var required: [String] = []
        var parameters: [RESTOperation.Parameter] = []
        // Operation-level parameters override path-level ones with the same name and place.
        var merged: [String: JSONValue] = [:]
        var order: [String] = []
        for raw in shared + (operation["parameters"]?.arrayValue ?? []) {
            let parameter = try resolve(raw, in: document, location: location)
            guard let name = parameter["name"]?.stringValue, let place = parameter["in"]?.stringValue else {
                throw OpenAPIImportError(path: location, message: "a parameter needs 'name' and 'in'")
            }
            let key = place + ":" + name
            if merged[key] == nil { order.append(key) }
            merged[key] = parameter
        }
        for key in order {
            let parameter = merged[key]!
            let name = parameter["name"]!.stringValue!
            guard let place = RESTOperation.Location(rawValue: parameter["in"]!.stringValue!) else { continue }  // cookies are not supported
            // OpenAPI ignores Accept, Content-Type and Authorization header parameters; Interlock
            // also keeps the headers it sets itself out of an agent's reach.
            if place == .header, RESTOperation.reservedHeaders.contains(name.lowercased()) { continue }
            var schema = try inline(parameter["schema"] ?? ["type": "string"], in: document, location: location, depth: 0)
            if let description = parameter["description"]?.stringValue, case .object(var object) = schema, object["description"] == nil {
                object["description"] = .string(description)
                schema = .object(object)
            }
            guard properties[name] == nil else {
                throw OpenAPIImportError(path: location, message: "two parameters are named '\(name)' (in different places); tool arguments need distinct names")
            }
            properties[name] = schema
            if place == .path || parameter["required"]?.boolValue == true { required.append(name) }
            parameters.append(RESTOperation.Parameter(name: name, location: place))
        }
        var body: RESTOperation.BodySource?
        if let requestBody = operation["requestBody"] {
            let resolved = try resolve(requestBody, in: document, location: location)
            let media = resolved["content"]?["application/json"] ?? resolved["content"]?.objectValue?.first(where: { $0.key.hasSuffix("+json") })?.value
            if let media {
                let schema = try inline(media["schema"] ?? [:], in: document, location: location, depth: 0)
                let bodyRequired = resolved["required"]?.boolValue ?? false
                if case .object(let object) = schema, object["type"]?.stringValue == "object", let members = object["properties"]?.objectValue,
                    !members.keys.contains(where: { properties[$0] != nil || $0 == "body" })
                {
                    // Server-assigned (readOnly) properties are not the caller's to send.
                    let writable = members.filter { $0.value["readOnly"]?.boolValue != true }
                    for (name, member) in writable { properties[name] = member }
                    if bodyRequired {
                        required += (object["required"]?.arrayValue?.compactMap(\.stringValue) ?? []).filter { name in writable.contains { $0.key == name } }
                    }
                    body = .merged
                } else {
                    properties["body"] = schema
                    if bodyRequired { required.append("body") }
                    body = .argument
                }
            }
        }
        var input: JSONObject = ["type": "object", "properties": .object(properties), "additionalProperties": false]
        if !required.isEmpty { input["required"] = .array(required.map(JSONValue.string)) }
        let summary = operation["summary"]?.stringValue
        let description = [summary, operation["description"]?.stringValue].compactMap { $0 }.joined(separator: "\n\n")
        var output: JSONValue?
        if let success = operation["responses"]?.objectValue?.first(where: { $0.key.hasPrefix("2") })?.value,
            let schema = try? resolve(success, in: document, location: location)["content"]?["application/json"]?["schema"]
        {
            output = try inline(schema, in: document, location: location, depth: 0)
        }
        let definition = ToolDefinition(
            name: "\(namespace).\(operationID)", namespace: namespace, description: description.isEmpty ? "\(method) \(path)" : description,
            inputSchema: .object(input), outputSchema: output)
        return OpenAPITool(definition: definition, operation: RESTOperation(method: method, pathTemplate: path, parameters: parameters, body: body))
    }

    /// Follows one local `$ref` (`#/components/…`).
    private static func resolve(_ value: JSONValue, in document: JSONValue, location: String) throws(OpenAPIImportError) -> JSONValue {
        guard let reference = value["$ref"]?.stringValue else { return value }
        guard reference.hasPrefix("#/") else {
            throw OpenAPIImportError(path: location, message: "only local references are supported, found '\(reference)'")
        }
        var current: JSONValue? = document
        for part in reference.dropFirst(2).split(separator: "/") {
            let key = String(part).replacing("~1", with: "/").replacing("~0", with: "~")
            current = current?[key]
        }
        guard let found = current else { throw OpenAPIImportError(path: location, message: "'\(reference)' points nowhere") }
        return found
    }

    /// A schema with every local reference replaced by its target, so the tool's schema
    /// stands alone (function-calling APIs do not follow references). Recursive schemas stop
    /// at a depth and accept anything below it.
    static func inline(_ schema: JSONValue, in document: JSONValue, location: String, depth: Int) throws(OpenAPIImportError) -> JSONValue {
        switch schema {
        case .object(let object):
            if object["$ref"] != nil {
                // Only reference hops count: a recursive schema stops here and accepts anything below.
                guard depth < 32 else { return [:] }
                return try inline(try resolve(schema, in: document, location: location), in: document, location: location, depth: depth + 1)
            }
            var out = JSONObject()
            for (key, value) in object { out[key] = try inline(value, in: document, location: location, depth: depth) }
            return .object(out)
        case .array(let items):
            var out: [JSONValue] = []
            for item in items { out.append(try inline(item, in: document, location: location, depth: depth)) }
            return .array(out)
        default:
            return schema
        }
    }
}
