/// A refusal or failure that the pipeline reports to the caller.
///
/// Every error carries a stable machine-readable `code` and a sentence for humans. The HTTP
/// layer renders it in the format of the surface that was called (OpenAI, Anthropic, ...);
/// the core never knows which. `message` must never contain secrets or upstream bodies.
public struct GatewayError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// 400: the request is malformed or invalid.
        case invalidRequest = "invalid_request_error"
        /// 401: no valid credential.
        case authentication = "authentication_error"
        /// 403: the caller is known but not allowed.
        case permission = "permission_error"
        /// 404: no such resource.
        case notFound = "not_found_error"
        /// 409: the request conflicts with the resource's state.
        case conflict = "conflict_error"
        /// 413: the body is larger than allowed.
        case requestTooLarge = "request_too_large"
        /// 429: a rate limit or the admission queue bound was hit.
        case rateLimit = "rate_limit_error"
        /// 402-style budget stop, reported as 429 with `insufficient_quota` like OpenAI does.
        case budget = "insufficient_quota"
        /// 502/503/504: the upstream failed or nothing could serve the call.
        case upstream = "api_error"
        /// 503: no healthy deployment (breakers open).
        case unavailable = "overloaded_error"
        /// 500: a fault of Interlock itself.
        case `internal` = "internal_error"
    }

    public var kind: Kind
    /// Stable identifier, e.g. `invalid_api_key`, `model_not_allowed`, `budget_exceeded`.
    public var code: String
    public var message: String
    /// The request parameter at fault, when there is one.
    public var param: String?
    public var status: Int
    /// Seconds after which a retry may succeed (sent as `Retry-After`).
    public var retryAfterSeconds: Int?
    /// Machine-readable particulars added to the error object (the policy that decided, an
    /// approval id); never secrets.
    public var details: JSONObject?

    public init(
        kind: Kind, code: String, message: String, param: String? = nil, status: Int? = nil, retryAfterSeconds: Int? = nil, details: JSONObject? = nil
    ) {
        self.details = details
        self.kind = kind
        self.code = code
        self.message = message
        self.param = param
        self.status = status ?? kind.defaultStatus
        self.retryAfterSeconds = retryAfterSeconds
    }

    public var description: String { "\(code): \(message)" }
}

extension GatewayError.Kind {
    public var defaultStatus: Int {
        switch self {
        case .invalidRequest: 400
        case .authentication: 401
        case .permission: 403
        case .notFound: 404
        case .conflict: 409
        case .requestTooLarge: 413
        case .rateLimit, .budget: 429
        case .upstream: 502
        case .unavailable: 503
        case .internal: 500
        }
    }
}

extension GatewayError {
    public static func invalidRequest(_ message: String, code: String = "invalid_request", param: String? = nil) -> GatewayError {
        GatewayError(kind: .invalidRequest, code: code, message: message, param: param)
    }

    public static let missingCredential = GatewayError(
        kind: .authentication, code: "missing_api_key",
        message: "No API key was provided. Send it as 'Authorization: Bearer <key>' or in the 'x-api-key' header.")

    public static let invalidCredential = GatewayError(
        kind: .authentication, code: "invalid_api_key",
        message: "The API key provided is not valid.")

    public static func modelNotAllowed(_ alias: String) -> GatewayError {
        GatewayError(
            kind: .permission, code: "model_not_allowed",
            message: "This agent is not granted the model '\(alias)'.", param: "model")
    }

    public static func unknownModel(_ alias: String) -> GatewayError {
        GatewayError(kind: .notFound, code: "model_not_found", message: "The model '\(alias)' does not exist.", param: "model")
    }
}
