public import InterlockCore
public import InterlockStore
public import Logging
import Crypto
import Synchronization

/// The agents a node serves and their API keys.
///
/// Loaded from the store and reconciled with the config at start; changed by operators
/// through the admin API. Every call authenticates here, so reads take a lock on an
/// in-memory snapshot and nothing else. A change is written to the store first and
/// published only after the store accepted it; changes run one at a time.
public final class AgentRegistry: Sendable {
    /// An agent with its live state: rate limiter, budget, and the signal that stops its
    /// open streams. Replaced as a whole when the agent changes; the budget and the signal
    /// carry over.
    public final class Entry: Sendable {
        public let agent: Agent
        let limiter: AsyncRateLimiter?
        let budget: BudgetAccount?
        public let cutOff: CutOffSignal

        init(agent: Agent, limiter: AsyncRateLimiter?, budget: BudgetAccount?, cutOff: CutOffSignal) {
            self.agent = agent
            self.limiter = limiter
            self.budget = budget
            self.cutOff = cutOff
        }
    }

    private struct Snapshot {
        var entries: [String: Entry] = [:]
        var keysByDigest: [DigestKey: APIKeyRecord] = [:]
        var keysByID: [String: APIKeyRecord] = [:]
    }

    private let snapshot = Mutex(Snapshot())
    private let changes = AsyncSerialGate()
    private let store: any InterlockStore
    private let queue: AdmissionQueuePolicy
    public let settings: AuthSettings
    private let logger: Logger

    private init(store: any InterlockStore, queue: AdmissionQueuePolicy, settings: AuthSettings, logger: Logger) {
        self.store = store
        self.queue = queue
        self.settings = settings
        self.logger = logger
    }

    /// Loads the registry from the store and reconciles it with the agents the config
    /// declares (see `reconcile`).
    public static func open(
        store: any InterlockStore, declared: [AgentSettings], queue: AdmissionQueuePolicy, settings: AuthSettings, nowMs: Int64, logger: Logger
    ) async throws -> AgentRegistry {
        let registry = AgentRegistry(store: store, queue: queue, settings: settings, logger: logger)
        let stored = try await store.agents()
        let keys = try await store.apiKeys()
        let (agents, changedAgents, changedKeys) = reconcile(stored: stored, keys: keys, declared: declared, nowMs: nowMs)
        try await store.saveRegistry(agents: changedAgents, keys: changedKeys)
        var finalKeys = Dictionary(keys.map { ($0.id, $0) }, uniquingKeysWith: { _, last in last })
        for key in changedKeys { finalKeys[key.id] = key }
        registry.snapshot.withLock { snapshot in
            for agent in agents { snapshot.entries[agent.id] = registry.makeEntry(agent, previous: nil) }
            for key in finalKeys.values {
                snapshot.keysByID[key.id] = key
                if let digest = DigestKey(hex: key.digest) { snapshot.keysByDigest[digest] = key }
            }
        }
        for agent in changedAgents where agent.disabledReason == Agent.removedFromConfig {
            logger.warning("agent no longer in the config was disabled", metadata: ["interlock.agent.id": "\(agent.id)"])
        }
        return registry
    }

