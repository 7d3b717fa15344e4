/// A tool as agents see it: a namespaced name, what it does, what it takes, and what it may
/// do to the world.
public struct ToolDefinition: Sendable {
    /// `<namespace>.<tool>`.
    public var name: String
    public var namespace: String
    public var description: String
    /// The JSON Schema of the arguments, self-contained (references resolved).
    public var inputSchema: JSONValue
    public var outputSchema: JSONValue?
    public var metadata: ToolMetadata

    public init(name: String, namespace: String, description: String, inputSchema: JSONValue, outputSchema: JSONValue? = nil, metadata: ToolMetadata = ToolMetadata()) {
        self.name = name
        self.namespace = namespace
        self.description = description
        self.inputSchema = inputSchema
        self.outputSchema = outputSchema
        self.metadata = metadata
    }

    /// SHA-256 of what an agent is told (name, description, schemas): a change means the
    /// upstream now tells agents something else.
    public var definitionHash: String {
        var document: JSONObject = ["name": .string(name), "description": .string(description), "input_schema": inputSchema]
        if let outputSchema { document["output_schema"] = outputSchema }
        return AuditRecord.sha256Hex(CanonicalJSON.bytes(.object(document)))
    }

    /// The tool in the catalog (`GET /v1/tools`): Interlock's shape, and the OpenAI
    /// function-tool shape a model call can take as it is.
    public var catalogEntry: JSONValue {
        var entry: JSONObject = [
            "name": .string(name), "namespace": .string(namespace), "description": .string(description), "input_schema": inputSchema,
            "side_effects": .string(metadata.sideEffects.rawValue), "idempotent": .bool(metadata.idempotent), "risk": .string(metadata.risk.rawValue),
            "owner": .string(metadata.owner),
            "openai": ["type": "function", "function": ["name": .string(Self.functionName(name)), "description": .string(description), "parameters": inputSchema]],
        ]
        if let outputSchema { entry["output_schema"] = outputSchema }
        return .object(entry)
    }

    /// OpenAI function names allow `[a-zA-Z0-9_-]{1,64}`: the dot of the namespace becomes `__`.
    public static func functionName(_ name: String) -> String {
        String(name.replacing(".", with: "__").prefix(64))
    }
}

/// What a tool may do, from config (an upstream's own claims are not trusted for these).
public struct ToolMetadata: Sendable, Equatable {
    public enum SideEffects: String, Sendable, CaseIterable {
        case read
        case write
    }

    public enum Risk: String, Sendable, CaseIterable {
        case low
        case medium
        case high
    }

    public var owner: String = ""
    /// Unknown tools are assumed to write.
    public var sideEffects: SideEffects = .write
    /// Only idempotent tools are retried.
    public var idempotent = false
    public var risk: Risk = .medium
    /// Calls per minute across all agents (nil: no limit of its own).
    public var requestsPerMinute: Int?

    public init() {}
}

/// What an operator approved a tool to tell agents: the hash of its definition when first
/// seen or last approved, and the different one an upstream offers now, if any. A tool whose
/// definition differs from the approved one is quarantined until an operator approves it.
public struct ToolPin: Sendable, Equatable {
    public var name: String
    public var approvedHash: String
    public var approvedMs: Int64
    /// `first-seen`, or `operator:<id>`.
    public var approvedBy: String
    /// A definition seen since that is not the approved one.
    public var pendingHash: String?
    public var pendingMs: Int64?

    public init(name: String, approvedHash: String, approvedMs: Int64, approvedBy: String, pendingHash: String? = nil, pendingMs: Int64? = nil) {
        self.name = name
        self.approvedHash = approvedHash
        self.approvedMs = approvedMs
        self.approvedBy = approvedBy
        self.pendingHash = pendingHash
        self.pendingMs = pendingMs
    }

    /// The pin after seeing `hash` now: unchanged when it is the approved one (a pending
    /// change withdrawn clears), otherwise the change waits for approval.
    public func seeing(_ hash: String, nowMs: Int64) -> ToolPin {
        var next = self
        if hash == approvedHash {
            next.pendingHash = nil
            next.pendingMs = nil
        } else if pendingHash != hash {
            next.pendingHash = hash
            next.pendingMs = nowMs
        }
        return next
    }

    public var isQuarantined: Bool { pendingHash != nil }
}

/// The MCP protocol revisions Interlock speaks (the handshake versions), newest first: as a
/// server at `/mcp` and as a client of upstream MCP servers.
public enum MCPProtocol {
    public static let versions = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"]
}
