public import InterlockCore
public import NIOCore
public import AsyncHTTPClient

/// Where a deployment is reached and the headers every request to it carries (credentials
/// included). Computed once per deployment and operation, not per request.
public struct UpstreamEndpoint: Sendable {
    public var url: String
    public var headers: [(String, String)]
    /// The URL parsed for the event-loop client; `nil` when it cannot serve it.
    public var target: UpstreamTarget?

    public init(url: String, headers: [(String, String)]) {
        self.url = url
        self.headers = headers
        self.target = UpstreamTarget(url: url)
    }
}

/// A request ready to send to one deployment.
public struct UpstreamCall: Sendable {
    public var endpoint: UpstreamEndpoint
    public var provider: ProviderSettings
    public var deployment: DeploymentSettings
    public var operation: ModelOperation
    /// The provider's native format: the body is in it, and so is the answer.
    public var format: WireFormat
    public var body: [UInt8]
    public var stream: Bool
    /// Headers of this request only: trace context, request id.
    public var headers: [(String, String)]
    public var timeout: Duration

    public init(
        endpoint: UpstreamEndpoint, provider: ProviderSettings, deployment: DeploymentSettings, operation: ModelOperation, format: WireFormat,
        body: [UInt8], stream: Bool, headers: [(String, String)], timeout: Duration
    ) {
        self.endpoint = endpoint
        self.provider = provider
        self.deployment = deployment
        self.operation = operation
        self.format = format
        self.body = body
        self.stream = stream
        self.headers = headers
        self.timeout = timeout
    }
}

/// The body of an upstream answer, read as it arrives.
public enum UpstreamBody: Sendable {
    case http(HTTPClientResponse.Body)
    case generated(AsyncThrowingStream<ByteBuffer, any Error>)

    public func collect(upTo limit: Int) async throws -> ByteBuffer {
        switch self {
        case .http(let body):
            return try await body.collect(upTo: limit)
        case .generated(let stream):
            var buffer = ByteBuffer()
            for try await chunk in stream {
                var chunk = chunk
                guard buffer.readableBytes + chunk.readableBytes <= limit else { throw UpstreamFailure.responseTooLarge }
                buffer.writeBuffer(&chunk)
            }
            return buffer
        }
    }

    public struct Iterator {
        fileprivate var http: HTTPClientResponse.Body.AsyncIterator?
        fileprivate var generated: AsyncThrowingStream<ByteBuffer, any Error>.AsyncIterator?

        public mutating func next() async throws -> ByteBuffer? {
            if http != nil { return try await http!.next() }
            return try await generated!.next()
        }
    }

    public func makeIterator() -> Iterator {
        switch self {
        case .http(let body): Iterator(http: body.makeAsyncIterator(), generated: nil)
        case .generated(let stream): Iterator(http: nil, generated: stream.makeAsyncIterator())
        }
    }
}

public struct UpstreamResponse: Sendable {
    public var status: Int
    /// From `retry-after-ms` or `retry-after` (seconds), when the upstream sent one.
    public var retryAfter: Duration?
    public var contentType: String?
    public var body: UpstreamBody

    public init(status: Int, retryAfter: Duration?, contentType: String?, body: UpstreamBody) {
        self.status = status
        self.retryAfter = retryAfter
        self.contentType = contentType
        self.body = body
    }
}

/// A failure to get an answer at all (as opposed to an answer with an error status).
public enum UpstreamFailure: Error, Sendable, Equatable, CustomStringConvertible {
    case timeout
    case connection(String)
    case responseTooLarge

    public var description: String {
        switch self {
        case .timeout: "the upstream did not answer in time"
        case .connection(let reason): "could not reach the upstream (\(reason))"
        case .responseTooLarge: "the upstream response exceeded the size limit"
        }
    }
}

/// Something that can answer model calls: a real provider over HTTP or the scripted mock.
public protocol ModelUpstream: Sendable {
    func send(_ call: UpstreamCall) async throws -> UpstreamResponse
}
