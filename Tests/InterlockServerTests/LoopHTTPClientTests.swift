import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTesting
import InterlockCore
import InterlockProviders
import NIOCore
import NIOPosix
import Testing

@Suite struct LoopHTTPClientTests {
    static func upstream() -> Router<BasicRequestContext> {
        let router = Router()
        router.post("/echo") { request, _ -> Response in
            var request = request
            let body = try await request.collectBody(upTo: 1 << 20)
            var headers: HTTPFields = [.contentType: "application/json", HTTPField.Name("retry-after-ms")!: "250"]
            headers[HTTPField.Name("x-seen-host")!] = request.head.authority ?? "-"
            headers[HTTPField.Name("x-seen-query")!] = request.uri.query ?? "-"
            return Response(status: .accepted, headers: headers, body: .init(byteBuffer: body))
        }
        router.post("/slow") { _, _ -> Response in
            try await Task.sleep(for: .milliseconds(500))
            return Response(status: .ok)
        }
        return router
    }

    func post(_ client: LoopHTTPClient, _ url: String, body: String = "{}", timeout: Duration = .seconds(5), limit: Int = 1 << 20) async throws -> LoopHTTPResponse {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let target = try #require(UpstreamTarget(url: url))
        return try await loop.flatSubmit {
            client.post(on: loop, to: target, headers: [("content-type", "application/json")], body: ByteBuffer(string: body), timeout: timeout, maxResponseBytes: limit)
        }.get()
    }

    @Test func targetsAreParsedOnce() throws {
        let plain = try #require(UpstreamTarget(url: "http://127.0.0.1:8080/v1/chat/completions"))
        #expect(!plain.tls && plain.host == "127.0.0.1" && plain.port == 8080 && plain.path == "/v1/chat/completions" && plain.hostHeader == "127.0.0.1:8080")
        let azure = try #require(UpstreamTarget(url: "https://example.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21"))
        #expect(azure.tls && azure.port == 443 && azure.hostHeader == "example.openai.azure.com")
        #expect(azure.path == "/openai/deployments/d/chat/completions?api-version=2024-10-21")
        let v6 = try #require(UpstreamTarget(url: "http://[::1]:9000/x"))
        #expect(v6.host == "::1" && v6.hostHeader == "[::1]:9000")
        #expect(UpstreamTarget(url: "ftp://example.com/x") == nil)
        #expect(UpstreamTarget(url: "https://user:secret@example.com/x") == nil)
    }

    @Test func answersTimeoutsLimitsAndRefusedConnections() async throws {
        let client = try LoopHTTPClient(group: MultiThreadedEventLoopGroup.singleton)
        // The upstream closes idle connections after 100 ms, so reuse meets closed connections.
        let app = Application(
            router: Self.upstream(), server: .http1(configuration: .init(idleTimeout: .milliseconds(100))),
            configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { upstream in
            let base = "http://127.0.0.1:\(upstream.port!)"
            let answer = try await post(client, base + "/echo?x=1", body: #"{"hello":"world"}"#)
            #expect(answer.status == 202)
            #expect(String(buffer: answer.body) == #"{"hello":"world"}"#)
            #expect(answer.retryAfter == .milliseconds(250))
            #expect(answer.headers.first(name: "x-seen-host") == "127.0.0.1:\(upstream.port!)")
            #expect(answer.headers.first(name: "x-seen-query") == "x=1")
            // Back to back on kept-alive connections, then after the upstream closed them.
            for index in 0..<5 {
                let again = try await post(client, base + "/echo", body: "\(index)")
                #expect(String(buffer: again.body) == "\(index)")
            }
            try await Task.sleep(for: .milliseconds(300))
            let afterIdle = try await post(client, base + "/echo", body: "after")
            #expect(String(buffer: afterIdle.body) == "after")

            await #expect(throws: UpstreamFailure.timeout) {
                _ = try await post(client, base + "/slow", timeout: .milliseconds(100))
            }
            await #expect(throws: UpstreamFailure.responseTooLarge) {
                _ = try await post(client, base + "/echo", body: String(repeating: "x", count: 100), limit: 10)
            }
        }
        // Nobody listens on port 1.
        await #expect(throws: UpstreamFailure.self) {
            _ = try await post(client, "http://127.0.0.1:1/echo")
        }
        client.closeIdleConnections()
    }
}