    /// What the store should hold given what it holds and what the config declares:
    /// - a declared agent is created or brought to the config's fields (the file owns them);
    ///   it keeps the disabled state an operator gave it, unless it was disabled only because
    ///   it had left the config;
    /// - an agent the config declared before and no longer does is disabled, not deleted
    ///   (its history stays attributable);
    /// - a declared `api_key` is recorded by its hash; a config key that changed or was
    ///   removed is revoked. A config key an operator revoked stays revoked.
    static func reconcile(
        stored: [Agent], keys: [APIKeyRecord], declared: [AgentSettings], nowMs: Int64
    ) -> (agents: [Agent], changedAgents: [Agent], changedKeys: [APIKeyRecord]) {
        var byID = Dictionary(stored.map { ($0.id, $0) }, uniquingKeysWith: { _, last in last })
        var changedAgents: [Agent] = []
        var changedKeys: [APIKeyRecord] = []
        let declaredIDs = Set(declared.map(\.agent.id))
        for declaration in declared {
            var agent = declaration.agent
            agent.source = .config
            if let existing = byID[agent.id] {
                agent.createdMs = existing.createdMs
                agent.tokensValidFromMs = existing.tokensValidFromMs
                if existing.disabled, existing.disabledReason != Agent.removedFromConfig {
                    agent.disabled = true
                    agent.disabledReason = existing.disabledReason
                }
                agent.updatedMs = existing.updatedMs
                if agent != existing {
                    agent.updatedMs = nowMs
                    changedAgents.append(agent)
                }
            } else {
                agent.createdMs = nowMs
                agent.updatedMs = nowMs
                changedAgents.append(agent)
            }
            byID[agent.id] = agent
            let wanted = declaration.apiKey.map { APIKeyRecord.declared($0, agentID: agent.id, nowMs: nowMs) }
            if let wanted, !keys.contains(where: { $0.id == wanted.id }) { changedKeys.append(wanted) }
            for var key in keys where key.agentID == agent.id && key.source == .config && key.id != wanted?.id && key.revokedMs == nil {
                key.revokedMs = nowMs
                changedKeys.append(key)
            }
        }
        for var agent in stored where agent.source == .config && !declaredIDs.contains(agent.id) && !agent.disabled {
            agent.disabled = true
            agent.disabledReason = Agent.removedFromConfig
            agent.tokensValidFromMs = nowMs
            agent.updatedMs = nowMs
            byID[agent.id] = agent
            changedAgents.append(agent)
        }
        return (byID.values.sorted { $0.id < $1.id }, changedAgents, changedKeys)
    }

    private func makeEntry(_ agent: Agent, previous: Entry?, budget restored: BudgetAccount? = nil) -> Entry {
        let limiter: AsyncRateLimiter?
        if let previous, previous.agent.limits == agent.limits {
            limiter = previous.limiter
        } else {
            limiter = agent.limits.isUnlimited ? nil : AsyncRateLimiter(name: "agent:\(agent.id)", limits: agent.limits, queue: queue)
        }
        let limits = BudgetLedger.Limits(daily: agent.dailyBudget, monthly: agent.monthlyBudget)
        var budget: BudgetAccount?
        if let restored {
            budget = restored
        } else if let existing = previous?.budget {
            // Limits removed: keep counting, so spending is known if a limit comes back.
            existing.withLock { $0.limits = limits }
            budget = existing
        } else if !limits.isEmpty {
            budget = BudgetAccount(BudgetLedger(limits: limits))
        }
        return Entry(agent: agent, limiter: limiter, budget: budget, cutOff: previous?.cutOff ?? CutOffSignal())
    }

    // MARK: Reading

    public func entry(id: String) -> Entry? {
        snapshot.withLock { $0.entries[id] }
    }

    public var agents: [Agent] {
        snapshot.withLock { $0.entries.values.map(\.agent) }.sorted { $0.id < $1.id }
    }

    var entries: [Entry] { snapshot.withLock { Array($0.entries.values) } }

    /// What a presented API key is.
    public enum KeyMatch: Sendable {
        case valid(Entry, APIKeyRecord)
        case unknown
        case expired(APIKeyRecord)
        case revoked(APIKeyRecord)
    }

