/// What an agent may reach, by name. Default deny: nothing that is not listed; `*` grants
/// every target of that kind.
public struct AgentGrants: Sendable, Equatable {
    /// Model aliases.
    public var models: [String]
    /// Tool names (enforced when tool calls arrive).
    public var tools: [String]
    /// Agent ids this agent may call (enforced when agent calls arrive).
    public var agents: [String]
    /// Workflows this agent may start runs of (and see and steer the runs it started).
    public var workflows: [String]
    /// Event types this agent may publish (`invoice.*` covers `invoice.received`).
    public var events: [String]

    public init(models: [String] = [], tools: [String] = [], agents: [String] = [], workflows: [String] = [], events: [String] = []) {
        self.models = models
        self.tools = tools
        self.agents = agents
        self.workflows = workflows
        self.events = events
    }

    /// The scopes these grants amount to: `model:<alias>`, `tool:<name>`, `agent:<id>`,
    /// `workflow:<name>`, `event:<type>`.
    public var scopes: [String] {
        models.map { "model:\($0)" } + tools.map { "tool:\($0)" } + agents.map { "agent:\($0)" } + workflows.map { "workflow:\($0)" }
            + events.map { "event:\($0)" }
    }

    /// Whether the grants cover `scope` (a `<kind>:<name>` string), wildcards included.
    public func covers(scope: String) -> Bool {
        guard let colon = scope.firstIndex(of: ":") else { return false }
        return covers(kind: String(scope[..<colon]), name: String(scope[scope.index(after: colon)...]))
    }

    /// The same for a kind and a name given apart (no scope string built and split per call).
    public func covers(kind: String, name: String) -> Bool {
        let list: [String]
        switch kind {
        case "model": list = models
        case "tool": list = tools
        case "agent": list = agents
        case "workflow": list = workflows
        case "event": list = events
        default: return false
        }
        return list.contains { Self.pattern($0, matches: name) }
    }

    /// A grant names one target, `*` (every target of its kind) or `<namespace>.*` (every tool
    /// of a namespace).
    public static func pattern(_ pattern: String, matches name: String) -> Bool {
        if pattern == name || pattern == "*" { return true }
        return pattern.hasSuffix(".*") && name.hasPrefix(pattern.dropLast()) && name.count > pattern.count - 1
    }

    /// Whether a list of `<kind>:<pattern>` scopes covers `scope`.
    public static func scopes(_ held: [String], cover scope: String) -> Bool {
        guard let colon = scope.firstIndex(of: ":") else { return held.contains(scope) }
        let kind = scope[..<colon]
        let name = String(scope[scope.index(after: colon)...])
        return held.contains { entry in
            guard let entryColon = entry.firstIndex(of: ":"), entry[..<entryColon] == kind else { return false }
            return pattern(String(entry[entry.index(after: entryColon)...]), matches: name)
        }
    }
}

/// A workload identity: one agent, what it was granted and what it may spend.
///
/// Agents come from config (reconciled into the store at start) and from the operator API.
/// A disabled agent is refused everywhere at once, including tokens already issued to it.
public struct Agent: Sendable, Equatable {
    public enum Source: String, Sendable {
        /// Declared in the config file; the file owns its fields.
        case config
        /// Made through `/admin/v1/agents`.
        case api
    }

    public var id: String
    /// Who answers for the agent (a team, a person).
    public var owner: String = ""
    public var description: String = ""
    public var region: String = ""
    public var grants = AgentGrants()
    public var limits = RateLimits()
    public var dailyBudget: USD?
    public var monthlyBudget: USD?
    /// Queue priority when limits are reached; higher goes first.
    public var priority: Int = 0
    public var disabled = false
    /// Why it was disabled: `operator:<id>`, or `removed_from_config`.
    public var disabledReason: String?
    /// Access tokens issued before this (Unix ms) are refused: set when the agent is
    /// disabled, so enabling it again does not revive tokens issued before.
    public var tokensValidFromMs: Int64 = 0
    public var source: Source = .config
    public var createdMs: Int64 = 0
    public var updatedMs: Int64 = 0

    public init(id: String) { self.id = id }

    /// `disabledReason` of a config agent that is no longer in the config.
    public static let removedFromConfig = "removed_from_config"

