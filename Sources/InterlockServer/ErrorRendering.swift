import HTTPTypes
import Hummingbird
import InterlockCore
import Logging
import NIOCore

/// Which API dialect an error must be written in.
enum ErrorDialect {
    case openAI
    case anthropic

    init(path: String) {
        self = path.hasPrefix("/v1/messages") ? .anthropic : .openAI
    }
}

extension GatewayError {
    /// The error as the caller's API would send it: status, headers and JSON body. Both the
    /// Hummingbird routes and the event-loop path answer with this.
    /// `resourceMetadata` is the URL of this server's protected-resource metadata, named in
    /// 401 challenges (RFC 9728 §5.1) so a client can find out how to get a token.
    func rendered(dialect: ErrorDialect, requestID: String, resourceMetadata: String? = nil) -> (status: Int, headers: [(String, String)], body: [UInt8]) {
        var body: JSONValue
        switch dialect {
        case .openAI:
            var error: JSONObject = [
                "message": .string(message), "type": .string(kind.rawValue), "param": param.map(JSONValue.string) ?? .null, "code": .string(code),
            ]
            for (key, value) in details ?? [:] { error[key] = value }
            body = ["error": .object(error)]
        case .anthropic:
            let type: String =
                switch kind {
                case .budget: "rate_limit_error"
                case .internal: "api_error"
                default: kind.rawValue
                }
            var error: JSONObject = ["type": .string(type), "message": .string(message), "code": .string(code)]
            for (key, value) in details ?? [:] { error[key] = value }
            body = ["type": "error", "error": .object(error), "request_id": .string(requestID)]
        }
        var headers: [(String, String)] = [("content-type", "application/json"), ("x-request-id", requestID)]
        if let retryAfterSeconds { headers.append(("retry-after", String(retryAfterSeconds))) }
        if let challenge = challenge(resourceMetadata: resourceMetadata) { headers.append(("www-authenticate", challenge)) }
        return (status, headers, JSONWriter.bytes(body))
    }

    /// The `WWW-Authenticate` header of a refusal (RFC 6750 §3): none for errors that are not
    /// about the credential. A request without credentials gets no error code (§3.1).
    func challenge(resourceMetadata: String?) -> String? {
        var parameters = [#"realm="interlock""#]
        if let resourceMetadata { parameters.append(#"resource_metadata="\#(resourceMetadata)""#) }
        switch (kind, code) {
        case (.authentication, GatewayError.missingCredential.code):
            break
        case (.authentication, _):
            parameters += [#"error="invalid_token""#, #"error_description="\#(Self.quotable(message))""#]
        case (.permission, "insufficient_scope"):
            parameters += [#"error="insufficient_scope""#, #"error_description="\#(Self.quotable(message))""#]
        default:
            return nil
        }
        return "Bearer " + parameters.joined(separator: ", ")
    }

    /// RFC 6750 §3: `error_description` holds printable ASCII without `"` and `\`; anything
    /// else (including text a token brought in) becomes `'` or `?`.
    static func quotable(_ text: String) -> String {
        String(decoding: text.utf8.map { byte -> UInt8 in
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"): UInt8(ascii: "'")
            case 0x20...0x7E: byte
            default: UInt8(ascii: "?")
            }
        }, as: UTF8.self)
    }

    func response(dialect: ErrorDialect, requestID: String, resourceMetadata: String? = nil) -> Response {
        let (status, pairs, body) = rendered(dialect: dialect, requestID: requestID, resourceMetadata: resourceMetadata)
        var headers = HTTPFields()
        for (name, value) in pairs { headers.append(HTTPField(name: HTTPField.Name(name)!, value: value)) }
        return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}

/// Turns every error into a JSON body in the caller's dialect; unknown errors become a
/// generic 500 whose reason is logged, never shown.
struct ErrorRenderingMiddleware<Context: RequestContext>: RouterMiddleware {
    /// `auth.public_url`, when configured.
    let publicURL: String?

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            let dialect = ErrorDialect(path: request.uri.path)
            let requestID = (context as? InterlockRequestContext)?.requestID ?? "unknown"
            if let error = error as? GatewayError {
                let metadata = PublicURL.base(configured: publicURL, authority: request.head.authority) + ProtectedResourceRoutes.metadataPath
                return error.response(dialect: dialect, requestID: requestID, resourceMetadata: metadata)
            }
            if let error = error as? HTTPError {
                let kind: GatewayError.Kind =
                    switch error.status.code {
                    case 404: .notFound
                    case 413: .requestTooLarge
                    case 400..<500: .invalidRequest
                    default: .internal
                    }
                let message = error.status.code == 404 ? "No route for \(request.method) \(request.uri.path)." : (error.body ?? error.status.reasonPhrase)
                return GatewayError(kind: kind, code: error.status.code == 404 ? "route_not_found" : "http_error", message: message, status: Int(error.status.code))
                    .response(dialect: dialect, requestID: requestID)
            }
            context.logger.error("unexpected error", metadata: ["error": "\(String(reflecting: type(of: error)))", "interlock.request.id": "\(requestID)"])
            return GatewayError(kind: .internal, code: "internal_error", message: "Interlock failed to process the request.")
                .response(dialect: dialect, requestID: requestID)
        }
    }
}
