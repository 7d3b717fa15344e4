import InterlockConfig
import InterlockCore
import InterlockPolicy
import Testing

@Suite struct ConfigLoaderTests {
    let valid = """
        server:
          port: ${PORT:-9090}
        providers:
          mock:
            type: mock
        models:
          fast:
            deployments:
              - provider: mock
                model: m1
                price: { input_per_mtok: 1, output_per_mtok: 2 }
        agents:
          - id: a1
            api_key: ${A1_KEY}
            models: [fast]
            budgets: { daily_usd: 2.5 }
        """

    @Test func interpolatesVariablesAndDefaults() throws {
        let config = try ConfigLoader.parse(valid, file: "c.yaml", environment: ["A1_KEY": "0123456789abcdefXYZ"])
        #expect(config.server.port == 9090)
        #expect(config.agents.first?.apiKey?.reveal() == "0123456789abcdefXYZ")
        #expect(config.agents.first?.agent.dailyBudget == USD(dollars: 2.5))
        #expect(config.models.first?.deployments.first?.price.outputPerMillion == 2)
        let overridden = try ConfigLoader.parse(valid, file: "c.yaml", environment: ["A1_KEY": "0123456789abcdefXYZ", "PORT": "7000"])
        #expect(overridden.server.port == 7000)
    }

    @Test func eventLoopThreadsDefaultToOnePerCoreAndAreBounded() throws {
        let environment = ["A1_KEY": "0123456789abcdefXYZ"]
        func with(_ threads: String) -> String { valid.replacing("  port: ${PORT:-9090}", with: "  port: ${PORT:-9090}\n  event_loop_threads: \(threads)") }
        #expect(try ConfigLoader.parse(valid, file: "c.yaml", environment: environment).server.eventLoopThreads == nil)
        #expect(try ConfigLoader.parse(with("2"), file: "c.yaml", environment: environment).server.eventLoopThreads == 2)
        let zero = Result { () throws(ConfigError) in try ConfigLoader.parse(with("0"), file: "c.yaml", environment: environment) }
        guard case .failure(let error) = zero else {
            Issue.record("event_loop_threads: 0 was accepted")
            return
        }
        #expect(error.description.contains("c.yaml:3:23") && error.description.contains("between 1 and 1024, found 0"), "\(error.description)")
    }

    /// The upstream answer bounds: defaults, set, and too small with file and line.
    @Test func upstreamAnswerBoundsHaveDefaultsAndAMinimum() throws {
        let environment = ["A1_KEY": "0123456789abcdefXYZ"]
        let defaults = try ConfigLoader.parse(valid, file: "c.yaml", environment: environment).gateway
        #expect(defaults.maxResponseBytes == 64 * 1024 * 1024 && defaults.maxStreamEventBytes == 8 * 1024 * 1024)
        func with(_ gateway: String) -> String { valid + "\ngateway: { \(gateway) }" }
        let set = try ConfigLoader.parse(with("max_response_bytes: 2048, max_stream_event_bytes: 4096"), file: "c.yaml", environment: environment).gateway
        #expect(set.maxResponseBytes == 2048 && set.maxStreamEventBytes == 4096)
        let small = Result { () throws(ConfigError) in try ConfigLoader.parse(with("max_stream_event_bytes: 10"), file: "c.yaml", environment: environment) }
        guard case .failure(let error) = small else {
            Issue.record("max_stream_event_bytes: 10 was accepted")
            return
        }
        #expect(error.description.contains("c.yaml:17:36: gateway.max_stream_event_bytes: must be at least 1024, found 10"), "\(error.description)")
    }

