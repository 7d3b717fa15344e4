import FoundationEssentials
public import InterlockCore
import InterlockPolicy
import Yams

/// Loads and validates an Interlock configuration file.
///
/// Every problem is reported at once with file, line, column and key path; unknown keys are
/// errors with a "did you mean". `interlock validate` runs exactly this.
public enum ConfigLoader {
    public static func load(path: String, environment: [String: String]) throws(ConfigError) -> InterlockConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(diagnostics: [ConfigDiagnostic(file: path, line: 1, column: 1, path: "", message: "cannot read the file")])
        }
        return try parse(String(decoding: data, as: UTF8.self), file: path, environment: environment)
    }

    public static func parse(_ text: String, file: String, environment: [String: String]) throws(ConfigError) -> InterlockConfiguration {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw ConfigError(diagnostics: [diagnostic(yamlError: error, file: file)])
        }
        guard let root else {
            throw ConfigError(diagnostics: [ConfigDiagnostic(file: file, line: 1, column: 1, path: "", message: "the file is empty")])
        }
        let reader = ConfigReader(file: file, environment: environment)
        reader.text = text.split(separator: "\n", omittingEmptySubsequences: false)
        let config = ConfigDocument(reader: reader).read(ConfigNode(node: root, path: "", reader: reader))
        guard reader.diagnostics.isEmpty, let config else {
            throw ConfigError(diagnostics: reader.diagnostics.sorted { ($0.line, $0.column) < ($1.line, $1.column) })
        }
        return config
    }

    /// A YAML syntax error at its line and column.
    static func diagnostic(yamlError error: any Error, file: String) -> ConfigDiagnostic {
        switch error as? YamlError {
        case .scanner(let context, let problem, let mark, _)?, .parser(let context, let problem, let mark, _)?:
            let detail = [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ": ")
            return ConfigDiagnostic(file: file, line: mark.line, column: mark.column, path: "", message: "invalid YAML: \(detail)")
        default:
            return ConfigDiagnostic(file: file, line: 1, column: 1, path: "", message: "invalid YAML: \(error)")
        }
    }
}

/// The schema of the configuration file.
private struct ConfigDocument {
    let reader: ConfigReader

