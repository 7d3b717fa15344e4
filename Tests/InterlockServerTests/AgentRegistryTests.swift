import AsyncHTTPClient
import FoundationEssentials
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import InterlockConfig
import InterlockCore
@testable import InterlockRuntime
import InterlockServer
import InterlockStore
import Logging
import NIOCore
import Testing

/// Config reconciliation, as a pure function of what the store holds and what the file says.
@Suite struct RegistryReconcileTests {
    func declared(_ id: String, key: String? = nil, models: [String] = ["fast"]) -> AgentSettings {
        var agent = Agent(id: id)
        agent.grants.models = models
        return AgentSettings(agent: agent, apiKey: key.map(Secret.init))
    }

    @Test func configOwnsItsAgentsAndRemovedOnesAreDisabled() {
        // First start: both agents and the key are created.
        let first = AgentRegistry.reconcile(stored: [], keys: [], declared: [declared("a", key: "key-a-0000000000000"), declared("b")], nowMs: 1_000)
        #expect(first.changedAgents.map(\.id) == ["a", "b"])
        #expect(first.changedKeys.count == 1 && first.changedKeys[0].agentID == "a" && first.changedKeys[0].source == .config)
        #expect(first.changedKeys[0].digest == APIKeyRecord.digest(of: "key-a-0000000000000"))

        // Nothing changed: nothing to write.
        let same = AgentRegistry.reconcile(
            stored: first.agents, keys: first.changedKeys, declared: [declared("a", key: "key-a-0000000000000"), declared("b")], nowMs: 2_000)
        #expect(same.changedAgents.isEmpty && same.changedKeys.isEmpty)

        // An operator disabled 'a'; 'b' left the file; 'a' got a new key and a new grant.
        var stored = first.agents
        stored[0].disabled = true
        stored[0].disabledReason = "operator:alice"
        let next = AgentRegistry.reconcile(
            stored: stored, keys: first.changedKeys, declared: [declared("a", key: "key-a-1111111111111", models: ["fast", "other"])], nowMs: 3_000)
        let a = next.agents.first { $0.id == "a" }
        let b = next.agents.first { $0.id == "b" }
        #expect(a?.grants.models == ["fast", "other"] && a?.disabled == true && a?.disabledReason == "operator:alice" && a?.updatedMs == 3_000)
        #expect(b?.disabled == true && b?.disabledReason == Agent.removedFromConfig && b?.tokensValidFromMs == 3_000)
        // The old config key is revoked, the new one recorded.
        #expect(next.changedKeys.contains { $0.id == first.changedKeys[0].id && $0.revokedMs == 3_000 })
        #expect(next.changedKeys.contains { $0.digest == APIKeyRecord.digest(of: "key-a-1111111111111") && $0.revokedMs == nil })

        // 'b' comes back to the file: enabled again, since only its removal disabled it.
        let back = AgentRegistry.reconcile(stored: next.agents, keys: [], declared: [declared("a"), declared("b")], nowMs: 4_000)
        #expect(back.agents.first { $0.id == "b" }?.disabled == false)
        #expect(back.agents.first { $0.id == "a" }?.disabled == true)
    }

    @Test func patchesAreCheckedFieldByField() throws {
        var agent = Agent(id: "x")
        try agent.apply(["owner": "team-a", "grants": ["models": ["fast", "fast"], "tools": ["search"]], "limits": ["rpm": 60], "budgets": ["daily_usd": 2.5]], creating: false)
        #expect(agent.owner == "team-a" && agent.grants.models == ["fast"] && agent.grants.tools == ["search"])
        #expect(agent.limits.requestsPerMinute == 60 && agent.dailyBudget == USD(dollars: 2.5))
        try agent.apply(["limits": ["rpm": nil], "budgets": ["daily_usd": nil]], creating: false)
        #expect(agent.limits.requestsPerMinute == nil && agent.dailyBudget == nil)
        func refusal(_ patch: JSONValue, creating: Bool = false) -> String? {
            var copy = agent
            do {
                try copy.apply(patch, creating: creating)
                return nil
            } catch {
                return error.param
            }
        }
        #expect(refusal(["id": "y"]) == "id")
        #expect(refusal(["status": "disabled"]) == "status")
        #expect(refusal(["grants": ["models": "fast"]]) == "grants.models")
        #expect(refusal(["grants": ["model": ["fast"]]]) == "grants.model")
        #expect(refusal(["limits": ["rpm": 0]]) == "limits.rpm")
        #expect(refusal(["budgets": ["daily_usd": -1]]) == "budgets.daily_usd")
        #expect(refusal(["id": "has space"], creating: true) == "id")
        // The stored form reads back as the same agent.
        #expect(Agent(stored: agent.json) == agent)
    }
}

