public import InterlockCore

/// Reads token usage from provider payloads.
public enum UsageReading {
    /// OpenAI `usage` object (chat completions, embeddings, stream usage chunks).
    public static func openAI(_ usage: JSONValue?) -> TokenUsage? {
        guard let usage, case .object = usage else { return nil }
        let input = Int(clamping: usage["prompt_tokens"]?.int64Value ?? 0)
        let output = Int(clamping: usage["completion_tokens"]?.int64Value ?? 0)
        let cached = Int(clamping: usage["prompt_tokens_details"]?["cached_tokens"]?.int64Value ?? 0)
        return TokenUsage(inputTokens: input, outputTokens: output, cachedInputTokens: cached)
    }

    /// Anthropic `usage` object. Anthropic counts cache reads and writes apart from
    /// `input_tokens`; Interlock's input count includes them.
    public static func anthropic(_ usage: JSONValue?) -> TokenUsage? {
        guard let usage, case .object = usage else { return nil }
        let input = Int(clamping: usage["input_tokens"]?.int64Value ?? 0)
        let cacheRead = Int(clamping: usage["cache_read_input_tokens"]?.int64Value ?? 0)
        let cacheWrite = Int(clamping: usage["cache_creation_input_tokens"]?.int64Value ?? 0)
        let output = Int(clamping: usage["output_tokens"]?.int64Value ?? 0)
        return TokenUsage(inputTokens: input + cacheRead + cacheWrite, outputTokens: output, cachedInputTokens: cacheRead)
    }

    /// Usage of a complete (non-streamed) response body in its native format, read where the
    /// bytes are (the response buffer, no copy). Only the top-level `usage` member is decoded.
    public static func fromBody(_ body: UnsafeRawBufferPointer, format: WireFormat) -> TokenUsage? {
        guard let members = try? JSONParser.scanObject(body), let span = members.first(where: { $0.key == "usage" }) else {
            return nil
        }
        let value = try? JSONParser.parse(UnsafeRawBufferPointer(rebasing: body[span.valueRange]))
        switch format {
        case .openAI: return openAI(value)
        case .anthropic: return anthropic(value)
        }
    }
}
