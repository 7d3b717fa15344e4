public import InterlockCore

/// Translates request bodies between the OpenAI chat completions and Anthropic messages formats.
public enum RequestTranslation {
    // MARK: OpenAI → Anthropic

    public static func anthropicBody(fromOpenAI request: JSONObject, model: String, defaultMaxTokens: Int) throws(GatewayError) -> JSONObject {
        var out = JSONObject()
        out["model"] = .string(model)
        var systemParts: [String] = []
        var messages: [(role: String, blocks: [JSONValue])] = []

        func append(role: String, blocks: [JSONValue]) {
            guard !blocks.isEmpty else { return }
            if let last = messages.last, last.role == role {
                messages[messages.count - 1].blocks += blocks
            } else {
                messages.append((role, blocks))
            }
        }

        guard case .array(let inputMessages)? = request["messages"] else {
            throw .invalidRequest("'messages' must be an array.", param: "messages")
        }
        for (index, message) in inputMessages.enumerated() {
            guard case .object(let object) = message, let role = object["role"]?.stringValue else {
                throw .invalidRequest("messages[\(index)] must be an object with a string 'role'.", param: "messages[\(index)].role")
            }
            switch role {
            case "system", "developer":
                systemParts.append(textOf(object["content"]))
            case "user":
                append(role: "user", blocks: try anthropicBlocks(fromOpenAIContent: object["content"], index: index))
            case "assistant":
                var blocks: [JSONValue] = []
                let text = textOf(object["content"])
                if !text.isEmpty { blocks.append(["type": "text", "text": .string(text)]) }
                if case .array(let calls)? = object["tool_calls"] {
                    for call in calls {
                        let arguments = call["function"]?["arguments"]?.stringValue ?? "{}"
                        let input = (try? JSONParser.parse(arguments)).flatMap { $0.objectValue.map(JSONValue.object) } ?? .object(JSONObject())
                        blocks.append([
                            "type": "tool_use", "id": call["id"] ?? .string("call_\(index)"),
                            "name": call["function"]?["name"] ?? "", "input": input,
                        ])
                    }
                }
                if blocks.isEmpty { blocks.append(["type": "text", "text": ""]) }
                append(role: "assistant", blocks: blocks)
            case "tool", "function":
                let id = object["tool_call_id"]?.stringValue ?? object["name"]?.stringValue ?? "call_\(index)"
                append(role: "user", blocks: [["type": "tool_result", "tool_use_id": .string(id), "content": .string(textOf(object["content"]))]])
            default:
                throw .invalidRequest("messages[\(index)].role '\(role)' is not one of system, developer, user, assistant, tool.", param: "messages[\(index)].role")
            }
        }
        if let format = request["response_format"], let type = format["type"]?.stringValue, type != "text" {
            var instruction = "Respond only with a single valid JSON object, with no text before or after it."
            if let schema = format["json_schema"]?["schema"] {
                instruction += " The object must conform to this JSON schema: " + JSONWriter.string(schema)
            }
            systemParts.append(instruction)
        }
        let system = systemParts.filter { !$0.isEmpty }.joined(separator: "\n\n")
        if !system.isEmpty { out["system"] = .string(system) }
        out["messages"] = .array(messages.map { ["role": .string($0.role), "content": .array($0.blocks)] })
        let maxTokens = request["max_completion_tokens"]?.int64Value ?? request["max_tokens"]?.int64Value ?? Int64(defaultMaxTokens)
        out["max_tokens"] = .integer(maxTokens)
        if let temperature = request["temperature"]?.doubleValue { out["temperature"] = .number(min(1, temperature)) }
        if let topP = request["top_p"], !topP.isNull { out["top_p"] = topP }
        switch request["stop"] {
        case .string(let stop)?: out["stop_sequences"] = [.string(stop)]
        case .array(let stops)?: out["stop_sequences"] = .array(stops)
        default: break
        }
        if request["stream"]?.boolValue == true { out["stream"] = true }
        if let user = request["user"]?.stringValue { out["metadata"] = ["user_id": .string(user)] }
        if case .array(let tools)? = request["tools"], !tools.isEmpty {
            out["tools"] = .array(tools.compactMap { tool -> JSONValue? in
                guard let function = tool["function"] else { return nil }
                var converted: JSONObject = ["name": function["name"] ?? ""]
                if let description = function["description"] { converted["description"] = description }
                converted["input_schema"] = function["parameters"] ?? ["type": "object", "properties": [:]]
                return .object(converted)
            })
        }
        var toolChoice: JSONObject?
        switch request["tool_choice"] {
        case .string("none")?: toolChoice = ["type": "none"]
        case .string("auto")?: toolChoice = ["type": "auto"]
        case .string("required")?: toolChoice = ["type": "any"]
        case .object(let choice)?:
            if let name = choice["function"]?["name"] { toolChoice = ["type": "tool", "name": name] }
        default: break
        }
        if request["parallel_tool_calls"]?.boolValue == false, out["tools"] != nil {
            if toolChoice == nil { toolChoice = ["type": "auto"] }
            toolChoice?["disable_parallel_tool_use"] = true
        }
        if let toolChoice, out["tools"] != nil || toolChoice["type"] == "none" { out["tool_choice"] = .object(toolChoice) }
        return out
    }

