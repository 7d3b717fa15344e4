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
            var model: [UInt8] = []
            model.reserveCapacity(deployment.model.utf8.count + 2)
            JSONWriter.writeString(deployment.model, into: &model)
            if native == .openAI, request.stream {
                return splice(request, replacing: [("model", model), ("stream_options", Array(#"{"include_usage":true}"#.utf8))])
            }
            return splice(request, replacing: [("model", model)])
        }
        let decoded = try request.decodedBody()
        switch native {
        case .anthropic:
            return JSONWriter.bytes(.object(try RequestTranslation.anthropicBody(fromOpenAI: decoded, model: deployment.model, defaultMaxTokens: defaultMaxTokens)))
        case .openAI:
            return JSONWriter.bytes(.object(try RequestTranslation.openAIBody(fromAnthropic: decoded, model: deployment.model)))
        }
    }

    /// Rewrites top-level members in place; members not present are appended (in name order).
    /// `replacements` are a few distinct names: a list, not a dictionary, on every call's path.
    static func splice(_ request: ModelRequest, replacing replacements: [(name: String, value: [UInt8])]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(request.body.count + 64)
        var cursor = 0
        var spliced = 0
        for member in request.members {
            guard let replacement = replacements.first(where: { $0.name == member.key }) else { continue }
            out += request.body[cursor..<member.valueRange.lowerBound]
            out += replacement.value
            cursor = member.valueRange.upperBound
            spliced += 1
        }
        guard spliced < replacements.count else {
            out += request.body[cursor...]
            return out
        }
        // Insert the remaining members just before the closing brace.
        guard let close = request.body.lastIndex(of: UInt8(ascii: "}")) else { return request.body }
        out += request.body[cursor..<close]
        let present = Set(request.members.lazy.map(\.key))
        for (name, value) in replacements.sorted(by: { $0.name < $1.name }) where !present.contains(name) {
            if !request.members.isEmpty || out.last != UInt8(ascii: "{") { out.append(UInt8(ascii: ",")) }
            JSONWriter.writeString(name, into: &out)
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
