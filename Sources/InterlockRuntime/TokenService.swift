import Crypto
import FoundationEssentials
public import InterlockCore
public import InterlockStore
import JWTKit
import Synchronization

/// Interlock's authorization server for agents: client credentials in, short-lived ES256
/// access tokens out (`/oauth/token`), the public keys published (`/.well-known/jwks.json`),
/// and presented tokens verified. Signing keys live in the store, so tokens survive a restart.
public final class TokenService: Sendable {
    private let keys: JWTKeyCollection
    private let activeKid: String
    private let publicJWKs: [JSONValue]
    public let settings: AuthSettings
    /// Tokens that passed verification, until they expire: an ES256 verification costs about
    /// 300 µs of CPU here. Only the token's own checks are cached; the agent it names is
    /// looked up on every call, so disabling an agent still takes effect at once.
    private let verified = VerifiedTokens(capacity: 10_000)

    /// The claims of an agent's access token.
    struct AccessToken: JWTPayload {
        var iss: IssuerClaim
        var sub: SubjectClaim
        var aud: AudienceClaim
        var exp: ExpirationClaim
        var iat: IssuedAtClaim
        var nbf: NotBeforeClaim?
        var jti: IDClaim
        var scope: String?

        /// Claims are checked by `TokenService.verify`, which knows the settings and the clock.
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    /// Loads the signing keys from the store, making the first one if there is none.
    public static func open(store: any InterlockStore, settings: AuthSettings, nowMs: Int64) async throws -> TokenService {
        var records = try await store.signingKeys()
        if records.isEmpty {
            let key = ES256PrivateKey()
            let kid = "es256-" + AuditRecord.sha256Hex(Array(key.publicKey.pemRepresentation.utf8)).prefix(16)
            let record = SigningKeyRecord(kid: String(kid), privateKeyPEM: key.pemRepresentation, createdMs: nowMs)
            try await store.insertSigningKey(record)
            records = [record]
        }
        let collection = JWTKeyCollection()
        var jwks: [JSONValue] = []
        for record in records {
            let key = try ES256PrivateKey(pem: record.privateKeyPEM)
            await collection.add(ecdsa: key, kid: JWKIdentifier(string: record.kid))
            guard let parameters = key.publicKey.parameters else { continue }
            jwks.append([
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": .string(record.kid),
                "x": .string(parameters.x), "y": .string(parameters.y),
            ])
        }
        return TokenService(keys: collection, activeKid: records[0].kid, publicJWKs: jwks, settings: settings)
    }

    private init(keys: JWTKeyCollection, activeKid: String, publicJWKs: [JSONValue], settings: AuthSettings) {
        self.keys = keys
        self.activeKid = activeKid
        self.publicJWKs = publicJWKs
        self.settings = settings
    }

    /// What a token that verified stands for.
    public struct VerifiedToken: Sendable {
        /// The agent acting: `sub` of an agent's own token.
        public var agentID: String
        /// The token's `scope`, split; nil when it has none (every grant of the agent).
        public var scopes: [String]?
        /// The user a delegated token acts for.
        public var user: String?
        public var actorChain: [String]
        /// `jti`.
        public var id: String
        public var issuedAtMs: Int64
        public var expiresMs: Int64
    }

    public func subject(for agent: Agent) -> String {
        "spiffe://\(settings.trustDomain)/agent/\(agent.id)"
    }

    /// An access token for `agent` with `scopes` (already checked against its grants).
    public func issue(for agent: Agent, scopes: [String], nowMs: Int64) async throws -> String {
        let now = Date(timeIntervalSince1970: Double(nowMs) / 1000)
        let token = AccessToken(
            iss: IssuerClaim(value: settings.issuer), sub: SubjectClaim(value: subject(for: agent)), aud: AudienceClaim(value: [settings.audience]),
            exp: ExpirationClaim(value: now.addingTimeInterval(Double(settings.tokenTTLSeconds))), iat: IssuedAtClaim(value: now), nbf: nil,
            jti: IDClaim(value: UUID().uuidString.lowercased()), scope: scopes.joined(separator: " "))
        return try await keys.sign(token, kid: JWKIdentifier(string: activeKid))
    }

    /// A token verified earlier and not expired since; nil otherwise. Never waits.
    public func cachedToken(_ token: String, nowMs: Int64) -> VerifiedToken? {
        verified.token(token, nowMs: nowMs)
    }

