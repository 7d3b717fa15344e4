/// What the agent asked a model for.
public enum ModelOperation: String, Sendable {
    case chat
    case embeddings
}

/// An agent's model request, read just enough to govern and route it.
///
/// The body stays as the bytes the agent sent. Only the members routing and accounting need
/// are located (`model`, `stream`, `max_tokens`, ...) and the known parameters are type-checked
/// from their first byte, so a request that is passed through to a provider of the same
/// format is never decoded into Swift objects.
public struct ModelRequest: Sendable {
    public var format: WireFormat
    public var operation: ModelOperation
    public var body: [UInt8]
    public var members: [JSONMemberSpan]
    public var alias: String
    public var stream: Bool
    /// `max_tokens` / `max_completion_tokens` when the request sets one.
    public var maxOutputTokens: Int?
    /// The client asked for `stream_options.include_usage` itself.
    public var clientWantsStreamUsage: Bool
    /// Rough prompt size in tokens, for admission only; real usage replaces it afterwards.
    public var estimatedInputTokens: Int

    public func member(_ key: String) -> JSONMemberSpan? {
        members.first { $0.key == key }
    }

    /// Decodes one member's value (small values only: the hot path avoids this for large ones).
    public func value(_ key: String) -> JSONValue? {
        member(key).flatMap { Self.decode(body, $0.valueRange) }
    }

    /// Decodes the value at `range` of `body` in place (no copy of its bytes).
    private static func decode(_ body: [UInt8], _ range: Range<Int>) -> JSONValue? {
        body.withUnsafeBytes { bytes in try? JSONParser.parse(UnsafeRawBufferPointer(rebasing: bytes[range])) }
    }

    /// Decodes the whole body; used when a request must be translated to another format.
    public func decodedBody() throws(GatewayError) -> JSONObject {
        do {
            guard case .object(let object) = try JSONParser.parse(body) else {
                throw GatewayError.invalidRequest("The request body must be a JSON object.", code: "invalid_json")
            }
            return object
        } catch let error as JSONSyntaxError {
            throw GatewayError.invalidRequest("The request body is not valid JSON: \(error).", code: "invalid_json")
        } catch let error as GatewayError {
            throw error
        } catch {
            preconditionFailure("unreachable")
        }
    }

    /// Tokens to reserve for this request: the prompt estimate plus the most it may produce.
    public func expectedUsage(defaultMaxOutputTokens: Int) -> TokenUsage {
        switch operation {
        case .embeddings:
            return TokenUsage(inputTokens: estimatedInputTokens, outputTokens: 0)
        case .chat:
            return TokenUsage(inputTokens: estimatedInputTokens, outputTokens: maxOutputTokens ?? defaultMaxOutputTokens)
        }
    }
}

extension ModelRequest {
    private enum Expected {
        case kinds([JSONKind])
        case integer(minimum: Int64)
        case number(range: ClosedRange<Double>)

        var description: String {
            switch self {
            case .kinds(let kinds): return kinds.map { "a" + ($0 == .object || $0 == .array ? "n " : " ") + $0.name }.joined(separator: " or ")
            case .integer(let minimum): return "an integer ≥ \(minimum)"
            case .number(let range): return "a number between \(JSONWriter.formatNumber(range.lowerBound)) and \(JSONWriter.formatNumber(range.upperBound))"
            }
        }
    }

    private static let openAIChatParameters: [String: Expected] = [
        "model": .kinds([.string]), "messages": .kinds([.array]), "stream": .kinds([.bool, .null]),
        "temperature": .number(range: 0...2), "top_p": .number(range: 0...1), "n": .integer(minimum: 1),
        "max_tokens": .integer(minimum: 1), "max_completion_tokens": .integer(minimum: 1),
        "stop": .kinds([.string, .array, .null]), "presence_penalty": .number(range: -2...2),
        "frequency_penalty": .number(range: -2...2), "logit_bias": .kinds([.object, .null]), "user": .kinds([.string]),
        "seed": .integer(minimum: Int64.min), "tools": .kinds([.array]), "tool_choice": .kinds([.string, .object]),
        "parallel_tool_calls": .kinds([.bool]), "response_format": .kinds([.object]), "stream_options": .kinds([.object, .null]),
        "logprobs": .kinds([.bool, .null]), "top_logprobs": .integer(minimum: 0), "functions": .kinds([.array]),
        "function_call": .kinds([.string, .object]), "metadata": .kinds([.object, .null]), "store": .kinds([.bool, .null]),
        "reasoning_effort": .kinds([.string, .null]), "service_tier": .kinds([.string, .null]), "modalities": .kinds([.array, .null]),
        "prediction": .kinds([.object, .null]), "audio": .kinds([.object, .null]),
    ]

    private static let openAIEmbeddingParameters: [String: Expected] = [
        "model": .kinds([.string]), "input": .kinds([.string, .array]), "encoding_format": .kinds([.string]),
        "dimensions": .integer(minimum: 1), "user": .kinds([.string]),
    ]

