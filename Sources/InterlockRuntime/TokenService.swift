import AsyncHTTPClient
import Crypto
import FoundationEssentials
public import InterlockCore
public import InterlockStore
import JWTKit
public import Logging
import NIOCore
import Synchronization

/// Interlock's authorization server for agents and the verifier of every token it accepts.
///
/// Issues short-lived ES256 access tokens (client credentials and RFC 8693 token exchange),
/// publishes its public keys (`/.well-known/jwks.json`), and verifies presented tokens: its
/// own, and those of trusted external issuers (OIDC discovery or a JWKS file) mapped onto
/// agents or users. Signing keys live in the store, so tokens survive a restart.
public final class TokenService: Sendable {
    private let ring: SigningKeyRing
    public let settings: AuthSettings
    private let external: [String: ExternalIssuer]
    /// Tokens that passed verification, until they expire: an ES256 verification costs about
    /// 300 µs of CPU here. Only the token's own checks are cached; the agents it names are
    /// looked up on every call, so disabling an agent still takes effect at once.
    private let verified = VerifiedTokens(capacity: 10_000)

    /// What a token that verified stands for.
    public struct VerifiedToken: Sendable {
        /// Who `sub` names.
        public var subject: TokenSubject
        /// The actors of a delegated token, from the outermost `act` (the one calling) inwards.
        public var actors: [String]
        /// The token's scopes; nil when it carries none Interlock reads (every grant of the agent).
        public var scopes: [String]?
        /// `may_act.sub`: the only actor that may act for this subject.
        public var mayAct: String?
        public var issuer: String
        /// `jti` (empty when an external token has none).
        public var id: String
        public var issuedAtMs: Int64
        public var expiresMs: Int64
    }

    /// Decodes nothing: jwt-kit checks the signature, Interlock reads the claims itself, the
    /// same way for its own and for external tokens.
    private struct SignatureOnly: JWTPayload {
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    /// Loads the signing keys from the store (see `SigningKeyRing`) and the keys of the
    /// trusted issuers.
    public static func open(store: any InterlockStore, settings: AuthSettings, nowMs: Int64, logger: Logger = Logger(label: "interlock.auth")) async throws -> TokenService {
        let ring = try await SigningKeyRing.open(store: store, settings: settings, nowMs: nowMs)
        var external: [String: ExternalIssuer] = [:]
        for issuer in settings.trustedIssuers {
            let loaded = ExternalIssuer(settings: issuer, refreshInterval: .seconds(settings.jwksRefreshMinIntervalSeconds), logger: logger)
            try await loaded.loadAtStart()
            external[issuer.issuer] = loaded
        }
        return TokenService(ring: ring, settings: settings, external: external)
    }

    private init(ring: SigningKeyRing, settings: AuthSettings, external: [String: ExternalIssuer]) {
        self.ring = ring
        self.settings = settings
        self.external = external
    }

    public func subject(for agent: Agent) -> String { spiffeID(agentID: agent.id) }

    public func spiffeID(agentID: String) -> String { agentPrefix + agentID }

    /// The agent id of one of this trust domain's SPIFFE ids, else nil.
    public func agentID(spiffeID: String) -> String? {
        guard spiffeID.hasPrefix(agentPrefix) else { return nil }
        return String(spiffeID.dropFirst(agentPrefix.count))
    }

    /// `spiffe://<trust domain>/agent/`.
    private var agentPrefix: String { settings.agentSPIFFEPrefix }

    // MARK: Issuing

    /// An access token for `agent` with `scopes` (already checked against its grants).
    public func issue(for agent: Agent, scopes: [String], nowMs: Int64) async throws -> String {
        try await sign(
            subject: subject(for: agent), actors: [], scopes: scopes, audiences: [settings.audience], nowMs: nowMs,
            expiresMs: nowMs + Int64(settings.tokenTTLSeconds) * 1000)
    }