    /// `store.sqlite.batch_writer`: idle by default, set, and a wrong priority named with its line.
    @Test func sqliteBatchWriterPriorityIsReadAndChecked() throws {
        let environment = ["A1_KEY": "0123456789abcdefXYZ"]
        #expect(try ConfigLoader.parse(valid, file: "c.yaml", environment: environment).store == .sqlite(path: "interlock.sqlite"))
        func with(_ writer: String) -> String { valid + "\nstore:\n  sqlite:\n    path: /tmp/x.sqlite\n    batch_writer: { \(writer) }" }
        let set = try ConfigLoader.parse(with("priority: normal, boost_after_ms: 50"), file: "c.yaml", environment: environment)
        #expect(set.store == .sqlite(path: "/tmp/x.sqlite", batchWriter: SQLiteBatchWriterSettings(priority: .normal, boostAfterMs: 50)))
        let raised = try ConfigLoader.parse(with("raised_for_ms: 0"), file: "c.yaml", environment: environment)
        #expect(raised.store == .sqlite(path: "/tmp/x.sqlite", batchWriter: SQLiteBatchWriterSettings(priority: .idle, boostAfterMs: 20, raisedForMs: 0)))
        let wrong = Result { () throws(ConfigError) in try ConfigLoader.parse(with("priority: low"), file: "c.yaml", environment: environment) }
        guard case .failure(let error) = wrong else {
            Issue.record("priority: low was accepted")
            return
        }
        #expect(error.description.contains("c.yaml:20:") && error.description.contains("store.sqlite.batch_writer.priority") && error.description.contains("idle"), "\(error.description)")
    }

