public import InterlockPolicy
/// The validated configuration of an Interlock node. Built by the config loader from YAML;
/// everything here has passed validation, so the rest of the system can trust it.
public struct InterlockConfiguration: Sendable {
    public var server: ServerSettings
    public var node: NodeSettings
    public var store: StoreSettings
    public var ledger: LedgerSettings
    public var audit = AuditSettings()
    public var auth = AuthSettings()
    public var operators: [OperatorSettings] = []
    public var logging: LoggingSettings
    public var gateway: GatewaySettings
    public var providers: [ProviderSettings]
    public var models: [ModelAliasSettings]
    public var agents: [AgentSettings]
    /// Where tools come from, by namespace.
    public var toolSources: [ToolSourceSettings] = []
    public var mcp = MCPSettings()
    /// Tool gateway settings that are not per upstream (`tool_gateway` in config).
    public var toolGateway = ToolGatewaySettings()
    /// Policy rules and approvals (`policy` in config).
    public var policy = PolicySettings()
    /// Detectors on what agents send and what comes back (`guardrails` in config).
    public var guardrails = GuardrailSettings()
    /// Durable workflows: definitions and how this node's worker runs them (`workflows`).
    public var workflows = WorkflowSettings()
    /// How nodes sharing a PostgreSQL store keep track of each other (`cluster`).
    public var cluster = ClusterSettings()

    public init(
        server: ServerSettings = .init(), node: NodeSettings = .init(), store: StoreSettings = .sqlite(path: "interlock.sqlite"),
        ledger: LedgerSettings = .init(), logging: LoggingSettings = .init(), gateway: GatewaySettings = .init(),
        providers: [ProviderSettings] = [], models: [ModelAliasSettings] = [], agents: [AgentSettings] = []
    ) {
        self.server = server
        self.node = node
        self.store = store
        self.ledger = ledger
        self.logging = logging
        self.gateway = gateway
        self.providers = providers
        self.models = models
        self.agents = agents
    }
}

public struct ServerSettings: Sendable {
    public var host: String = "127.0.0.1"
    public var port: Int = 8080
    /// Largest request body accepted, in bytes.
    public var maxBodyBytes: Int = 4 * 1024 * 1024
    /// Largest request head (all header names and values together) accepted, in bytes;
    /// larger ones get 431.
    public var maxHeaderBytes: Int = 65_536
    /// How long shutdown waits for in-flight requests and streams, in milliseconds.
    public var shutdownGraceMs: Int = 30_000
    /// Serve non-streamed model calls that need no wait on the event loop that read them
    /// (README, "The event-loop path"). Off sends every call through the async path.
    public var eventLoopPath: Bool = true
    /// Event-loop threads serving connections (and the upstream connections they open);
    /// nil: one per core.
    public var eventLoopThreads: Int?

    public init() {}
}

/// `cluster`: membership and shared limits when several nodes share one store.
public struct ClusterSettings: Sendable {
    /// How often a node records that it is alive, in milliseconds.
    public var heartbeatIntervalMs: Int = 2_000
    /// A node silent this long is listed as lost, in milliseconds. (Its runs move to other
    /// nodes when their leases run out: `workflows.lease_ms`.)
    public var nodeTimeoutMs: Int = 10_000
    /// How long a shared budget reservation lives if its call never settles (the node died
    /// mid-call), in milliseconds; longer than the longest call.
    public var budgetReservationTTLMs: Int = 600_000

    public init() {}
}

public struct NodeSettings: Sendable {
    public var id: String = "node-1"
    public var region: String = "local"

    public init() {}
}

public enum StoreSettings: Sendable, Equatable {
    case sqlite(path: String, durability: SQLiteDurability = .normal, batchWriter: SQLiteBatchWriterSettings = .init())
    /// One PostgreSQL shared by every node of a cluster.
    case postgres(PostgresSettings)

    /// Whether several nodes may share it (limits, budgets and the run queue are then
    /// counted in the store, not in each node's memory).
    public var isShared: Bool {
        if case .postgres = self { return true }
        return false
    }
}

