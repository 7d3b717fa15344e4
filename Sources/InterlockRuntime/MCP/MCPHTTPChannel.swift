import AsyncHTTPClient
import InterlockCore
import InterlockProviders
import NIOCore
import NIOHTTP1
import Synchronization

/// A client session with an MCP server over Streamable HTTP (MCP 2025-03-26 and later): one
/// POST per message, answered with one JSON object or an SSE stream that ends with the
/// response; `Mcp-Session-Id` and `MCP-Protocol-Version` on every request after `initialize`;
/// DELETE to end the session. Written on AsyncHTTPClient: the swift-sdk's HTTP client transport
/// cannot read SSE answers on Linux (docs/MCP-NOTES.md).
final class MCPHTTPChannel: MCPChannel {
    private let url: String
    /// `url` parsed for the event-loop client, once (nil: a URL the loop client does not serve).
    let loopTarget: UpstreamTarget?
    private let client: HTTPClient
    private let maxResponseBytes: Int
    private let session = Mutex<(id: String?, version: String?)>((nil, nil))
    /// The credential headers of the last request, for the DELETE that ends the session.
    private let lastHeaders = Mutex<[(String, String)]>([])

    init(url: String, client: HTTPClient, maxResponseBytes: Int) {
        self.url = url
        self.loopTarget = UpstreamTarget(url: url)
        self.client = client
        self.maxResponseBytes = maxResponseBytes
    }

    var endpoint: String { url }

    /// The session id and negotiated version (nil before `initialize`).
    var sessionState: (id: String?, version: String?) {
        session.withLock { ($0.id, $0.version) }
    }

    func negotiated(version: String) {
        session.withLock { $0.version = version }
    }

    func request(
        _ message: JSONObject, headers: [(String, String)], timeoutMs: Int, onNotification: @escaping @Sendable (JSONObject) -> Void
    ) async throws -> JSONObject {
        let id = message["id"] ?? .null
        var response = try await post(message, headers: headers, timeoutMs: timeoutMs)
        var contentType = response.headers.first(name: "content-type")?.lowercased() ?? ""
        var lastEventID: String?
        var resumptions = 0
        while contentType.hasPrefix("text/event-stream") {
            var parser = ServerSentEventParser()
            var received = 0
            do {
                for try await chunk in response.body {
                    received += chunk.readableBytes
                    guard received <= maxResponseBytes else { throw MCPUpstreamError.tooLarge }
                    for event in parser.consume(chunk.readableBytesView) {
                        guard !event.data.isEmpty, case .object(let incoming)? = try? JSONParser.parse(event.data) else { continue }
                        if incoming["method"] == nil, incoming["id"] == id { return incoming }
                        if incoming["method"] != nil, let requestID = incoming["id"], !requestID.isNull {
                            // The server asks something of Interlock mid-answer (ping): answer on a new POST.
                            try? await notify(mcpAnswer(toServerRequest: incoming), headers: headers)
                        } else if incoming["method"] != nil {
                            onNotification(incoming)
                        }
                    }
                }
            } catch let error as MCPUpstreamError {
                throw error
            } catch is CancellationError {
                throw MCPUpstreamError.cancelled
            } catch {
                // This answer broke off; the server itself may be fine.
                throw MCPUpstreamError.protocolViolation("the answer stream broke: \(error)")
            }
            // The stream ended without the answer. A server that gave its events ids may close
            // the stream and expect the client to resume it (2025-11-25): GET with Last-Event-ID.
            lastEventID = parser.lastEventID ?? lastEventID
            guard let resumeFrom = lastEventID, resumptions < 10 else {
                throw MCPUpstreamError.protocolViolation("the server ended its event stream without answering request \(JSONWriter.string(id))")
            }
            resumptions += 1
            if let wait = parser.retryMs { try await Task.sleep(for: .milliseconds(min(wait, 5_000))) }
            response = try await resume(from: resumeFrom, headers: headers, timeoutMs: timeoutMs)
            contentType = response.headers.first(name: "content-type")?.lowercased() ?? ""
            guard contentType.hasPrefix("text/event-stream") else {
                throw MCPUpstreamError.protocolViolation("resuming the answer to request \(JSONWriter.string(id)) did not give an event stream")
            }
        }
        let body: ByteBuffer
        do {
            body = try await response.body.collect(upTo: maxResponseBytes)
        } catch is NIOTooManyBytesError {
            throw MCPUpstreamError.tooLarge
        } catch is CancellationError {
            throw MCPUpstreamError.cancelled
        } catch {
            throw MCPUpstreamError.protocolViolation("the answer broke off: \(error)")
        }
        guard case .object(let answer)? = try? JSONParser.parse(Array(body.readableBytesView)), answer["id"] == id else {
            throw MCPUpstreamError.protocolViolation("the answer (\(contentType.isEmpty ? "no content type" : contentType)) is not the JSON-RPC response to request \(JSONWriter.string(id))")
        }
        return answer
    }

