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
        // Four pieces 400 ms apart, or one piece and then silence.
        router.post("/drip") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/event-stream"], body: ResponseBody { writer in
                for index in 0..<4 {
                    if index > 0 { try await Task.sleep(for: .milliseconds(400)) }
                    try await writer.write(ByteBuffer(string: "data: \(index)\n\n"))
                }
                try await writer.finish(nil)
            })
        }
        router.post("/stall") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/event-stream"], body: ResponseBody { writer in
                try await writer.write(ByteBuffer(string: "data: first\n\n"))
                try await Task.sleep(for: .seconds(2))
                try await writer.finish(nil)
            })
        }
        router.post("/slow") { _, _ -> Response in
            try await Task.sleep(for: .milliseconds(500))
            return Response(status: .ok)
        }
        return router
    }

    func post(
        _ client: LoopHTTPClient, _ url: String, body: String = "{}", timeout: Duration = .seconds(5), limit: Int = 1 << 20,
        loop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next()
    ) async throws -> LoopHTTPResponse {
        let target = try #require(UpstreamTarget(url: url))
        let answer = loop.makePromise(of: LoopHTTPResponse.self)
        loop.execute {
            client.post(on: loop, to: target, headers: [("content-type", "application/json")], body: ByteBuffer(string: body), timeout: timeout, maxResponseBytes: limit) {
                answer.completeWith($0.mapError { $0 as any Error })
            }
        }
        return try await answer.futureResult.get()
    }

    /// Streams the answer of `url` and returns what arrived and how it ended.
    func stream(_ client: LoopHTTPClient, _ url: String, timeout: Duration) async throws -> (body: String, failure: UpstreamFailure?) {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let target = try #require(UpstreamTarget(url: url))
        let ended = loop.makePromise(of: (String, UpstreamFailure?).self)
        // The callbacks are set in the callback that receives the head, as the client asks.
        let started = loop.flatSubmit {
            client.postStreaming(on: loop, to: target, headers: [], body: ByteBuffer(string: "{}"), timeout: timeout).map { stream in
                let body = NIOLoopBoundBox("", eventLoop: loop)
                stream.onBody = { body.value += String(buffer: $0) }
                stream.onEnd = { ended.succeed((body.value, $0)) }
            }
        }
        // No head (a timeout, a refused connection): the test fails with the error instead of
        // crashing on a promise nobody completed.
        started.whenFailure { ended.fail($0) }
        try await started.get()
        return try await ended.futureResult.get()
    }

    @Test func aStreamTimesOutOnlyWhenItFallsSilent() async throws {
        let client = try LoopHTTPClient(group: MultiThreadedEventLoopGroup.singleton)
        let app = Application(router: Self.upstream(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { upstream in
            let base = "http://127.0.0.1:\(upstream.port!)"
            // 1.2 s in all, but no gap as long as the 1 s timeout (slack for a loaded machine:
            // every test runs at once in CI).
            let drip = try await stream(client, base + "/drip", timeout: .milliseconds(1000))
            #expect(drip.failure == nil)
            #expect(drip.body == "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n")
            let started = ContinuousClock.now
            let stall = try await stream(client, base + "/stall", timeout: .milliseconds(1000))
            #expect(stall.failure == .timeout)
            #expect(stall.body == "data: first\n\n")
            #expect(started.duration(to: .now) < .milliseconds(1900))  // the stall lasts 2 s
        }
        client.closeIdleConnections()
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
            // Deadlines of different lengths in flight on one loop: the later, shorter one still
            // fails on time, and the earlier, longer one is answered.
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            async let long = post(client, base + "/slow", timeout: .seconds(5), loop: loop)
            try await Task.sleep(for: .milliseconds(50))
            let started = ContinuousClock.now
            await #expect(throws: UpstreamFailure.timeout) {
                _ = try await post(client, base + "/slow", timeout: .milliseconds(100), loop: loop)
            }
            #expect(started.duration(to: .now) < .milliseconds(400))
            #expect(try await long.status == 200)
            // After many answered exchanges, a timeout still fires.
            for index in 0..<20 { _ = try await post(client, base + "/echo", body: "\(index)", loop: loop) }
            await #expect(throws: UpstreamFailure.timeout) {
                _ = try await post(client, base + "/slow", timeout: .milliseconds(100), loop: loop)
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