/// `store.postgres`: where the cluster's PostgreSQL is and how a node talks to it.
public struct PostgresSettings: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var user: String
    /// From the URL; never logged.
    public var password: Secret?
    public var database: String
    /// Connections this node keeps at most (`pool_size`).
    public var poolSize: Int = 20
    /// Checkpoint batches this node writes at once (`checkpoint_writers`). Checkpoints that
    /// arrive while a batch is written go in the next one, so one writer already commits
    /// many runs' steps together; more writers mean smaller batches and more transactions
    /// for the server (measured in BENCHMARKS.md).
    public var checkpointWriters: Int = 1
    /// Longest wait for a new connection, in milliseconds.
    public var connectTimeoutMs: Int = 10_000
    /// Server-side limit on one statement, in milliseconds (0: none).
    public var statementTimeoutMs: Int = 30_000
    public var tls: PostgresTLSMode = .prefer
    /// PEM file of the certificate authorities to trust (`tls.ca_file`); nil: the system's.
    public var caFile: String?
    /// The schema Interlock's tables live in (created if missing); nil: `public`.
    public var schema: String?

    public init(host: String, port: Int = 5432, user: String, password: Secret? = nil, database: String) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
    }

    /// Reads `postgres://user:password@host:port/database?sslmode=...` (`postgresql://` too).
    /// Percent-escapes in the user, password and database are decoded.
    public static func parse(url: String) -> Result<PostgresSettings, PostgresURLError> {
        var rest = Substring(url)
        guard let scheme = rest.range(of: "://"), ["postgres", "postgresql"].contains(rest[..<scheme.lowerBound]) else {
            return .failure(PostgresURLError("expected postgres://user:password@host:port/database"))
        }
        rest = rest[scheme.upperBound...]
        var query: Substring = ""
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        var userInfo: Substring = ""
        if let at = rest.lastIndex(of: "@") {
            userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
        }
        var database: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            database = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        var host = rest
        var port = 5432
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            guard let value = Int(rest[rest.index(after: colon)...]), (1...65_535).contains(value) else {
                return .failure(PostgresURLError("the port must be a number from 1 to 65535"))
            }
            port = value
            host = rest[..<colon]
        }
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty else { return .failure(PostgresURLError("the URL names no host")) }
        var user = userInfo
        var password: String?
        if let colon = userInfo.firstIndex(of: ":") {
            user = userInfo[..<colon]
            password = percentDecoded(userInfo[userInfo.index(after: colon)...])
        }
        guard !user.isEmpty else { return .failure(PostgresURLError("the URL names no user (postgres://USER@host/database)")) }
        let name = percentDecoded(database)
        var settings = PostgresSettings(
            host: String(host), port: port, user: percentDecoded(user), password: password.map(Secret.init), database: name.isEmpty ? percentDecoded(user) : name)
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { continue }
            switch parts[0] {
            case "sslmode":
                guard let mode = PostgresTLSMode(sslmode: String(parts[1])) else {
                    return .failure(PostgresURLError("sslmode '\(parts[1])' is not one of disable, allow, prefer, require, verify-ca, verify-full"))
                }
                settings.tls = mode
            case "sslrootcert":
                settings.caFile = percentDecoded(parts[1])
            default:
                return .failure(PostgresURLError("unknown URL parameter '\(parts[0])' (supported: sslmode, sslrootcert)"))
            }
        }
        return .success(settings)
    }

    /// A name usable unquoted in SQL: lowercase letters, digits and `_`, starting with a letter.
    public static func isPlainIdentifier(_ name: String) -> Bool {
        guard let first = name.utf8.first, (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first), name.utf8.count <= 63 else { return false }
        return name.utf8.allSatisfy { ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z")) || ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || $0 == UInt8(ascii: "_") }
    }

    private static func percentDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(text.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "%"), utf8.count >= 2, let value = UInt8(String(decoding: utf8.prefix(2), as: UTF8.self), radix: 16) {
                bytes.append(value)
                utf8 = utf8.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

public struct PostgresURLError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Whether the connection to PostgreSQL is encrypted and the server's certificate checked
/// (libpq's `sslmode`, which the URL may carry).
public enum PostgresTLSMode: String, Sendable, CaseIterable {
    /// Plain TCP.
    case disable
    /// TLS when the server offers it, without checking its certificate (libpq's default).
    case prefer
    /// TLS always, certificate not checked.
    case require
    /// TLS always; the certificate must chain to a trusted authority and name the host.
    case verifyFull = "verify_full"

    init?(sslmode: String) {
        switch sslmode {
        case "disable": self = .disable
        case "allow", "prefer": self = .prefer
        case "require": self = .require
        case "verify-ca", "verify-full", "verify_full": self = .verifyFull
        default: return nil
        }
    }
}

/// `store.sqlite.batch_writer`: how the usage ledger's and audit log's batches share the
/// CPU with calls.
public struct SQLiteBatchWriterSettings: Sendable, Equatable {
    public enum Priority: String, Sendable, CaseIterable {
        /// Linux `SCHED_IDLE`: a batch runs only on an otherwise idle core (raised to normal
        /// after `boostAfterMs`). Needs `CAP_SYS_NICE` or `RLIMIT_NICE` ≥ 20, else normal.
        case idle
        case normal
    }

    public var priority: Priority = .idle
    /// A batch still running at idle priority after this long is raised to normal, in milliseconds.
    public var boostAfterMs: Int = 20
    /// After a batch had to be raised, batches that start within this long of its end start at the normal
    /// policy (the cores are saturated: starting idle, each would wait `boostAfterMs` for its
    /// boost), in milliseconds; 0: every batch starts idle.
    public var raisedForMs: Int = 1_000

    public init(priority: Priority = .idle, boostAfterMs: Int = 20, raisedForMs: Int = 1_000) {
        self.priority = priority
        self.boostAfterMs = boostAfterMs
        self.raisedForMs = raisedForMs
    }
}

/// When a SQLite commit is on disk (`store.sqlite.synchronous`).
public enum SQLiteDurability: String, Sendable, CaseIterable {
    /// WAL with `synchronous=NORMAL`: a commit survives the process being killed (the OS has
    /// it); a power cut may lose the last commits, never corrupt the file.
    case normal
    /// `synchronous=FULL`: every commit is fsynced before it returns; survives a power cut.
    case full
}

public struct LedgerSettings: Sendable {
    /// Longest a usage record waits in memory before it is written, in milliseconds. Short:
    /// a long interval makes each flush a long burst of CPU that delays calls behind it.
    public var flushIntervalMs: Int = 50
    /// Records written in one statement.
    public var maxBatch: Int = 500
    /// Records waiting for the store past which new calls are refused (503 `store_backlog`)
    /// until the writer catches up; 0: no limit. Bounds memory while the store is slow or away.
    public var maxBacklogRecords: Int = 100_000

    public init() {}
}

/// Interlock as an OAuth authorization server for its agents (`/oauth/token`).
public struct AuthSettings: Sendable {
    /// `iss` of issued tokens, and the issuer in `/.well-known/openid-configuration`.
    public var issuer: String = "interlock"
    /// `aud` of issued tokens, and the audience a presented token must carry.
    public var audience: String = "interlock"
    /// Agents are `spiffe://<trust_domain>/agent/<id>` in `sub`.
    public var trustDomain: String = "interlock.local" {
        didSet { agentSPIFFEPrefix = "spiffe://\(trustDomain)/agent/" }
    }
    /// `spiffe://<trust_domain>/agent/`, kept so the hot path does not build it per call.
    public private(set) var agentSPIFFEPrefix = "spiffe://interlock.local/agent/"
    /// Lifetime of an access token, in seconds.
    public var tokenTTLSeconds: Int = 900
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    public var leewaySeconds: Int = 30
    /// Where agents reach this Interlock (`https://interlock.example.com`): the `resource` of
    /// the protected-resource metadata and the base of the URLs in discovery documents. Nil
    /// derives it from each request's `Host`.
    public var publicURL: String?
    /// Longest credential (API key or token) looked at, in bytes; longer ones get 401 unread.
    public var maxCredentialBytes: Int = 8_192
    /// Seals the token-signing keys in the store (AES-GCM); nil stores them in the clear.
    public var signingKeySecret: Secret?
    /// A signing key older than this is replaced when the next token is issued; 0 never.
    public var signingKeyRotationDays: Int = 30
    /// External issuers whose tokens are accepted, with their claim mappings.
    public var trustedIssuers: [TrustedIssuerSettings] = []
    /// Audiences a token exchange may ask for (`audience`/`resource`); this Interlock's own
    /// `audience` is always allowed.
    public var exchangeAudiences: [String] = []
    /// Least time between two fetches of an issuer's keys after an unknown `kid`, in seconds.
    public var jwksRefreshMinIntervalSeconds: Int = 60
    /// Lifetime of a generated API key, in seconds; 0 means keys do not expire.
    public var apiKeyTTLSeconds: Int = 90 * 86_400
    /// How long the old key keeps working after a rotation, in seconds.
    public var apiKeyRotationOverlapSeconds: Int = 86_400

    public init() {}
}

public struct AuditSettings: Sendable {
    /// Longest an audit record waits in memory before it is written, in milliseconds (see
    /// `LedgerSettings.flushIntervalMs`).
    public var flushIntervalMs: Int = 50
    /// Records written in one statement.
    public var maxBatch: Int = 500
    /// As `LedgerSettings.maxBacklogRecords`, for audit records.
    public var maxBacklogRecords: Int = 100_000

    public init() {}
}

public struct LoggingSettings: Sendable {
    public var level: String = "info"
    /// Log prompt and completion text. Off by default: prompts often hold personal data.
    public var logPrompts: Bool = false

    public init() {}
}

public struct GatewaySettings: Sendable {
    /// Longest a request waits in a rate-limit queue before it gets 429, in milliseconds.
    public var queueMaxWaitMs: Int = 10_000
    /// Requests that may wait in one rate-limit queue at once.
    public var queueMaxDepth: Int = 1_000
    /// Attempts per deployment call, first try included.
    public var retryMaxAttempts: Int = 3
    public var retryInitialBackoffMs: Int = 250
    public var retryMaxBackoffMs: Int = 8_000
    /// Longest an upstream may take to start answering, in milliseconds.
    public var upstreamTimeoutMs: Int = 120_000
    /// Output tokens assumed for budget and TPM reservations when a request sets no `max_tokens`.
    public var defaultMaxOutputTokens: Int = 4_096
    /// Largest answer body read from a model upstream (not streamed), in bytes.
    public var maxResponseBytes: Int = 64 * 1024 * 1024
    /// Largest single Server-Sent Event read from a streaming model upstream, in bytes.
    public var maxStreamEventBytes: Int = 8 * 1024 * 1024
    public var breaker = BreakerSettings()
    public var upstreamPool = UpstreamPoolSettings()

    public init() {}
}

/// Keep-alive connections of the event-loop path's upstream client, per event loop.
public struct UpstreamPoolSettings: Sendable, Equatable {
    public var maxIdlePerHost: Int = 128
    /// Idle connections older than this are closed, not reused; keep it under the upstream's keep-alive timeout.
    public var idleTimeoutMs: Int = 30_000
    public var connectTimeoutMs: Int = 10_000

    public init() {}
}

public struct BreakerSettings: Sendable, Equatable {
    public var consecutiveFailures: Int = 5
    public var errorRatePercent: Int = 50
    public var minimumCalls: Int = 20
    public var windowSize: Int = 50
    public var openMs: Int = 30_000
    public var halfOpenProbes: Int = 1

    public init() {}
}

public enum ProviderKind: String, Sendable, CaseIterable {
    case openai
    case azureOpenAI = "azure_openai"
    case anthropic
    case mock

    /// The wire format the provider speaks natively.
    public var nativeFormat: WireFormat {
        switch self {
        case .openai, .azureOpenAI, .mock: .openAI
        case .anthropic: .anthropic
        }
    }
}

/// The two model API dialects Interlock speaks on both sides.
public enum WireFormat: String, Sendable {
    case openAI = "openai"
    case anthropic
}

public struct ProviderSettings: Sendable {
    public var id: String
    public var kind: ProviderKind
    public var baseURL: String
    public var apiKey: Secret?
    /// Azure OpenAI `api-version` query parameter.
    public var apiVersion: String?
    /// Anthropic `anthropic-version` header.
    public var anthropicVersion: String = "2023-06-01"
    /// Extra headers sent upstream (values may be secrets from the environment).
    public var headers: [(String, Secret)] = []
    /// Connections kept per upstream host.
    public var maxConnections: Int = 64
    public var mock: MockSettings?

    public init(id: String, kind: ProviderKind, baseURL: String, apiKey: Secret? = nil) {
        self.id = id
        self.kind = kind
        self.baseURL = baseURL
        self.apiKey = apiKey
    }

    /// A provider that needs a key and has none is switched off: its deployments are skipped.
    public var isEnabled: Bool {
        switch kind {
        case .mock: true
        // A local OpenAI-compatible server (vLLM, Ollama) needs no key: leave `api_key` out.
        // An `api_key` that resolves empty (an unset ${VAR:-}) switches the provider off.
        case .openai: apiKey.map { !$0.isEmpty } ?? true
        case .azureOpenAI, .anthropic: !(apiKey?.isEmpty ?? true)
        }
    }
}

public struct MockSettings: Sendable {
    public var latencyMs: Int = 0
    public var streamChunkDelayMs: Int = 0
    public var embeddingDimensions: Int = 8
    public var rules: [MockRule] = []

    public init() {}
}

public struct MockRule: Sendable {
    public struct Match: Sendable {
        public var lastUserContains: String?
        public var lastUserEquals: String?
        public var hasToolResult: Bool?
        public var toolResultContains: String?
        /// Text in the system prompt (tells apart the agents of a workflow).
        public var systemContains: String?
        public var model: String?

        public init() {}
    }

    public struct ToolCall: Sendable {
        public var name: String
        public var arguments: JSONValue

        public init(name: String, arguments: JSONValue) {
            self.name = name
            self.arguments = arguments
        }
    }

    public var match = Match()
    public var text: String?
    public var toolCalls: [ToolCall] = []
    /// Answer with this HTTP error instead (to exercise retries, breakers and fallbacks).
    public var errorStatus: Int?
    public var errorMessage: String?
    /// Apply the error only to the first N matching calls, then fall through to later rules.
    public var errorTimes: Int?
    public var promptTokens: Int?
    public var completionTokens: Int?
    public var cachedTokens: Int?
    public var latencyMs: Int?

    public init() {}
}

public enum RoutingStrategy: String, Sendable, CaseIterable {
    case weighted
    case leastLatency = "least_latency"
    case lowestCost = "lowest_cost"
}

public struct ModelAliasSettings: Sendable {
    public var name: String
    public var strategy: RoutingStrategy = .weighted
    /// Aliases tried, in order, when every deployment of this one failed or is unavailable.
    public var fallbacks: [String] = []
    public var deployments: [DeploymentSettings] = []

    public init(name: String) { self.name = name }
}

public struct DeploymentSettings: Sendable {
    public var id: String
    public var providerID: String
    public var model: String
    public var region: String = "default"
    public var weight: Double = 1
    /// Lower tiers are tried first; the next tier only when the first has nothing healthy.
    public var tier: Int = 0
    public var price = ModelPrice.free
    public var limits = RateLimits()
    /// Azure OpenAI deployment name (defaults to `model`).
    public var azureDeployment: String?
    public var timeoutMs: Int?

    public init(id: String, providerID: String, model: String) {
        self.id = id
        self.providerID = providerID
        self.model = model
    }
}

/// What an operator may do. Each role includes the ones below it.
public enum OperatorRole: String, Sendable, CaseIterable, Comparable {
    /// Read: agents, audit, nodes.
    case viewer
    /// Day-to-day actions (later: approvals, pausing runs).
    case `operator`
    /// Everything, including changing agents and credentials.
    case admin

    private var rank: Int { Self.allCases.firstIndex(of: self)! }

    public static func < (lhs: OperatorRole, rhs: OperatorRole) -> Bool { lhs.rank < rhs.rank }
}

/// A human or tool that administers Interlock. Operators use the admin API and never the
/// agent endpoints; agents never the admin API.
public struct OperatorSettings: Sendable {
    public var id: String
    public var token: Secret
    public var role: OperatorRole

    public init(id: String, token: Secret, role: OperatorRole) {
        self.id = id
        self.token = token
        self.role = role
    }
}

/// An agent declared in the config file, with the API key the file gives it, if any.
public struct AgentSettings: Sendable {
    public var agent: Agent
    public var apiKey: Secret?

    public init(agent: Agent, apiKey: Secret? = nil) {
        self.agent = agent
        self.apiKey = apiKey
    }
}

/// An upstream that provides tools, under a namespace (`tools.<namespace>` in config).
public struct ToolSourceSettings: Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        /// A REST API described by an OpenAPI 3 document.
        case openapi
        /// An MCP server, over Streamable HTTP (`url`) or stdio (`command`).
        case mcp
    }

    /// How Interlock reaches an MCP server.
    public enum MCPTransport: Sendable {
        /// Streamable HTTP at this endpoint URL.
        case streamableHTTP(url: String)
        /// A process Interlock starts, speaking JSON-RPC lines on stdin and stdout.
        case stdio(StdioProcess)
    }

    /// The process behind a stdio MCP server.
    public struct StdioProcess: Sendable {
        /// The executable (a path, or a name looked up on `PATH`) and its arguments.
        public var command: [String]
        /// Variables set for the process. It does not inherit Interlock's environment (which
        /// holds Interlock's own secrets): only `PATH`, `HOME`, `LANG`, the names listed in
        /// `inheritEnvironment`, and these.
        public var environment: [String: Secret] = [:]
        public var inheritEnvironment: [String] = []
        public var workingDirectory: String?
        /// The first restart after a crash waits this long, doubling up to `restartMaxBackoffMs`.
        public var restartInitialBackoffMs: Int = 500
        public var restartMaxBackoffMs: Int = 30_000
        /// On shutdown: stdin is closed, then the process gets this long before SIGTERM, and as
        /// long again before SIGKILL.
        public var shutdownGraceMs: Int = 2_000

        public init(command: [String]) { self.command = command }
    }

    /// Where an OpenAPI document comes from.
    public enum SpecLocation: Sendable, Equatable {
        /// Read and checked when the configuration is loaded.
        case file(String)
        /// Fetched when Interlock starts (and again until it succeeds).
        case url(String)
    }

    /// How Interlock authenticates to the upstream; agents never see it.
    public enum Authentication: Sendable {
        case none
        /// `Authorization: Bearer <token>`.
        case bearer(Secret)
        /// A header such as `X-API-Key: <value>`.
        case header(name: String, value: Secret)
        /// A short-lived token Interlock signs for this upstream's `audience`: `sub` the user the
        /// agent acts for (from a delegated token) or else the agent, `act` the agent chain —
        /// the upstream sees who is really asking and can verify it against Interlock's JWKS.
        case onBehalfOf(audience: String)
        /// OAuth 2.0 client credentials (RFC 6749 §4.4) at `tokenURL`; the token is cached until
        /// shortly before it expires and fetched again after a 401.
        case clientCredentials(tokenURL: String, clientID: String, clientSecret: Secret, scope: String?)
    }

    public var namespace: String
    public var kind: Kind
    /// REST: where the API is served. MCP over HTTP: the endpoint URL. Empty for stdio.
    public var baseURL: String
    public var spec: SpecLocation?
    public var mcpTransport: MCPTransport?
    public var timeoutMs: Int = 30_000
    /// MCP: how long the handshake and listing the tools may take, in milliseconds (a server
    /// that does not answer in time is marked unavailable and tried again). Stdio servers get
    /// 60 s by default: the process has to start first (`npx`/`uvx` may install packages).
    public var connectTimeoutMs: Int = 5_000
    /// Calls in flight to this upstream at once; more get 429 `tool_busy`.
    public var maxConcurrency: Int = 32
    /// Largest response accepted, in bytes.
    public var maxResponseBytes: Int = 4 * 1024 * 1024
    public var authentication: Authentication = .none
    /// How often the upstream's tool list is read again (changes are pinned or quarantined), in
    /// seconds; an unavailable upstream is retried with backoff meanwhile.
    public var refreshIntervalSeconds: Int = 300
    /// The tools of a document read at load time, with their metadata from config applied.
    public var tools: [OpenAPITool] = []
    /// Metadata from config, by the upstream's tool name (`tools.<namespace>.tools.<name>`);
    /// applied to tools discovered at run time (MCP, OpenAPI from a URL).
    public var toolMetadata: [String: ToolMetadata] = [:]

    public init(namespace: String, kind: Kind, baseURL: String) {
        self.namespace = namespace
        self.kind = kind
        self.baseURL = baseURL
    }
}