    private static func anthropicBlocks(fromOpenAIContent content: JSONValue?, index: Int) throws(GatewayError) -> [JSONValue] {
        switch content {
        case .string(let text)?:
            return [["type": "text", "text": .string(text)]]
        case .array(let parts)?:
            var blocks: [JSONValue] = []
            for part in parts {
                switch part["type"]?.stringValue {
                case "text":
                    blocks.append(["type": "text", "text": part["text"] ?? ""])
                case "image_url":
                    let url = part["image_url"]?["url"]?.stringValue ?? part["image_url"]?.stringValue ?? ""
                    blocks.append(["type": "image", "source": imageSource(url: url)])
                default:
                    throw .invalidRequest("messages[\(index)].content has a part of unsupported type for this model.", param: "messages[\(index)].content")
                }
            }
            return blocks
        case nil, .null?:
            return []
        default:
            throw .invalidRequest("messages[\(index)].content must be a string or an array of parts.", param: "messages[\(index)].content")
        }
    }

    private static func imageSource(url: String) -> JSONValue {
        // data:[media type];base64,[data]
        if url.hasPrefix("data:"), let comma = url.firstIndex(of: ",") {
            let header = url[url.index(url.startIndex, offsetBy: 5)..<comma]
            let mediaType = header.split(separator: ";").first.map(String.init) ?? "image/png"
            return ["type": "base64", "media_type": .string(mediaType), "data": .string(String(url[url.index(after: comma)...]))]
        }
        return ["type": "url", "url": .string(url)]
    }

    /// The text of an OpenAI content value (string or parts) or an Anthropic block list.
    public static func textOf(_ content: JSONValue?) -> String {
        switch content {
        case .string(let text)?: return text
        case .array(let parts)?:
            return parts.compactMap { part -> String? in
                if let text = part.stringValue { return text }
                if part["type"]?.stringValue == "text" { return part["text"]?.stringValue }
                return nil
            }.joined(separator: "\n")
        default: return ""
        }
    }

    // MARK: Anthropic → OpenAI

