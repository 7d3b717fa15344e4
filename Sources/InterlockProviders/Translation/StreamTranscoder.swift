public import InterlockCore

/// Turns an upstream model stream (Server-Sent Events in the provider's format) into the
/// stream the agent expects, and keeps count of usage on the way.
///
/// Same format: events pass through untouched except a usage-only chunk Interlock itself
/// asked for, which the agent did not. Across formats: events are rebuilt one by one, so
/// the agent receives text and tool-call fragments as soon as the upstream sends them.
public struct StreamTranscoder: Sendable {
    public enum Mode: Sendable {
        case openAIPassthrough
        case anthropicPassthrough
        case anthropicToOpenAI
        case openAIToAnthropic
    }

    public let mode: Mode
    private let alias: String
    private let clientWantsUsage: Bool
    private let created: Int64
    private let fallbackID: String

    /// Usage as the upstream reported it, when it did.
    public private(set) var reportedUsage: TokenUsage?
    /// Output fragments delivered to the agent; about one token each. Bills a stream cut short.
    public private(set) var deliveredFragments = 0
    /// The upstream finished its stream properly.
    public private(set) var sawEnd = false

    // Cross-format state.
    private var messageID: String?
    private var started = false
    private var finishReason: String?
    private var openBlock: (index: Int, isTool: Bool, toolIndex: Int?)?
    private var nextBlockIndex = 0
    private var toolIndexForBlock: [Int: Int] = [:]
    private var nextToolIndex = 0
    private var partialUsage = TokenUsage.zero

    public init(from upstream: WireFormat, to client: WireFormat, alias: String, clientWantsUsage: Bool, created: Int64, requestID: String) {
        switch (upstream, client) {
        case (.openAI, .openAI): mode = .openAIPassthrough
        case (.anthropic, .anthropic): mode = .anthropicPassthrough
        case (.anthropic, .openAI): mode = .anthropicToOpenAI
        case (.openAI, .anthropic): mode = .openAIToAnthropic
        }
        self.alias = alias
        self.clientWantsUsage = clientWantsUsage
        self.created = created
        self.fallbackID = requestID
    }

    /// Consumes one upstream event; returns the bytes to send to the agent (possibly none).
    public mutating func transcode(_ event: ServerSentEvent) -> [UInt8] {
        switch mode {
        case .openAIPassthrough: return openAIPassthrough(event)
        case .anthropicPassthrough: return anthropicPassthrough(event)
        case .anthropicToOpenAI: return anthropicToOpenAI(event)
        case .openAIToAnthropic: return openAIToAnthropic(event)
        }
    }

    /// The upstream stream ended. `completed` is false when it broke off; the agent then gets
    /// an error event in its own format rather than a silently truncated answer.
    public mutating func finish(completed: Bool, interruption: StreamInterruption = .upstreamBroke) -> [UInt8] {
        guard !sawEnd else { return [] }
        switch mode {
        case .openAIPassthrough, .anthropicToOpenAI:
            if completed {
                sawEnd = true
                return ServerSentEvent(data: "[DONE]").encoded()
            }
            return ServerSentEvent(data: JSONWriter.bytes([
                "error": ["message": .string(interruption.message), "type": .string(interruption.type), "code": .string(interruption.code)],
            ])).encoded()
        case .anthropicPassthrough, .openAIToAnthropic:
            if completed, mode == .openAIToAnthropic {
                return closeAnthropicMessage()
            }
            return ServerSentEvent(event: "error", data: JSONWriter.bytes([
                "type": "error", "error": ["type": .string(interruption.type), "message": .string(interruption.message)],
            ])).encoded()
        }
    }

    // MARK: - Passthrough

    private static let usageMarker = Array("\"usage\"".utf8)

    private static func containsUsageObject(_ data: [UInt8]) -> Bool {
        let marker = usageMarker
        guard data.count > marker.count else { return false }
        var index = 0
        while index + marker.count <= data.count {
            if data[index] == marker[0], data[index..<(index + marker.count)].elementsEqual(marker) {
                var cursor = index + marker.count
                while cursor < data.count, data[cursor] == 0x20 || data[cursor] == UInt8(ascii: ":") { cursor += 1 }
                if cursor < data.count, data[cursor] == UInt8(ascii: "{") { return true }
            }
            index += 1
        }
        return false
    }

    private mutating func openAIPassthrough(_ event: ServerSentEvent) -> [UInt8] {
        if event.isDone {
            sawEnd = true
            return event.encoded()
        }
        if StreamTranscoder.containsUsageObject(event.data), let chunk = try? JSONParser.parse(event.data) {
            reportedUsage = UsageReading.openAI(chunk["usage"])
            let choices = chunk["choices"]?.arrayValue ?? []
            if choices.isEmpty, !clientWantsUsage { return [] }
        } else {
            deliveredFragments += 1
        }
        return event.encoded()
    }

