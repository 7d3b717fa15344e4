import Crypto

/// The agents a node knows and how to recognise them by API key.
///
/// Keys are kept only as SHA-256 digests. A presented key is hashed and compared with every
/// stored digest in constant time, so neither the comparison nor the lookup reveals through
/// timing how close a guess was.
public struct AgentDirectory: Sendable {
    private struct Entry: Sendable {
        var digest: [UInt8]
        var agent: AgentSettings
    }

    private let entries: [Entry]
    private let byID: [String: AgentSettings]

    public init(agents: [AgentSettings]) {
        self.entries = agents.map { Entry(digest: AgentDirectory.digest($0.apiKey.reveal()), agent: $0) }
        self.byID = Dictionary(agents.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
    }

    public var agents: [AgentSettings] { entries.map(\.agent) }

    public func agent(id: String) -> AgentSettings? { byID[id] }

    public func authenticate(apiKey presented: String) -> AgentSettings? {
        let digest = AgentDirectory.digest(presented)
        var match: AgentSettings?
        for entry in entries where AgentDirectory.constantTimeEqual(entry.digest, digest) {
            match = entry.agent
        }
        return match
    }

    static func digest(_ key: String) -> [UInt8] {
        Array(SHA256.hash(data: Array(key.utf8)))
    }

    static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
        return difference == 0
    }
}
