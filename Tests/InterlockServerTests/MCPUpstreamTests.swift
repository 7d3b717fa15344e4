import FoundationEssentials
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import InterlockCore
@testable import InterlockRuntime
import InterlockServer
import NIOCore
import Synchronization
import Testing

/// An MCP server over Streamable HTTP played by the test: sessions, SSE answers with progress
/// for `tools/call`, and a record of who asked what on which session.
final class FakeMCPServer: Sendable {
    struct Seen: Sendable {
        var method: String
        var session: String?
        var subject: String?
        var authorization: String?
    }

    let seen = Mutex<[Seen]>([])
    let deleted = Mutex<[String]>([])
    let sessions = Mutex<Set<String>>([])
    /// Calls whose answer waits for the client to resume the stream, by session.
    let parked = Mutex<[String: JSONValue]>([:])
    let resumed = Mutex(0)

    /// The `sub` of a bearer JWT (its payload, not verified: the test only reads who it names).
    static func subject(_ authorization: String?) -> String? {
        guard let token = authorization?.split(separator: " ").last, case let parts = token.split(separator: "."), parts.count == 3 else { return nil }
        var payload = String(parts[1]).replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while payload.count % 4 != 0 { payload += "=" }
        guard let data = Data(base64Encoded: payload) else { return nil }
        return (try? JSONParser.parse(Array(data)))?["sub"]?.stringValue
    }

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.post("mcp") { request, _ -> Response in
            var request = request
            let body = try await request.collectBody(upTo: 1 << 20)
            guard case .object(let message)? = try? JSONParser.parse(Array(body.readableBytesView)), let method = message["method"]?.stringValue else {
                return Response(status: .badRequest)
            }
            let session = request.headers[HTTPField.Name("mcp-session-id")!]
            self.seen.withLock {
                $0.append(Seen(method: method, session: session, subject: Self.subject(request.headers[.authorization]), authorization: request.headers[.authorization]))
            }
            if method != "initialize", let session, !self.sessions.withLock({ $0.contains(session) }) { return Response(status: .notFound) }
            guard let id = message["id"] else { return Response(status: .accepted) }
            func answer(_ result: JSONValue) -> ByteBuffer {
                ByteBuffer(bytes: JSONWriter.bytes(["jsonrpc": "2.0", "id": id, "result": result]))
            }
            switch method {
            case "initialize":
                let session = "session-\(UInt32.random(in: 0...UInt32.max))"
                self.sessions.withLock { _ = $0.insert(session) }
                return Response(
                    status: .ok, headers: [.contentType: "application/json", HTTPField.Name("mcp-session-id")!: session],
                    body: .init(byteBuffer: answer(["protocolVersion": "2025-06-18", "capabilities": ["tools": [:]], "serverInfo": ["name": "fake", "version": "1"]])))
            case "tools/list":
                return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: answer(["tools": [[
                    "name": "lookup", "description": "Looks a word up.",
                    "inputSchema": ["type": "object", "properties": ["q": ["type": "string"]], "required": ["q"]],
                ]]])))
            default:
                if message["params"]?["arguments"]?["q"] == "resume" {
                    // 2025-11-25 polling: a priming event with an id, then the stream closes; the
                    // answer comes when the client resumes with GET and Last-Event-ID.
                    self.parked.withLock { $0[session ?? ""] = id }
                    return Response(status: .ok, headers: [.contentType: "text/event-stream"], body: .init(byteBuffer: ByteBuffer(string: "id: prime-1\nretry: 10\ndata: \n\n")))
                }
                // An SSE answer: progress for the request's token, then the response.
                var events = ""
                if message["params"]?["arguments"]?["q"] == "changed" {
                    events += "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n"
                }
                if let token = message["params"]?["_meta"]?["progressToken"] {
                    for step in [1, 2] {
                        let note: JSONValue = ["jsonrpc": "2.0", "method": "notifications/progress", "params": ["progressToken": token, "progress": .integer(Int64(step)), "total": 2]]
                        events += "event: message\ndata: \(JSONWriter.string(note))\n\n"
                    }
                }
                let result: JSONValue = [
                    "content": [["type": "text", "text": "found"]], "isError": false,
                    "structuredContent": ["q": message["params"]?["arguments"]?["q"] ?? .null, "session": .string(session ?? "")],
                ]
                events += "event: message\ndata: \(JSONWriter.string(["jsonrpc": "2.0", "id": id, "result": result]))\n\n"
                return Response(status: .ok, headers: [.contentType: "text/event-stream"], body: .init(byteBuffer: ByteBuffer(string: events)))
            }
        }
        router.get("mcp") { request, _ -> Response in
            let session = request.headers[HTTPField.Name("mcp-session-id")!] ?? ""
            guard request.headers[HTTPField.Name("last-event-id")!] == "prime-1", let id = self.parked.withLock({ $0.removeValue(forKey: session) }) else {
                return Response(status: .methodNotAllowed)
            }
            self.resumed.withLock { $0 += 1 }
            let answer: JSONValue = ["jsonrpc": "2.0", "id": id, "result": ["content": [["type": "text", "text": "resumed"]], "structuredContent": ["resumed": true]]]
            return Response(
                status: .ok, headers: [.contentType: "text/event-stream"],
                body: .init(byteBuffer: ByteBuffer(string: "id: prime-2\ndata: \(JSONWriter.string(answer))\n\n")))
        }
        router.delete("mcp") { request, _ -> Response in
            if let session = request.headers[HTTPField.Name("mcp-session-id")!] {
                self.deleted.withLock { $0.append(session) }
                self.sessions.withLock { _ = $0.remove(session) }
            }
            return Response(status: .noContent)
        }
        return router
    }
}

