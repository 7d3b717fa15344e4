import Crypto
import FoundationEssentials
import InterlockCore
import InterlockStore
import JWTKit
import Synchronization

/// Interlock's own token-signing keys: the one that signs, and those retired by a rotation
/// that stay published (and accepted) until the last token they signed has expired.
///
/// Keys live in the store, sealed with AES-GCM under a key derived from
/// `auth.signing_key_secret` when one is configured. Rotation happens when the signing key is
/// older than `auth.signing_key_rotation_days` (checked when a token is issued) or when an
/// operator asks for it.
final class SigningKeyRing: Sendable {
    private struct State {
        var records: [SigningKeyRecord]
        var publicKeys: [String: JSONValue]
        /// One collection per key: jwt-kit falls back to a collection's default key when a
        /// `kid` is unknown, so a collection that holds a single key can verify only with it.
        var collections: [String: JWTKeyCollection]
        var activeKid: String
    }

    private let state: Mutex<State>
    private let store: any InterlockStore
    private let seal: SigningKeySeal
    private let settings: AuthSettings
    private let rotating = AsyncSerialGate()
    private let lastRefreshMs = Atomic<Int64>(0)

    private init(records: [SigningKeyRecord], store: any InterlockStore, seal: SigningKeySeal, settings: AuthSettings) {
        self.state = Mutex(State(records: records, publicKeys: [:], collections: [:], activeKid: records.first(where: { $0.retiredMs == nil })?.kid ?? records[0].kid))
        self.store = store
        self.seal = seal
        self.settings = settings
    }

    /// Loads the keys (making the first one if there is none), seals keys stored in the clear
    /// once a secret is configured, and drops keys whose tokens have all expired.
    static func open(store: any InterlockStore, settings: AuthSettings, nowMs: Int64) async throws -> SigningKeyRing {
        let seal = SigningKeySeal(secret: settings.signingKeySecret)
        var records = try await store.signingKeys()
        var changed: [SigningKeyRecord] = []
        if !records.contains(where: { $0.retiredMs == nil }) {
            // No key signs (a first start, or a rotation cut short): make one.
            let record = try makeKey(seal: seal, nowMs: nowMs)
            records.insert(record, at: 0)
            changed = [record]
        }
        if seal.isConfigured {
            for index in records.indices where !SigningKeySeal.isSealed(records[index].privateKeyPEM) && !changed.contains(where: { $0.kid == records[index].kid }) {
                records[index].privateKeyPEM = try seal.seal(records[index].privateKeyPEM)
                changed.append(records[index])
            }
        }
        let expired = records.filter { isExpired($0, settings: settings, nowMs: nowMs) }.map(\.kid)
        records.removeAll { expired.contains($0.kid) }
        if !changed.isEmpty || !expired.isEmpty { try await store.saveSigningKeys(changed, deleting: expired) }
        let ring = SigningKeyRing(records: records, store: store, seal: seal, settings: settings)
        for record in records { try await ring.install(record) }
        return ring
    }

    private static func makeKey(seal: SigningKeySeal, nowMs: Int64) throws -> SigningKeyRecord {
        let key = ES256PrivateKey()
        let kid = "es256-" + AuditRecord.sha256Hex(Array(key.publicKey.pemRepresentation.utf8)).prefix(16)
        return SigningKeyRecord(kid: String(kid), privateKeyPEM: try seal.seal(key.pemRepresentation), createdMs: nowMs)
    }

    /// A retired key is kept while tokens it signed may still be presented.
    private static func isExpired(_ record: SigningKeyRecord, settings: AuthSettings, nowMs: Int64) -> Bool {
        guard let retiredMs = record.retiredMs else { return false }
        return retiredMs + Int64(settings.tokenTTLSeconds + settings.leewaySeconds) * 1000 < nowMs
    }

    private func install(_ record: SigningKeyRecord) async throws {
        let key = try ES256PrivateKey(pem: try seal.open(record.privateKeyPEM))
        let collection = JWTKeyCollection()
        await collection.add(ecdsa: key, kid: JWKIdentifier(string: record.kid))
        guard let parameters = key.publicKey.parameters else { return }
        let jwk: JSONValue = [
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": .string(record.kid), "x": .string(parameters.x), "y": .string(parameters.y),
        ]
        state.withLock { state in
            state.publicKeys[record.kid] = jwk
            state.collections[record.kid] = collection
        }
    }

    /// Reads the keys again from the store (another node rotated, or made its own at a first
    /// start): new ones are installed, retirements and the signing key follow the store.
    func refresh(nowMs: Int64) async throws {
        let records = try await store.signingKeys().filter { !Self.isExpired($0, settings: settings, nowMs: nowMs) }
        guard !records.isEmpty else { return }
        let installed = state.withLock { Set($0.collections.keys) }
        for record in records where !installed.contains(record.kid) { try await install(record) }
        state.withLock { state in
            let kept = Set(records.map(\.kid))
            for kid in state.collections.keys where !kept.contains(kid) {
                state.collections[kid] = nil
                state.publicKeys[kid] = nil
            }
            state.records = records
            state.activeKid = records.first(where: { $0.retiredMs == nil })?.kid ?? state.activeKid
        }
        lastRefreshMs.store(nowMs, ordering: .relaxed)
    }