    private static let anthropicParameters: [String: Expected] = [
        "model": .kinds([.string]), "messages": .kinds([.array]), "max_tokens": .integer(minimum: 1),
        "system": .kinds([.string, .array]), "stop_sequences": .kinds([.array]), "stream": .kinds([.bool]),
        "temperature": .number(range: 0...1), "top_p": .number(range: 0...1), "top_k": .integer(minimum: 0),
        "tools": .kinds([.array]), "tool_choice": .kinds([.object]), "metadata": .kinds([.object]),
        "thinking": .kinds([.object]), "service_tier": .kinds([.string]),
    ]

    /// Reads and checks an agent's request. Throws a 400 naming the parameter at fault.
    public static func parse(body: [UInt8], format: WireFormat, operation: ModelOperation) throws(GatewayError) -> ModelRequest {
        guard !body.isEmpty else {
            throw GatewayError.invalidRequest("The request body is empty; expected a JSON object.", code: "invalid_json")
        }
        let members: [JSONMemberSpan]
        do {
            members = try JSONParser.scanObject(body)
        } catch {
            throw GatewayError.invalidRequest("The request body is not valid JSON: \(error).", code: "invalid_json")
        }
        let parameters: [String: Expected] =
            switch (format, operation) {
            case (.openAI, .chat): openAIChatParameters
            case (.openAI, .embeddings): openAIEmbeddingParameters
            case (.anthropic, _): anthropicParameters
            }
        // A request has a dozen members or so: comparing each with those before it costs less
        // than a set of their names. Many members (a hostile body) take the set.
        var seen: Set<String>? = members.count > 16 ? Set(minimumCapacity: members.count) : nil
        for (index, member) in members.enumerated() {
            let repeated: Bool
            if seen != nil {
                repeated = seen?.insert(member.key).inserted == false
            } else {
                repeated = members[..<index].contains { $0.key == member.key }
            }
            guard !repeated else {
                throw GatewayError.invalidRequest("The parameter '\(member.key)' appears more than once.", param: member.key)
            }
            guard let expected = parameters[member.key] else { continue }
            try check(member, expected: expected, body: body)
        }
        func require(_ key: String) throws(GatewayError) {
            guard seen?.contains(key) ?? members.contains(where: { $0.key == key }) else {
                throw GatewayError.invalidRequest("Missing required parameter: '\(key)'.", code: "missing_required_parameter", param: key)
            }
        }
        try require("model")
        switch operation {
        case .chat: try require("messages")
        case .embeddings: try require("input")
        }
        if format == .anthropic { try require("max_tokens") }

        var request = ModelRequest(
            format: format, operation: operation, body: body, members: members, alias: "", stream: false,
            maxOutputTokens: nil, clientWantsStreamUsage: false, estimatedInputTokens: 0)
        guard case .string(let alias)? = request.value("model"), !alias.isEmpty else {
            throw GatewayError.invalidRequest("The parameter 'model' must be a non-empty string.", param: "model")
        }
        request.alias = alias
        if operation == .chat, request.member("messages").map({ body[$0.valueRange].lazy.filter { $0 > 0x20 }.prefix(2).elementsEqual([0x5B, 0x5D]) }) == true {
            throw GatewayError.invalidRequest("The parameter 'messages' must contain at least one message.", param: "messages")
        }
        request.stream = request.value("stream")?.boolValue ?? false
        if operation == .embeddings, request.stream {
            throw GatewayError.invalidRequest("Embeddings cannot be streamed.", param: "stream")
        }
        let limit = request.value("max_completion_tokens") ?? request.value("max_tokens")
        // Passed upstream as the agent sent it; Interlock's own estimate takes it capped.
        request.maxOutputTokens = limit?.int64Value.map { TokenUsage.count($0) }
        request.clientWantsStreamUsage = request.value("stream_options")?["include_usage"]?.boolValue ?? false
        // English runs about four bytes per token and CJK about three; JSON syntax adds bytes
        // that are not tokens. Three bytes per token over-reserves slightly, which is the safe side.
        request.estimatedInputTokens = max(1, body.count / 3)
        return request
    }

    private static func check(_ member: JSONMemberSpan, expected: Expected, body: [UInt8]) throws(GatewayError) {
        func fail(_ found: String) -> GatewayError {
            GatewayError.invalidRequest(
                "Invalid type for '\(member.key)': expected \(expected.description), but got \(found).",
                code: "invalid_parameter", param: member.key)
        }
        switch expected {
        case .kinds(let kinds):
            guard kinds.contains(member.kind) else { throw fail(member.kind.name) }
        case .integer(let minimum):
            guard member.kind == .number, let value = decode(body, member.valueRange),
                let integer = value.int64Value
            else { throw fail(member.kind == .number ? "a non-integer number" : member.kind.name) }
            guard integer >= minimum else {
                throw GatewayError.invalidRequest(
                    "Invalid value for '\(member.key)': expected \(expected.description), but got \(integer).",
                    code: "invalid_parameter", param: member.key)
            }
        case .number(let range):
            guard member.kind == .number, let value = decode(body, member.valueRange)?.doubleValue else {
                throw fail(member.kind.name)
            }
            guard range.contains(value) else {
                throw GatewayError.invalidRequest(
                    "Invalid value for '\(member.key)': expected \(expected.description), but got \(JSONWriter.formatNumber(value)).",
                    code: "invalid_parameter", param: member.key)
            }
        }
    }
}