    private mutating func anthropicPassthrough(_ event: ServerSentEvent) -> [UInt8] {
        switch event.event {
        case "message_start":
            if let value = try? JSONParser.parse(event.data), let usage = UsageReading.anthropic(value["message"]?["usage"]) {
                partialUsage = usage
            }
        case "message_delta":
            if let value = try? JSONParser.parse(event.data), let usage = value["usage"] {
                mergeAnthropicDeltaUsage(usage)
                reportedUsage = partialUsage
            }
        case "content_block_delta":
            deliveredFragments += 1
        case "message_stop":
            sawEnd = true
        default:
            break
        }
        return event.encoded()
    }

    private mutating func mergeAnthropicDeltaUsage(_ usage: JSONValue) {
        if let output = usage["output_tokens"]?.int64Value { partialUsage.outputTokens = TokenUsage.count(output) }
        if usage["input_tokens"] != nil, let reported = UsageReading.anthropic(usage), reported.inputTokens > 0 {
            partialUsage.inputTokens = reported.inputTokens
            partialUsage.cachedInputTokens = reported.cachedInputTokens
        }
    }

    // MARK: - Anthropic → OpenAI

    private func openAIChunk(delta: JSONValue, finishReason: JSONValue = .null) -> [UInt8] {
        let chunk: JSONValue = [
            "id": .string("chatcmpl-" + (messageID ?? fallbackID)), "object": "chat.completion.chunk",
            "created": .integer(created), "model": .string(alias),
            "choices": [["index": 0, "delta": delta, "logprobs": .null, "finish_reason": finishReason]],
        ]
        return ServerSentEvent(data: JSONWriter.bytes(chunk)).encoded()
    }

    private mutating func anthropicToOpenAI(_ event: ServerSentEvent) -> [UInt8] {
        guard let value = try? JSONParser.parse(event.data) else { return [] }
        let type = value["type"]?.stringValue ?? event.event
        switch type {
        case "message_start":
            messageID = value["message"]?["id"]?.stringValue
            if let usage = UsageReading.anthropic(value["message"]?["usage"]) { partialUsage = usage }
            return openAIChunk(delta: ["role": "assistant", "content": ""])
        case "content_block_start":
            let block = value["content_block"]
            let index = Int(clamping: value["index"]?.int64Value ?? 0)
            guard block?["type"]?.stringValue == "tool_use" else { return [] }
            let toolIndex = nextToolIndex
            nextToolIndex += 1
            toolIndexForBlock[index] = toolIndex
            deliveredFragments += 1
            return openAIChunk(delta: ["tool_calls": [[
                "index": .integer(Int64(toolIndex)), "id": block?["id"] ?? "", "type": "function",
                "function": ["name": block?["name"] ?? "", "arguments": ""],
            ]]])
        case "content_block_delta":
            let delta = value["delta"]
            let index = Int(clamping: value["index"]?.int64Value ?? 0)
            deliveredFragments += 1
            switch delta?["type"]?.stringValue {
            case "text_delta":
                return openAIChunk(delta: ["content": delta?["text"] ?? ""])
            case "input_json_delta":
                guard let toolIndex = toolIndexForBlock[index] else { return [] }
                return openAIChunk(delta: ["tool_calls": [["index": .integer(Int64(toolIndex)), "function": ["arguments": delta?["partial_json"] ?? ""]]]])
            default:
                return []
            }
        case "message_delta":
            if let reason = value["delta"]?["stop_reason"]?.stringValue { finishReason = reason }
            if let usage = value["usage"] { mergeAnthropicDeltaUsage(usage) }
            reportedUsage = partialUsage
            return []
        case "message_stop":
            sawEnd = true
            var out = openAIChunk(delta: [:], finishReason: ResponseTranslation.openAIFinishReason(fromAnthropic: finishReason ?? "end_turn"))
            if clientWantsUsage {
                let chunk: JSONValue = [
                    "id": .string("chatcmpl-" + (messageID ?? fallbackID)), "object": "chat.completion.chunk",
                    "created": .integer(created), "model": .string(alias), "choices": [],
                    "usage": ResponseTranslation.openAIUsage(reportedUsage ?? partialUsage),
                ]
                out += ServerSentEvent(data: JSONWriter.bytes(chunk)).encoded()
            }
            out += ServerSentEvent(data: "[DONE]").encoded()
            return out
        case "error":
            let message = value["error"]?["message"]?.stringValue ?? "The upstream reported an error."
            return ServerSentEvent(data: JSONWriter.bytes(["error": ["message": .string(message), "type": "api_error", "code": "upstream_error"]])).encoded()
        default:
            return []
        }
    }

    // MARK: - OpenAI → Anthropic

    private static func anthropicEvent(_ name: String, _ payload: JSONValue) -> [UInt8] {
        ServerSentEvent(event: name, data: JSONWriter.bytes(payload)).encoded()
    }

    private mutating func startAnthropicMessage(id: String?) -> [UInt8] {
        guard !started else { return [] }
        started = true
        messageID = id
        let rawID = id ?? fallbackID
        return StreamTranscoder.anthropicEvent("message_start", [
            "type": "message_start",
            "message": [
                "id": .string(rawID.hasPrefix("msg_") ? rawID : "msg_" + rawID), "type": "message", "role": "assistant",
                "model": .string(alias), "content": [], "stop_reason": .null, "stop_sequence": .null,
                "usage": ["input_tokens": 0, "output_tokens": 0],
            ],
        ])
    }