    /// A delegated token (RFC 8693): `sub` the subject, `act` the actors nested from the one
    /// calling inwards, valid for `audiences` until `expiresMs`. A `may_act` of the subject
    /// token is carried over, so the delegation cannot be handed to anyone else.
    public func issueDelegated(
        subject: String, actors: [String], mayAct: String?, scopes: [String], audiences: [String], nowMs: Int64, expiresMs: Int64
    ) async throws -> String {
        try await sign(subject: subject, actors: actors, mayAct: mayAct, scopes: scopes, audiences: audiences, nowMs: nowMs, expiresMs: expiresMs)
    }

    private func sign(
        subject: String, actors: [String], mayAct: String? = nil, scopes: [String], audiences: [String], nowMs: Int64, expiresMs: Int64
    ) async throws -> String {
        var act: JSONValue?
        for actor in actors.reversed() {
            act = act.map { ["sub": .string(actor), "act": $0] } ?? ["sub": .string(actor)]
        }
        var claims: JSONObject = [
            "iss": .string(settings.issuer), "sub": .string(subject), "aud": .array(audiences.map(JSONValue.string)),
            "exp": .integer(expiresMs / 1000), "iat": .integer(nowMs / 1000), "jti": .string(UUID().uuidString.lowercased()),
            "scope": .string(scopes.joined(separator: " ")),
        ]
        if let act { claims["act"] = act }
        if let mayAct { claims["may_act"] = ["sub": .string(mayAct)] }
        // jwt-kit signs a Codable payload; the claims are written by Interlock's JSON writer so
        // `act` can nest to any depth.
        let kid = try await ring.signingKid(nowMs: nowMs)
        guard let signer = ring.signer(kid: kid) else { throw TrustedIssuerError("the signing key '\(kid)' is not loaded") }
        return try await signer.sign(RawClaims(.object(claims)), kid: JWKIdentifier(string: kid))
    }

    // MARK: Verifying

    /// A token verified earlier and not expired since; nil otherwise. Never waits.
    public func cachedToken(_ token: String, nowMs: Int64) -> VerifiedToken? {
        verified.token(token, nowMs: nowMs)
    }

    /// What a presented token stands for, or a 401 that says exactly what is wrong. Whether
    /// the agents it names may still use it (enabled, not cut off) is the caller's check,
    /// every time.
    public func verify(_ token: String, nowMs: Int64) async throws(GatewayError) -> VerifiedToken {
        if let cached = verified.token(token, nowMs: nowMs) { return cached }
        let result = try await verifyUncached(token, nowMs: nowMs)
        verified.insert(token, result, nowMs: nowMs)
        return result
    }

    /// A 401 `invalid_token` with the reason.
    public static func refuse(_ description: String) -> GatewayError {
        GatewayError(kind: .authentication, code: "invalid_token", message: description)
    }

