public import InterlockCore
public import Logging

/// Spending already recorded for one agent, used to restore budgets at start-up.
public struct SpendTotals: Sendable, Equatable {
    public var cost: USD
    public var calls: Int
    public var usage: TokenUsage

    public init(cost: USD, calls: Int, usage: TokenUsage) {
        self.cost = cost
        self.calls = calls
        self.usage = usage
    }
}

/// A key Interlock signs access tokens with. The private key is PEM, sealed (encrypted)
/// when the node has a key-encryption secret; a key is published in the JWKS from creation
/// until the tokens it signed can no longer be valid.
public struct SigningKeyRecord: Sendable, Equatable {
    public var kid: String
    /// PEM, or `sealed:v1:…` (see `SigningKeySeal`).
    public var privateKeyPEM: String
    public var createdMs: Int64
    /// When a newer key took over signing; nil for the key in use.
    public var retiredMs: Int64?

    public init(kid: String, privateKeyPEM: String, createdMs: Int64, retiredMs: Int64? = nil) {
        self.kid = kid
        self.privateKeyPEM = privateKeyPEM
        self.createdMs = createdMs
        self.retiredMs = retiredMs
    }
}

/// Which audit records a query wants; nil fields match everything.
public struct AuditFilter: Sendable, Equatable {
    public var agentID: String?
    public var userID: String?
    public var runID: String?
    public var target: String?
    public var action: String?
    public var decision: String?
    /// Unix milliseconds, inclusive.
    public var fromMs: Int64?
    /// Unix milliseconds, exclusive.
    public var toMs: Int64?

    public init() {}

    public static let all = AuditFilter()
}

extension InterlockStore {
    /// The whole log as stored, a page at a time.
    public func auditRecords(afterPosition position: Int64, limit: Int) async throws -> AuditPage {
        try await auditRecords(matching: .all, afterPosition: position, limit: limit)
    }
}

/// A page of the audit log as stored, and where the next page starts.
public struct AuditPage: Sendable {
    public var records: [AuditRecord]
    public var lastPosition: Int64

    public init(records: [AuditRecord], lastPosition: Int64) {
        self.records = records
        self.lastPosition = lastPosition
    }
}

/// Interlock's durable state behind one interface. The embedded implementation is SQLite;
/// a PostgreSQL one satisfies the same protocol. Nothing above this layer sees SQL.
public protocol InterlockStore: Sendable {
    /// Brings the schema to the newest version. Safe to call on every start.
    func migrate() async throws
    /// The schema version after `migrate`.
    func schemaVersion() async throws -> Int
    /// Appends usage records in one atomic write.
    func appendUsage(_ records: [UsageRecord]) async throws
    /// Sum of cost and tokens recorded for an agent from `sinceMs` (Unix ms) on.
    func spend(agentID: String, sinceMs: Int64) async throws -> SpendTotals
    /// The newest usage records, newest first.
    func recentUsage(limit: Int) async throws -> [UsageRecord]
    /// Links audit records onto the stored chain (after its head, whichever node wrote it:
    /// their sequence, previous hash and hash are set here) and stores them, in one
    /// transaction. The chain's head afterwards.
    @discardableResult
    func appendAudit(_ records: [AuditRecord]) async throws -> (sequence: Int64, hash: String)
    /// The last record of the audit chain (where a restarted node continues it).
    func auditHead() async throws -> (sequence: Int64, hash: String)?
    /// Audit records in the order they were stored, after storage position `position` (0 for
    /// the start), at most `limit`, those matching `filter`. Verification reads the whole log
    /// with it exactly as it is (empty filter).
    func auditRecords(matching filter: AuditFilter, afterPosition position: Int64, limit: Int) async throws -> AuditPage
    /// Token-signing keys, newest first.
    func signingKeys() async throws -> [SigningKeyRecord]
    /// Creates or replaces (by `kid`) signing keys and deletes others, in one atomic change.
    func saveSigningKeys(_ keys: [SigningKeyRecord], deleting kids: [String]) async throws
    /// Every agent of the registry.
    func agents() async throws -> [Agent]
    /// Every API key record, revoked and expired ones included.
    func apiKeys() async throws -> [APIKeyRecord]
    /// Creates or replaces (by id) agents and API key records, all in one atomic change.
    func saveRegistry(agents: [Agent], keys: [APIKeyRecord]) async throws
    /// The approved definitions of tools (pins).
    func toolPins() async throws -> [ToolPin]
    /// Creates or replaces (by name) tool pins, in one atomic change.
    func saveToolPins(_ pins: [ToolPin]) async throws
    /// Calls, tokens and cost recorded for a run.
    func runSpend(runID: String) async throws -> RunSpend
    /// Records a new approval request.
    func createApproval(_ approval: ApprovalRecord) async throws
    func approval(id: String) async throws -> ApprovalRecord?
    /// Approvals newest first, by status as of `nowMs` (expired = pending or approved past expiry).
    func approvals(status: ApprovalRecord.Status?, agentID: String?, nowMs: Int64, limit: Int) async throws -> [ApprovalRecord]
    /// Approves or rejects a pending, unexpired approval (setting its expiry to `expiresMs`);
    /// the record as it stands afterwards and whether this call changed it (false: it was
    /// already decided or expired), nil if there is none.
    /// An input step's `answer` is kept with the decision.
    func decideApproval(id: String, approve: Bool, by: String, note: String?, answer: JSONValue?, nowMs: Int64, expiresMs: Int64) async throws -> (ApprovalRecord, Bool)?
    /// The newest unexpired approval in `status` for exactly this call.
    func approval(binding: ApprovalBinding, status: ApprovalRecord.Status, nowMs: Int64) async throws -> ApprovalRecord?
    /// Marks an approved, unexpired approval used; false if another call used it first.
    func consumeApproval(id: String, nowMs: Int64) async throws -> Bool
    /// Puts a used approval back (the call it let through was refused before it ran).
    func restoreApproval(id: String) async throws
    /// Checks that the store answers (readiness).
    func ping() async throws
    func close() async throws
}

/// Opens the store a configuration names (not migrated: call `migrate`).
public func openStore(_ settings: StoreSettings, node: String, logger: Logger) async throws -> any InterlockStore & RunStore & ClusterStore {
    switch settings {
    case .sqlite(let path, let durability, let batchWriter):
        return try await SQLiteStore.open(path: path, durability: durability, batchWriter: batchWriter, logger: logger)
    case .postgres(let postgres):
        return try await PostgresStore.open(settings: postgres, node: node, logger: logger)
    }
}
