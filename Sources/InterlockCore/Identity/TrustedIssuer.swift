/// An external token issuer (an OIDC provider, another mesh) whose tokens Interlock accepts,
/// and how its claims map onto Interlock's identities.
public struct TrustedIssuerSettings: Sendable, Equatable {
    /// Where the issuer's signing keys come from.
    public enum Keys: Sendable, Equatable {
        /// An OpenID discovery document (its `jwks_uri` is fetched, and fetched again when a
        /// token names a key not seen yet).
        case discovery(url: String)
        /// A JWKS file, read at start.
        case file(path: String)
    }

    /// What a token's subject is.
    public enum SubjectKind: String, Sendable, CaseIterable {
        /// A person: usable as the `subject_token` of a token exchange, never alone.
        case user
        /// An agent of this Interlock: accepted wherever an agent's credential is.
        case agent
    }

    /// Must equal the token's `iss`.
    public var issuer: String
    public var keys: Keys
    /// A token must carry this in `aud`.
    public var audience: String
    /// Signature algorithms accepted (never `none` or an HMAC).
    public var algorithms: [String] = ["RS256", "ES256"]
    public var subjectKind: SubjectKind = .user
    /// The claim holding the user's or the agent's id.
    public var subjectClaim: String = "sub"
    /// Stripped from the front of an agent id claim (`spiffe://corp/agent/`); a claim without
    /// it does not name an agent.
    public var agentPrefix: String?
    /// The claim holding Interlock scopes (space-separated string or array); nil ignores the
    /// token's scopes.
    public var scopeClaim: String?

    public init(issuer: String, keys: Keys, audience: String) {
        self.issuer = issuer
        self.keys = keys
        self.audience = audience
    }

    /// Algorithms an external issuer may use.
    public static let supportedAlgorithms = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"]

    /// Who the token's claims name, or why they name no one.
    public func subject(of claims: JSONValue) -> Result<TokenSubject, ClaimMappingError> {
        guard let value = claims[subjectClaim] else { return .failure(.missingClaim(subjectClaim)) }
        guard let id = value.stringValue, !id.isEmpty else { return .failure(.wrongType(subjectClaim)) }
        switch subjectKind {
        case .user:
            return .success(.user(id))
        case .agent:
            var agentID = Substring(id)
            if let agentPrefix {
                guard agentID.hasPrefix(agentPrefix) else { return .failure(.notAnAgent(id, prefix: agentPrefix)) }
                agentID = agentID.dropFirst(agentPrefix.count)
            }
            guard Agent.isValidID(String(agentID)) else { return .failure(.notAnAgent(id, prefix: agentPrefix)) }
            return .success(.agent(String(agentID)))
        }
    }

    /// The token's Interlock scopes, when the issuer has a scope claim mapped.
    public func scopes(of claims: JSONValue) -> [String]? {
        guard let scopeClaim, let value = claims[scopeClaim] else { return nil }
        if let text = value.stringValue { return text.split(separator: " ").map(String.init) }
        return value.arrayValue?.compactMap(\.stringValue)
    }
}

/// Who a token speaks for.
public enum TokenSubject: Sendable, Equatable {
    case user(String)
    case agent(String)
}

/// Why a token's claims could not be mapped to an identity.
public enum ClaimMappingError: Error, Sendable, Equatable, CustomStringConvertible {
    case missingClaim(String)
    case wrongType(String)
    case notAnAgent(String, prefix: String?)

    public var description: String {
        switch self {
        case .missingClaim(let claim): "The token has no '\(claim)' claim."
        case .wrongType(let claim): "The token's '\(claim)' claim is not a non-empty string."
        case .notAnAgent(let id, let prefix):
            prefix.map { "The token's subject '\(id)' does not start with '\($0)'." } ?? "The token's subject '\(id)' is not a valid agent id."
        }
    }
}