    private func verifyUncached(_ token: String, nowMs: Int64) async throws(GatewayError) -> VerifiedToken {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerBytes = Self.base64URLDecode(parts[0]), case .object(let header)? = try? JSONParser.parse(headerBytes),
            let payloadBytes = Self.base64URLDecode(parts[1]), case .object(let claims)? = try? JSONParser.parse(payloadBytes)
        else { throw Self.refuse("The token is malformed: expected a JWS in compact form.") }
        // A member named twice could be read one way here and another way by jwt-kit
        // (RFC 7515 §5.2 allows rejecting such a token; Interlock does).
        for bytes in [headerBytes, payloadBytes] {
            let names = ((try? JSONParser.scanObject(bytes)) ?? []).map(\.key)
            guard Set(names).count == names.count else { throw Self.refuse("The token is malformed: a header parameter or claim appears twice.") }
        }
        let algorithm = header["alg"]?.stringValue ?? "none"
        let issuer = claims["iss"]?.stringValue ?? ""
        if issuer != settings.issuer, let trusted = external[issuer] {
            return try await verifyExternal(token, trusted: trusted, algorithm: algorithm, kid: header["kid"]?.stringValue, claims: .object(claims), nowMs: nowMs)
        }
        guard algorithm == "ES256" else {
            throw Self.refuse("The token's algorithm '\(algorithm)' is not accepted; Interlock signs with ES256.")
        }
        guard let kid = header["kid"]?.stringValue else { throw Self.refuse("The token has no 'kid' header.") }
        var found = ring.verifier(kid: kid, nowMs: nowMs)
        if found == nil {
            // Signed by another node with a key this one has not read yet.
            await ring.refreshIfStale(nowMs: nowMs)
            found = ring.verifier(kid: kid, nowMs: nowMs)
        }
        guard let verifier = found else { throw Self.refuse("The token's key '\(kid)' is not one of Interlock's signing keys.") }
        do {
            _ = try await verifier.verify(token, as: SignatureOnly.self)
        } catch {
            throw Self.refuse("The token's signature does not verify.")
        }
        let times = try checkTimes(.object(claims), nowMs: nowMs)
        guard issuer == settings.issuer else {
            throw Self.refuse("The token's issuer '\(issuer)' is neither '\(settings.issuer)' nor a trusted issuer.")
        }
        try checkAudience(.object(claims), expected: settings.audience)
        let sub = claims["sub"]?.stringValue ?? ""
        let actors = Self.actors(of: .object(claims))
        let subject: TokenSubject
        if let agentID = agentID(spiffeID: sub) {
            subject = .agent(agentID)
        } else if !actors.isEmpty, !sub.isEmpty {
            subject = .user(sub)
        } else {
            throw Self.refuse("The token's subject is not an agent of trust domain '\(settings.trustDomain)'.")
        }
        return VerifiedToken(
            subject: subject, actors: actors, scopes: claims["scope"]?.stringValue.map { $0.split(separator: " ").map(String.init) },
            mayAct: try mayAct(.object(claims)), issuer: issuer, id: claims["jti"]?.stringValue ?? "",
            issuedAtMs: times.issuedAtMs, expiresMs: times.expiresMs)
    }

    private func verifyExternal(
        _ token: String, trusted: ExternalIssuer, algorithm: String, kid: String?, claims: JSONValue, nowMs: Int64
    ) async throws(GatewayError) -> VerifiedToken {
        let settings = trusted.settings
        guard settings.algorithms.contains(algorithm) else {
            throw Self.refuse("The token's algorithm '\(algorithm)' is not accepted for issuer '\(settings.issuer)' (\(settings.algorithms.joined(separator: ", "))).")
        }
        guard let kid else { throw Self.refuse("The token has no 'kid' header.") }
        guard let collection = await trusted.keys(containing: kid) else {
            throw Self.refuse("The token's key '\(kid)' is not one of issuer '\(settings.issuer)''s signing keys.")
        }
        do {
            _ = try await collection.verify(token, as: SignatureOnly.self)
        } catch {
            throw Self.refuse("The token's signature does not verify.")
        }
        let times = try checkTimes(claims, nowMs: nowMs)
        try checkAudience(claims, expected: settings.audience)
        let subject: TokenSubject
        switch settings.subject(of: claims) {
        case .success(let mapped): subject = mapped
        case .failure(let problem): throw Self.refuse(problem.description)
        }
        // An external issuer speaks for its users or agents, never for Interlock's agents: an
        // `act` chain in its token is not taken as Interlock actors.
        return VerifiedToken(
            subject: subject, actors: [], scopes: settings.scopes(of: claims), mayAct: try mayAct(claims),
            issuer: settings.issuer, id: claims["jti"]?.stringValue ?? "", issuedAtMs: times.issuedAtMs, expiresMs: times.expiresMs)
    }

    /// `may_act.sub`, when the claim is there. A `may_act` Interlock cannot check (no string
    /// `sub`, or another issuer's subject) refuses the token rather than being ignored.
    private func mayAct(_ claims: JSONValue) throws(GatewayError) -> String? {
        guard let claim = claims["may_act"] else { return nil }
        guard let sub = claim["sub"]?.stringValue else { throw Self.refuse("The token's 'may_act' claim has no 'sub' Interlock can check.") }
        if let issuer = claim["iss"]?.stringValue, issuer != settings.issuer {
            throw Self.refuse("The token's 'may_act' names an actor of issuer '\(issuer)', not of '\(settings.issuer)'.")
        }
        return sub
    }

