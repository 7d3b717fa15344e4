import Crypto

/// Holders of secret credentials (operators' tokens) and how to recognise them.
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
