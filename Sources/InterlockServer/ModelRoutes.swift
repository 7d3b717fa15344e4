import HTTPTypes
import Hummingbird
import InterlockCore
import InterlockRuntime
import NIOCore

/// The agent-facing model surfaces: OpenAI-compatible and Anthropic-compatible. They only
/// adapt HTTP to a `ModelRequest` and a `ModelResult` back; the pipeline does the rest.
struct ModelRoutes {
    let gateway: ModelGateway
    let maxBodyBytes: Int

    func addRoutes(to group: RouterGroup<AgentRequestContext>) {
        group.post("chat/completions") { request, context in
            try await self.model(request, context: context, format: .openAI, operation: .chat)
        }
        group.post("embeddings") { request, context in
            try await self.model(request, context: context, format: .openAI, operation: .embeddings)
        }
        group.post("messages") { request, context in
            try await self.model(request, context: context, format: .anthropic, operation: .chat)
        }
        group.get("models") { _, context in
            let created = gateway.governor.nowMs() / 1000
            let data: [JSONValue] = gateway.models(for: context.caller).map { alias in
                ["id": .string(alias), "object": "model", "created": .integer(created), "owned_by": "interlock"]
            }
            return Self.json(["object": "list", "data": .array(data)], requestID: context.requestID)
        }
    }

    private func model(_ request: Request, context: AgentRequestContext, format: WireFormat, operation: ModelOperation) async throws -> Response {
        var request = request
        let buffer = try await request.collectBody(limit: maxBodyBytes)
        let bytes = Array(buffer.readableBytesView)
        let modelRequest: ModelRequest
        do {
            modelRequest = try ModelRequest.parse(body: bytes, format: format, operation: operation)
        } catch {
            // Refused before the pipeline could name a target: still an audited call.
            gateway.governor.auditRefusal(
                error, action: "model.call", caller: context.caller, target: request.uri.path, argumentsHash: AuditRecord.sha256Hex(bytes),
                requestID: context.requestID)
            throw error
        }
        let result = try await gateway.handle(
            modelRequest, caller: context.caller, requestID: context.requestID,
            traceParent: request.headers[HTTPField.Name("traceparent")!], traceState: request.headers[HTTPField.Name("tracestate")!])
        switch result {
        case .complete(let info, let body):
            var headers = Self.headers(info)
            headers[.contentType] = "application/json"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: body))
        case .stream(let info, let stream):
            var headers = Self.headers(info)
            headers[.contentType] = "text/event-stream"
            headers[.cacheControl] = "no-cache"
            return Response(status: .ok, headers: headers, body: ResponseBody { writer in
                await stream.run { buffer in try await writer.write(buffer) }
                try await writer.finish(nil)
            })
        }
    }

    static func headers(_ info: ModelResponseInfo) -> HTTPFields {
        var headers: HTTPFields = [:]
        for (name, value) in headerPairs(info) { headers.append(HTTPField(name: HTTPField.Name(name)!, value: value)) }
        return headers
    }

    /// The response headers that say where and how a call was served (both paths send them).
    static func headerPairs(_ info: ModelResponseInfo) -> [(String, String)] {
        var headers: [(String, String)] = []
        headers.reserveCapacity(7)
        forEachHeader(info) { headers.append(($0, $1)) }
        return headers
    }

    /// The headers of a model answer, in order (the event-loop path writes them straight into
    /// its response buffer).
    static func forEachHeader(_ info: ModelResponseInfo, _ add: (String, String) -> Void) {
        add("x-request-id", info.requestID)
        add("x-interlock-deployment", info.deploymentID)
        add("x-interlock-provider", info.provider)
        add("x-interlock-attempts", String(info.attempts))
        add("x-interlock-overhead-ms", format3(info.overheadMs))
        if info.queuedMs > 0 { add("x-interlock-queue-ms", format3(info.queuedMs)) }
        if let cost = info.cost { add("x-interlock-cost-usd", cost.description) }
    }

    /// Milliseconds to three decimals without trailing zeros (`0.25`, `3`), from integer
    /// thousandths: formatting a `Double` costs more, and this runs on every call.
    static func format3(_ value: Double) -> String {
        guard value.isFinite, abs(value) < 1e12 else { return JSONWriter.string(.number((value * 1000).rounded() / 1000)) }
        return ASCIIText.fixedPoint(Int64((value * 1000).rounded()), scale: 3)
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok, requestID: String) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json", HTTPField.Name("x-request-id")!: requestID],
            body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.bytes(value))))
    }
}
