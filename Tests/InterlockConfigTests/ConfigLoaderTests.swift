import InterlockConfig
import InterlockCore
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