    /// What a presented token stands for, or a 401 that says exactly what is wrong. Whether
    /// its agent may still use it (enabled, not cut off) is the caller's check, every time.
    public func verify(_ token: String, nowMs: Int64) async throws(GatewayError) -> VerifiedToken {
        if let cached = verified.token(token, nowMs: nowMs) { return cached }
        let result = try await verifyUncached(token, nowMs: nowMs)
        verified.insert(token, result, nowMs: nowMs)
        return result
    }

    private func verifyUncached(_ token: String, nowMs: Int64) async throws(GatewayError) -> VerifiedToken {
        func refuse(_ description: String) -> GatewayError {
            GatewayError(kind: .authentication, code: "invalid_token", message: description)
        }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerBytes = Self.base64URLDecode(parts[0]),
            case .object(let header)? = try? JSONParser.parse(headerBytes)
        else { throw refuse("The token is malformed: expected a JWS in compact form.") }
        guard header["alg"]?.stringValue == "ES256" else {
            throw refuse("The token's algorithm '\(header["alg"]?.stringValue ?? "none")' is not accepted; Interlock signs with ES256.")
        }
        guard let kid = header["kid"]?.stringValue else { throw refuse("The token has no 'kid' header.") }
        guard publicJWKs.contains(where: { $0["kid"]?.stringValue == kid }) else { throw refuse("The token's key '\(kid)' is not one of Interlock's signing keys.") }
        let payload: AccessToken
        do {
            payload = try await keys.verify(token, as: AccessToken.self)
        } catch {
            throw refuse("The token's signature does not verify.")
        }
        let now = Double(nowMs) / 1000
        let leeway = Double(settings.leewaySeconds)
        guard payload.exp.value.timeIntervalSince1970 + leeway > now else { throw refuse("The token has expired.") }
        if let nbf = payload.nbf, nbf.value.timeIntervalSince1970 - leeway > now { throw refuse("The token is not valid yet.") }
        guard payload.iat.value.timeIntervalSince1970 - leeway <= now else { throw refuse("The token was issued in the future.") }
        guard payload.iss.value == settings.issuer else { throw refuse("The token's issuer '\(payload.iss.value)' is not '\(settings.issuer)'.") }
        guard payload.aud.value.contains(settings.audience) else { throw refuse("The token is not meant for audience '\(settings.audience)'.") }
        let prefix = "spiffe://\(settings.trustDomain)/agent/"
        guard payload.sub.value.hasPrefix(prefix) else { throw refuse("The token's subject is not an agent of trust domain '\(settings.trustDomain)'.") }
        let expiresMs = Int64((payload.exp.value.timeIntervalSince1970 + leeway) * 1000)
        return VerifiedToken(
            agentID: String(payload.sub.value.dropFirst(prefix.count)), scopes: payload.scope.map { $0.split(separator: " ").map(String.init) },
            user: nil, actorChain: [], id: payload.jti.value, issuedAtMs: Int64(payload.iat.value.timeIntervalSince1970 * 1000), expiresMs: expiresMs)
    }

    /// `/.well-known/jwks.json`.
    public var jwks: JSONValue { ["keys": .array(publicJWKs)] }

    /// Whether a presented credential is a JWT rather than an API key.
    public static func looksLikeJWT(_ credential: String) -> Bool {
        credential.hasPrefix("eyJ") && credential.utf8.reduce(0) { $1 == UInt8(ascii: ".") ? $0 + 1 : $0 } == 2
    }

    static func base64URLDecode(_ text: Substring) -> [UInt8]? {
        var base64 = text.replacing("-", with: "+").replacing("_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        return Data(base64Encoded: String(base64)).map { Array($0) }
    }
}

/// Verified tokens, until they stop being valid; bounded.
final class VerifiedTokens: Sendable {
    private let entries = Mutex<[String: TokenService.VerifiedToken]>([:])
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func token(_ token: String, nowMs: Int64) -> TokenService.VerifiedToken? {
        entries.withLock { entries in
            guard let entry = entries[token] else { return nil }
            guard entry.expiresMs > nowMs else {
                entries[token] = nil
                return nil
            }
            return entry
        }
    }

    func insert(_ token: String, _ verified: TokenService.VerifiedToken, nowMs: Int64) {
        entries.withLock { entries in
            if entries.count >= capacity {
                entries = entries.filter { $0.value.expiresMs > nowMs }
                // Still full of live tokens: start over rather than grow without bound.
                if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            }
            entries[token] = verified
        }
    }
}