    func read(_ root: ConfigNode) -> InterlockConfiguration? {
        guard let top = root.mapping(allowed: ["server", "node", "store", "ledger", "audit", "auth", "logging", "gateway", "providers", "models", "agents", "operators", "tools", "mcp", "tool_gateway", "policy", "guardrails", "workflows", "cluster"]) else {
            return nil
        }
        var config = InterlockConfiguration()
        if let node = top["server"] { readServer(node, into: &config.server) }
        if let node = top["node"], let fields = node.mapping(allowed: ["id", "region"]) {
            if let id = fields["id"]?.nonEmptyString() { config.node.id = id }
            if let region = fields["region"]?.nonEmptyString() { config.node.region = region }
        }
        if let node = top["store"], let fields = node.mapping(allowed: ["sqlite", "postgres"]) {
            if fields["sqlite"] != nil, fields["postgres"] != nil { node.report("give one of 'sqlite' and 'postgres', not both") }
            if let sqlite = fields["sqlite"]?.mapping(allowed: ["path", "synchronous", "batch_writer"]), let path = sqlite["path"]?.nonEmptyString() {
                let durability = sqlite["synchronous"]?.oneOf(SQLiteDurability.self, SQLiteDurability.allCases) ?? .normal
                var batchWriter = SQLiteBatchWriterSettings()
                if let writer = sqlite["batch_writer"]?.mapping(allowed: ["priority", "boost_after_ms", "raised_for_ms"]) {
                    if let value = writer["priority"]?.oneOf(SQLiteBatchWriterSettings.Priority.self, SQLiteBatchWriterSettings.Priority.allCases) {
                        batchWriter.priority = value
                    }
                    if let value = writer["boost_after_ms"]?.int(minimum: 1, maximum: 10_000) { batchWriter.boostAfterMs = value }
                    if let value = writer["raised_for_ms"]?.int(minimum: 0, maximum: 600_000) { batchWriter.raisedForMs = value }
                }
                config.store = .sqlite(path: path, durability: durability, batchWriter: batchWriter)
            }
            if let postgres = fields["postgres"].flatMap(readPostgres) { config.store = .postgres(postgres) }
        }
        if let node = top["cluster"], let fields = node.mapping(allowed: ["heartbeat_interval_ms", "node_timeout_ms", "budget_reservation_ttl_ms"]) {
            if let value = fields["heartbeat_interval_ms"]?.int(minimum: 100, maximum: 60_000) { config.cluster.heartbeatIntervalMs = value }
            if let value = fields["node_timeout_ms"]?.int(minimum: 500, maximum: 3_600_000) { config.cluster.nodeTimeoutMs = value }
            if let value = fields["budget_reservation_ttl_ms"]?.int(minimum: 1_000, maximum: 86_400_000) { config.cluster.budgetReservationTTLMs = value }
            if config.cluster.nodeTimeoutMs <= config.cluster.heartbeatIntervalMs {
                (fields["node_timeout_ms"] ?? node).report("node_timeout_ms must be longer than heartbeat_interval_ms (\(config.cluster.heartbeatIntervalMs))")
            }
        }
        if let node = top["auth"], let fields = node.mapping(allowed: [
            "issuer", "audience", "trust_domain", "token_ttl_s", "leeway_s", "api_key_ttl_s", "api_key_rotation_overlap_s", "public_url",
            "max_credential_bytes", "trusted_issuers", "exchange_audiences", "jwks_refresh_min_interval_s", "signing_key_secret",
            "signing_key_rotation_days",
        ]) {
            if let node = fields["signing_key_secret"], let secret = node.string(), !secret.isEmpty {
                if secret.utf8.count < 32 { node.report("the signing-key secret must be at least 32 characters (use ${ENV_VAR})") }
                config.auth.signingKeySecret = Secret(secret)
            }
            if let value = fields["signing_key_rotation_days"]?.int(minimum: 0, maximum: 3_650) { config.auth.signingKeyRotationDays = value }
            if let value = fields["issuer"]?.nonEmptyString() { config.auth.issuer = value }
            if let value = fields["audience"]?.nonEmptyString() { config.auth.audience = value }
            config.auth.exchangeAudiences = fields["exchange_audiences"]?.stringList() ?? []
            if let value = fields["jwks_refresh_min_interval_s"]?.int(minimum: 1, maximum: 86_400) { config.auth.jwksRefreshMinIntervalSeconds = value }
            if let items = fields["trusted_issuers"]?.sequence() {
                var seen = Set<String>()
                for item in items {
                    guard let issuer = readTrustedIssuer(item, defaultAudience: config.auth.audience) else { continue }
                    if !seen.insert(issuer.issuer).inserted { item.report("duplicate trusted issuer '\(issuer.issuer)'") }
                    if issuer.issuer == config.auth.issuer { item.report("'\(issuer.issuer)' is Interlock's own issuer (auth.issuer)") }
                    config.auth.trustedIssuers.append(issuer)
                }
            }
            if let node = fields["public_url"], let value = node.nonEmptyString() {
                if value.hasPrefix("http://") || value.hasPrefix("https://") {
                    config.auth.publicURL = value.hasSuffix("/") ? String(value.dropLast()) : value
                } else {
                    node.report("expected an http:// or https:// URL, found '\(value)'")
                }
            }
            if let value = fields["max_credential_bytes"]?.int(minimum: 256, maximum: 65_536) { config.auth.maxCredentialBytes = value }
            if let value = fields["trust_domain"]?.nonEmptyString() { config.auth.trustDomain = value }
            if let value = fields["token_ttl_s"]?.int(minimum: 30, maximum: 86_400) { config.auth.tokenTTLSeconds = value }
            if let value = fields["leeway_s"]?.int(minimum: 0, maximum: 300) { config.auth.leewaySeconds = value }
            if let value = fields["api_key_ttl_s"]?.int(minimum: 0, maximum: 10 * 365 * 86_400) { config.auth.apiKeyTTLSeconds = value }
            if let value = fields["api_key_rotation_overlap_s"]?.int(minimum: 0, maximum: 365 * 86_400) {
                config.auth.apiKeyRotationOverlapSeconds = value
            }
        }
        if let node = top["audit"], let fields = node.mapping(allowed: ["flush_interval_ms", "max_batch", "max_backlog_records"]) {
            if let value = fields["flush_interval_ms"]?.int(minimum: 1, maximum: 60_000) { config.audit.flushIntervalMs = value }
            if let value = fields["max_batch"]?.int(minimum: 1, maximum: 100_000) { config.audit.maxBatch = value }
            if let value = fields["max_backlog_records"]?.int(minimum: 0, maximum: 100_000_000) { config.audit.maxBacklogRecords = value }
        }
        if let node = top["ledger"], let fields = node.mapping(allowed: ["flush_interval_ms", "max_batch", "max_backlog_records"]) {
            if let value = fields["flush_interval_ms"]?.int(minimum: 1, maximum: 60_000) { config.ledger.flushIntervalMs = value }
            if let value = fields["max_batch"]?.int(minimum: 1, maximum: 100_000) { config.ledger.maxBatch = value }
            if let value = fields["max_backlog_records"]?.int(minimum: 0, maximum: 100_000_000) { config.ledger.maxBacklogRecords = value }
        }
        if let node = top["logging"], let fields = node.mapping(allowed: ["level", "log_prompts"]) {
            if let level = fields["level"] {
                let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
                if let value = level.string() {
                    if levels.contains(value) { config.logging.level = value } else { level.report("'\(value)' is not one of: \(levels.joined(separator: ", "))") }
                }
            }
            if let value = fields["log_prompts"]?.bool() { config.logging.logPrompts = value }
        }
        if let node = top["gateway"] { readGateway(node, into: &config.gateway) }
        if let node = top["providers"], let entries = node.namedEntries() {
            config.providers = entries.compactMap { readProvider(id: $0.0, $0.1) }
        }
        if let node = top["models"], let entries = node.namedEntries() {
            config.models = entries.compactMap { readAlias(name: $0.0, $0.1) }
        }
        if let node = top["mcp"], let fields = node.mapping(allowed: ["max_sessions", "max_sessions_per_agent", "session_idle_timeout_s"]) {
            if let value = fields["max_sessions_per_agent"]?.int(minimum: 1, maximum: 1_000_000) { config.mcp.maxSessionsPerAgent = value }
            if let value = fields["max_sessions"]?.int(minimum: 1, maximum: 10_000_000) { config.mcp.maxSessions = value }
            if let value = fields["session_idle_timeout_s"]?.int(minimum: 1) { config.mcp.sessionIdleTimeoutSeconds = value }
        }
        if let node = top["tool_gateway"], let fields = node.mapping(allowed: ["capture", "capture_max_bytes", "startup_wait_ms"]) {
            if let value = fields["capture"]?.oneOf(ToolCapture.self, ToolCapture.allCases) { config.toolGateway.capture = value }
            if let value = fields["capture_max_bytes"]?.int(minimum: 64, maximum: 16 * 1024 * 1024) { config.toolGateway.captureMaxBytes = value }
            if let value = fields["startup_wait_ms"]?.int(minimum: 0, maximum: 600_000) { config.toolGateway.startupWaitMs = value }
        }
        if let node = top["policy"] { readPolicy(node, into: &config.policy) }
        if let node = top["guardrails"] { readGuardrails(node, into: &config.guardrails) }
        let workflowFiles = top["workflows"].map { readWorkflows($0, into: &config) } ?? []
        if let node = top["tools"], let entries = node.namedEntries() {
            config.toolSources = entries.compactMap { readToolSource(namespace: $0.0, $0.1) }
        }
        var agentNodes: [String: ConfigNode] = [:]
        if let node = top["agents"], let items = node.sequence() {
            for item in items {
                guard let declared = readAgent(item) else { continue }
                if agentNodes[declared.agent.id] != nil {
                    item.report("duplicate agent id '\(declared.agent.id)'")
                    continue
                }
                agentNodes[declared.agent.id] = item
                config.agents.append(declared)
            }
        }
        if let node = top["operators"], let items = node.sequence() {
            var seen = Set<String>()
            let agentKeys = Set(config.agents.compactMap { $0.apiKey?.reveal() })
            for item in items {
                guard let fields = item.mapping(allowed: ["id", "token", "role"]) else { continue }
                guard let id = fields["id"]?.nonEmptyString() else {
                    if fields["id"] == nil { item.report("missing required key 'id'") }
                    continue
                }
                if !seen.insert(id).inserted { item.report("duplicate operator id '\(id)'") }
                guard let tokenNode = fields["token"] else {
                    item.report("missing required key 'token' (use ${ENV_VAR} to keep it out of the file)")
                    continue
                }
                guard let token = tokenNode.string() else { continue }
                if token.count < 16 { tokenNode.report("an operator token must be at least 16 characters") }
                // One secret must not be both an agent's key and an operator's token.
                if agentKeys.contains(token) { tokenNode.report("this token is also an agent's API key; operators and agents need different credentials") }
                guard let roleNode = fields["role"] else {
                    item.report("missing required key 'role' (admin, operator or viewer)")
                    continue
                }
                guard let role = roleNode.oneOf(OperatorRole.self, OperatorRole.allCases) else { continue }
                config.operators.append(OperatorSettings(id: id, token: Secret(token), role: role))
            }
        }
        crossCheck(config, top: top, agentNodes: agentNodes)
        loadWorkflows(workflowFiles, into: &config)
        return config
    }

