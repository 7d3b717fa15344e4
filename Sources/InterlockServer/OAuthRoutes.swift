import FoundationEssentials
import HTTPTypes
import Hummingbird
import InterlockCore
import InterlockRuntime
import NIOCore

/// Interlock as an OAuth 2.0 authorization server for its agents: the client-credentials
/// grant at `POST /oauth/token` (RFC 6749 §4.4, errors as §5.2), the signing keys at
/// `/.well-known/jwks.json`, and discovery at `/.well-known/openid-configuration`.
struct OAuthRoutes {
    let tokens: TokenService
    let governor: CallGovernor

    func addRoutes(to router: Router<InterlockRequestContext>) {
        router.post("oauth/token") { request, context in
            try await token(request, context: context)
        }
        router.get(".well-known/jwks.json") { _, _ in
            Self.json(tokens.jwks, status: .ok)
        }
        // OpenID discovery and RFC 8414 authorization-server metadata: the same document.
        router.get(".well-known/openid-configuration") { request, _ in Self.json(metadata(request), status: .ok) }
        router.get(".well-known/oauth-authorization-server") { request, _ in Self.json(metadata(request), status: .ok) }
    }

    private func metadata(_ request: Request) -> JSONValue {
        let base = baseURL(request)
        return [
            "issuer": .string(tokens.settings.issuer), "token_endpoint": .string(base + "/oauth/token"),
            "jwks_uri": .string(base + "/.well-known/jwks.json"), "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": ["ES256"], "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["token"], "subject_types_supported": ["public"],
        ]
    }

    /// RFC 6749 §5.2 error response.
    private static func oauthError(_ error: String, _ description: String, status: HTTPResponse.Status = .badRequest, basicChallenge: Bool = false) -> Response {
        var response = json(["error": .string(error), "error_description": .string(description)], status: status)
        if basicChallenge { response.headers[.wwwAuthenticate] = #"Basic realm="interlock""# }
        return response
    }

    private static func json(_ value: JSONValue, status: HTTPResponse.Status) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json", .cacheControl: "no-store", HTTPField.Name("pragma")!: "no-cache"],
            body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.bytes(value))))
    }

    private func baseURL(_ request: Request) -> String {
        PublicURL.base(configured: tokens.settings.publicURL, authority: request.head.authority)
    }

    private func token(_ request: Request, context: InterlockRequestContext) async throws -> Response {
        var request = request
        guard request.headers[.contentType]?.lowercased().hasPrefix("application/x-www-form-urlencoded") == true else {
            return Self.oauthError("invalid_request", "The token request must be application/x-www-form-urlencoded.")
        }
        let body = try await request.collectBody(upTo: 64 * 1024)
        var form: [String: String] = [:]
        for pair in String(buffer: body).split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = Self.formDecode(parts[0]) else { continue }
            if form[name] != nil {
                return Self.oauthError("invalid_request", "The parameter '\(name)' appears more than once.")
            }
            form[name] = parts.count > 1 ? Self.formDecode(parts[1]) ?? "" : ""
        }
        guard let grant = form["grant_type"] else { return Self.oauthError("invalid_request", "Missing 'grant_type'.") }
        guard grant == "client_credentials" else {
            return Self.oauthError("unsupported_grant_type", "Interlock issues tokens for 'client_credentials' only.")
        }
        // Client authentication: HTTP Basic (RFC 6749 §2.3.1) or client_id/client_secret in the body, not both.
        var clientID = form["client_id"]
        var secret = form["client_secret"]
        var usedBasic = false
        if let authorization = request.headers[.authorization], authorization.lowercased().hasPrefix("basic ") {
            guard secret == nil,
                let decoded = Data(base64Encoded: String(authorization.dropFirst(6)).trimmingCharacters(in: .whitespaces)),
                let pair = String(data: decoded, encoding: .utf8), let colon = pair.firstIndex(of: ":")
            else {
                return Self.oauthError("invalid_request", "Malformed Basic client authentication, or client credentials given twice.")
            }
            clientID = Self.formDecode(pair[..<colon])
            secret = Self.formDecode(pair[pair.index(after: colon)...])
            usedBasic = true
        }
        guard let clientID, let secret, !clientID.isEmpty, !secret.isEmpty else {
            return Self.oauthError("invalid_client", "Client authentication is required (client_id and client_secret).", status: .unauthorized, basicChallenge: true)
        }
        // The client secret is an API key of the agent named by client_id (a token is not a secret).
        guard !TokenService.looksLikeJWT(secret), let caller = try? governor.authenticate(apiKey: secret, requestID: context.requestID, target: "/oauth/token"),
            caller.agent.id == clientID
        else {
            return Self.oauthError("invalid_client", "Unknown client or wrong secret.", status: .unauthorized, basicChallenge: usedBasic)
        }
        let agent = caller.agent
        var scopes = agent.grants.scopes
        if let requested = form["scope"], !requested.isEmpty {
            scopes = requested.split(separator: " ").map(String.init)
            if let extra = scopes.first(where: { !agent.grants.covers(scope: $0) }) {
                return Self.oauthError("invalid_scope", "The scope '\(extra)' is wider than what agent '\(agent.id)' was granted.")
            }
        }
        let accessToken = try await tokens.issue(for: agent, scopes: scopes, nowMs: governor.nowMs())
        governor.audit?.record(AuditRecord(
            timestampMs: 0, node: "", action: "token.issue", agentID: agent.id, target: "/oauth/token", decision: "allow", outcome: "success",
            status: 200, requestID: context.requestID))
        return Self.json([
            "access_token": .string(accessToken), "token_type": "Bearer", "expires_in": .integer(Int64(tokens.settings.tokenTTLSeconds)),
            "scope": .string(scopes.joined(separator: " ")),
        ], status: .ok)
    }

    /// application/x-www-form-urlencoded: `+` is a space, then percent-decoding.
    private static func formDecode(_ text: Substring) -> String? {
        String(text).replacing("+", with: " ").removingPercentEncoding
    }
}