    private mutating func closeOpenBlock() -> [UInt8] {
        guard let block = openBlock else { return [] }
        openBlock = nil
        return StreamTranscoder.anthropicEvent("content_block_stop", ["type": "content_block_stop", "index": .integer(Int64(block.index))])
    }

    private mutating func openAIToAnthropic(_ event: ServerSentEvent) -> [UInt8] {
        if event.isDone { return closeAnthropicMessage() }
        guard let chunk = try? JSONParser.parse(event.data) else { return [] }
        var out = startAnthropicMessage(id: chunk["id"]?.stringValue)
        if let error = chunk["error"] {
            out += StreamTranscoder.anthropicEvent("error", ["type": "error", "error": ["type": "api_error", "message": error["message"] ?? "upstream error"]])
            return out
        }
        if let usage = UsageReading.openAI(chunk["usage"]) { reportedUsage = usage }
        guard let choice = chunk["choices"]?.arrayValue?.first else { return out }
        let delta = choice["delta"]
        if let text = delta?["content"]?.stringValue, !text.isEmpty {
            if openBlock == nil || openBlock?.isTool == true {
                out += closeOpenBlock()
                openBlock = (nextBlockIndex, false, nil)
                out += StreamTranscoder.anthropicEvent("content_block_start", [
                    "type": "content_block_start", "index": .integer(Int64(nextBlockIndex)), "content_block": ["type": "text", "text": ""],
                ])
                nextBlockIndex += 1
            }
            deliveredFragments += 1
            out += StreamTranscoder.anthropicEvent("content_block_delta", [
                "type": "content_block_delta", "index": .integer(Int64(openBlock!.index)), "delta": ["type": "text_delta", "text": .string(text)],
            ])
        }
        if case .array(let calls)? = delta?["tool_calls"] {
            for call in calls {
                let toolIndex = Int(clamping: call["index"]?.int64Value ?? 0)
                if openBlock?.toolIndex != toolIndex {
                    out += closeOpenBlock()
                    openBlock = (nextBlockIndex, true, toolIndex)
                    out += StreamTranscoder.anthropicEvent("content_block_start", [
                        "type": "content_block_start", "index": .integer(Int64(nextBlockIndex)),
                        "content_block": ["type": "tool_use", "id": call["id"] ?? .string("toolu_\(toolIndex)"), "name": call["function"]?["name"] ?? "", "input": [:]],
                    ])
                    nextBlockIndex += 1
                }
                if let fragment = call["function"]?["arguments"]?.stringValue, !fragment.isEmpty {
                    deliveredFragments += 1
                    out += StreamTranscoder.anthropicEvent("content_block_delta", [
                        "type": "content_block_delta", "index": .integer(Int64(openBlock!.index)),
                        "delta": ["type": "input_json_delta", "partial_json": .string(fragment)],
                    ])
                }
            }
        }
        if let reason = choice["finish_reason"]?.stringValue { finishReason = reason }
        return out
    }

    private mutating func closeAnthropicMessage() -> [UInt8] {
        guard !sawEnd else { return [] }
        sawEnd = true
        var out = startAnthropicMessage(id: nil)
        out += closeOpenBlock()
        let usage = reportedUsage ?? TokenUsage(outputTokens: deliveredFragments)
        out += StreamTranscoder.anthropicEvent("message_delta", [
            "type": "message_delta",
            "delta": ["stop_reason": ResponseTranslation.anthropicStopReason(fromOpenAI: finishReason ?? "stop"), "stop_sequence": .null],
            "usage": ResponseTranslation.anthropicUsage(usage),
        ])
        out += StreamTranscoder.anthropicEvent("message_stop", ["type": "message_stop"])
        return out
    }
}

/// Why a stream stops before the upstream finished it: the error event the agent gets.
public struct StreamInterruption: Sendable {
    public var type: String
    public var code: String
    public var message: String

    public init(type: String, code: String, message: String) {
        self.type = type
        self.code = code
        self.message = message
    }

    public static let upstreamBroke = StreamInterruption(
        type: "api_error", code: "upstream_stream_interrupted", message: "The upstream stream ended before it was complete.")

    public static let eventTooLargeCode = "upstream_event_too_large"

    /// An upstream event outgrew the gateway's bound (`gateway.max_stream_event_bytes`).
    public static func eventTooLarge(limitBytes: Int) -> StreamInterruption {
        StreamInterruption(
            type: "api_error", code: eventTooLargeCode,
            message: "The upstream sent an event of more than \(limitBytes) bytes; the stream was stopped.")
    }

    public static func agentDisabled(_ agentID: String) -> StreamInterruption {
        StreamInterruption(type: "authentication_error", code: "agent_disabled", message: "Agent '\(agentID)' was disabled; the stream was stopped.")
    }
}