    /// Agent ids: what a SPIFFE path segment and a URL path segment can hold unescaped.
    public static func isValidID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 128
            && id.utf8.allSatisfy { byte in
                (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
                    || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
                    || byte == UInt8(ascii: ".")
            }
    }
}

// MARK: - JSON form

extension Agent {
    /// The agent as the admin API shows it and the store keeps it. Holds no credential.
    public var json: JSONValue {
        var limitsObject: JSONObject = [:]
        if let rpm = limits.requestsPerMinute { limitsObject["rpm"] = .integer(Int64(rpm)) }
        if let tpm = limits.tokensPerMinute { limitsObject["tpm"] = .integer(Int64(tpm)) }
        var budgets: JSONObject = [:]
        if let dailyBudget { budgets["daily_usd"] = .number(dailyBudget.dollars) }
        if let monthlyBudget { budgets["monthly_usd"] = .number(monthlyBudget.dollars) }
        return [
            "id": .string(id), "owner": .string(owner), "description": .string(description), "region": .string(region),
            "grants": [
                "models": .array(grants.models.map(JSONValue.string)), "tools": .array(grants.tools.map(JSONValue.string)),
                "agents": .array(grants.agents.map(JSONValue.string)), "workflows": .array(grants.workflows.map(JSONValue.string)),
                "events": .array(grants.events.map(JSONValue.string)),
            ],
            "limits": .object(limitsObject), "budgets": .object(budgets), "priority": .integer(Int64(priority)),
            "status": .string(disabled ? "disabled" : "enabled"), "disabled_reason": disabledReason.map(JSONValue.string) ?? .null,
            "tokens_valid_from_ms": .integer(tokensValidFromMs), "source": .string(source.rawValue),
            "created_ms": .integer(createdMs), "updated_ms": .integer(updatedMs),
        ]
    }

    /// Reads an agent back from `json` (the store's copy), trusting it.
    public init?(stored value: JSONValue) {
        guard let id = value["id"]?.stringValue else { return nil }
        self.init(id: id)
        try? apply(value, creating: true, includingState: true)
    }