    func notify(_ message: JSONObject, headers: [(String, String)]) async throws {
        let response = try await post(message, headers: headers, timeoutMs: 5_000)
        // 202 with no body; drain whatever there is so the connection can be reused.
        _ = try? await response.body.collect(upTo: 64 * 1024)
    }

    func close() async {
        guard let id = session.withLock({ $0.id }) else { return }
        var request = HTTPClientRequest(url: url)
        request.method = .DELETE
        request.headers.add(name: "mcp-session-id", value: id)
        if let version = session.withLock({ $0.version }) { request.headers.add(name: "mcp-protocol-version", value: version) }
        for (name, value) in lastHeaders.withLock({ $0 }) { request.headers.replaceOrAdd(name: name, value: value) }
        // Best effort: a server that keeps no sessions answers 405, one that is down does not answer.
        _ = try? await client.execute(request, timeout: .seconds(2))
        session.withLock { $0 = (nil, nil) }
    }

    /// Resumes an answer stream the server closed: GET with `Last-Event-ID`.
    private func resume(from eventID: String, headers: [(String, String)], timeoutMs: Int) async throws -> HTTPClientResponse {
        var request = HTTPClientRequest(url: url)
        request.method = .GET
        request.headers.add(name: "accept", value: "text/event-stream")
        request.headers.add(name: "last-event-id", value: eventID)
        let (sessionID, version) = session.withLock { ($0.id, $0.version) }
        if let sessionID { request.headers.add(name: "mcp-session-id", value: sessionID) }
        if let version { request.headers.add(name: "mcp-protocol-version", value: version) }
        for (name, value) in headers { request.headers.replaceOrAdd(name: name, value: value) }
        let response: HTTPClientResponse
        do {
            response = try await client.execute(request, timeout: .milliseconds(Int64(timeoutMs)))
        } catch is CancellationError {
            throw MCPUpstreamError.cancelled
        } catch {
            throw MCPUpstreamError.protocolViolation("resuming the answer stream failed: \(error)")
        }
        guard response.status == .ok else {
            _ = try? await response.body.collect(upTo: 64 * 1024)
            throw MCPUpstreamError.protocolViolation("resuming the answer stream got HTTP \(response.status.code)")
        }
        return response
    }

    private func post(_ message: JSONObject, headers: [(String, String)], timeoutMs: Int) async throws -> HTTPClientResponse {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "content-type", value: "application/json")
        request.headers.add(name: "accept", value: "application/json, text/event-stream")
        let (sessionID, version) = session.withLock { ($0.id, $0.version) }
        if let sessionID { request.headers.add(name: "mcp-session-id", value: sessionID) }
        if let version { request.headers.add(name: "mcp-protocol-version", value: version) }
        // No headers given (a cancellation sent for another path): the last credential.
        for (name, value) in headers.isEmpty ? lastHeaders.withLock({ $0 }) : headers { request.headers.replaceOrAdd(name: name, value: value) }
        if !headers.isEmpty { lastHeaders.withLock { $0 = headers } }
        request.body = .bytes(JSONWriter.bytes(.object(message)))
        let response: HTTPClientResponse
        do {
            response = try await client.execute(request, timeout: .milliseconds(Int64(timeoutMs)))
        } catch is CancellationError {
            throw MCPUpstreamError.cancelled
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout {
            throw MCPUpstreamError.timeout
        } catch {
            throw MCPUpstreamError.unreachable("\(error)")
        }
        if response.status == .notFound, sessionID != nil {
            session.withLock { $0.id = nil }
            throw MCPUpstreamError.sessionExpired
        }
        if response.status == .unauthorized {
            _ = try? await response.body.collect(upTo: 64 * 1024)
            throw MCPUpstreamError.unauthorized
        }
        guard (200..<300).contains(response.status.code) else {
            _ = try? await response.body.collect(upTo: 64 * 1024)
            throw MCPUpstreamError.httpStatus(Int(response.status.code))
        }
        if message["method"]?.stringValue == "initialize", let id = response.headers.first(name: "mcp-session-id") {
            session.withLock { $0.id = id }
        }
        return response
    }
}
