import HTTPTypes
import Hummingbird
import InterlockCore
import InterlockRuntime
import NIOCore

/// The REST surface of the tool gateway: the caller's catalog and tool invocation.
struct ToolRoutes {
    let tools: ToolGateway
    let maxBodyBytes: Int

    func addRoutes(to group: RouterGroup<AgentRequestContext>) {
        // Only the tools this caller was granted (and its token's scopes allow).
        group.get("tools") { _, context in
            let data = tools.catalog(for: context.caller).map(\.catalogEntry)
            return ModelRoutes.json(["object": "list", "data": .array(data)], requestID: context.requestID)
        }
        // Body: {"arguments": {...}}. 200 with the upstream's answer (`is_error` when it refused
        // the call, so a model can read why); gateway failures are errors in the OpenAI shape.
        group.post("tools/:name/invoke") { request, context in
            var request = request
            let name = try context.parameters.require("name")
            let buffer = try await request.collectBody(limit: maxBodyBytes)
            let envelope = try? JSONParser.parse(Array(buffer.readableBytesView))
            guard case .object(let fields)? = envelope, fields.keys.allSatisfy({ $0 == "arguments" }) else {
                throw GatewayError.invalidRequest("The body must be a JSON object {\"arguments\": {...}}.", code: "invalid_request", param: "arguments")
            }
            let arguments = fields["arguments"] ?? .object([:])
            let result = try await tools.invoke(
                name, arguments: JSONWriter.bytes(arguments), caller: context.caller, requestID: context.requestID,
                idempotencyKey: request.headers[HTTPField.Name("idempotency-key")!],
                traceParent: request.headers[HTTPField.Name("traceparent")!], traceState: request.headers[HTTPField.Name("tracestate")!])
            return ModelRoutes.json(Self.answer(name: name, result: result), requestID: context.requestID)
        }
    }

    /// The body of a successful `invoke` (both paths).
    static func answer(name: String, result: ToolGateway.ToolResult) -> JSONValue {
        ["tool": .string(name), "status": .integer(Int64(result.status)), "is_error": .bool(result.isError), "result": result.content]
    }
}