    /// Changes the fields present in `patch` (the admin API's create and update bodies), each
    /// checked. Absent fields stay; `null` clears an optional one. Throws the first problem,
    /// naming the field.
    public mutating func apply(_ patch: JSONValue, creating: Bool, includingState: Bool = false) throws(GatewayError) {
        guard case .object(let fields) = patch else { throw GatewayError.invalidRequest("The body must be a JSON object.") }
        var allowed: Set<String> = ["owner", "description", "region", "grants", "limits", "budgets", "priority"]
        if creating { allowed.insert("id") }
        if includingState { allowed.formUnion(["status", "disabled_reason", "tokens_valid_from_ms", "source", "created_ms", "updated_ms"]) }
        for (key, _) in fields where !allowed.contains(key) {
            let hint = key == "id" ? " (an agent's id cannot change)" : key == "status" ? " (use the disable and enable actions)" : ""
            throw GatewayError.invalidRequest("Unknown field '\(key)'\(hint).", code: "invalid_field", param: key)
        }
        // State first: a stored profile a later check dislikes must still come back disabled.
        if includingState {
            disabled = fields["status"]?.stringValue == "disabled"
            disabledReason = fields["disabled_reason"]?.stringValue
            tokensValidFromMs = fields["tokens_valid_from_ms"]?.int64Value ?? 0
            source = fields["source"]?.stringValue.flatMap(Source.init(rawValue:)) ?? source
            createdMs = fields["created_ms"]?.int64Value ?? createdMs
            updatedMs = fields["updated_ms"]?.int64Value ?? updatedMs
        }
        func string(_ key: String) throws(GatewayError) -> String? {
            guard let value = fields[key] else { return nil }
            guard let text = value.stringValue, text.utf8.count <= 1_000 else {
                throw GatewayError.invalidRequest("'\(key)' must be a string of at most 1000 bytes.", code: "invalid_field", param: key)
            }
            return text
        }
        func names(_ value: JSONValue?, _ key: String) throws(GatewayError) -> [String]? {
            guard let value else { return nil }
            guard let list = value.arrayValue else { throw GatewayError.invalidRequest("'\(key)' must be a list of names.", code: "invalid_field", param: key) }
            var result: [String] = []
            for item in list {
                guard let name = item.stringValue, !name.isEmpty, name.utf8.count <= 256 else {
                    throw GatewayError.invalidRequest("'\(key)' must hold non-empty names.", code: "invalid_field", param: key)
                }
                if !result.contains(name) { result.append(name) }
            }
            return result
        }
        func integer(_ value: JSONValue?, _ key: String, minimum: Int64, maximum: Int64) throws(GatewayError) -> Int?? {
            guard let value else { return nil }
            if value.isNull { return .some(nil) }
            guard let number = value.int64Value, number >= minimum, number <= maximum else {
                throw GatewayError.invalidRequest("'\(key)' must be an integer from \(minimum) to \(maximum).", code: "invalid_field", param: key)
            }
            return .some(Int(number))
        }
        func dollars(_ value: JSONValue?, _ key: String) throws(GatewayError) -> USD?? {
            guard let value else { return nil }
            if value.isNull { return .some(nil) }
            guard let amount = value.doubleValue, amount >= 0, amount < 1e9 else {
                throw GatewayError.invalidRequest("'\(key)' must be a dollar amount of 0 or more.", code: "invalid_field", param: key)
            }
            return .some(USD(dollars: amount))
        }

        if creating, let idValue = fields["id"] {
            guard let newID = idValue.stringValue, Agent.isValidID(newID) else {
                throw GatewayError.invalidRequest(
                    "'id' must be 1 to 128 letters, digits, '-', '_' or '.'.", code: "invalid_field", param: "id")
            }
            id = newID
        }
        if let owner = try string("owner") { self.owner = owner }
        if let description = try string("description") { self.description = description }
        if let region = try string("region") { self.region = region }
        if let grantsValue = fields["grants"] {
            guard case .object(let grantFields) = grantsValue else {
                throw GatewayError.invalidRequest(
                    "'grants' must be an object with 'models', 'tools', 'agents', 'workflows' and 'events'.", code: "invalid_field", param: "grants")
            }
            for (key, _) in grantFields where !["models", "tools", "agents", "workflows", "events"].contains(key) {
                throw GatewayError.invalidRequest("Unknown field 'grants.\(key)'.", code: "invalid_field", param: "grants.\(key)")
            }
            if let models = try names(grantFields["models"], "grants.models") { grants.models = models }
            if let tools = try names(grantFields["tools"], "grants.tools") { grants.tools = tools }
            if let agents = try names(grantFields["agents"], "grants.agents") { grants.agents = agents }
            if let workflows = try names(grantFields["workflows"], "grants.workflows") { grants.workflows = workflows }
            if let events = try names(grantFields["events"], "grants.events") { grants.events = events }
        }
        if let limitsValue = fields["limits"] {
            guard case .object(let limitFields) = limitsValue else {
                throw GatewayError.invalidRequest("'limits' must be an object with 'rpm' and 'tpm'.", code: "invalid_field", param: "limits")
            }
            for (key, _) in limitFields where !["rpm", "tpm"].contains(key) {
                throw GatewayError.invalidRequest("Unknown field 'limits.\(key)'.", code: "invalid_field", param: "limits.\(key)")
            }
            if let rpm = try integer(limitFields["rpm"], "limits.rpm", minimum: 1, maximum: 100_000_000) { limits.requestsPerMinute = rpm }
            if let tpm = try integer(limitFields["tpm"], "limits.tpm", minimum: 1, maximum: 100_000_000_000) { limits.tokensPerMinute = tpm }
        }
        if let budgetsValue = fields["budgets"] {
            guard case .object(let budgetFields) = budgetsValue else {
                throw GatewayError.invalidRequest("'budgets' must be an object with 'daily_usd' and 'monthly_usd'.", code: "invalid_field", param: "budgets")
            }
            for (key, _) in budgetFields where !["daily_usd", "monthly_usd"].contains(key) {
                throw GatewayError.invalidRequest("Unknown field 'budgets.\(key)'.", code: "invalid_field", param: "budgets.\(key)")
            }
            if let daily = try dollars(budgetFields["daily_usd"], "budgets.daily_usd") { dailyBudget = daily }
            if let monthly = try dollars(budgetFields["monthly_usd"], "budgets.monthly_usd") { monthlyBudget = monthly }
        }
        if let priority = try integer(fields["priority"], "priority", minimum: -100, maximum: 100) { self.priority = priority ?? 0 }
    }
}