    /// `refresh`, unless the keys were read less than a second ago (a token with an unknown
    /// `kid` must not make every request read the store).
    func refreshIfStale(nowMs: Int64) async {
        guard nowMs - lastRefreshMs.load(ordering: .relaxed) >= 1_000 else { return }
        lastRefreshMs.store(nowMs, ordering: .relaxed)
        try? await refresh(nowMs: nowMs)
    }

    /// The key `kid` alone, while tokens it signed may still be valid.
    func verifier(kid: String, nowMs: Int64) -> JWTKeyCollection? {
        state.withLock { state in
            guard state.records.contains(where: { $0.kid == kid && !Self.isExpired($0, settings: settings, nowMs: nowMs) }) else { return nil }
            return state.collections[kid]
        }
    }

    /// The signing key alone.
    func signer(kid: String) -> JWTKeyCollection? {
        state.withLock { $0.collections[kid] }
    }

    /// The key that signs now, rotating first if it is older than the rotation period.
    func signingKid(nowMs: Int64) async throws -> String {
        let (kid, created) = state.withLock { state in (state.activeKid, state.records.first { $0.kid == state.activeKid }?.createdMs ?? nowMs) }
        let periodMs = Int64(settings.signingKeyRotationDays) * 86_400_000
        guard periodMs > 0, nowMs - created >= periodMs else { return kid }
        return try await rotate(nowMs: nowMs, ifOlderThanMs: periodMs).kid
    }

    /// A new signing key; the previous one stays published until its tokens expire.
    @discardableResult
    func rotate(nowMs: Int64, ifOlderThanMs minimumAge: Int64 = 0) async throws -> SigningKeyRecord {
        try await rotating.run {
            let current = state.withLock { state in state.records.first { $0.kid == state.activeKid } }
            if let current, nowMs - current.createdMs < minimumAge { return current }
            let fresh = try Self.makeKey(seal: seal, nowMs: nowMs)
            var retired = current
            retired?.retiredMs = nowMs
            let records = state.withLock { $0.records }
            let expired = records.filter { $0.kid != current?.kid && Self.isExpired($0, settings: settings, nowMs: nowMs) }.map(\.kid)
            try await store.saveSigningKeys([fresh] + (retired.map { [$0] } ?? []), deleting: expired)
            try await install(fresh)
            state.withLock { state in
                state.records = [fresh] + state.records.filter { !expired.contains($0.kid) }.map { $0.kid == retired?.kid ? retired! : $0 }
                for kid in expired {
                    state.publicKeys[kid] = nil
                    state.collections[kid] = nil
                }
                state.activeKid = fresh.kid
            }
            return fresh
        }
    }

    /// Keys whose tokens may still be valid: the signing key and the recently retired ones.
    func published(nowMs: Int64) -> [JSONValue] {
        state.withLock { state in
            state.records.filter { !Self.isExpired($0, settings: settings, nowMs: nowMs) }.compactMap { state.publicKeys[$0.kid] }
        }
    }

    /// The keys as the admin API lists them: never the private part.
    func listing(nowMs: Int64) -> [JSONValue] {
        state.withLock { state in
            state.records.map { record in
                [
                    "kid": .string(record.kid), "created_ms": .integer(record.createdMs), "retired_ms": record.retiredMs.map(JSONValue.integer) ?? .null,
                    "signing": .bool(record.kid == state.activeKid), "sealed": .bool(SigningKeySeal.isSealed(record.privateKeyPEM)),
                ]
            }
        }
    }
}

/// Encrypts signing keys for the store: AES-256-GCM under a key derived (HKDF-SHA256) from
/// the configured secret. A stored key reads `sealed:v1:<base64 nonce‖ciphertext‖tag>`.
struct SigningKeySeal: Sendable {
    private let key: SymmetricKey?
    private static let prefix = "sealed:v1:"

    init(secret: Secret?) {
        key = secret.map {
            HKDF<SHA256>.deriveKey(
                inputKeyMaterial: SymmetricKey(data: Array($0.reveal().utf8)), salt: Array("interlock signing keys".utf8), info: Array("v1".utf8),
                outputByteCount: 32)
        }
    }

    var isConfigured: Bool { key != nil }

    static func isSealed(_ stored: String) -> Bool { stored.hasPrefix(prefix) }

    func seal(_ pem: String) throws -> String {
        guard let key else { return pem }
        guard let combined = try AES.GCM.seal(Array(pem.utf8), using: key).combined else { throw SealError("sealing produced no output") }
        return Self.prefix + combined.base64EncodedString()
    }

    func open(_ stored: String) throws -> String {
        guard Self.isSealed(stored) else { return stored }
        guard let key else {
            throw SealError("the store's signing keys are sealed; set auth.signing_key_secret to the secret they were sealed with")
        }
        guard let data = Data(base64Encoded: String(stored.dropFirst(Self.prefix.count))),
            let opened = try? AES.GCM.open(AES.GCM.SealedBox(combined: data), using: key)
        else {
            throw SealError("a signing key in the store cannot be opened with auth.signing_key_secret (wrong secret, or the key was altered)")
        }
        return String(decoding: opened, as: UTF8.self)
    }

    struct SealError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}
