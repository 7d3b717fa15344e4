import InterlockCore

/// Why an exchange with an upstream MCP server failed.
enum MCPUpstreamError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Not reachable: connection refused, process not running, an HTTP error status.
    case unreachable(String)
    case timeout
    /// The answer was larger than the upstream's `max_response_bytes`.
    case tooLarge
    /// The HTTP session is gone (404): initialize again.
    case sessionExpired
    /// The server refused Interlock's credential (HTTP 401).
    case unauthorized
    /// Another HTTP error status: the server is there but failed this request.
    case httpStatus(Int)
    /// The server broke the protocol (no answer, not JSON-RPC, an unsupported version).
    case protocolViolation(String)
    /// A JSON-RPC error answer.
    case rpc(code: Int, message: String)
    case cancelled

    var description: String {
        switch self {
        case .unreachable(let reason): "unreachable: \(reason)"
        case .timeout: "timed out"
        case .tooLarge: "answer too large"
        case .sessionExpired: "session expired"
        case .unauthorized: "the server refused Interlock's credential (HTTP 401)"
        case .httpStatus(let status): "HTTP \(status)"
        case .protocolViolation(let reason): "protocol violation: \(reason)"
        case .rpc(let code, let message): "error \(code): \(message)"
        case .cancelled: "cancelled"
        }
    }
}

/// A JSON-RPC channel to one MCP server (Streamable HTTP or stdio).
protocol MCPChannel: AnyObject, Sendable {
    /// Sends a request (`message` has an `id`) and returns the server's response message.
    /// Notifications the server sends while answering (progress) go to `onNotification`.
    func request(
        _ message: JSONObject, headers: [(String, String)], timeoutMs: Int, onNotification: @escaping @Sendable (JSONObject) -> Void
    ) async throws -> JSONObject
    /// Sends a notification.
    func notify(_ message: JSONObject, headers: [(String, String)]) async throws
    /// Records what `initialize` negotiated (HTTP sends it on every later request).
    func negotiated(version: String)
    /// Ends the session (HTTP DELETE) or stops the process (stdio).
    func close() async
}

/// The answer to a request the server sends the client (Interlock declares no client
/// capabilities: only `ping` is answered with a result).
func mcpAnswer(toServerRequest message: JSONObject) -> JSONObject {
    let id = message["id"] ?? .null
    if message["method"]?.stringValue == "ping" { return ["jsonrpc": "2.0", "id": id, "result": .object([:])] }
    return ["jsonrpc": "2.0", "id": id, "error": ["code": -32601, "message": "Interlock does not offer this to upstream servers."]]
}

/// Runs `body`, or throws `MCPUpstreamError.timeout` once `timeout` has passed (cancelling it).
func withMCPTimeout<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            throw MCPUpstreamError.timeout
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
