import Crypto

/// Holders of secret credentials (agents' API keys, operators' tokens) and how to recognise
/// them.
///
/// Credentials are kept only as SHA-256 digests. A presented one is hashed and compared with
/// every stored digest in constant time, so neither the comparison nor the lookup reveals
/// through timing how close a guess was.
public struct CredentialDirectory<Holder: Sendable>: Sendable {
    private struct Entry: Sendable {
        var digest: [UInt8]
        var holder: Holder
    }

    private let entries: [Entry]

    public init(_ holders: [(credential: String, holder: Holder)]) {
        self.entries = holders.map { Entry(digest: Self.digest($0.credential), holder: $0.holder) }
    }

    public var holders: [Holder] { entries.map(\.holder) }

    public func authenticate(_ presented: String) -> Holder? {
        let digest = Self.digest(presented)
        var match: Holder?
        for entry in entries where Self.constantTimeEqual(entry.digest, digest) {
            match = entry.holder
        }
        return match
    }

    static func digest(_ credential: String) -> [UInt8] {
        Array(SHA256.hash(data: Array(credential.utf8)))
    }

    static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
        return difference == 0
    }
}

/// The agents a node knows, by id and by API key.
public struct AgentDirectory: Sendable {
    private let keys: CredentialDirectory<AgentSettings>
    private let byID: [String: AgentSettings]

    public init(agents: [AgentSettings]) {
        self.keys = CredentialDirectory(agents.map { ($0.apiKey.reveal(), $0) })
        self.byID = Dictionary(agents.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
    }

    public var agents: [AgentSettings] { keys.holders }

    public func agent(id: String) -> AgentSettings? { byID[id] }

    public func authenticate(apiKey presented: String) -> AgentSettings? {
        keys.authenticate(presented)
    }
}