    /// `store.postgres`: the URL (`${DATABASE_URL}`), the pool and timeouts, TLS.
    private func readPostgres(_ node: ConfigNode) -> PostgresSettings? {
        guard let fields = node.mapping(allowed: ["url", "schema", "pool_size", "checkpoint_writers", "connect_timeout_ms", "statement_timeout_ms", "tls"]) else { return nil }
        guard let urlNode = fields["url"] else {
            node.report("missing 'url' (postgres://user:password@host:5432/database)")
            return nil
        }
        guard let url = urlNode.nonEmptyString() else { return nil }
        var settings: PostgresSettings
        switch PostgresSettings.parse(url: url) {
        case .success(let parsed): settings = parsed
        case .failure(let error):
            // The URL may hold a password: the message names the problem, never the text.
            urlNode.report("not a usable PostgreSQL URL: \(error.description)")
            return nil
        }
        if let node = fields["schema"], let schema = node.nonEmptyString() {
            if PostgresSettings.isPlainIdentifier(schema) { settings.schema = schema } else { node.report("a schema name is 1 to 63 lowercase letters, digits and '_', starting with a letter") }
        }
        if let value = fields["pool_size"]?.int(minimum: 2, maximum: 1_000) { settings.poolSize = value }
        if let value = fields["checkpoint_writers"]?.int(minimum: 1, maximum: 16) { settings.checkpointWriters = value }
        if let value = fields["connect_timeout_ms"]?.int(minimum: 100, maximum: 600_000) { settings.connectTimeoutMs = value }
        if let value = fields["statement_timeout_ms"]?.int(minimum: 0, maximum: 3_600_000) { settings.statementTimeoutMs = value }
        if let tls = fields["tls"]?.mapping(allowed: ["mode", "ca_file"]) {
            if let mode = tls["mode"]?.oneOf(PostgresTLSMode.self, PostgresTLSMode.allCases) { settings.tls = mode }
            if let file = tls["ca_file"]?.nonEmptyString() { settings.caFile = file }
        }
        return settings
    }

    private func readServer(_ node: ConfigNode, into server: inout ServerSettings) {
        guard let fields = node.mapping(allowed: ["host", "port", "max_body_bytes", "max_header_bytes", "shutdown_grace_ms", "event_loop_path", "event_loop_threads"]) else { return }
        if let host = fields["host"]?.nonEmptyString() { server.host = host }
        if let port = fields["port"]?.int(minimum: 0, maximum: 65_535) { server.port = port }
        if let value = fields["max_body_bytes"]?.int(minimum: 1_024) { server.maxBodyBytes = value }
        if let value = fields["max_header_bytes"]?.int(minimum: 4_096, maximum: 1_048_576) { server.maxHeaderBytes = value }
        if let value = fields["shutdown_grace_ms"]?.int(minimum: 0) { server.shutdownGraceMs = value }
        if let value = fields["event_loop_path"]?.bool() { server.eventLoopPath = value }
        if let value = fields["event_loop_threads"]?.int(minimum: 1, maximum: 1_024) { server.eventLoopThreads = value }
    }

    private func readGateway(_ node: ConfigNode, into gateway: inout GatewaySettings) {
        guard let fields = node.mapping(allowed: [
            "queue", "retries", "upstream_timeout_ms", "default_max_output_tokens", "max_response_bytes", "max_stream_event_bytes", "breaker",
            "upstream_pool",
        ]) else { return }
        if let pool = fields["upstream_pool"]?.mapping(allowed: ["max_idle_per_host", "idle_timeout_ms", "connect_timeout_ms"]) {
            if let value = pool["max_idle_per_host"]?.int(minimum: 0) { gateway.upstreamPool.maxIdlePerHost = value }
            if let value = pool["idle_timeout_ms"]?.int(minimum: 1) { gateway.upstreamPool.idleTimeoutMs = value }
            if let value = pool["connect_timeout_ms"]?.int(minimum: 1) { gateway.upstreamPool.connectTimeoutMs = value }
        }
        if let queue = fields["queue"]?.mapping(allowed: ["max_wait_ms", "max_depth"]) {
            if let value = queue["max_wait_ms"]?.int(minimum: 0) { gateway.queueMaxWaitMs = value }
            if let value = queue["max_depth"]?.int(minimum: 0) { gateway.queueMaxDepth = value }
        }
        if let retries = fields["retries"]?.mapping(allowed: ["max_attempts", "initial_backoff_ms", "max_backoff_ms"]) {
            if let value = retries["max_attempts"]?.int(minimum: 1, maximum: 10) { gateway.retryMaxAttempts = value }
            if let value = retries["initial_backoff_ms"]?.int(minimum: 0) { gateway.retryInitialBackoffMs = value }
            if let value = retries["max_backoff_ms"]?.int(minimum: 0) { gateway.retryMaxBackoffMs = value }
        }
        if let value = fields["upstream_timeout_ms"]?.int(minimum: 1) { gateway.upstreamTimeoutMs = value }
        if let value = fields["default_max_output_tokens"]?.int(minimum: 1) { gateway.defaultMaxOutputTokens = value }
        if let value = fields["max_response_bytes"]?.int(minimum: 1_024) { gateway.maxResponseBytes = value }
        if let value = fields["max_stream_event_bytes"]?.int(minimum: 1_024) { gateway.maxStreamEventBytes = value }
        if let node = fields["breaker"] { gateway.breaker = readBreaker(node, defaults: gateway.breaker) }
    }

