import Crypto
import FoundationEssentials

/// An agent's API key as Interlock keeps it: never the key itself, only its SHA-256, a
/// prefix to recognise it by, and its life (expiry, revocation).
///
/// Generated keys read `ilk_<id>_<secret>`: `ilk_<id>` is the prefix shown in listings and
/// logs, `<secret>` is 32 random bytes (base64url). Keys carry 256 bits of entropy, so a
/// plain SHA-256 is a safe way to store them (a slow password hash buys nothing here).
public struct APIKeyRecord: Sendable, Equatable {
    public var id: String
    public var agentID: String
    /// SHA-256 of the key, hex.
    public var digest: String
    /// The part of the key that identifies it without revealing it (empty for config keys).
    public var prefix: String
    /// `config` for the key in the config file, `api` for generated ones.
    public var source: Agent.Source
    public var createdMs: Int64
    public var expiresMs: Int64?
    public var revokedMs: Int64?

    public init(
        id: String, agentID: String, digest: String, prefix: String, source: Agent.Source, createdMs: Int64, expiresMs: Int64? = nil,
        revokedMs: Int64? = nil
    ) {
        self.id = id
        self.agentID = agentID
        self.digest = digest
        self.prefix = prefix
        self.source = source
        self.createdMs = createdMs
        self.expiresMs = expiresMs
        self.revokedMs = revokedMs
    }

    public enum State: String, Sendable {
        case active
        case expired
        case revoked
    }

    public func state(nowMs: Int64) -> State {
        if let revokedMs, revokedMs <= nowMs { return .revoked }
        if let expiresMs, expiresMs <= nowMs { return .expired }
        return .active
    }

    /// The record as the admin API lists it: no digest, no key.
    public func json(nowMs: Int64) -> JSONValue {
        [
            "id": .string(id), "agent_id": .string(agentID), "prefix": .string(prefix), "source": .string(source.rawValue),
            "created_ms": .integer(createdMs), "expires_ms": expiresMs.map(JSONValue.integer) ?? .null,
            "revoked_ms": revokedMs.map(JSONValue.integer) ?? .null, "state": .string(state(nowMs: nowMs).rawValue),
        ]
    }

    /// SHA-256 of a presented key, hex: what a lookup compares.
    public static func digest(of key: String) -> String {
        AuditRecord.sha256Hex(Array(key.utf8))
    }

    /// A new random key for `agentID`: the key (to show once) and its record.
    public static func generate(agentID: String, nowMs: Int64, expiresMs: Int64?) -> (key: String, record: APIKeyRecord) {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)
        let id = String(decoding: (0..<12).map { _ in alphabet[Int(generator.next(upperBound: UInt32(alphabet.count)))] }, as: UTF8.self)
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let prefix = "ilk_" + id
        let key = prefix + "_" + base64URL(secret)
        return (key, APIKeyRecord(id: id, agentID: agentID, digest: digest(of: key), prefix: prefix, source: .api, createdMs: nowMs, expiresMs: expiresMs))
    }

    /// The record of a key declared in config. Its id follows from the key, so a changed key
    /// in the file is a new record and the old one can be revoked.
    public static func declared(_ key: Secret, agentID: String, nowMs: Int64) -> APIKeyRecord {
        let digest = digest(of: key.reveal())
        return APIKeyRecord(id: "cfg_" + digest.prefix(16), agentID: agentID, digest: digest, prefix: "", source: .config, createdMs: nowMs)
    }

    static func base64URL(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacing("+", with: "-").replacing("/", with: "_").replacing("=", with: "")
    }
}
