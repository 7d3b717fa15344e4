public import InterlockCore

/// Reads token usage from provider payloads.
public enum UsageReading {
    /// OpenAI `usage` object (chat completions, embeddings, stream usage chunks).
    public static func openAI(_ usage: JSONValue?) -> TokenUsage? {
        guard let usage, case .object = usage else { return nil }
        let input = TokenUsage.count(usage["prompt_tokens"]?.int64Value)
        let output = TokenUsage.count(usage["completion_tokens"]?.int64Value)
        let cached = TokenUsage.count(usage["prompt_tokens_details"]?["cached_tokens"]?.int64Value)
        return TokenUsage(inputTokens: input, outputTokens: output, cachedInputTokens: cached)
    }

    /// Anthropic `usage` object. Anthropic counts cache reads and writes apart from
    /// `input_tokens`; Interlock's input count includes them.
    public static func anthropic(_ usage: JSONValue?) -> TokenUsage? {
        guard let usage, case .object = usage else { return nil }
        let input = TokenUsage.count(usage["input_tokens"]?.int64Value)
        let cacheRead = TokenUsage.count(usage["cache_read_input_tokens"]?.int64Value)
        let cacheWrite = TokenUsage.count(usage["cache_creation_input_tokens"]?.int64Value)
        let output = TokenUsage.count(usage["output_tokens"]?.int64Value)
        return TokenUsage(inputTokens: input + cacheRead + cacheWrite, outputTokens: output, cachedInputTokens: cacheRead)
    }

    /// Usage of a complete (non-streamed) response body in its native format, read where the
    /// bytes are (the response buffer, no copy). Only the top-level `usage` member's counts
    /// are decoded, found by name without building a `JSONValue`; the same numbers as
    /// `openAI(_:)` and `anthropic(_:)` read from the decoded object.
    public static func fromBody(_ body: UnsafeRawBufferPointer, format: WireFormat) -> TokenUsage? {
        guard let span = try? JSONParser.member(named: "usage", in: body), span.kind == .object else { return nil }
        let usage = UnsafeRawBufferPointer(rebasing: body[span.valueRange])
        switch format {
        case .openAI:
            let details = (try? JSONParser.member(named: "prompt_tokens_details", in: usage)).flatMap { span in
                span.kind == .object ? UnsafeRawBufferPointer(rebasing: usage[span.valueRange]) : nil
            }
            return TokenUsage(
                inputTokens: count("prompt_tokens", in: usage), outputTokens: count("completion_tokens", in: usage),
                cachedInputTokens: details.map { count("cached_tokens", in: $0) } ?? 0)
        case .anthropic:
            let cacheRead = count("cache_read_input_tokens", in: usage)
            return TokenUsage(
                inputTokens: count("input_tokens", in: usage) + cacheRead + count("cache_creation_input_tokens", in: usage),
                outputTokens: count("output_tokens", in: usage), cachedInputTokens: cacheRead)
        }
    }

    /// An integer member of a usage object; 0 when absent, negative or not an integer, and
    /// capped at `TokenUsage.maximumCount`.
    private static func count(_ name: String, in object: UnsafeRawBufferPointer) -> Int {
        guard let span = try? JSONParser.member(named: name, in: object), span.kind == .number else { return 0 }
        let number = UnsafeRawBufferPointer(rebasing: object[span.valueRange])
        // Counts are plain digits: read them as they are. Anything else (a sign, a fraction,
        // an exponent, 19 digits or more) goes through the parser.
        if (1...18).contains(number.count), number.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) {
            return TokenUsage.count(Int64(number.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }))
        }
        guard let value = try? JSONParser.parse(number) else { return 0 }
        return TokenUsage.count(value.int64Value)
    }
}