    /// RFC 9110 `token`.
    static func isHeaderName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy(ASCIIText.isHTTPToken)
    }

    /// RFC 9110 field value: visible characters, spaces and tabs; no CR, LF, NUL or other controls.
    static func isHeaderValue(_ value: String) -> Bool {
        value.utf8.allSatisfy { $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }
    }

    private func readBreaker(_ node: ConfigNode, defaults: BreakerSettings) -> BreakerSettings {
        var breaker = defaults
        guard let fields = node.mapping(allowed: ["consecutive_failures", "error_rate_percent", "minimum_calls", "window_size", "open_ms", "half_open_probes"]) else {
            return breaker
        }
        if let value = fields["consecutive_failures"]?.int(minimum: 1) { breaker.consecutiveFailures = value }
        if let value = fields["error_rate_percent"]?.int(minimum: 1, maximum: 100) { breaker.errorRatePercent = value }
        if let value = fields["minimum_calls"]?.int(minimum: 1) { breaker.minimumCalls = value }
        if let value = fields["window_size"]?.int(minimum: 1) { breaker.windowSize = value }
        if let value = fields["open_ms"]?.int(minimum: 1) { breaker.openMs = value }
        if let value = fields["half_open_probes"]?.int(minimum: 1) { breaker.halfOpenProbes = value }
        return breaker
    }

    private func readProvider(id: String, _ node: ConfigNode) -> ProviderSettings? {
        guard let fields = node.mapping(allowed: [
            "type", "base_url", "api_key", "api_version", "anthropic_version", "headers", "max_connections",
            "latency_ms", "stream_chunk_delay_ms", "embedding_dimensions", "rules",
        ]) else { return nil }
        guard let typeNode = fields["type"] else {
            node.report("missing required key 'type' (one of: \(ProviderKind.allCases.map(\.rawValue).joined(separator: ", ")))")
            return nil
        }
        guard let kind = typeNode.oneOf(ProviderKind.self, ProviderKind.allCases) else { return nil }
        let defaultURL: String =
            switch kind {
            case .openai: "https://api.openai.com/v1"
            case .anthropic: "https://api.anthropic.com"
            case .azureOpenAI, .mock: ""
            }
        var provider = ProviderSettings(id: id, kind: kind, baseURL: fields["base_url"]?.nonEmptyString() ?? defaultURL)
        if kind == .azureOpenAI, fields["base_url"] == nil {
            node.report("an azure_openai provider needs 'base_url' (https://<resource>.openai.azure.com)")
        }
        if !provider.baseURL.isEmpty, !(provider.baseURL.hasPrefix("http://") || provider.baseURL.hasPrefix("https://")) {
            fields["base_url"]?.report("expected an http:// or https:// URL, found '\(provider.baseURL)'")
        }
        if let node = fields["api_key"], let key = node.string() {
            // Sent as a header value: the upstream clients do not re-check it per request.
            if !Self.isHeaderValue(key) { node.report("the API key contains a line break or control character") }
            provider.apiKey = Secret(key)
        }
        if let version = fields["api_version"]?.nonEmptyString() { provider.apiVersion = version }
        if let version = fields["anthropic_version"]?.nonEmptyString() { provider.anthropicVersion = version }
        if let value = fields["max_connections"]?.int(minimum: 1) { provider.maxConnections = value }
        if let headers = fields["headers"]?.namedEntries() {
            provider.headers = headers.compactMap { name, value in
                guard let text = value.string() else { return nil }
                if !Self.isHeaderName(name) { value.report("'\(name)' is not a valid HTTP header name") }
                if !Self.isHeaderValue(text) { value.report("the value of header '\(name)' contains a line break or control character") }
                return (name.lowercased(), Secret(text))
            }
        }
        let mockKeys = ["latency_ms", "stream_chunk_delay_ms", "embedding_dimensions", "rules"]
        if kind == .mock {
            var mock = MockSettings()
            if let value = fields["latency_ms"]?.int(minimum: 0) { mock.latencyMs = value }
            if let value = fields["stream_chunk_delay_ms"]?.int(minimum: 0) { mock.streamChunkDelayMs = value }
            if let value = fields["embedding_dimensions"]?.int(minimum: 1, maximum: 8192) { mock.embeddingDimensions = value }
            if let rules = fields["rules"]?.sequence() { mock.rules = rules.compactMap(readMockRule) }
            provider.mock = mock
        } else {
            for key in mockKeys where fields[key] != nil {
                fields[key]?.report("'\(key)' applies only to providers of type mock")
            }
        }
        return provider
    }

    private func readMockRule(_ node: ConfigNode) -> MockRule? {
        guard let fields = node.mapping(allowed: ["match", "reply", "error", "usage", "latency_ms"]) else { return nil }
        var rule = MockRule()
        if let match = fields["match"]?.mapping(allowed: ["last_user_contains", "last_user_equals", "has_tool_result", "tool_result_contains", "system_contains", "model"]) {
            rule.match.lastUserContains = match["last_user_contains"]?.string()
            rule.match.systemContains = match["system_contains"]?.string()
            rule.match.lastUserEquals = match["last_user_equals"]?.string()
            rule.match.hasToolResult = match["has_tool_result"]?.bool()
            rule.match.toolResultContains = match["tool_result_contains"]?.string()
            rule.match.model = match["model"]?.string()
        }
        if let reply = fields["reply"]?.mapping(allowed: ["text", "tool_calls"]) {
            rule.text = reply["text"]?.string()
            if let calls = reply["tool_calls"]?.sequence() {
                rule.toolCalls = calls.compactMap { call in
                    guard let callFields = call.mapping(allowed: ["name", "arguments"]), let name = callFields["name"]?.nonEmptyString() else {
                        call.report("a tool call needs a 'name'")
                        return nil
                    }
                    return MockRule.ToolCall(name: name, arguments: callFields["arguments"]?.json() ?? .object([:]))
                }
            }
        }
        if let error = fields["error"]?.mapping(allowed: ["status", "message", "times"]) {
            rule.errorStatus = error["status"]?.int(minimum: 400, maximum: 599)
            rule.errorMessage = error["message"]?.string()
            rule.errorTimes = error["times"]?.int(minimum: 1)
            if error["status"] == nil { fields["error"]?.report("an error reply needs 'status'") }
        }
        if let usage = fields["usage"]?.mapping(allowed: ["prompt_tokens", "completion_tokens", "cached_tokens"]) {
            rule.promptTokens = usage["prompt_tokens"]?.int(minimum: 0)
            rule.completionTokens = usage["completion_tokens"]?.int(minimum: 0)
            rule.cachedTokens = usage["cached_tokens"]?.int(minimum: 0)
        }
        rule.latencyMs = fields["latency_ms"]?.int(minimum: 0)
        if fields["reply"] == nil, fields["error"] == nil { node.report("a mock rule needs 'reply' or 'error'") }
        return rule
    }

    private func readAlias(name: String, _ node: ConfigNode) -> ModelAliasSettings? {
        guard let fields = node.mapping(allowed: ["strategy", "fallbacks", "deployments"]) else { return nil }
        var alias = ModelAliasSettings(name: name)
        if let strategy = fields["strategy"]?.oneOf(RoutingStrategy.self, RoutingStrategy.allCases) { alias.strategy = strategy }
        if let fallbacks = fields["fallbacks"]?.stringList() { alias.fallbacks = fallbacks }
        guard let deployments = fields["deployments"]?.sequence() else {
            if fields["deployments"] == nil { node.report("missing required key 'deployments'") }
            return alias
        }
        if deployments.isEmpty { fields["deployments"]?.report("needs at least one deployment") }
        for (index, item) in deployments.enumerated() {
            guard let deployment = readDeployment(item, alias: name, index: index) else { continue }
            alias.deployments.append(deployment)
        }
        return alias
    }

    private func readDeployment(_ node: ConfigNode, alias: String, index: Int) -> DeploymentSettings? {
        guard let fields = node.mapping(allowed: ["id", "provider", "model", "region", "weight", "tier", "price", "limits", "azure_deployment", "timeout_ms"]) else {
            return nil
        }
        guard let provider = fields["provider"]?.nonEmptyString() else {
            if fields["provider"] == nil { node.report("missing required key 'provider'") }
            return nil
        }
        guard let model = fields["model"]?.nonEmptyString() else {
            if fields["model"] == nil { node.report("missing required key 'model'") }
            return nil
        }
        var deployment = DeploymentSettings(id: fields["id"]?.nonEmptyString() ?? "\(alias)/\(provider)/\(model)", providerID: provider, model: model)
        if let region = fields["region"]?.nonEmptyString() { deployment.region = region }
        if let weight = fields["weight"]?.double(minimum: 0) { deployment.weight = weight }
        if let tier = fields["tier"]?.int(minimum: 0) { deployment.tier = tier }
        if let price = fields["price"]?.mapping(allowed: ["input_per_mtok", "output_per_mtok", "cached_input_per_mtok"]) {
            deployment.price = ModelPrice(
                inputPerMillion: price["input_per_mtok"]?.double(minimum: 0) ?? 0,
                outputPerMillion: price["output_per_mtok"]?.double(minimum: 0) ?? 0,
                cachedInputPerMillion: price["cached_input_per_mtok"]?.double(minimum: 0))
        }
        if let limits = fields["limits"]?.mapping(allowed: ["rpm", "tpm"]) {
            deployment.limits = RateLimits(requestsPerMinute: limits["rpm"]?.int(minimum: 1), tokensPerMinute: limits["tpm"]?.int(minimum: 1))
        }
        deployment.azureDeployment = fields["azure_deployment"]?.nonEmptyString()
        deployment.timeoutMs = fields["timeout_ms"]?.int(minimum: 1)
        return deployment
    }

    private func readToolSource(namespace: String, _ node: ConfigNode) -> ToolSourceSettings? {
        guard let fields = node.mapping(allowed: [
            "type", "spec", "base_url", "url", "command", "env", "inherit_env", "working_directory", "restart", "shutdown_grace_ms",
            "timeout_ms", "connect_timeout_ms", "max_concurrency", "max_response_bytes", "refresh_interval_s", "auth", "tools",
        ]) else {
            return nil
        }
        if !Agent.isValidID(namespace) || namespace.contains(".") {
            node.report("a tool namespace must be letters, digits, '-' or '_' (it prefixes the tool names: '\(namespace).<tool>')")
        }
        guard let typeNode = fields["type"] else {
            node.report("missing required key 'type' (one of: \(ToolSourceSettings.Kind.allCases.map(\.rawValue).joined(separator: ", ")))")
            return nil
        }
        guard let kind = typeNode.oneOf(ToolSourceSettings.Kind.self, ToolSourceSettings.Kind.allCases) else { return nil }
        let onlyFor: [(String, ToolSourceSettings.Kind)] = [
            ("spec", .openapi), ("base_url", .openapi), ("url", .mcp), ("command", .mcp), ("env", .mcp), ("inherit_env", .mcp),
            ("working_directory", .mcp), ("restart", .mcp), ("shutdown_grace_ms", .mcp), ("connect_timeout_ms", .mcp),
        ]
        for (key, owner) in onlyFor where owner != kind {
            fields[key]?.report("'\(key)' applies to type '\(owner.rawValue)', not '\(kind.rawValue)'")
        }
        var source: ToolSourceSettings
        switch kind {
        case .openapi:
            guard let baseNode = fields["base_url"], let baseURL = baseNode.nonEmptyString() else {
                if fields["base_url"] == nil { node.report("missing required key 'base_url' (where the API is served)") }
                return nil
            }
            if !Self.isHTTPURL(baseURL) { baseNode.report("expected an http:// or https:// URL, found '\(baseURL)'") }
            source = ToolSourceSettings(namespace: namespace, kind: kind, baseURL: baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL)
        case .mcp:
            source = ToolSourceSettings(namespace: namespace, kind: kind, baseURL: "")
            switch (fields["url"], fields["command"]) {
            case (let urlNode?, nil):
                guard let url = urlNode.nonEmptyString() else { return nil }
                if !Self.isHTTPURL(url) { urlNode.report("expected the server's http:// or https:// MCP endpoint, found '\(url)'") }
                source.baseURL = url
                source.mcpTransport = .streamableHTTP(url: url)
            case (nil, let commandNode?):
                guard let command = commandNode.stringList() else { return nil }
                guard let executable = command.first, !executable.isEmpty else {
                    commandNode.report("expected the program and its arguments, such as [python3, server.py]")
                    return nil
                }
                var process = ToolSourceSettings.StdioProcess(command: command)
                if let env = fields["env"]?.namedEntries() {
                    for (name, valueNode) in env {
                        if name.isEmpty || name.contains("=") { valueNode.report("'\(name)' is not a variable name") }
                        if let value = valueNode.string() { process.environment[name] = Secret(value) }
                    }
                }
                if let names = fields["inherit_env"]?.stringList() { process.inheritEnvironment = names }
                if let directory = fields["working_directory"]?.nonEmptyString() { process.workingDirectory = resolvePath(directory) }
                if let restart = fields["restart"]?.mapping(allowed: ["initial_backoff_ms", "max_backoff_ms"]) {
                    if let value = restart["initial_backoff_ms"]?.int(minimum: 10, maximum: 3_600_000) { process.restartInitialBackoffMs = value }
                    if let value = restart["max_backoff_ms"]?.int(minimum: 10, maximum: 3_600_000) { process.restartMaxBackoffMs = value }
                    if process.restartMaxBackoffMs < process.restartInitialBackoffMs {
                        restart["max_backoff_ms"]?.report("must be at least initial_backoff_ms (\(process.restartInitialBackoffMs))")
                    }
                }
                if let value = fields["shutdown_grace_ms"]?.int(minimum: 0, maximum: 600_000) { process.shutdownGraceMs = value }
                source.mcpTransport = .stdio(process)
                source.connectTimeoutMs = 60_000
            case (nil, nil):
                node.report("an MCP upstream needs 'url' (Streamable HTTP) or 'command' (stdio)")
                return nil
            case (_?, _?):
                node.report("an MCP upstream has either 'url' or 'command', not both")
                return nil
            }
        }
        if let value = fields["timeout_ms"]?.int(minimum: 1) { source.timeoutMs = value }
        if let value = fields["connect_timeout_ms"]?.int(minimum: 1) { source.connectTimeoutMs = value }
        if let value = fields["max_concurrency"]?.int(minimum: 1, maximum: 100_000) { source.maxConcurrency = value }
        if let value = fields["max_response_bytes"]?.int(minimum: 1_024) { source.maxResponseBytes = value }
        if let value = fields["refresh_interval_s"]?.int(minimum: 1, maximum: 86_400 * 30) { source.refreshIntervalSeconds = value }
        if let authNode = fields["auth"] {
            if case .stdio = source.mcpTransport {
                authNode.report("a stdio server takes its credentials from 'env', not 'auth'")
            } else if let authentication = readToolAuthentication(authNode) {
                source.authentication = authentication
            }
        }
        var overrides: [(String, ConfigNode, ToolMetadata)] = []
        if let entries = fields["tools"]?.namedEntries() {
            for (name, overrideNode) in entries {
                guard let meta = overrideNode.mapping(allowed: ["side_effects", "idempotent", "risk", "owner", "limits"]) else { continue }
                var metadata = ToolMetadata()
                if let value = meta["side_effects"]?.oneOf(ToolMetadata.SideEffects.self, ToolMetadata.SideEffects.allCases) { metadata.sideEffects = value }
                if let value = meta["idempotent"]?.bool() { metadata.idempotent = value }
                if let value = meta["risk"]?.oneOf(ToolMetadata.Risk.self, ToolMetadata.Risk.allCases) { metadata.risk = value }
                if let value = meta["owner"]?.string() { metadata.owner = value }
                if let limits = meta["limits"]?.mapping(allowed: ["rpm"]) { metadata.requestsPerMinute = limits["rpm"]?.int(minimum: 1) }
                overrides.append((name, overrideNode, metadata))
                source.toolMetadata[name] = metadata
            }
        }
        guard kind == .openapi else { return source }
        guard let specNode = fields["spec"], let specPath = specNode.nonEmptyString() else {
            if fields["spec"] == nil { node.report("missing required key 'spec' (the OpenAPI document: a path relative to this file, or a URL)") }
            return nil
        }
        if Self.isHTTPURL(specPath) {
            // Fetched at start; its operations are only known then.
            source.spec = .url(specPath)
            return source
        }
        let resolved = resolvePath(specPath)
        source.spec = .file(resolved)
        guard let data = FileManager.default.contents(atPath: resolved) else {
            specNode.report("cannot read the OpenAPI document '\(resolved)'")
            return nil
        }
        do {
            source.tools = try OpenAPIImport.tools(fromDocument: data, namespace: namespace)
        } catch {
            specNode.report("the OpenAPI document '\(resolved)': \(error.description)")
            return nil
        }
        for tool in source.tools {
            do {
                _ = try JSONSchema(tool.definition.inputSchema)
            } catch {
                specNode.report("tool '\(tool.definition.name)': its input schema is not usable: \(error.description)")
            }
        }
        for (name, overrideNode, metadata) in overrides {
            guard let index = source.tools.firstIndex(where: { $0.definition.name == "\(namespace).\(name)" }) else {
                var message = "the document has no operation '\(name)'"
                let known = Set(source.tools.map { String($0.definition.name.dropFirst(namespace.count + 1)) })
                if let suggestion = Suggestion.closest(to: name, in: known) { message += "; did you mean '\(suggestion)'?" }
                overrideNode.report(message)
                continue
            }
            source.tools[index].definition.metadata = metadata
        }
        return source
    }

    /// `auth` of a tool upstream.
    private func readToolAuthentication(_ authNode: ConfigNode) -> ToolSourceSettings.Authentication? {
        guard let auth = authNode.mapping(allowed: ["bearer", "header", "value", "on_behalf_of", "oauth_client_credentials"]) else { return nil }
        if let oauth = auth["oauth_client_credentials"], let settings = oauth.mapping(allowed: ["token_url", "client_id", "client_secret", "scope"]) {
            guard let tokenURL = settings["token_url"]?.nonEmptyString(), let clientID = settings["client_id"]?.nonEmptyString(),
                let secret = settings["client_secret"]?.string()
            else {
                oauth.report("'oauth_client_credentials' needs 'token_url', 'client_id' and 'client_secret' (use ${ENV_VAR})")
                return nil
            }
            if !Self.isHTTPURL(tokenURL) { settings["token_url"]?.report("expected an http:// or https:// URL") }
            return .clientCredentials(tokenURL: tokenURL, clientID: clientID, clientSecret: Secret(secret), scope: settings["scope"]?.nonEmptyString())
        } else if let obo = auth["on_behalf_of"], let settings = obo.mapping(allowed: ["audience"]) {
            guard let audience = settings["audience"]?.nonEmptyString() else {
                obo.report("'on_behalf_of' needs 'audience' (what the upstream expects in 'aud')")
                return nil
            }
            return .onBehalfOf(audience: audience)
        } else if let token = auth["bearer"]?.string() {
            if !Self.isHeaderValue(token) { auth["bearer"]?.report("the token contains a line break or control character") }
            return .bearer(Secret(token))
        } else if let name = auth["header"]?.nonEmptyString() {
            if !Self.isHeaderName(name) { auth["header"]?.report("'\(name)' is not a valid header name") }
            guard let value = auth["value"]?.string() else {
                authNode.report("'header' needs 'value' (use ${ENV_VAR})")
                return nil
            }
            if !Self.isHeaderValue(value) { auth["value"]?.report("the value contains a line break or control character") }
            return .header(name: name, value: Secret(value))
        }
        authNode.report("expected 'bearer: <token>', 'header: <name>' with 'value: <secret>', 'on_behalf_of: { audience: … }' or 'oauth_client_credentials: { … }'")
        return nil
    }

    /// A path from the config file, relative to the file's directory.
    private func resolvePath(_ path: String) -> String {
        let directory = reader.file.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return path.hasPrefix("/") || directory.isEmpty ? path : directory + "/" + path
    }

    private static func isHTTPURL(_ value: String) -> Bool {
        value.hasPrefix("http://") || value.hasPrefix("https://")
    }

    private func readTrustedIssuer(_ node: ConfigNode, defaultAudience: String) -> TrustedIssuerSettings? {
        guard let fields = node.mapping(allowed: [
            "issuer", "discovery_url", "jwks_file", "audience", "algorithms", "subject", "subject_claim", "agent_prefix", "scope_claim",
        ]) else { return nil }
        guard let issuerNode = fields["issuer"] else {
            node.report("missing required key 'issuer' (the exact 'iss' of its tokens)")
            return nil
        }
        guard let issuer = issuerNode.nonEmptyString() else { return nil }
        let keys: TrustedIssuerSettings.Keys
        switch (fields["discovery_url"]?.nonEmptyString(), fields["jwks_file"]?.nonEmptyString()) {
        case (let url?, nil):
            guard url.hasPrefix("https://") || url.hasPrefix("http://") else {
                fields["discovery_url"]?.report("expected an http:// or https:// URL, found '\(url)'")
                return nil
            }
            keys = .discovery(url: url)
        case (nil, let path?):
            keys = .file(path: path)
        case (.some, .some):
            node.report("give 'discovery_url' or 'jwks_file', not both")
            return nil
        case (nil, nil):
            node.report("a trusted issuer needs 'discovery_url' or 'jwks_file' (where its signing keys are)")
            return nil
        }
        var settings = TrustedIssuerSettings(issuer: issuer, keys: keys, audience: fields["audience"]?.nonEmptyString() ?? defaultAudience)
        if let node = fields["algorithms"], let algorithms = node.stringList() {
            for algorithm in algorithms where !TrustedIssuerSettings.supportedAlgorithms.contains(algorithm) {
                node.report("unsupported algorithm '\(algorithm)'; expected one of \(TrustedIssuerSettings.supportedAlgorithms.joined(separator: ", "))")
            }
            if algorithms.isEmpty { node.report("list at least one algorithm") }
            settings.algorithms = algorithms
        }
        if let kind = fields["subject"]?.oneOf(TrustedIssuerSettings.SubjectKind.self, TrustedIssuerSettings.SubjectKind.allCases) {
            settings.subjectKind = kind
        }
        if let claim = fields["subject_claim"]?.nonEmptyString() { settings.subjectClaim = claim }
        settings.agentPrefix = fields["agent_prefix"]?.nonEmptyString()
        settings.scopeClaim = fields["scope_claim"]?.nonEmptyString()
        return settings
    }

    private func readPolicy(_ node: ConfigNode, into policy: inout PolicySettings) {
        guard let fields = node.mapping(allowed: ["rules", "approval_wait_ms", "approval_ttl_s", "cost_limit"]) else { return }
        if let value = fields["approval_wait_ms"]?.int(minimum: 0, maximum: 600_000) { policy.approvalWaitMs = value }
        if let value = fields["approval_ttl_s"]?.int(minimum: 1, maximum: 30 * 86_400) { policy.approvalTTLSeconds = value }
        if let value = fields["cost_limit"]?.int(minimum: 100, maximum: 100_000_000) { policy.costLimit = value }
        guard let items = fields["rules"]?.sequence() else { return }
        var names = Set<String>()
        for item in items {
            guard let rule = item.mapping(allowed: ["name", "condition", "effect", "reason", "mode", "targets", "on_error"]) else { continue }
            guard let nameNode = rule["name"], let name = nameNode.nonEmptyString() else {
                if rule["name"] == nil { item.report("missing required key 'name'") }
                continue
            }
            if !names.insert(name).inserted { nameNode.report("duplicate policy rule name '\(name)'") }
            guard let conditionNode = rule["condition"] else {
                item.report("missing required key 'condition' (a CEL expression)")
                continue
            }
            guard let effectNode = rule["effect"] else {
                item.report("missing required key 'effect' (allow, deny or require_approval)")
                continue
            }
            guard let condition = conditionNode.nonEmptyString(), let effect = effectNode.oneOf(PolicyRule.Effect.self, PolicyRule.Effect.allCases) else { continue }
            var parsed = PolicyRule(name: name, condition: condition, effect: effect)
            parsed.reason = rule["reason"]?.string() ?? ""
            if effect != .allow, parsed.reason.isEmpty { item.report("a \(effect.rawValue) rule needs a 'reason' (it is shown to the agent)") }
            if let mode = rule["mode"]?.oneOf(PolicyRule.Mode.self, PolicyRule.Mode.allCases) { parsed.mode = mode }
            if let onError = rule["on_error"]?.oneOf(PolicyRule.OnError.self, PolicyRule.OnError.allCases) { parsed.onError = onError }
            if let targetsNode = rule["targets"], let targets = targetsNode.stringList() {
                for target in targets where !(target.hasPrefix("model:") || target.hasPrefix("tool:") || target.hasPrefix("agent:")) {
                    targetsNode.report("target pattern '\(target)' must start with model:, tool: or agent:")
                }
                parsed.targets = targets
            }
            // The condition is type-checked against the policy environment here, so a typo in a
            // field name fails `interlock validate`, not a live call.
            for error in PolicyEngine.check(parsed) { conditionNode.report(celError: error) }
            policy.rules.append(parsed)
        }
    }

    /// The `workflows` settings; the files it names, to load once the agents and models are known.
    private func readWorkflows(_ node: ConfigNode, into config: inout InterlockConfiguration) -> [(String, ConfigNode)] {
        guard let fields = node.mapping(allowed: [
            "files", "max_active_runs", "lease_ms", "poll_interval_ms", "step_timeout_ms", "wait_timeout_ms", "webhook", "default_max_steps",
        ]) else { return [] }
        var settings = config.workflows
        if let value = fields["max_active_runs"]?.int(minimum: 1, maximum: 100_000) { settings.maxActiveRuns = value }
        if let value = fields["lease_ms"]?.int(minimum: 1_000, maximum: 3_600_000) { settings.leaseMs = value }
        if let value = fields["poll_interval_ms"]?.int(minimum: 10, maximum: 60_000) { settings.pollIntervalMs = value }
        if let value = fields["step_timeout_ms"]?.int(minimum: 1, maximum: 86_400_000) { settings.stepTimeoutMs = value }
        if let value = fields["wait_timeout_ms"]?.int(minimum: 1) { settings.waitTimeoutMs = Int64(value) }
        if let value = fields["default_max_steps"]?.int(minimum: 1) { settings.defaultMaxSteps = value }
        if let webhookNode = fields["webhook"], let webhook = webhookNode.mapping(allowed: ["url", "timeout_ms", "headers", "payload"]) {
            if let urlNode = webhook["url"], let url = urlNode.nonEmptyString() {
                if url.hasPrefix("http://") || url.hasPrefix("https://") {
                    var settingsHook = WebhookSettings(url: url)
                    if let value = webhook["timeout_ms"]?.int(minimum: 1, maximum: 600_000) { settingsHook.timeoutMs = value }
                    for (name, valueNode) in webhook["headers"]?.namedEntries() ?? [] {
                        if let value = valueNode.string() { settingsHook.headers.append((name, Secret(value))) }
                    }
                    if let payloadNode = webhook["payload"] { settingsHook.payload = WorkflowLoader.template(payloadNode, variables: ["notification"]) }
                    settings.webhook = settingsHook
                } else {
                    urlNode.report("expected an http:// or https:// URL, found '\(url)'")
                }
            } else if webhook["url"] == nil {
                webhookNode.report("missing required key 'url'")
            }
        }
        config.workflows = settings
        guard let filesNode = fields["files"], let files = filesNode.sequence() else { return [] }
        var found: [(String, ConfigNode)] = []
        let directory = reader.file.contains("/") ? String(reader.file[..<reader.file.lastIndex(of: "/")!]) : "."
        for fileNode in files {
            guard let path = fileNode.nonEmptyString() else { continue }
            let resolved = path.hasPrefix("/") ? path : directory + "/" + path
            guard FileManager.default.fileExists(atPath: resolved) else {
                fileNode.report("cannot read the workflow file '\(resolved)'")
                continue
            }
            found.append((resolved, fileNode))
        }
        return found
    }

    /// Loads the workflow files; their problems are reported in their own files.
    private func loadWorkflows(_ files: [(String, ConfigNode)], into config: inout InterlockConfiguration) {
        let references = WorkflowReferences(config)
        for (path, node) in files {
            do {
                let definition = try WorkflowLoader.load(path: path, references: references)
                if let first = config.workflows.origins[definition.name] {
                    node.report("workflow '\(definition.name)' is also defined in '\(first)'")
                    continue
                }
                config.workflows.definitions.append(definition)
                config.workflows.origins[definition.name] = path
            } catch {
                for diagnostic in error.diagnostics { reader.add(diagnostic) }
            }
        }
    }

    private func readGuardrails(_ node: ConfigNode, into guardrails: inout GuardrailSettings) {
        guard let fields = node.mapping(allowed: ["rules", "allowed_domains", "allowed_hosts", "custom", "stream_window_bytes"]) else { return }
        guardrails.allowedDomains = fields["allowed_domains"]?.stringList() ?? []
        guardrails.allowedHosts = fields["allowed_hosts"]?.stringList() ?? []
        if let value = fields["stream_window_bytes"]?.int(minimum: 64, maximum: 65_536) { guardrails.streamWindowBytes = value }
        var customNames = Set<String>()
        for item in fields["custom"]?.sequence() ?? [] {
            guard let custom = item.mapping(allowed: ["name", "pattern"]) else { continue }
            guard let nameNode = custom["name"], let name = nameNode.nonEmptyString(), let patternNode = custom["pattern"], let pattern = patternNode.nonEmptyString() else {
                if custom["name"] == nil { item.report("missing required key 'name'") }
                if custom["pattern"] == nil { item.report("missing required key 'pattern' (RE2 syntax)") }
                continue
            }
            if !name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) { nameNode.report("a custom detector name may hold letters, digits, '_' and '-'") }
            if !customNames.insert(name).inserted { nameNode.report("duplicate custom detector '\(name)'") }
            do {
                _ = try CELRegex(pattern)
            } catch {
                patternNode.report("invalid pattern: \(error.message)")
                continue
            }
            guardrails.custom.append((name, pattern))
        }
        let detectorNames: Set<String> = [
            "secrets", "pii", "exfiltration", "injection", "custom", "pii.email", "pii.phone", "pii.card", "pii.iban", "pii.national_id",
            "exfiltration.recipient", "exfiltration.url", "exfiltration.markdown_image", "injection.override", "injection.role_marker",
            "injection.invisible", "secrets.private_key", "secrets.url_credentials", "secrets.assignment", "secrets.high_entropy",
        ]
        for item in fields["rules"]?.sequence() ?? [] {
            guard let rule = item.mapping(allowed: ["detectors", "direction", "action", "targets", "agents"]) else { continue }
            guard let detectorsNode = rule["detectors"], let detectors = detectorsNode.stringList(), let actionNode = rule["action"],
                let action = actionNode.oneOf(GuardrailSettings.Action.self, GuardrailSettings.Action.allCases)
            else {
                if rule["detectors"] == nil { item.report("missing required key 'detectors' (e.g. [secrets, pii])") }
                if rule["action"] == nil { item.report("missing required key 'action' (block, redact, flag or require_approval)") }
                continue
            }
            if detectors.isEmpty { detectorsNode.report("must name at least one detector") }
            for detector in detectors where !detectorNames.contains(detector) && !detector.hasPrefix("secrets.") {
                if detector.hasPrefix("custom.") {
                    if !customNames.contains(String(detector.dropFirst(7))) { detectorsNode.report("unknown custom detector '\(detector.dropFirst(7))' (declare it under guardrails.custom)") }
                    continue
                }
                var message = "unknown detector '\(detector)'"
                if let suggestion = Suggestion.closest(to: detector, in: detectorNames) { message += "; did you mean '\(suggestion)'?" }
                detectorsNode.report(message)
            }
            var parsed = GuardrailSettings.Rule(detectors: detectors, action: action)
            if let direction = rule["direction"]?.oneOf(GuardrailSettings.Direction.self, GuardrailSettings.Direction.allCases) { parsed.direction = direction }
            if action == .requireApproval, parsed.direction != .in {
                actionNode.report("require_approval applies to what an agent sends: set 'direction: in'")
            }
            if let targetsNode = rule["targets"], let targets = targetsNode.stringList() {
                for target in targets where !(target.hasPrefix("model:") || target.hasPrefix("tool:") || target.hasPrefix("agent:")) {
                    targetsNode.report("target pattern '\(target)' must start with model:, tool: or agent:")
                }
                parsed.targets = targets
            }
            parsed.agents = rule["agents"]?.stringList() ?? []
            guardrails.rules.append(parsed)
        }
    }

    private func readAgent(_ node: ConfigNode) -> AgentSettings? {
        guard let fields = node.mapping(allowed: [
            "id", "owner", "description", "region", "api_key", "models", "tools", "agents", "workflows", "events", "limits", "budgets", "priority",
        ]) else { return nil }
        guard let idNode = fields["id"] else {
            node.report("missing required key 'id'")
            return nil
        }
        guard let id = idNode.nonEmptyString() else { return nil }
        if !Agent.isValidID(id) { idNode.report("an agent id must be 1 to 128 letters, digits, '-', '_' or '.'") }
        var agent = Agent(id: id)
        var apiKey: Secret?
        if let keyNode = fields["api_key"], let key = keyNode.string() {
            if key.count < 16 { keyNode.report("an API key must be at least 16 characters") }
            apiKey = Secret(key)
        }
        agent.owner = fields["owner"]?.string() ?? ""
        agent.description = fields["description"]?.string() ?? ""
        agent.region = fields["region"]?.string() ?? ""
        agent.grants = AgentGrants(
            models: fields["models"]?.stringList() ?? [], tools: fields["tools"]?.stringList() ?? [], agents: fields["agents"]?.stringList() ?? [],
            workflows: fields["workflows"]?.stringList() ?? [], events: fields["events"]?.stringList() ?? [])
        if let limits = fields["limits"]?.mapping(allowed: ["rpm", "tpm"]) {
            agent.limits = RateLimits(requestsPerMinute: limits["rpm"]?.int(minimum: 1), tokensPerMinute: limits["tpm"]?.int(minimum: 1))
        }
        if let budgets = fields["budgets"]?.mapping(allowed: ["daily_usd", "monthly_usd"]) {
            agent.dailyBudget = budgets["daily_usd"]?.double(minimum: 0).map { USD(dollars: $0) }
            agent.monthlyBudget = budgets["monthly_usd"]?.double(minimum: 0).map { USD(dollars: $0) }
        }
        if let priority = fields["priority"]?.int(minimum: -100, maximum: 100) { agent.priority = priority }
        return AgentSettings(agent: agent, apiKey: apiKey)
    }

    private func crossCheck(_ config: InterlockConfiguration, top: [String: ConfigNode], agentNodes: [String: ConfigNode]) {
        let providerIDs = Set(config.providers.map(\.id))
        let aliasNames = Set(config.models.map(\.name))
        let modelEntries = top["models"].flatMap { node -> [String: ConfigNode]? in
            guard let entries = node.namedEntries() else { return nil }
            return Dictionary(entries, uniquingKeysWith: { first, _ in first })
        } ?? [:]
        var deploymentIDs = Set<String>()
        for alias in config.models {
            let aliasNode = modelEntries[alias.name]
            let aliasFields = aliasNode?.mapping(allowed: [])
            for (index, deployment) in alias.deployments.enumerated() {
                let node = aliasFields?["deployments"]?.sequence()?[safe: index]
                if !providerIDs.contains(deployment.providerID) {
                    var message = "unknown provider '\(deployment.providerID)'"
                    if let suggestion = Suggestion.closest(to: deployment.providerID, in: providerIDs) { message += "; did you mean '\(suggestion)'?" }
                    (node ?? aliasNode)?.report(message)
                }
                if !deploymentIDs.insert(deployment.id).inserted {
                    (node ?? aliasNode)?.report("duplicate deployment id '\(deployment.id)' (set 'id' to tell them apart)")
                }
            }
            for fallback in alias.fallbacks where !aliasNames.contains(fallback) || fallback == alias.name {
                let node = aliasFields?["fallbacks"] ?? aliasNode
                if fallback == alias.name {
                    node?.report("an alias cannot fall back to itself")
                } else {
                    var message = "unknown model alias '\(fallback)' in fallbacks"
                    if let suggestion = Suggestion.closest(to: fallback, in: aliasNames) { message += "; did you mean '\(suggestion)'?" }
                    node?.report(message)
                }
            }
        }
        var keys: [Secret: String] = [:]
        for declared in config.agents {
            let agent = declared.agent
            let fields = agentNodes[agent.id]?.mapping(allowed: [])
            for model in agent.grants.models where model != "*" && !aliasNames.contains(model) {
                var message = "agent '\(agent.id)' is granted unknown model alias '\(model)'"
                if let suggestion = Suggestion.closest(to: model, in: aliasNames) { message += "; did you mean '\(suggestion)'?" }
                (fields?["models"] ?? agentNodes[agent.id])?.report(message)
            }
            guard let apiKey = declared.apiKey else { continue }
            if let other = keys[apiKey] {
                (fields?["api_key"] ?? agentNodes[agent.id])?.report("agent '\(agent.id)' has the same API key as agent '\(other)'")
            }
            keys[apiKey] = agent.id
        }
    }
}

extension Array {
    fileprivate subscript(safe index: Int) -> Element? { indices.contains(index) ? self[index] : nil }
}