    /// Looks a presented key up by its SHA-256. The lookup compares digests, not keys: its
    /// timing says nothing about how close a guess was to a stored key.
    public func match(apiKey presented: String, nowMs: Int64) -> KeyMatch {
        var presented = presented
        var hasher = SHA256()
        presented.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }  // no copy of the key into an array
        let digest = DigestKey(hasher.finalize())
        return snapshot.withLock { snapshot -> KeyMatch in
            guard let record = snapshot.keysByDigest[digest], let entry = snapshot.entries[record.agentID] else { return .unknown }
            switch record.state(nowMs: nowMs) {
            case .active: return .valid(entry, record)
            case .expired: return .expired(record)
            case .revoked: return .revoked(record)
            }
        }
    }

    public func keys(agentID: String) -> [APIKeyRecord] {
        snapshot.withLock { $0.keysByID.values.filter { $0.agentID == agentID } }.sorted { ($0.createdMs, $0.id) < ($1.createdMs, $1.id) }
    }

    // MARK: Changing

    /// Adds an agent made through the admin API. 409 if the id is taken.
    public func create(_ agent: Agent, nowMs: Int64) async throws -> Agent {
        try await changes.run {
            guard entry(id: agent.id) == nil else {
                throw GatewayError(kind: .conflict, code: "agent_exists", message: "An agent with id '\(agent.id)' already exists.")
            }
            var agent = agent
            agent.source = .api
            agent.disabled = false
            agent.disabledReason = nil
            agent.createdMs = nowMs
            agent.updatedMs = nowMs
            try await store.saveRegistry(agents: [agent], keys: [])
            publish(agent)
            return agent
        }
    }

    /// Applies an admin API patch. Config agents' fields belong to the file: 409.
    public func update(id: String, patch: JSONValue, nowMs: Int64) async throws -> Agent {
        try await changes.run {
            var agent = try existing(id)
            guard agent.source == .api else {
                throw GatewayError(
                    kind: .conflict, code: "agent_managed_by_config",
                    message: "Agent '\(id)' is declared in the config file; change it there. Operators can still disable it and manage its keys.")
            }
            try agent.apply(patch, creating: false)
            agent.updatedMs = nowMs
            // A budget set for the first time starts from what the agent already spent.
            var restored: BudgetAccount?
            let limits = BudgetLedger.Limits(daily: agent.dailyBudget, monthly: agent.monthlyBudget)
            if entry(id: id)?.budget == nil, !limits.isEmpty {
                restored = try await Self.restoredBudget(agentID: id, limits: limits, store: store, nowMs: nowMs)
            }
            try await store.saveRegistry(agents: [agent], keys: [])
            publish(agent, budget: restored)
            return agent
        }
    }

    /// Disables (or enables) an agent. Disabling takes effect at once: the next call with
    /// any of its credentials is refused, tokens issued before now stay refused even after
    /// it is enabled again, and its open streams are cut.
    public func setDisabled(id: String, _ disabled: Bool, reason: String?, nowMs: Int64) async throws -> Agent {
        let (agent, entry) = try await changes.run { () async throws -> (Agent, Entry) in
            var agent = try existing(id)
            agent.disabled = disabled
            agent.disabledReason = disabled ? reason : nil
            if disabled { agent.tokensValidFromMs = nowMs }
            agent.updatedMs = nowMs
            try await store.saveRegistry(agents: [agent], keys: [])
            return (agent, publish(agent))
        }
        if disabled { entry.cutOff.fire() }
        return agent
    }

    /// A new API key for an agent: the key (to show once) and its record.
    public func issueKey(agentID: String, ttlSeconds: Int?, nowMs: Int64) async throws -> (key: String, record: APIKeyRecord) {
        try await changes.run {
            _ = try existing(agentID)
            let ttl = ttlSeconds ?? settings.apiKeyTTLSeconds
            let issued = APIKeyRecord.generate(agentID: agentID, nowMs: nowMs, expiresMs: ttl > 0 ? nowMs + Int64(ttl) * 1000 : nil)
            try await store.saveRegistry(agents: [], keys: [issued.record])
            publish(keys: [issued.record])
            return issued
        }
    }

    /// Replaces a key: a new one now, and the old one valid only for `overlapSeconds` more.
    public func rotateKey(
        agentID: String, keyID: String, overlapSeconds: Int?, ttlSeconds: Int?, nowMs: Int64
    ) async throws -> (key: String, record: APIKeyRecord, previous: APIKeyRecord) {
        try await changes.run {
            _ = try existing(agentID)
            var previous = try existingKey(agentID: agentID, keyID: keyID)
            guard previous.state(nowMs: nowMs) == .active else {
                throw GatewayError(kind: .conflict, code: "api_key_inactive", message: "Key '\(keyID)' is \(previous.state(nowMs: nowMs).rawValue); issue a new key instead.")
            }
            let overlapEnd = nowMs + Int64(overlapSeconds ?? settings.apiKeyRotationOverlapSeconds) * 1000
            previous.expiresMs = min(previous.expiresMs ?? .max, overlapEnd)
            let ttl = ttlSeconds ?? settings.apiKeyTTLSeconds
            let issued = APIKeyRecord.generate(agentID: agentID, nowMs: nowMs, expiresMs: ttl > 0 ? nowMs + Int64(ttl) * 1000 : nil)
            try await store.saveRegistry(agents: [], keys: [issued.record, previous])
            publish(keys: [issued.record, previous])
            return (issued.key, issued.record, previous)
        }
    }

    /// Revokes a key at once.
    public func revokeKey(agentID: String, keyID: String, nowMs: Int64) async throws -> APIKeyRecord {
        try await changes.run {
            var key = try existingKey(agentID: agentID, keyID: keyID)
            if key.revokedMs == nil {
                key.revokedMs = nowMs
                try await store.saveRegistry(agents: [], keys: [key])
                publish(keys: [key])
            }
            return key
        }
    }

    /// Reads agents and keys again from the store (another node changed them): new and
    /// changed ones take effect here; an agent disabled elsewhere is cut off here too.
    public func reload() async throws {
        let stored = try await store.agents()
        let keys = try await store.apiKeys()
        let cut = try await changes.run { () async throws -> [Entry] in
            var cut: [Entry] = []
            for agent in stored {
                let previous = entry(id: agent.id)?.agent
                guard previous != agent else { continue }
                let entry = publish(agent)
                if agent.disabled, previous.map({ !$0.disabled || $0.tokensValidFromMs != agent.tokensValidFromMs }) ?? false { cut.append(entry) }
            }
            let changed = snapshot.withLock { snapshot in keys.filter { snapshot.keysByID[$0.id] != $0 } }
            if !changed.isEmpty { publish(keys: changed) }
            return cut
        }
        for entry in cut { entry.cutOff.fire() }
    }

    private func existing(_ id: String) throws(GatewayError) -> Agent {
        guard let agent = entry(id: id)?.agent else {
            throw GatewayError(kind: .notFound, code: "agent_not_found", message: "There is no agent '\(id)'.")
        }
        return agent
    }

    private func existingKey(agentID: String, keyID: String) throws(GatewayError) -> APIKeyRecord {
        guard let key = snapshot.withLock({ $0.keysByID[keyID] }), key.agentID == agentID else {
            throw GatewayError(kind: .notFound, code: "api_key_not_found", message: "Agent '\(agentID)' has no key '\(keyID)'.")
        }
        return key
    }

    /// A budget for `agentID` with today's and this month's spending from the usage ledger.
    static func restoredBudget(agentID: String, limits: BudgetLedger.Limits, store: any InterlockStore, nowMs: Int64) async throws -> BudgetAccount {
        var ledger = BudgetLedger(limits: limits)
        for period in BudgetPeriod.allCases {
            let spent = try await store.spend(agentID: agentID, sinceMs: period.start(epochMs: nowMs))
            ledger.restore(period: period, epochMs: nowMs, spent: spent.cost)
        }
        return BudgetAccount(ledger)
    }

    @discardableResult
    private func publish(_ agent: Agent, budget: BudgetAccount? = nil) -> Entry {
        snapshot.withLock { snapshot in
            let entry = makeEntry(agent, previous: snapshot.entries[agent.id], budget: budget)
            snapshot.entries[agent.id] = entry
            return entry
        }
    }

    private func publish(keys: [APIKeyRecord]) {
        snapshot.withLock { snapshot in
            for key in keys {
                snapshot.keysByID[key.id] = key
                if let digest = DigestKey(hex: key.digest) { snapshot.keysByDigest[digest] = key }
            }
        }
    }
}