    public static func openAIBody(fromAnthropic request: JSONObject, model: String) throws(GatewayError) -> JSONObject {
        var out = JSONObject()
        out["model"] = .string(model)
        var messages: [JSONValue] = []
        let system = textOf(request["system"])
        if !system.isEmpty { messages.append(["role": "system", "content": .string(system)]) }
        guard case .array(let inputMessages)? = request["messages"] else {
            throw .invalidRequest("'messages' must be an array.", param: "messages")
        }
        for (index, message) in inputMessages.enumerated() {
            guard let role = message["role"]?.stringValue, role == "user" || role == "assistant" else {
                throw .invalidRequest("messages[\(index)].role must be 'user' or 'assistant'.", param: "messages[\(index)].role")
            }
            switch message["content"] {
            case .string(let text)?:
                messages.append(["role": .string(role), "content": .string(text)])
            case .array(let blocks)?:
                if role == "assistant" {
                    var text: [String] = []
                    var calls: [JSONValue] = []
                    for block in blocks {
                        switch block["type"]?.stringValue {
                        case "text": text.append(block["text"]?.stringValue ?? "")
                        case "tool_use":
                            calls.append([
                                "id": block["id"] ?? "", "type": "function",
                                "function": ["name": block["name"] ?? "", "arguments": .string(JSONWriter.string(block["input"] ?? [:]))],
                            ])
                        default: break  // thinking and other blocks have no OpenAI counterpart
                        }
                    }
                    var converted: JSONObject = ["role": "assistant"]
                    converted["content"] = text.isEmpty ? .null : .string(text.joined())
                    if !calls.isEmpty { converted["tool_calls"] = .array(calls) }
                    messages.append(.object(converted))
                } else {
                    var parts: [JSONValue] = []
                    for block in blocks {
                        switch block["type"]?.stringValue {
                        case "tool_result":
                            messages.append([
                                "role": "tool", "tool_call_id": block["tool_use_id"] ?? "",
                                "content": .string(textOf(block["content"])),
                            ])
                        case "text":
                            parts.append(["type": "text", "text": block["text"] ?? ""])
                        case "image":
                            let source = block["source"]
                            let url: String
                            if source?["type"]?.stringValue == "base64" {
                                url = "data:\(source?["media_type"]?.stringValue ?? "image/png");base64,\(source?["data"]?.stringValue ?? "")"
                            } else {
                                url = source?["url"]?.stringValue ?? ""
                            }
                            parts.append(["type": "image_url", "image_url": ["url": .string(url)]])
                        default:
                            throw .invalidRequest("messages[\(index)].content has a block of unsupported type for this model.", param: "messages[\(index)].content")
                        }
                    }
                    if !parts.isEmpty {
                        let onlyText = parts.allSatisfy { $0["type"] == "text" }
                        messages.append(["role": "user", "content": onlyText ? .string(parts.map { $0["text"]?.stringValue ?? "" }.joined(separator: "\n")) : .array(parts)])
                    }
                }
            default:
                throw .invalidRequest("messages[\(index)].content must be a string or an array of blocks.", param: "messages[\(index)].content")
            }
        }
        out["messages"] = .array(messages)
        if let maxTokens = request["max_tokens"] { out["max_tokens"] = maxTokens }
        if let temperature = request["temperature"] { out["temperature"] = temperature }
        if let topP = request["top_p"] { out["top_p"] = topP }
        if let stops = request["stop_sequences"] { out["stop"] = stops }
        if request["stream"]?.boolValue == true {
            out["stream"] = true
            out["stream_options"] = ["include_usage": true]
        }
        if let user = request["metadata"]?["user_id"] { out["user"] = user }
        if case .array(let tools)? = request["tools"], !tools.isEmpty {
            out["tools"] = .array(tools.map { tool in
                var function: JSONObject = ["name": tool["name"] ?? ""]
                if let description = tool["description"] { function["description"] = description }
                function["parameters"] = tool["input_schema"] ?? ["type": "object"]
                return ["type": "function", "function": .object(function)]
            })
        }
        if let choice = request["tool_choice"] {
            switch choice["type"]?.stringValue {
            case "auto": out["tool_choice"] = "auto"
            case "any": out["tool_choice"] = "required"
            case "none": out["tool_choice"] = "none"
            case "tool": out["tool_choice"] = ["type": "function", "function": ["name": choice["name"] ?? ""]]
            default: break
            }
            if choice["disable_parallel_tool_use"]?.boolValue == true, out["tools"] != nil { out["parallel_tool_calls"] = false }
        }
        return out
    }
}
