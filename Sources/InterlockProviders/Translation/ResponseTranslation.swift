public import InterlockCore

/// Translates complete (non-streamed) responses between the OpenAI and Anthropic formats.
public enum ResponseTranslation {
    public static func openAIFinishReason(fromAnthropic reason: String?) -> JSONValue {
        switch reason {
        case "end_turn"?, "stop_sequence"?: "stop"
        case "max_tokens"?: "length"
        case "tool_use"?: "tool_calls"
        case "refusal"?: "content_filter"
        case nil: .null
        default: "stop"
        }
    }

    public static func anthropicStopReason(fromOpenAI reason: String?) -> JSONValue {
        switch reason {
        case "stop"?: "end_turn"
        case "length"?: "max_tokens"
        case "tool_calls"?, "function_call"?: "tool_use"
        case "content_filter"?: "refusal"
        case nil: .null
        default: "end_turn"
        }
    }

    public static func openAIUsage(_ usage: TokenUsage) -> JSONValue {
        [
            "prompt_tokens": .integer(Int64(usage.inputTokens)),
            "completion_tokens": .integer(Int64(usage.outputTokens)),
            "total_tokens": .integer(Int64(usage.totalTokens)),
            "prompt_tokens_details": ["cached_tokens": .integer(Int64(usage.cachedInputTokens))],
        ]
    }

    public static func anthropicUsage(_ usage: TokenUsage) -> JSONValue {
        [
            "input_tokens": .integer(Int64(usage.inputTokens - usage.cachedInputTokens)),
            "output_tokens": .integer(Int64(usage.outputTokens)),
            "cache_read_input_tokens": .integer(Int64(usage.cachedInputTokens)),
            "cache_creation_input_tokens": 0,
        ]
    }

    public static func openAIResponse(fromAnthropic response: JSONObject, model: String, created: Int64) -> JSONObject {
        var text: [String] = []
        var calls: [JSONValue] = []
        if case .array(let blocks)? = response["content"] {
            for block in blocks {
                switch block["type"]?.stringValue {
                case "text": text.append(block["text"]?.stringValue ?? "")
                case "tool_use":
                    calls.append([
                        "id": block["id"] ?? "", "type": "function",
                        "function": ["name": block["name"] ?? "", "arguments": .string(JSONWriter.string(block["input"] ?? [:]))],
                    ])
                default: break
                }
            }
        }
        var message: JSONObject = ["role": "assistant", "content": text.isEmpty ? .null : .string(text.joined())]
        if !calls.isEmpty { message["tool_calls"] = .array(calls) }
        let usage = UsageReading.anthropic(response["usage"]) ?? .zero
        return [
            "id": .string("chatcmpl-" + (response["id"]?.stringValue ?? "interlock")),
            "object": "chat.completion",
            "created": .integer(created),
            "model": .string(model),
            "choices": [[
                "index": 0, "message": .object(message), "logprobs": .null,
                "finish_reason": openAIFinishReason(fromAnthropic: response["stop_reason"]?.stringValue),
            ]],
            "usage": openAIUsage(usage),
        ]
    }

    public static func anthropicResponse(fromOpenAI response: JSONObject, model: String) -> JSONObject {
        var content: [JSONValue] = []
        let choice = response["choices"]?.arrayValue?.first
        let message = choice?["message"]
        if let text = message?["content"]?.stringValue, !text.isEmpty {
            content.append(["type": "text", "text": .string(text)])
        }
        if case .array(let calls)? = message?["tool_calls"] {
            for call in calls {
                let arguments = call["function"]?["arguments"]?.stringValue ?? "{}"
                let input = (try? JSONParser.parse(arguments)).flatMap { $0.objectValue.map(JSONValue.object) } ?? .object([:])
                content.append(["type": "tool_use", "id": call["id"] ?? "", "name": call["function"]?["name"] ?? "", "input": input])
            }
        }
        let usage = UsageReading.openAI(response["usage"]) ?? .zero
        let id = response["id"]?.stringValue ?? "interlock"
        return [
            "id": .string(id.hasPrefix("msg_") ? id : "msg_" + id),
            "type": "message",
            "role": "assistant",
            "model": .string(model),
            "content": .array(content),
            "stop_reason": anthropicStopReason(fromOpenAI: choice?["finish_reason"]?.stringValue),
            "stop_sequence": .null,
            "usage": anthropicUsage(usage),
        ]
    }

    /// The human-readable message of a provider error body, if it has one.
    public static func errorMessage(fromBody body: [UInt8]) -> String? {
        guard let value = try? JSONParser.parse(body) else { return nil }
        return value["error"]?["message"]?.stringValue ?? value["message"]?.stringValue ?? value["error"]?.stringValue
    }
}
