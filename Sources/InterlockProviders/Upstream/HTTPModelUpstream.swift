public import AsyncHTTPClient
import InterlockCore
import NIOCore
import NIOHTTP1
import Logging

/// Sends model calls to real providers over HTTP with AsyncHTTPClient.
public final class HTTPModelUpstream: ModelUpstream {
    private let client: HTTPClient

    public init(client: HTTPClient) {
        self.client = client
    }

    public func send(_ call: UpstreamCall) async throws -> UpstreamResponse {
        var request = HTTPClientRequest(url: call.endpoint.url)
        request.method = .POST
        for (name, value) in call.endpoint.headers { request.headers.add(name: name, value: value) }
        for (name, value) in call.headers { request.headers.add(name: name, value: value) }
        if call.stream { request.headers.add(name: "accept", value: "text/event-stream") }
        request.body = .bytes(ByteBuffer(bytes: call.body))
        let response: HTTPClientResponse
        do {
            let nanos = call.timeout.components.seconds * 1_000_000_000 + call.timeout.components.attoseconds / 1_000_000_000
            response = try await client.execute(request, timeout: .nanoseconds(nanos))
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout {
            throw UpstreamFailure.timeout
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw UpstreamFailure.connection(HTTPModelUpstream.describe(error))
        }
        return UpstreamResponse(
            status: Int(response.status.code),
            retryAfter: HTTPModelUpstream.retryAfter(response.headers),
            contentType: response.headers.first(name: "content-type"),
            body: .http(response.body))
    }

    static func retryAfter(_ headers: HTTPHeaders) -> Duration? {
        if let ms = headers.first(name: "retry-after-ms").flatMap(Double.init), ms >= 0 {
            return .milliseconds(ms)
        }
        if let seconds = headers.first(name: "retry-after").flatMap(Double.init), seconds >= 0 {
            return .seconds(seconds)
        }
        return nil
    }

    /// A short reason without URLs or headers (which may carry keys).
    private static func describe(_ error: any Error) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .connectTimeout: return "connect timeout"
            case .remoteConnectionClosed: return "connection closed"
            case .cancelled: return "cancelled"
            default: return "HTTP client error"
            }
        }
        if error is ChannelError { return "channel error" }
        return "connection failed"
    }
}