    /// `exp` (required), `nbf` and `iat` against the clock, with the configured leeway.
    private func checkTimes(_ claims: JSONValue, nowMs: Int64) throws(GatewayError) -> (issuedAtMs: Int64, expiresMs: Int64) {
        let leewayMs = Int64(settings.leewaySeconds) * 1000
        guard let exp = claims["exp"]?.doubleValue else { throw Self.refuse("The token has no 'exp' claim.") }
        let expiresMs = Int64(exp * 1000) + leewayMs
        guard expiresMs > nowMs else { throw Self.refuse("The token has expired.") }
        if let nbf = claims["nbf"]?.doubleValue, Int64(nbf * 1000) - leewayMs > nowMs { throw Self.refuse("The token is not valid yet.") }
        let issuedAtMs = claims["iat"]?.doubleValue.map { Int64($0 * 1000) } ?? 0
        guard issuedAtMs - leewayMs <= nowMs else { throw Self.refuse("The token was issued in the future.") }
        return (issuedAtMs, expiresMs)
    }

    private func checkAudience(_ claims: JSONValue, expected: String) throws(GatewayError) {
        let audiences = claims["aud"]?.stringValue.map { [$0] } ?? claims["aud"]?.arrayValue?.compactMap(\.stringValue) ?? []
        guard audiences.contains(expected) else { throw Self.refuse("The token is not meant for audience '\(expected)'.") }
    }

    /// The `act` chain, outermost first.
    static func actors(of claims: JSONValue) -> [String] {
        var actors: [String] = []
        var act = claims["act"]
        while let current = act, let sub = current["sub"]?.stringValue, actors.count < 32 {
            actors.append(sub)
            act = current["act"]
        }
        return actors
    }

    /// `/.well-known/jwks.json`: the signing key and the retired keys whose tokens may still be valid.
    public func jwks(nowMs: Int64) -> JSONValue { ["keys": .array(ring.published(nowMs: nowMs))] }

    /// Makes a new signing key now; the previous one stays published until its tokens expire.
    public func rotateSigningKey(nowMs: Int64) async throws -> String {
        try await ring.rotate(nowMs: nowMs).kid
    }

    /// The signing keys for the admin API (ids and dates, never key material).
    public func signingKeys(nowMs: Int64) -> [JSONValue] { ring.listing(nowMs: nowMs) }

    /// Reads the signing keys again (another node rotated them).
    public func refreshSigningKeys(nowMs: Int64) async throws { try await ring.refresh(nowMs: nowMs) }

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

/// A payload jwt-kit signs as given: Interlock's claims as a JSON value.
private struct RawClaims: JWTPayload {
    let value: JSONValue

    init(_ value: JSONValue) { self.value = value }

    init(from decoder: any Decoder) throws {
        throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "RawClaims is only signed, never decoded"))
    }

    func encode(to encoder: any Encoder) throws {
        try JSONValueCoding(value).encode(to: encoder)
    }

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// `Encodable` for a `JSONValue`.
private struct JSONValueCoding: Encodable {
    let value: JSONValue

    init(_ value: JSONValue) { self.value = value }

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    func encode(to encoder: any Encoder) throws {
        switch value {
        case .object(let object):
            var container = encoder.container(keyedBy: Key.self)
            for (key, member) in object { try container.encode(JSONValueCoding(member), forKey: Key(stringValue: key)) }
        case .array(let items):
            var container = encoder.unkeyedContainer()
            for item in items { try container.encode(JSONValueCoding(item)) }
        case .string(let text):
            var container = encoder.singleValueContainer()
            try container.encode(text)
        case .integer(let number):
            var container = encoder.singleValueContainer()
            try container.encode(number)
        case .number(let number):
            var container = encoder.singleValueContainer()
            try container.encode(number)
        case .bool(let flag):
            var container = encoder.singleValueContainer()
            try container.encode(flag)
        case .null:
            var container = encoder.singleValueContainer()
            try container.encodeNil()
        }
    }
}

/// A trusted issuer's keys: read from a JWKS file at start, or fetched through its OpenID
/// discovery document and fetched again (at most once per `refreshInterval`) when a token
/// names a key not seen yet, so the issuer can rotate its keys.
final class ExternalIssuer: Sendable {
    let settings: TrustedIssuerSettings
    private let refreshInterval: Duration
    private let logger: Logger
    private struct State {
        var collection = JWTKeyCollection()
        var kids: Set<String> = []
        var lastFetch: ContinuousClock.Instant?
    }

