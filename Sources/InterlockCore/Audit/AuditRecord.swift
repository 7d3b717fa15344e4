import Crypto

/// One entry of the tamper-evident audit log: who did what, to which target, what was
/// decided and why, how it ended. Arguments and results are stored as hashes, unless the
/// operator turned tool capture on.
///
/// Records form a hash chain: each carries the hash of the record before it, and its own
/// hash is the SHA-256 of its canonical JSON (RFC 8785, every field but `hash`). Changing,
/// removing, inserting or reordering a record breaks the chain at that point.
public struct AuditRecord: Sendable, Equatable {
    /// Position in the chain, from 1, without gaps.
    public var sequence: Int64
    public var timestampMs: Int64
    public var node: String
    /// `model.call`, `auth.failed`, `operator.<verb>`, … (README, "Audit log").
    public var action: String
    public var agentID: String?
    /// The user an agent acts for (delegated tokens).
    public var userID: String?
    /// Actors from the outermost to the one that made this call.
    public var actorChain: [String]
    public var runID: String?
    public var parentRunID: String?
    public var supervisor: String?
    public var target: String?
    /// `allow` or `deny`.
    public var decision: String
    public var reason: String?
    /// SHA-256 (hex) of the call's arguments.
    public var argumentsHash: String?
    /// SHA-256 (hex) of what the tool answered.
    public var resultHash: String?
    /// The arguments and the answer themselves (JSON text), only when the operator turned
    /// capture on (`tool_gateway.capture: full`); secrets redacted, long values cut.
    public var capture: String?
    /// `success`, `partial`, `error`, `rejected`, or nil when the action has no outcome.
    public var outcome: String?
    public var status: Int?
    public var costNanos: Int64?
    public var requestID: String?
    public var previousHash: String
    public var hash: String

    /// The hash before the first record.
    public static let genesisHash = String(repeating: "0", count: 64)

    public init(
        sequence: Int64 = 0, timestampMs: Int64, node: String, action: String, agentID: String? = nil, userID: String? = nil,
        actorChain: [String] = [], runID: String? = nil, parentRunID: String? = nil, supervisor: String? = nil, target: String? = nil,
        decision: String, reason: String? = nil, argumentsHash: String? = nil, outcome: String? = nil, status: Int? = nil,
        costNanos: Int64? = nil, requestID: String? = nil, resultHash: String? = nil, capture: String? = nil, previousHash: String = "",
        hash: String = ""
    ) {
        self.sequence = sequence
        self.timestampMs = timestampMs
        self.node = node
        self.action = action
        self.agentID = agentID
        self.userID = userID
        self.actorChain = actorChain
        self.runID = runID
        self.parentRunID = parentRunID
        self.supervisor = supervisor
        self.target = target
        self.decision = decision
        self.reason = reason
        self.argumentsHash = argumentsHash
        self.resultHash = resultHash
        self.capture = capture
        self.outcome = outcome
        self.status = status
        self.costNanos = costNanos
        self.requestID = requestID
        self.previousHash = previousHash
        self.hash = hash
    }

    /// The record as JSON, without `hash` unless asked for. Absent values are `null`, so
    /// every record has the same members.
    public func json(includingHash: Bool) -> JSONValue {
        func text(_ value: String?) -> JSONValue { value.map(JSONValue.string) ?? .null }
        var object: JSONObject = [
            "seq": .integer(sequence), "ts_ms": .integer(timestampMs), "node": .string(node), "action": .string(action),
            "agent": text(agentID), "user": text(userID), "actors": .array(actorChain.map(JSONValue.string)), "run": text(runID),
            "parent_run": text(parentRunID), "supervisor": text(supervisor), "target": text(target), "decision": .string(decision),
            "reason": text(reason), "args_sha256": text(argumentsHash), "outcome": text(outcome), "status": status.map { .integer(Int64($0)) } ?? .null,
            "cost_nanos": costNanos.map(JSONValue.integer) ?? .null, "request_id": text(requestID), "prev_hash": .string(previousHash),
        ]
        // Members added after the first release appear only when set: older records keep their hashes.
        if let resultHash { object["result_sha256"] = .string(resultHash) }
        if let capture { object["capture"] = .string(capture) }
        if includingHash { object["hash"] = .string(hash) }
        return .object(object)
    }

    /// SHA-256 (hex) of some bytes: how arguments are recorded.
    public static func sha256Hex(_ bytes: [UInt8]) -> String {
        AuditChain.hex(SHA256.hash(data: bytes))
    }

    /// SHA-256 (hex) of the canonical JSON of every field but `hash`.
    public func computedHash() -> String {
        computedHash(sequence: sequence, previousHash: previousHash)
    }

    /// The hash the record would have with this place in a chain.
    public func computedHash(sequence: Int64, previousHash: String) -> String {
        AuditChain.hex(SHA256.hash(data: canonicalBytes(sequence: sequence, previousHash: previousHash)))
    }

    /// The RFC 8785 form of `json(includingHash: false)`, written directly: every record has
    /// the same members, so their sorted order is fixed and no `JSONValue` is built. Each
    /// member's name goes in with its punctuation as one piece (it went byte by byte: a third
    /// of an audit row's hashing on the batch thread).
    public func canonicalBytes() -> [UInt8] {
        canonicalBytes(sequence: sequence, previousHash: previousHash)
    }