    /// The cluster store: a URL from the environment, decoded; errors that never echo the password.
    @Test func postgresStoreIsReadFromAURL() throws {
        let text = valid + """

            store:
              postgres:
                url: ${DATABASE_URL}
                pool_size: 12
                checkpoint_writers: 2
                tls: { mode: verify_full, ca_file: /etc/ca.pem }
            """
        let config = try ConfigLoader.parse(
            text, file: "c.yaml", environment: ["A1_KEY": "0123456789abcdefXYZ", "DATABASE_URL": "postgres://app:s%40cret@db.internal:6543/mesh?sslmode=require"])
        guard case .postgres(let settings) = config.store else {
            Issue.record("expected a PostgreSQL store, got \(config.store)")
            return
        }
        #expect(settings.host == "db.internal" && settings.port == 6543 && settings.user == "app" && settings.database == "mesh")
        #expect(settings.password?.reveal() == "s@cret")
        #expect(settings.poolSize == 12 && settings.checkpointWriters == 2 && settings.tls == .verifyFull && settings.caFile == "/etc/ca.pem", "tls: overrides the URL's sslmode")
        #expect(config.store.isShared)
        #expect(throws: ConfigError.self) {
            try ConfigLoader.parse(text, file: "c.yaml", environment: ["A1_KEY": "0123456789abcdefXYZ", "DATABASE_URL": "mysql://u:pw@h/db"])
        }
        let bad = Result { () throws(ConfigError) in
            try ConfigLoader.parse(text, file: "c.yaml", environment: ["A1_KEY": "0123456789abcdefXYZ", "DATABASE_URL": "postgres://u:hunter2@h:99999/db"])
        }
        guard case .failure(let error) = bad else {
            Issue.record("a port out of range was accepted")
            return
        }
        #expect(error.description.contains("c.yaml:19:10") && error.description.contains("port"), "\(error.description)")
        #expect(!error.description.contains("hunter2"), "the password never appears in an error")
        #expect(PostgresSettings.parse(url: "postgresql://u@[::1]/x").map(\.host) == .success("::1"))
        #expect(PostgresSettings.parse(url: "postgres://u@h/").map(\.database) == .success("u"), "the database defaults to the user's name")
    }

    @Test func reportsEveryErrorWithLineAndSuggestion() {
        let text = """
            servr:
              port: 1
            providers:
              mock:
                type: mokc
            models:
              fast:
                fallbacks: [smrt]
                deployments:
                  - provider: mock
                    model: m1
                    weight: heavy
            agents:
              - id: a1
                api_key: ${MISSING_KEY}
              - id: a2
                api_key: literal-key-0123456789
                models: [fats]
            """
        do {
            _ = try ConfigLoader.parse(text, file: "bad.yaml", environment: [:])
            Issue.record("expected errors")
        } catch {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains { $0.hasPrefix("bad.yaml:1:1: servr: unknown key 'servr'; did you mean 'server'?") })
            #expect(lines.contains { $0.hasPrefix("bad.yaml:5:11: providers.mock.type: 'mokc' is not one of") && $0.contains("did you mean 'mock'?") })
            #expect(lines.contains { $0.hasPrefix("bad.yaml:12:17: models.fast.deployments[0].weight: expected a number, found 'heavy'") })
            #expect(lines.contains { $0.hasPrefix("bad.yaml:15:") && $0.contains("environment variable 'MISSING_KEY' is not set") })
            #expect(lines.contains { $0.contains("unknown model alias 'smrt'") })
            #expect(lines.contains { $0.contains("granted unknown model alias 'fats'; did you mean 'fast'?") })
            #expect(error.diagnostics.count >= 6)
        }
    }

    @Test func policyRulesAreTypeCheckedWithFileLineAndColumn() throws {
        let text = valid + """

            policy:
              approval_wait_ms: 5000
              rules:
                - name: ok
                  condition: 'target.kind == "tool" && args.bcc.all(a, a.endsWith("@corp.example"))'
                  effect: deny
                  reason: inside only
                - name: typo
                  condition: run.spentusd > 2.0
                  effect: deny
                  reason: r
                - name: block
                  condition: |
                    target.kind == "model" &&
                      agent.scope == "x"
                  effect: require_approval
                  reason: r
                - name: no-reason
                  condition: "true"
                  effect: deny
                - name: ok
                  condition: "1 + 'a' == 2"
                  effect: allow
                  targets: ["erp.*"]
            """
        do {
            _ = try ConfigLoader.parse(text, file: "p.yaml", environment: ["A1_KEY": "0123456789abcdefXYZ"])
            Issue.record("expected errors")
        } catch {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains("p.yaml:25:22: policy.rules[1].condition: undefined field 'spentusd' in message 'interlock.Run' (in the CEL condition)"))
            #expect(lines.contains("p.yaml:31:17: policy.rules[2].condition: undefined field 'scope' in message 'interlock.Agent' (in the CEL condition)"))
            #expect(lines.contains { $0.hasPrefix("p.yaml:34:") && $0.contains("needs a 'reason'") })
            #expect(lines.contains { $0.hasPrefix("p.yaml:37:") && $0.contains("duplicate policy rule name 'ok'") })
            #expect(lines.contains { $0.hasPrefix("p.yaml:38:21:") && $0.contains("found no matching overload for '_+_'") })
            #expect(lines.contains { $0.contains("target pattern 'erp.*' must start with model:, tool: or agent:") })
        }
        let config = try ConfigLoader.parse(valid + "\npolicy:\n  rules:\n    - { name: r, condition: 'true', effect: deny, reason: x, mode: shadow }\n", file: "p.yaml", environment: ["A1_KEY": "0123456789abcdefXYZ"])
        #expect(config.policy.rules.first?.mode == .shadow)
        #expect(config.policy.approvalWaitMs == 20_000)
    }

    @Test func guardrailRulesAreChecked() throws {
        let text = valid + """

            guardrails:
              allowed_domains: [corp.example]
              custom:
                - { name: codename, pattern: '(?i)project\\s+falcon' }
                - { name: broken, pattern: '(unclosed' }
              rules:
                - { detectors: [secrets, pii.card], direction: in, action: block }
                - { detectors: [pii.emial], action: redact }
                - { detectors: [custom.nothere], action: flag }
                - { detectors: [injection], direction: out, action: require_approval }
                - { detectors: [secrets], action: shred }
            """
        do {
            _ = try ConfigLoader.parse(text, file: "g.yaml", environment: ["A1_KEY": "0123456789abcdefXYZ"])
            Issue.record("expected errors")
        } catch {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains { $0.hasPrefix("g.yaml:21:") && $0.contains("invalid pattern") })
            #expect(lines.contains { $0.contains("unknown detector 'pii.emial'; did you mean 'pii.email'?") })
            #expect(lines.contains { $0.contains("unknown custom detector 'nothere'") })
            #expect(lines.contains { $0.contains("require_approval applies to what an agent sends") })
            #expect(lines.contains { $0.contains("'shred' is not one of: flag, redact, require_approval, block") })
        }
        let config = try ConfigLoader.parse(
            valid + "\nguardrails:\n  rules:\n    - { detectors: [secrets], direction: in, action: block, targets: ['model:*'] }\n", file: "g.yaml",
            environment: ["A1_KEY": "0123456789abcdefXYZ"])
        #expect(config.guardrails.rules.first?.action == .block && config.guardrails.rules.first?.direction == .in)
        #expect(config.guardrails.streamWindowBytes == 256)
    }

    /// Upstream headers are not re-validated per request, so bad ones must stop the config.
    @Test func upstreamHeadersAndKeysMustBeValidHeaderFields() {
        let text = """
            providers:
              up:
                type: openai
                api_key: ${KEY}
                headers:
                  "x ok": fine
                  x-tenant: ${TENANT}
            models:
              fast:
                deployments: [{ provider: up, model: m }]
            agents:
              - { id: a, api_key: agent-key-0123456789, models: [fast] }
            """
        do {
            _ = try ConfigLoader.parse(text, file: "h.yaml", environment: ["KEY": "sk-1\r\nx-evil: 1", "TENANT": "t\n"])
            Issue.record("expected errors")
        } catch {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains { $0.hasPrefix("h.yaml:4:") && $0.contains("API key contains a line break") })
            #expect(lines.contains { $0.contains("'x ok' is not a valid HTTP header name") })
            #expect(lines.contains { $0.hasPrefix("h.yaml:7:") && $0.contains("header 'x-tenant' contains a line break") })
        }
        // Clean values, but the header name alone still fails the file.
        #expect((try? ConfigLoader.parse(text, file: "h.yaml", environment: ["KEY": "sk-1", "TENANT": "t"])) == nil)
    }

    @Test func toolUpstreamsAreCheckedWithFileAndLine() throws {
        let good = try ConfigLoader.parse("""
            tool_gateway: { capture: full, capture_max_bytes: 2048 }
            tools:
              search:
                type: mcp
                url: http://127.0.0.1:9000/mcp
                connect_timeout_ms: 800
                auth: { bearer: token-0001 }
                tools:
                  add: { idempotent: true, side_effects: read }
              files:
                type: mcp
                command: [python3, server.py, --stdio]
                working_directory: servers
                env: { API_TOKEN: secret-0001 }
                inherit_env: [PYTHONPATH]
                restart: { initial_backoff_ms: 100, max_backoff_ms: 1000 }
              remote:
                type: openapi
                spec: https://api.example.com/openapi.json
                base_url: https://api.example.com
                refresh_interval_s: 60
            """, file: "/etc/interlock/t.yaml", environment: [:])
        #expect(good.toolGateway.capture == .full && good.toolGateway.captureMaxBytes == 2048)
        let sources = Dictionary(uniqueKeysWithValues: good.toolSources.map { ($0.namespace, $0) })
        guard case .streamableHTTP(let url)? = sources["search"]?.mcpTransport, case .stdio(let process)? = sources["files"]?.mcpTransport else {
            Issue.record("expected an HTTP and a stdio MCP upstream")
            return
        }
        #expect(url == "http://127.0.0.1:9000/mcp" && sources["search"]?.connectTimeoutMs == 800)
        #expect(sources["search"]?.toolMetadata["add"]?.idempotent == true && sources["search"]?.toolMetadata["add"]?.sideEffects == .read)
        #expect(process.command == ["python3", "server.py", "--stdio"] && process.workingDirectory == "/etc/interlock/servers")
        #expect(process.environment["API_TOKEN"]?.reveal() == "secret-0001" && process.inheritEnvironment == ["PYTHONPATH"])
        #expect(process.restartInitialBackoffMs == 100 && process.restartMaxBackoffMs == 1000)
        #expect(sources["remote"]?.spec == .url("https://api.example.com/openapi.json") && sources["remote"]?.refreshIntervalSeconds == 60)

        do {
            _ = try ConfigLoader.parse("""
                tools:
                  both:
                    type: mcp
                    url: http://127.0.0.1:9000/mcp
                    command: [server]
                  neither:
                    type: mcp
                  stdio:
                    type: mcp
                    command: [server]
                    auth: { bearer: x-token-0001 }
                    base_url: http://127.0.0.1:1
                  backoff:
                    type: mcp
                    command: [server]
                    restart: { initial_backoff_ms: 5000, max_backoff_ms: 100 }
                  rest:
                    type: openapi
                    spec: https://x.example.com/spec.json
                    base_url: https://x.example.com
                    command: [server]
                tool_gateway: { capture: everything }
                """, file: "t.yaml", environment: [:])
            Issue.record("expected errors")
        } catch {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains { $0.hasPrefix("t.yaml:3:") && $0.contains("either 'url' or 'command', not both") })
            #expect(lines.contains { $0.hasPrefix("t.yaml:7:") && $0.contains("needs 'url' (Streamable HTTP) or 'command' (stdio)") })
            #expect(lines.contains { $0.hasPrefix("t.yaml:11:") && $0.contains("takes its credentials from 'env'") })
            #expect(lines.contains { $0.hasPrefix("t.yaml:12:") && $0.contains("'base_url' applies to type 'openapi'") })
            #expect(lines.contains { $0.hasPrefix("t.yaml:16:") && $0.contains("at least initial_backoff_ms") })
            #expect(lines.contains { $0.hasPrefix("t.yaml:21:") && $0.contains("'command' applies to type 'mcp'") })
            #expect(lines.contains { $0.hasPrefix("t.yaml:22:") && $0.contains("everything") })
        }
    }

    @Test func operatorsNeedTheirOwnTokensAndAKnownRole() throws {
        let text = valid + """

            operators:
              - { id: alice, token: op-token-0123456789abc, role: admin }
              - { id: bob, token: short, role: viewr }
              - { id: alice, token: "${A1_KEY}", role: operator }
            """
        do {
            _ = try ConfigLoader.parse(text, file: "o.yaml", environment: ["A1_KEY": "0123456789abcdefXYZ"])
            Issue.record("expected errors")
        } catch {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains { $0.contains("operator token must be at least 16 characters") }, "\(lines)")
            #expect(lines.contains { $0.contains("'viewr' is not one of") && $0.contains("did you mean 'viewer'?") })
            #expect(lines.contains { $0.contains("duplicate operator id 'alice'") })
            #expect(lines.contains { $0.contains("also an agent's API key") })
        }
        let good = try ConfigLoader.parse(valid + "\noperators:\n  - { id: alice, token: op-token-0123456789abc, role: admin }\n", file: "o.yaml", environment: ["A1_KEY": "0123456789abcdefXYZ"])
        #expect(good.operators.map(\.id) == ["alice"])
        #expect(good.operators.first?.role == .admin)
        #expect(OperatorRole.viewer < .operator && OperatorRole.operator < .admin)
    }

    @Test func yamlSyntaxErrorHasALine() {
        do {
            _ = try ConfigLoader.parse("server:\n  port: [1,\n", file: "x.yaml", environment: [:])
            Issue.record("expected a syntax error")
        } catch {
            #expect(error.diagnostics.count == 1)
            #expect(error.diagnostics[0].description.hasPrefix("x.yaml:"))
            #expect(error.diagnostics[0].message.contains("invalid YAML"))
        }
    }

    @Test func quickstartConfigIsValid() throws {
        let config = try ConfigLoader.load(path: #filePath.replacing("Tests/InterlockConfigTests/ConfigLoaderTests.swift", with: "examples/quickstart.yaml"), environment: [:])
        #expect(config.agents.count == 2)
        #expect(Set(config.models.map(\.name)) == ["fast", "smart", "embed"])
        // With no keys in the environment only the mock providers are enabled.
        #expect(config.providers.filter(\.isEnabled).map(\.id) == ["mock"])
    }
}