/// Whether tool arguments and results are kept in the audit trail.
public enum ToolCapture: String, Sendable, CaseIterable {
    /// SHA-256 hashes only (the default): proves what was sent without keeping it.
    case hashes
    /// The arguments and the result themselves, with secrets redacted, up to `capture_max_bytes`.
    case full
}

/// `tool_gateway`: settings for every tool upstream.
public struct ToolGatewaySettings: Sendable {
    public var capture: ToolCapture = .hashes
    /// With `capture: full`, arguments and results longer than this are cut, in bytes.
    public var captureMaxBytes: Int = 16 * 1024
    /// How long start-up waits for upstreams to list their tools before serving without the
    /// slow ones (they join when they answer), in milliseconds.
    public var startupWaitMs: Int = 5_000

    public init() {}
}

/// The MCP endpoint `/mcp`.
public struct MCPSettings: Sendable {
    /// Sessions kept at once; past this the least recently used is dropped.
    public var maxSessions: Int = 10_000
    /// Sessions one agent may hold; past this its own least recently used one is dropped.
    public var maxSessionsPerAgent: Int = 100
    /// A session unused this long is forgotten (the client initializes again), in seconds.
    public var sessionIdleTimeoutSeconds: Int = 3_600

    public init() {}
}

/// `policy`: CEL rules every governed call passes, and how approvals work.
public struct PolicySettings: Sendable {
    public var rules: [PolicyRule] = []
    /// How long a call held for approval keeps the request open waiting for a decision
    /// before answering "pending" with the approval id, in milliseconds.
    public var approvalWaitMs: Int = 20_000
    /// How long an approval request (and an approval once given) stays valid, in seconds.
    public var approvalTTLSeconds: Int = 3_600
    /// Evaluation steps one rule may take on one call before it counts as an error.
    public var costLimit: Int = 100_000

