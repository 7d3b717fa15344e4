public import InterlockCore

/// Turns an agent's request into the body a deployment's provider expects.
public enum RequestPreparation {
    /// Same format: the agent's bytes with `model` replaced (and, for OpenAI streams, usage
    /// requested) by splicing; no decoding. Different format: decode, translate, encode.
    public static func body(for request: ModelRequest, provider: ProviderSettings, deployment: DeploymentSettings, defaultMaxTokens: Int) throws(GatewayError) -> [UInt8] {
        let native = provider.kind.nativeFormat
        if request.operation == .embeddings, native != .openAI {
            throw GatewayError(kind: .invalidRequest, code: "operation_not_supported", message: "The model '\(request.alias)' does not support embeddings.", param: "model")
        }
        if native == request.format {
            var replacements: [String: [UInt8]] = [:]
            var modelBytes: [UInt8] = []
            JSONWriter.writeString(deployment.model, into: &modelBytes)
            replacements["model"] = modelBytes
            if native == .openAI, request.stream {
                replacements["stream_options"] = Array(#"{"include_usage":true}"#.utf8)
            }
            return splice(request, replacing: replacements)
        }
        let decoded = try request.decodedBody()
        switch native {
        case .anthropic:
            return JSONWriter.bytes(.object(try RequestTranslation.anthropicBody(fromOpenAI: decoded, model: deployment.model, defaultMaxTokens: defaultMaxTokens)))
        case .openAI:
            return JSONWriter.bytes(.object(try RequestTranslation.openAIBody(fromAnthropic: decoded, model: deployment.model)))
        }
    }

    /// Rewrites top-level members in place; members not present are appended.
    static func splice(_ request: ModelRequest, replacing replacements: [String: [UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(request.body.count + 64)
        var cursor = 0
        var pending = replacements
        for member in request.members {
            guard let replacement = pending.removeValue(forKey: member.key) else { continue }
            out += request.body[cursor..<member.valueRange.lowerBound]
            out += replacement
            cursor = member.valueRange.upperBound
        }
        guard !pending.isEmpty else {
            out += request.body[cursor...]
            return out
        }
        // Insert the remaining members just before the closing brace.
        guard let close = request.body.lastIndex(of: UInt8(ascii: "}")) else { return request.body }
        out += request.body[cursor..<close]
        for (key, value) in pending.sorted(by: { $0.key < $1.key }) {
            if !request.members.isEmpty || out.last != UInt8(ascii: "{") { out.append(UInt8(ascii: ",")) }
            JSONWriter.writeString(key, into: &out)
            out.append(UInt8(ascii: ":"))
            out += value
        }
        out += request.body[close...]
        return out
    }

    /// The URL and fixed headers of a deployment for one operation.
    public static func endpoint(provider: ProviderSettings, deployment: DeploymentSettings, operation: ModelOperation) -> UpstreamEndpoint {
        let base = provider.baseURL.hasSuffix("/") ? String(provider.baseURL.dropLast()) : provider.baseURL
        var headers: [(String, String)] = [("content-type", "application/json")]
        let url: String
        switch provider.kind {
        case .openai, .mock:
            url = base + (operation == .chat ? "/chat/completions" : "/embeddings")
            if let key = provider.apiKey, !key.isEmpty { headers.append(("authorization", "Bearer " + key.reveal())) }
        case .azureOpenAI:
            let name = deployment.azureDeployment ?? deployment.model
            let path = operation == .chat ? "chat/completions" : "embeddings"
            url = "\(base)/openai/deployments/\(name)/\(path)?api-version=\(provider.apiVersion ?? "2024-10-21")"
            if let key = provider.apiKey { headers.append(("api-key", key.reveal())) }
        case .anthropic:
            url = base + "/v1/messages"
            if let key = provider.apiKey { headers.append(("x-api-key", key.reveal())) }
            headers.append(("anthropic-version", provider.anthropicVersion))
        }
        for (name, value) in provider.headers { headers.append((name, value.reveal())) }
        return UpstreamEndpoint(url: url, headers: headers)
    }
}