    private let state = Mutex(State())
    private let fetching = AsyncSerialGate()

    init(settings: TrustedIssuerSettings, refreshInterval: Duration, logger: Logger) {
        self.settings = settings
        self.refreshInterval = refreshInterval
        self.logger = logger
    }

    /// A JWKS file must be readable at start (a configuration error otherwise); a discovery
    /// URL that does not answer yet is tried again when its first token arrives.
    func loadAtStart() async throws {
        switch settings.keys {
        case .file(let path):
            guard let data = FileManager.default.contents(atPath: path) else {
                throw TrustedIssuerError("trusted issuer '\(settings.issuer)': cannot read JWKS file '\(path)'")
            }
            try await install(jwks: Array(data))
        case .discovery:
            do {
                try await fetch()
            } catch {
                logger.error("trusted issuer keys could not be fetched; will retry", metadata: ["interlock.issuer": "\(settings.issuer)", "error": "\(error)"])
            }
        }
    }

    /// The keys, if they hold `kid` (fetching them again first if they do not and may).
    func keys(containing kid: String) async -> JWTKeyCollection? {
        if let found = state.withLock({ $0.kids.contains(kid) ? $0.collection : nil }) { return found }
        guard case .discovery = settings.keys else { return nil }
        await fetching.run {
            let due = state.withLock { state in state.lastFetch.map { $0.duration(to: .now) >= refreshInterval } ?? true }
            guard due, !state.withLock({ $0.kids.contains(kid) }) else { return }
            do {
                try await fetch()
            } catch {
                logger.warning("trusted issuer keys could not be fetched", metadata: ["interlock.issuer": "\(settings.issuer)", "error": "\(error)"])
            }
        }
        return state.withLock { $0.kids.contains(kid) ? $0.collection : nil }
    }

    private func fetch() async throws {
        guard case .discovery(let url) = settings.keys else { return }
        state.withLock { $0.lastFetch = .now }
        let discovery = try JSONParser.parse(try await Self.get(url))
        guard discovery["issuer"]?.stringValue == settings.issuer else {
            throw TrustedIssuerError("the discovery document at \(url) names issuer '\(discovery["issuer"]?.stringValue ?? "")', not '\(settings.issuer)'")
        }
        guard let jwksURI = discovery["jwks_uri"]?.stringValue else { throw TrustedIssuerError("the discovery document at \(url) has no jwks_uri") }
        try await install(jwks: try await Self.get(jwksURI))
    }

    private func install(jwks bytes: [UInt8]) async throws {
        guard case .object(let document) = try JSONParser.parse(bytes), let keys = document["keys"]?.arrayValue else {
            throw TrustedIssuerError("trusted issuer '\(settings.issuer)': the JWKS has no 'keys'")
        }
        // Symmetric keys have no place in a public key set: leave them out.
        let usable = keys.filter { $0["kty"]?.stringValue != "oct" && $0["kid"]?.stringValue != nil }
        let collection = JWTKeyCollection()
        try await collection.add(jwksJSON: JSONWriter.string(["keys": .array(usable)]))
        let kids = Set(usable.compactMap { $0["kid"]?.stringValue })
        state.withLock { state in
            state.collection = collection
            state.kids = kids
        }
    }

    private static func get(_ url: String) async throws -> [UInt8] {
        var request = HTTPClientRequest(url: url)
        request.headers.add(name: "accept", value: "application/json")
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
        guard response.status == .ok else { throw TrustedIssuerError("GET \(url) answered \(response.status.code)") }
        return Array(try await response.body.collect(upTo: 1 << 20).readableBytesView)
    }
}

struct TrustedIssuerError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
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