    public init() {}
}

/// `workflows`: the workflow files and how this node executes runs.
public struct WorkflowSettings: Sendable {
    /// Definitions from the files `files` names (paths relative to the config file).
    public var definitions: [WorkflowDefinition] = []
    /// Where each definition was read from, by workflow name.
    public var origins: [String: String] = [:]
    /// Runs this node executes at once (more wait in the queue).
    public var maxActiveRuns: Int = 64
    /// How long a worker's claim on a run lasts without renewal, in milliseconds; a node
    /// that dies loses its runs to others after this.
    public var leaseMs: Int = 30_000
    /// Longest the worker sleeps before looking at the queue (wakes come sooner), in ms.
    public var pollIntervalMs: Int = 1_000
    /// Longest one step attempt may run when the step names no `timeout_ms`, in ms.
    public var stepTimeoutMs: Int = 300_000
    /// How long an approval or input step (or a wait_event) waits when it names no
    /// `timeout_ms`, in ms.
    public var waitTimeoutMs: Int64 = 7 * 86_400_000
    /// Where human requests and budget stops are announced (POST, JSON).
    public var webhook: WebhookSettings?
    /// `max_steps` of a run whose workflow sets none (a loop must end somewhere).
    public var defaultMaxSteps: Int = 10_000

    public init() {}
}

/// An HTTP endpoint Interlock notifies.
public struct WebhookSettings: Sendable {
    public var url: String
    public var timeoutMs: Int = 5_000
    /// Extra headers (e.g. an authorization header from the environment); values are secret.
    public var headers: [(name: String, value: Secret)] = []
    /// The body sent, as a template over `notification` (nil: the notification as it is).
    public var payload: WorkflowTemplate?

    public init(url: String) {
        self.url = url
    }
}