/// The operator API for agents and keys, driven through the production router.
@Suite struct AgentAdminTests {
    let config = baseConfig + """

        auth: { api_key_rotation_overlap_s: 3600 }
        operators:
          - { id: alice, token: op-admin-token-0000000001, role: admin }
          - { id: otto, token: op-operator-token-0000001, role: operator }
          - { id: victor, token: op-viewer-token-000000001, role: viewer }
        """
    static let admin = "op-admin-token-0000000001"

    func operatorHeaders(_ token: String = admin) -> HTTPFields { [.authorization: "Bearer \(token)", .contentType: "application/json"] }

    func json(_ response: TestResponse) throws -> JSONValue { try JSONParser.parse(Array(response.body.readableBytesView)) }

    @Test func agentsMadeByOperatorsGetKeysThatWorkRotateAndRevoke() async throws {
        let harness = try await Harness.make(config)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            let create = ByteBuffer(string: #"{"id":"scout","owner":"research","region":"eu","grants":{"models":["fast"]},"limits":{"rpm":100}}"#)
            // Viewers read, only admins create.
            try await client.execute(uri: "/admin/v1/agents", method: .post, headers: operatorHeaders("op-viewer-token-000000001"), body: create) { response in
                #expect(response.status == .forbidden)
            }
            try await client.execute(uri: "/admin/v1/agents", method: .post, headers: operatorHeaders(), body: create) { response in
                #expect(response.status == .created)
                let body = try json(response)
                #expect(body["id"] == "scout" && body["owner"] == "research" && body["source"] == "api" && body["status"] == "enabled")
            }
            try await client.execute(uri: "/admin/v1/agents", method: .post, headers: operatorHeaders(), body: create) { response in
                #expect(response.status == .conflict)
                let answer = try json(response)
                #expect(answer["error"]?["code"] == "agent_exists")
            }
            try await client.execute(
                uri: "/admin/v1/agents", method: .post, headers: operatorHeaders(), body: ByteBuffer(string: #"{"id":"x","grants":{"models":["fsat"]}}"#)
            ) { response in
                #expect(response.status == .badRequest)
                let answer = try json(response)
                #expect(answer["error"]?["message"]?.stringValue?.contains("'fsat'") == true)
            }
            try await client.execute(uri: "/admin/v1/agents", method: .post, headers: operatorHeaders(), body: ByteBuffer(string: #"{"id":"x","colour":"red"}"#)) { response in
                #expect(response.status == .badRequest)
                let answer = try json(response)
                #expect(answer["error"]?["param"] == "colour")
            }
            // A key, shown once.
            var first = ""
            var firstID = ""
            try await client.execute(uri: "/admin/v1/agents/scout/keys", method: .post, headers: operatorHeaders()) { response in
                #expect(response.status == .created)
                let body = try json(response)
                first = body["key"]?.stringValue ?? ""
                firstID = body["id"]?.stringValue ?? ""
                #expect(first.hasPrefix("ilk_" + firstID + "_") && body["prefix"]?.stringValue == "ilk_" + firstID)
                // Default lifetime: 90 days.
                let lifetimeMs = (body["expires_ms"]?.int64Value ?? 0) - (body["created_ms"]?.int64Value ?? 0)
                #expect(lifetimeMs == 90 * 86_400_000)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(first), body: chat()) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/admin/v1/agents/scout/keys", method: .get, headers: operatorHeaders("op-viewer-token-000000001")) { response in
                let text = String(buffer: response.body)
                #expect(!text.contains(first) && !text.contains("digest"))
                let answer = try json(response)
                #expect(answer["data"]?.arrayValue?.first?["state"] == "active")
            }
            // Rotation: the new key works at once, the old one until the overlap ends.
            var second = ""
            try await client.execute(
                uri: "/admin/v1/agents/scout/keys/\(firstID)/rotate", method: .post, headers: operatorHeaders(), body: ByteBuffer(string: #"{"overlap_s":0}"#)
            ) { response in
                #expect(response.status == .created)
                let body = try json(response)
                second = body["key"]?.stringValue ?? ""
                #expect(body["previous"]?["id"]?.stringValue == firstID)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(second), body: chat()) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(first), body: chat()) { response in
                #expect(response.status == .unauthorized)
                let answer = try json(response)
                #expect(answer["error"]?["code"] == "api_key_expired")
            }
            // With the configured overlap (an hour), both work meanwhile.
            var third = ""
            let secondID = String(second.dropFirst(4).prefix(12))
            try await client.execute(uri: "/admin/v1/agents/scout/keys/\(secondID)/rotate", method: .post, headers: operatorHeaders()) { response in
                #expect(response.status == .created)
                third = try json(response)["key"]?.stringValue ?? ""
            }
            for key in [second, third] {
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(key), body: chat()) { response in
                    #expect(response.status == .ok)
                }
            }
            // Revocation is immediate; operators (not only admins) may revoke.
            let thirdID = String(third.dropFirst(4).prefix(12))
            try await client.execute(uri: "/admin/v1/agents/scout/keys/\(thirdID)/revoke", method: .post, headers: operatorHeaders("op-operator-token-0000001")) { response in
                #expect(response.status == .ok)
                let answer = try json(response)
                #expect(answer["state"] == "revoked")
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(third), body: chat()) { response in
                #expect(response.status == .unauthorized)
                let answer = try json(response)
                #expect(answer["error"]?["code"] == "api_key_revoked")
            }
            // Updates change grants at once; config agents belong to the file.
            try await client.execute(
                uri: "/admin/v1/agents/scout", method: .patch, headers: operatorHeaders(), body: ByteBuffer(string: #"{"grants":{"models":["other"]}}"#)
            ) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(second), body: chat()) { response in
                #expect(response.status == .forbidden)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(second), body: chat("other")) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/admin/v1/agents/a", method: .patch, headers: operatorHeaders(), body: ByteBuffer(string: #"{"owner":"me"}"#)) { response in
                #expect(response.status == .conflict)
                let answer = try json(response)
                #expect(answer["error"]?["code"] == "agent_managed_by_config")
            }
            try await client.execute(uri: "/admin/v1/agents/nobody/keys", method: .post, headers: operatorHeaders()) { response in
                #expect(response.status == .notFound)
            }
        }
        // Every change was audited, refusals included; the registry survives in the store.
        let records = try await harness.services.store.auditRecords(afterPosition: 0, limit: 1_000).records
        let actions = records.filter { $0.action.hasPrefix("operator.agent.") || $0.action.hasPrefix("operator.key.") }
        // Refusals are on record too: the viewer's attempt, the duplicate, the unknown alias, the unknown field.
        #expect(actions.filter { $0.action == "operator.agent.create" }.map(\.decision) == ["deny", "allow", "deny", "deny", "deny"])
        #expect(actions.first { $0.action == "operator.agent.create" }?.reason == "operator_role_required")
        #expect(actions.contains { $0.action == "operator.key.revoke" && $0.actorChain == ["operator:otto"] && $0.target?.hasPrefix("scout/") == true })
        #expect(actions.contains { $0.action == "operator.agent.update" && $0.target == "a" && $0.reason == "agent_managed_by_config" })
        #expect(try await harness.services.store.agents().contains { $0.id == "scout" && $0.grants.models == ["other"] })
        #expect(try await harness.services.store.apiKeys().filter { $0.agentID == "scout" }.count == 3)
        try await harness.close()
    }

    @Test func disablingCutsOffKeysTokensAndStreamsAtOnce() async throws {
        let streaming = config.replacingOccurrences(of: "    type: mock\n", with: "    type: mock\n    stream_chunk_delay_ms: 1500\n")
        let harness = try await Harness.make(streaming)
        let app = harness.application()
        try await app.test(.live) { client in
            var token = ""
            let form = ByteBuffer(string: "grant_type=client_credentials&client_id=a&client_secret=test-key-aaaaaaaaaaaa")
            try await client.execute(uri: "/oauth/token", method: .post, headers: [.contentType: "application/x-www-form-urlencoded"], body: form) { response in
                token = try json(response)["access_token"]?.stringValue ?? ""
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(token), body: chat()) { response in
                #expect(response.status == .ok)
            }
            // A long stream is running (on its own connection) when an operator disables the agent.
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(client.port!)/v1/chat/completions")
            request.method = .POST
            request.headers.add(name: "authorization", value: "Bearer test-key-aaaaaaaaaaaa")
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(chat("fast", "tell me a long story", extra: #","stream":true"#))
            async let streamed = String(buffer: try await HTTPClient.shared.execute(request, timeout: .seconds(10)).body.collect(upTo: 1 << 20))
            // The first event arrives after 1.5 s, the next not before 3 s: the cut must not wait for it.
            try await Task.sleep(for: .milliseconds(1_800))
            try await client.execute(uri: "/admin/v1/agents/a/disable", method: .post, headers: operatorHeaders("op-operator-token-0000001")) { response in
                #expect(response.status == .ok)
                let answer = try json(response)
                #expect(answer["status"] == "disabled")
            }
            // Measured from the disable's answer (the durable write before it takes what it takes
            // on a loaded machine): the stream ends at once, not at its next event 1.5 s apart.
            let disabledAt = ContinuousClock.now
            let text = try await streamed
            #expect(text.contains(#""code":"agent_disabled""#))
            #expect(!text.contains("[DONE]"))
            #expect(disabledAt.duration(to: .now) < .milliseconds(1_000))
            for credential in [token, "test-key-aaaaaaaaaaaa"] {
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(credential), body: chat()) { response in
                    #expect(response.status == .unauthorized)
                    let answer = try json(response)
                    #expect(answer["error"]?["code"] == "agent_disabled")
                }
            }
            try await client.execute(uri: "/oauth/token", method: .post, headers: [.contentType: "application/x-www-form-urlencoded"], body: form) { response in
                #expect(response.status == .unauthorized)
            }
            // Enabled again: the key works, the token issued before the disable does not.
            try await client.execute(uri: "/admin/v1/agents/a/enable", method: .post, headers: operatorHeaders("op-operator-token-0000001")) { response in
                #expect(response.status == .forbidden)
            }
            try await client.execute(uri: "/admin/v1/agents/a/enable", method: .post, headers: operatorHeaders()) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat()) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth(token), body: chat()) { response in
                #expect(response.status == .unauthorized)
                let answer = try json(response)
                #expect(answer["error"]?["message"]?.stringValue?.contains("before agent 'a' was disabled") == true)
            }
        }
        await harness.services.ledger.flush()
        let cut = try await harness.services.store.recentUsage(limit: 20).first { $0.errorCode == "agent_disabled" }
        #expect(cut?.outcome == .partial && cut?.stream == true)
        try await harness.close()
    }
}

/// The same cut-off for a stream relayed on the event loop from a real (slow) upstream.
@Suite struct EventLoopStreamCutOffTests {
    @Test func disablingCutsAStreamRelayedOnTheEventLoop() async throws {
        try await SlowStreamProvider.withHarness { harness in
            let governor = harness.services.gateway.governor
            try await harness.application().test(.live) { client in
                var request = HTTPClientRequest(url: "http://127.0.0.1:\(client.port!)/v1/chat/completions")
                request.method = .POST
                request.headers.add(name: "authorization", value: "Bearer test-key-aaaaaaaaaaaa")
                request.body = .bytes(chat("fast", "go", extra: #","stream":true"#))
                let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
                #expect(response.headers.first(name: "x-interlock-path") == "event-loop")
                var iterator = response.body.makeAsyncIterator()
                var text = String(buffer: try await iterator.next() ?? ByteBuffer())
                #expect(text.contains("first"))
                _ = try await governor.registry.setDisabled(id: "a", true, reason: "test", nowMs: governor.nowMs())
                let disabledAt = ContinuousClock.now
                while let chunk = try await iterator.next() { text += String(buffer: chunk) }
                // The upstream would send its next event after 3 s; measured from the disable's
                // return, so a slow store write on a loaded machine does not count.
                #expect(disabledAt.duration(to: .now) < .milliseconds(1_500))
                #expect(text.contains(#""code":"agent_disabled""#) && !text.contains("[DONE]"))
            }
            await harness.services.ledger.flush()
            let record = try await harness.services.store.recentUsage(limit: 5).first
            #expect(record?.errorCode == "agent_disabled" && record?.outcome == .partial)
        }
    }
}

/// Run ids sent by the agent reach the audit record, on the event-loop path and the router.
@Suite struct RunHeaderTests {
    @Test func runIdsFromHeadersAreAuditedOnBothPaths() async throws {
        try await SlowStreamProvider.withHarness { harness in
            try await harness.application().test(.live) { client in
                var headers = auth("test-key-aaaaaaaaaaaa")
                headers[HTTPField.Name("x-interlock-run-id")!] = "run-42"
                headers[HTTPField.Name("x-interlock-parent-run-id")!] = "run-7"
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: headers, body: chat()) { response in
                    #expect(response.status == .ok)
                    #expect(response.headers[HTTPField.Name("x-interlock-path")!] == "event-loop")
                }
                // The mock model is served by the router (the async path).
                headers[HTTPField.Name("x-interlock-run-id")!] = "run-43"
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: headers, body: chat("mocked")) { response in
                    #expect(response.status == .ok)
                    #expect(response.headers[HTTPField.Name("x-interlock-path")!] == nil)
                }
                headers[HTTPField.Name("x-interlock-run-id")!] = "run 42; drop table"
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: headers, body: chat()) { response in
                    #expect(response.status == .badRequest)
                    let body = try JSONParser.parse(Array(response.body.readableBytesView))
                    #expect(body["error"]?["param"] == "x-interlock-run-id")
                }
            }
            await harness.services.gateway.governor.audit?.writer.flush()
            let records = try await harness.services.store.auditRecords(afterPosition: 0, limit: 100).records
            let calls = records.filter { $0.action == "model.call" && $0.decision == "allow" }
            #expect(calls.map(\.runID) == ["run-42", "run-43"] && calls.allSatisfy { $0.parentRunID == "run-7" })
        }
    }
}