/// A SHA-256 digest as a dictionary key: four words, hashed without building a hex string.
struct DigestKey: Hashable, Sendable {
    let words: (UInt64, UInt64, UInt64, UInt64)

    init(_ digest: SHA256.Digest) {
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        digest.withUnsafeBytes { bytes in
            words = (
                bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self), bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
                bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self), bytes.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
            )
        }
        self.words = words
    }

    /// From the hex form the store keeps.
    init?(hex: String) {
        let digits = Array(hex.utf8)
        guard digits.count == 64 else { return nil }
        var bytes = [UInt8](repeating: 0, count: 32)
        for index in 0..<32 {
            guard let high = Self.nibble(digits[2 * index]), let low = Self.nibble(digits[2 * index + 1]) else { return nil }
            bytes[index] = high << 4 | low
        }
        words = bytes.withUnsafeBytes { raw in
            (
                raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self), raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
                raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self), raw.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
            )
        }
    }

    private static func nibble(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        default: nil
        }
    }

    static func == (lhs: DigestKey, rhs: DigestKey) -> Bool { lhs.words == rhs.words }

    func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
        hasher.combine(words.2)
        hasher.combine(words.3)
    }
}

/// A budget ledger behind a lock.
final class BudgetAccount: Sendable {
    private let ledger: Mutex<BudgetLedger>

    init(_ ledger: BudgetLedger) { self.ledger = Mutex(ledger) }

    func withLock<Result: Sendable>(_ body: (inout BudgetLedger) -> Result) -> Result {
        ledger.withLock { body(&$0) }
    }
}