@Suite struct MCPUpstreamTests {
    @Test func sseAnswersProgressSessionsAndOnBehalfOfIdentities() async throws {
        let server = FakeMCPServer()
        let upstream = Application(router: server.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await upstream.test(.live) { upstreamClient in
            let harness = try await Harness.make("""
                tools:
                  docs:
                    type: mcp
                    url: http://127.0.0.1:\(upstreamClient.port!)/mcp
                    auth: { on_behalf_of: { audience: "https://docs.example.com" } }
                    tools:
                      lookup: { side_effects: read, idempotent: true }
                agents:
                  - { id: alpha, api_key: test-key-aaaaaaaaaaaa, tools: ["docs.*"] }
                  - { id: beta, api_key: test-key-bbbbbbbbbbbb, tools: ["docs.*"] }
                """)
            let tools = try #require(harness.services.tools)
            let app = Application(router: harness.router)
            try await app.test(.router) { client in
                try await client.execute(uri: "/v1/tools", method: .get, headers: auth("test-key-aaaaaaaaaaaa")) { response in
                    let names = try JSONParser.parse(Array(response.body.readableBytesView))["data"]?.arrayValue?.compactMap { $0["name"]?.stringValue }
                    #expect(names == ["docs.lookup"])
                }
                var sessions: [String: String] = [:]
                for (agent, key) in [("alpha", "test-key-aaaaaaaaaaaa"), ("beta", "test-key-bbbbbbbbbbbb"), ("alpha", "test-key-aaaaaaaaaaaa")] {
                    try await client.execute(
                        uri: "/v1/tools/docs.lookup/invoke", method: .post, headers: auth(key), body: ByteBuffer(string: #"{"arguments":{"q":"mesh"}}"#)
                    ) { response in
                        let body = try JSONParser.parse(Array(response.body.readableBytesView))
                        #expect(response.status == .ok && body["result"]?["q"] == "mesh")
                        let session = body["result"]?["session"]?.stringValue ?? ""
                        #expect(sessions[agent].map { $0 == session } ?? true)
                        sessions[agent] = session
                    }
                }
                // Each identity has its own upstream session: the server bound it to whoever opened it.
                #expect(sessions["alpha"] != sessions["beta"])
            }
            // Progress comes through (in order), with the SSE answer parsed.
            let caller = try await harness.services.gateway.governor.authenticate(credential: "test-key-aaaaaaaaaaaa")
            let progress = Mutex<[Double]>([])
            let result = try await tools.invoke(
                "docs.lookup", arguments: Array(#"{"q":"x"}"#.utf8), caller: caller, requestID: "req-progress", idempotencyKey: nil
            ) { update in
                progress.withLock { $0.append(update["progress"]?.doubleValue ?? -1) }
            }
            #expect(result.isError == false && progress.withLock { $0 } == [1, 2])
            // A server that closes the stream after a priming event answers on the resumed GET.
            let resumed = try await tools.invoke("docs.lookup", arguments: Array(#"{"q":"resume"}"#.utf8), caller: caller, requestID: "req-resume", idempotencyKey: nil)
            #expect(resumed.content == ["resumed": true] && server.resumed.withLock { $0 } == 1)
            // A list_changed notification inside an answer has the tools listed again.
            let listings = server.seen.withLock { $0.filter { $0.method == "tools/list" }.count }
            _ = try await tools.invoke("docs.lookup", arguments: Array(#"{"q":"changed"}"#.utf8), caller: caller, requestID: "req-changed", idempotencyKey: nil)
            for _ in 0..<100 where server.seen.withLock({ $0.filter { $0.method == "tools/list" }.count }) == listings {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(server.seen.withLock { $0.filter { $0.method == "tools/list" }.count } > listings)
            let seen = server.seen.withLock { $0 }
            let subjects = Set(seen.filter { $0.method == "initialize" }.compactMap(\.subject))
            #expect(subjects.count == 3 && subjects.contains("interlock"))
            // Every request after initialize carries its session.
            #expect(seen.filter { $0.method != "initialize" }.allSatisfy { $0.session != nil })
            try await harness.close()
            // Shutting down ends the sessions it opened.
            #expect(server.deleted.withLock { $0.count } == 3)
        }
    }
}

@Suite struct WakeSignalTests {
    @Test func wakesEveryWaiterAndKeepsASignalNobodyWaitedFor() async throws {
        let signal = WakeSignal()
        let clock = ContinuousClock()
        // Two waiters at once: one signal wakes both, well before their timeout.
        let started = clock.now
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await signal.wait(upTo: .seconds(30)) }
            group.addTask { await signal.wait(upTo: .seconds(30)) }
            while signal.waiting < 2 { try? await Task.sleep(for: .milliseconds(5)) }
            signal.signal()
            await group.waitForAll()
        }
        #expect(clock.now - started < .seconds(10))
        // A signal with nobody waiting is kept: the next wait returns at once.
        signal.signal()
        let kept = clock.now
        await signal.wait(upTo: .seconds(30))
        #expect(clock.now - kept < .seconds(10))
        // Without a signal, the wait ends at its timeout.
        let quiet = clock.now
        await signal.wait(upTo: .milliseconds(50))
        #expect(clock.now - quiet >= .milliseconds(50))
    }
}

@Suite struct ToolEventLoopPathTests {
    @Test func plainToolCallsRunOnTheEventLoopAndTheRestOnTheRouter() async throws {
        let server = FakeMCPServer()
        let upstream = Application(router: server.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await upstream.test(.live) { upstreamClient in
            let harness = try await Harness.make("""
                tools:
                  docs:
                    type: mcp
                    url: http://127.0.0.1:\(upstreamClient.port!)/mcp
                    auth: { bearer: docs-upstream-token-01 }
                    tools:
                      lookup: { side_effects: read }
                agents:
                  - { id: alpha, api_key: test-key-aaaaaaaaaaaa, tools: ["docs.*"] }
                """)
            try await harness.application().test(.live) { client in
                var headers = auth("test-key-aaaaaaaaaaaa")
                headers[.accept] = "application/json, text/event-stream"
                headers[.contentType] = "application/json"
                let initialize = try await client.execute(
                    uri: "/mcp", method: .post, headers: headers,
                    body: ByteBuffer(string: #"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#))
                headers[HTTPField.Name("mcp-session-id")!] = initialize.headers[HTTPField.Name("mcp-session-id")!]
                #expect(headers[HTTPField.Name("mcp-session-id")!]?.count == 32)
                func call(_ body: String, uri: String = "/mcp") async throws -> (path: String?, body: JSONValue) {
                    let response = try await client.execute(uri: uri, method: .post, headers: headers, body: ByteBuffer(string: body))
                    return (response.headers[HTTPField.Name("x-interlock-path")!], try JSONParser.parse(Array(response.body.readableBytesView)))
                }
                // A plain tools/call: on the loop, over the upstream's session, with Interlock's credential.
                let plain = try await call(#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"docs.lookup","arguments":{"q":"mesh"}}}"#)
                #expect(plain.path == "event-loop" && plain.body["id"] == 2 && plain.body["result"]?["structuredContent"]?["q"] == "mesh")
                let invoked = try await call(#"{"arguments":{"q":"rest"}}"#, uri: "/v1/tools/docs.lookup/invoke")
                #expect(invoked.path == "event-loop" && invoked.body["result"]?["q"] == "rest")
                // Invalid arguments, progress and unknown tools are the router's: the same answers as ever.
                let invalid = try await call(#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"docs.lookup","arguments":{"q":5}}}"#)
                #expect(invalid.path == nil && invalid.body["error"]?["code"] == -32602)
                let progress = try await client.execute(
                    uri: "/mcp", method: .post, headers: headers,
                    body: ByteBuffer(string: #"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"docs.lookup","arguments":{"q":"p"},"_meta":{"progressToken":"t"}}}"#))
                #expect(progress.headers[HTTPField.Name("x-interlock-path")!] == nil && progress.headers[.contentType] == "text/event-stream")
                // The upstream forgot the session: the loop hands the call to the async path, which opens another.
                server.sessions.withLock { $0.removeAll() }
                let renewed = try await call(#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"docs.lookup","arguments":{"q":"again"}}}"#)
                #expect(renewed.path == "event-loop,async" && renewed.body["result"]?["structuredContent"]?["q"] == "again")
            }
            // Every call went to the upstream with Interlock's credential, never the agent's.
            #expect(server.seen.withLock { $0 }.allSatisfy { $0.authorization == "Bearer docs-upstream-token-01" })
            await harness.services.gateway.governor.audit?.writer.flush()
            let records = try await harness.services.store.auditRecords(afterPosition: 0, limit: 100).records.filter { $0.action == "tool.call" }
            #expect(records.filter { $0.decision == "allow" && $0.resultHash != nil }.count == 4)
            try await harness.close()
        }
    }
}
