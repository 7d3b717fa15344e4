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
            Self.json(tokens.jwks(nowMs: governor.nowMs()), status: .ok)
        }
        // OpenID discovery and RFC 8414 authorization-server metadata: the same document.
        router.get(".well-known/openid-configuration") { request, _ in Self.json(metadata(request), status: .ok) }
        router.get(".well-known/oauth-authorization-server") { request, _ in Self.json(metadata(request), status: .ok) }
    }

    private func metadata(_ request: Request) -> JSONValue {
        let base = baseURL(request)
        return [
            "issuer": .string(tokens.settings.issuer), "token_endpoint": .string(base + "/oauth/token"),
            "jwks_uri": .string(base + "/.well-known/jwks.json"), "grant_types_supported": ["client_credentials", .string(Self.tokenExchangeGrant)],
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
        // RFC 8693 §2.1: `audience` and `resource` may be repeated; nothing else may.
        var targets: [String] = []
        for pair in String(buffer: body).split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = Self.formDecode(parts[0]) else { continue }
            let value = parts.count > 1 ? Self.formDecode(parts[1]) ?? "" : ""
            if name == "audience" || name == "resource" {
                targets.append(value)
                continue
            }
            if form[name] != nil {
                return Self.oauthError("invalid_request", "The parameter '\(name)' appears more than once.")
            }
            form[name] = value
        }
        guard let grant = form["grant_type"] else { return Self.oauthError("invalid_request", "Missing 'grant_type'.") }
        switch grant {
        case "client_credentials":
            return try await clientCredentials(form, request: request, context: context)
        case Self.tokenExchangeGrant:
            return await tokenExchange(form, targets: targets, context: context)
        default:
            return Self.oauthError("unsupported_grant_type", "Interlock issues tokens for 'client_credentials' and '\(Self.tokenExchangeGrant)'.")
        }
    }

    static let tokenExchangeGrant = "urn:ietf:params:oauth:grant-type:token-exchange"
    static let accessTokenType = "urn:ietf:params:oauth:token-type:access_token"
    static let jwtTokenType = "urn:ietf:params:oauth:token-type:jwt"
    static let idTokenType = "urn:ietf:params:oauth:token-type:id_token"

    /// RFC 8693 token exchange: a user's token (`subject_token`) and the acting agent's token
    /// (`actor_token`) give a short-lived delegated token: `sub` the user, `act` the agent,
    /// earlier actors nested inside. Errors as RFC 8693 §2.2.2 (`invalid_request`,
    /// `invalid_target`) and RFC 6749 §5.2 (`invalid_scope`).
    private func tokenExchange(_ form: [String: String], targets: [String], context: InterlockRequestContext) async -> Response {
        let now = governor.nowMs()
        func refuse(_ error: String, _ description: String, agentID: String? = nil, user: String? = nil) -> Response {
            governor.auditCredential("token.exchange", agentID: agentID, user: user, refusal: error, status: 400, requestID: context.requestID)
            return Self.oauthError(error, description)
        }
        let acceptedTypes = [Self.accessTokenType, Self.jwtTokenType, Self.idTokenType]
        guard let subjectToken = form["subject_token"], !subjectToken.isEmpty else {
            return refuse("invalid_request", "Missing 'subject_token' (the token of the user the agent acts for).")
        }
        guard let subjectType = form["subject_token_type"], acceptedTypes.contains(subjectType) else {
            return refuse("invalid_request", "'subject_token_type' must be one of \(acceptedTypes.joined(separator: ", ")).")
        }
        guard let actorToken = form["actor_token"], !actorToken.isEmpty else {
            return refuse("invalid_request", "Missing 'actor_token': the acting agent's access token (from the client_credentials grant).")
        }
        guard let actorType = form["actor_token_type"], acceptedTypes.contains(actorType) else {
            return refuse("invalid_request", "'actor_token_type' must be one of \(acceptedTypes.joined(separator: ", ")).")
        }
        if let requested = form["requested_token_type"], requested != Self.accessTokenType, requested != Self.jwtTokenType {
            return refuse("invalid_request", "Interlock issues '\(Self.accessTokenType)' tokens only.")
        }
        // The actor: an agent of this Interlock, enabled, acting for itself.
        let actor: Caller
        do throws(GatewayError) {
            let verified = try await tokens.verify(actorToken, nowMs: now)
            guard verified.actors.isEmpty, case .agent = verified.subject else {
                throw TokenService.refuse("The actor token must be an agent's own token, not a delegated one.")
            }
            actor = try governor.caller(for: verified)
        } catch {
            return refuse("invalid_request", "The actor token is not valid: \(error.message)")
        }
        let actorID = tokens.subject(for: actor.agent)
        // The subject: a user (an external issuer's token) or an earlier delegation.
        let subject: TokenService.VerifiedToken
        do throws(GatewayError) {
            subject = try await tokens.verify(subjectToken, nowMs: now)
            // An agent it names (its subject, its actors) disabled since: nothing left to delegate.
            let userOnly = subject.actors.isEmpty && { if case .user = subject.subject { true } else { false } }()
            if !userOnly { _ = try governor.caller(for: subject) }
        } catch {
            return refuse("invalid_request", "The subject token is not valid: \(error.message)", agentID: actor.agent.id)
        }
        let subjectID: String
        switch subject.subject {
        case .user(let id): subjectID = id
        case .agent(let id): subjectID = tokens.spiffeID(agentID: id)
        }
        if let mayAct = subject.mayAct, mayAct != actorID {
            return refuse("invalid_request", "The subject token allows only '\(mayAct)' to act for it, not '\(actorID)'.", agentID: actor.agent.id, user: subjectID)
        }
        // Handing on: whoever holds the delegation now (the last actor, or an agent that is
        // itself the subject) may pass it only to an agent it is granted.
        let holder: String? = subject.actors.first ?? { if case .agent = subject.subject { return subjectID } else { return nil } }()
        if let holder {
            guard let holderID = tokens.agentID(spiffeID: holder), let holderAgent = governor.registry.entry(id: holderID)?.agent,
                holderAgent.grants.covers(scope: "agent:\(actor.agent.id)")
            else {
                return refuse(
                    "invalid_request", "'\(holder)' may not delegate to agent '\(actor.agent.id)' (it is not granted that agent).",
                    agentID: actor.agent.id, user: subjectID)
            }
            if holderAgent.disabled {
                return refuse("invalid_request", "'\(holder)' is disabled.", agentID: actor.agent.id, user: subjectID)
            }
        }
        // Scopes: what the actor holds (and its token carries) and the subject token allows.
        func allowedByBoth(_ scope: String) -> Bool {
            actor.permits(scope: scope) && (subject.scopes.map { AgentGrants.scopes($0, cover: scope) } ?? true)
        }
        let scopes: [String]
        if let requested = form["scope"], !requested.isEmpty {
            scopes = requested.split(separator: " ").map(String.init)
            if let wider = scopes.first(where: { !allowedByBoth($0) }) {
                return refuse("invalid_scope", "The scope '\(wider)' is wider than what the actor and the subject token allow.", agentID: actor.agent.id, user: subjectID)
            }
        } else {
            scopes = (actor.scopes ?? actor.agent.grants.scopes).filter(allowedByBoth)
        }
        // Audiences: this Interlock, or those the configuration allows.
        let allowedTargets = Set([tokens.settings.audience] + tokens.settings.exchangeAudiences)
        if let unknown = targets.first(where: { !allowedTargets.contains($0) }) {
            return refuse("invalid_target", "Tokens cannot be issued for '\(unknown)'.", agentID: actor.agent.id, user: subjectID)
        }
        let audiences = targets.isEmpty ? [tokens.settings.audience] : Array(Set(targets)).sorted()
        let actors = [actorID] + subject.actors
        let expiresMs = min(now + Int64(tokens.settings.tokenTTLSeconds) * 1000, subject.expiresMs - Int64(tokens.settings.leewaySeconds) * 1000)
        guard expiresMs - now >= 1_000 else {
            return refuse("invalid_request", "The subject token expires too soon to delegate.", agentID: actor.agent.id, user: subjectID)
        }
        let issued: String
        do {
            issued = try await tokens.issueDelegated(
                subject: subjectID, actors: actors, mayAct: subject.mayAct, scopes: scopes, audiences: audiences, nowMs: now, expiresMs: expiresMs)
        } catch {
            return Self.oauthError("server_error", "The token could not be signed.", status: .internalServerError)
        }
        governor.auditCredential("token.exchange", agentID: actor.agent.id, user: subjectID, actors: actors, status: 200, requestID: context.requestID)
        return Self.json([
            "access_token": .string(issued), "issued_token_type": .string(Self.accessTokenType), "token_type": "Bearer",
            "expires_in": .integer(max(0, (expiresMs - now) / 1000)), "scope": .string(scopes.joined(separator: " ")),
        ], status: .ok)
    }

    /// RFC 6749 §4.4: an agent's API key for an access token.
    private func clientCredentials(_ form: [String: String], request: Request, context: InterlockRequestContext) async throws -> Response {
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
            if TokenService.looksLikeJWT(secret) || (try? governor.authenticate(apiKey: secret, audited: false)) != nil {
                // A token as the secret, or a valid key under another client_id: refused, and on record.
                governor.auditRefusal(
                    GatewayError(kind: .authentication, code: "invalid_client", message: "client_id does not match the secret"),
                    action: "auth.failed", agentID: nil, target: "/oauth/token", requestID: context.requestID)
            }
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
        governor.auditCredential("token.issue", agentID: agent.id, status: 200, requestID: context.requestID)
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