/// An OpenAI-style upstream that sends one event, then waits long before the next.
enum SlowStreamProvider {
    /// Interlock in front of this upstream (alias `fast`; `mocked` is the mock provider), for
    /// `body`; both are stopped afterwards.
    static func withHarness(_ body: @Sendable (Harness) async throws -> Void) async throws {
        let upstream = Application(router: router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await upstream.test(.live) { upstreamClient in
            let harness = try await Harness.make("""
                providers:
                  slow: { type: openai, base_url: "http://127.0.0.1:\(upstreamClient.port!)/v1" }
                  mock: { type: mock }
                models:
                  fast:
                    deployments: [{ provider: slow, model: s }]
                  mocked:
                    deployments: [{ provider: mock, model: m }]
                agents:
                  - { id: a, api_key: test-key-aaaaaaaaaaaa, models: [fast, mocked] }
                """)
            do {
                try await body(harness)
            } catch {
                try await harness.close()
                throw error
            }
            try await harness.close()
        }
    }

    static func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.post("/v1/chat/completions") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 1 << 20)
            guard String(buffer: body).contains(#""stream":true"#) else {
                let answer = #"{"id":"c","object":"chat.completion","created":1,"model":"s","choices":[{"index":0,"message":{"role":"assistant","content":"quick"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#
                return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: answer)))
            }
            return Response(status: .ok, headers: [.contentType: "text/event-stream"], body: ResponseBody { writer in
                let chunk = #"{"id":"c","object":"chat.completion.chunk","created":1,"model":"s","choices":[{"index":0,"delta":{"content":"first"},"finish_reason":null}]}"#
                try await writer.write(ByteBuffer(string: "data: \(chunk)\n\n"))
                try? await Task.sleep(for: .seconds(3))
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            })
        }
        return router
    }
}