    /// The canonical form with this place in a chain (`AuditChain.place` links without a copy).
    public func canonicalBytes(sequence: Int64, previousHash: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(512)
        func raw(_ piece: StaticString) {
            out.append(contentsOf: UnsafeBufferPointer(start: piece.utf8Start, count: piece.utf8CodeUnitCount))
        }
        func text(_ value: String?) {
            if let value { JSONWriter.writeString(value, into: &out) } else { raw("null") }
        }
        func integer(_ value: Int64?) {
            guard let value else { return raw("null") }
            // Plain digits, as ECMAScript writes an integer a double holds exactly; the rest
            // (negative, past 2^53) as `CanonicalJSON` writes numbers.
            guard value >= 0, value <= 1 << 53 else { return CanonicalJSON.write(.integer(value), into: &out) }
            var divisor: Int64 = 1
            while divisor <= value / 10 { divisor *= 10 }
            var rest = value
            repeat {
                out.append(UInt8(ascii: "0") + UInt8(rest / divisor))
                rest %= divisor
                divisor /= 10
            } while divisor > 0
        }
        // Member names in UTF-16 order (all ASCII, so plain byte order).
        raw(#"{"action":"#); text(action)
        raw(#","actors":["#)
        for (index, actor) in actorChain.enumerated() {
            if index > 0 { raw(",") }
            JSONWriter.writeString(actor, into: &out)
        }
        raw(#"],"agent":"#); text(agentID)
        raw(#","args_sha256":"#); text(argumentsHash)
        if let capture { raw(#","capture":"#); text(capture) }
        raw(#","cost_nanos":"#); integer(costNanos)
        raw(#","decision":"#); text(decision)
        raw(#","node":"#); text(node)
        raw(#","outcome":"#); text(outcome)
        raw(#","parent_run":"#); text(parentRunID)
        raw(#","prev_hash":"#); text(previousHash)
        raw(#","reason":"#); text(reason)
        raw(#","request_id":"#); text(requestID)
        if let resultHash { raw(#","result_sha256":"#); text(resultHash) }
        raw(#","run":"#); text(runID)
        raw(#","seq":"#); integer(sequence)
        raw(#","status":"#); integer(status.map(Int64.init))
        raw(#","supervisor":"#); text(supervisor)
        raw(#","target":"#); text(target)
        raw(#","ts_ms":"#); integer(timestampMs)
        raw(#","user":"#); text(userID)
        raw("}")
        return out
    }
}

/// Links records into the chain and checks a chain.
public struct AuditChain: Sendable {
    public private(set) var lastSequence: Int64
    public private(set) var lastHash: String

    public init(lastSequence: Int64 = 0, lastHash: String = AuditRecord.genesisHash) {
        self.lastSequence = lastSequence
        self.lastHash = lastHash
    }

    /// Gives the record its place: the next sequence number, the previous hash, its hash.
    public mutating func link(_ record: AuditRecord) -> AuditRecord {
        let place = place(record)
        var record = record
        record.sequence = place.sequence
        record.previousHash = place.previousHash
        record.hash = place.hash
        return record
    }

    /// A record's place in the chain, as `link` would give it, without copying the record
    /// (a copy retains and releases its dozen strings: the batch writer links every record).
    public mutating func place(_ record: AuditRecord) -> Place {
        let previous = lastHash
        lastSequence += 1
        lastHash = record.computedHash(sequence: lastSequence, previousHash: previous)
        return Place(sequence: lastSequence, previousHash: previous, hash: lastHash)
    }

    /// Sequence number, previous hash and hash of a linked record.
    public struct Place: Sendable {
        public var sequence: Int64
        public var previousHash: String
        public var hash: String

        public init(sequence: Int64, previousHash: String, hash: String) {
            self.sequence = sequence
            self.previousHash = previousHash
            self.hash = hash
        }
    }

    /// The first place a chain is broken, and how.
    public struct Break: Sendable, Equatable, CustomStringConvertible {
        public enum Kind: String, Sendable {
            /// The record's content no longer matches its hash.
            case altered
            /// A record is missing before this one (sequence gap).
            case removed
            /// This record does not follow the one before it (inserted or reordered).
            case misplaced
        }

        public var sequence: Int64
        public var kind: Kind
        public var detail: String

        public var description: String { "record \(sequence): \(kind.rawValue) (\(detail))" }
    }

    /// Walks records in stored order, continuing from `self`. Returns the first break, or
    /// nil and the chain advanced to the last record.
    public mutating func verify(_ records: some Sequence<AuditRecord>) -> Break? {
        for record in records {
            if record.computedHash() != record.hash {
                return Break(sequence: record.sequence, kind: .altered, detail: "its content does not match its hash")
            }
            if record.sequence > lastSequence + 1, record.previousHash != lastHash {
                return Break(sequence: record.sequence, kind: .removed, detail: "expected record \(lastSequence + 1) before it")
            }
            if record.sequence != lastSequence + 1 || record.previousHash != lastHash {
                return Break(sequence: record.sequence, kind: .misplaced, detail: "it does not link to record \(lastSequence)")
            }
            lastSequence = record.sequence
            lastHash = record.hash
        }
        return nil
    }

    static func hex(_ digest: SHA256.Digest) -> String {
        digest.withUnsafeBytes(ASCIIText.hex)
    }
}
