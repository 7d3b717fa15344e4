@testable import InterlockProviders
@testable import InterlockServer
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

/// The plain HTTP/1.1 readers against NIO's decoders: for every input, split at every byte,
/// both pipelines must hand the handlers behind them the same parts, or fail the same way.
@Suite struct PlainHTTPDecoderTests {
    // MARK: The head scanner

    @Test func aPlainRequestHeadIsRead() throws {
        let text = "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization:  Bearer k \r\ncontent-LENGTH: 12\r\nX-Empty:\r\n\r\n{\"a\":\"bcde\"}"
        guard case .head(let head, let length) = HTTP1PlainHead.request(ByteBuffer(string: text), maxBytes: 1024) else {
            Issue.record("not read")
            return
        }
        #expect(length == text.utf8.count - 12)
        #expect(head.contentLength == 12)
        let request = head.requestHead
        #expect(request.method == .POST)
        #expect(request.uri == "/v1/chat/completions?x=1")
        #expect(request.version == .http1_1)
        #expect(request.headers.first(name: "authorization") == "Bearer k ")
        #expect(request.headers.first(name: "x-empty") == "")
        #expect(request.headers.count == 4)
        #expect(request.isKeepAlive)
    }

    @Test func aPlainResponseHeadIsRead() throws {
        let text = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        guard case .head(let head, let length) = HTTP1PlainHead.response(ByteBuffer(string: text), maxBytes: 1024) else {
            Issue.record("not read")
            return
        }
        #expect(length == text.utf8.count)
        let response = head.responseHead
        #expect(response.status.code == 429)
        #expect(response.status.reasonPhrase == "Too Many Requests")
        #expect(response.headers.first(name: "retry-after") == "3")
        #expect(!response.isKeepAlive)
    }

    @Test func persistsConnectionAgreesWithIsKeepAlive() {
        let headerSets: [[(String, String)]] = [
            [], [("Host", "a")], [("Connection", "close")], [("CONNECTION", "Keep-Alive")], [("connection", "upgrade, close")],
            [("Connection", "keep-alive"), ("Connection", "close")], [("Connection", "")], [("Connectio", "close")],
            [("Connection", "Close")], [("Connection", "keep-alive ")], [("Connection", " close")], [("Connection", "KEEP-ALIVE")],
            [("Connection", "keep-alivf")], [("Connection", "TE")], [("Host", "a"), ("connection", "close"), ("Accept", "*/*")],
        ]
        for version in [HTTPVersion.http1_1, .http1_0] {
            for pairs in headerSets {
                let request = HTTPRequestHead(version: version, method: .POST, uri: "/", headers: HTTPHeaders(pairs))
                let response = HTTPResponseHead(version: version, status: .ok, headers: HTTPHeaders(pairs))
                #expect(request.persistsConnection == request.isKeepAlive, "\(version) \(pairs)")
                #expect(response.persistsConnection == response.isKeepAlive, "\(version) \(pairs)")
            }
        }
        #expect(!HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: ["connection": "close"]).persistsConnection)
        #expect(!HTTPResponseHead(version: .http1_0, status: .ok).persistsConnection)
    }

    @Test func everyPrefixOfAHeadIsIncomplete() {
        let text = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        let bytes = Array(text.utf8)
        for count in 0..<bytes.count {
            guard case .incomplete = HTTP1PlainHead.request(ByteBuffer(bytes: bytes[..<count]), maxBytes: 1024) else {
                Issue.record("prefix of \(count) bytes is not incomplete")
                continue
            }
        }
    }

    /// What is not the plain form is NIO's to read.
    @Test(arguments: [
        "POST / HTTP/1.1\nHost: a\r\n\r\n",  // bare LF
        "POST / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",  // obsolete line folding
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
        "POST / HTTP/1.1\r\nContent-Length: 1234567890123456\r\n\r\n",
        "POST / HTTP/1.0\r\nHost: a\r\n\r\n",
        "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        "BREW / HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST / HTTP/1.1\r\nHost : a\r\n\r\n",
        "POST / HTTP/1.1\r\nX: caf\u{E9}\r\n\r\n",
        "POST / HTTP/1.1\r\nX: a\rb\r\n\r\n",
        "\r\nPOST / HTTP/1.1\r\nHost: a\r\n\r\n",
    ])
    func requestsThatAreNotPlain(_ text: String) {
        guard case .other = HTTP1PlainHead.request(ByteBuffer(string: text), maxBytes: 1024) else {
            Issue.record("read as plain: \(text.debugDescription)")
            return
        }
    }

    @Test(arguments: [
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",  // body until close
        "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\n",
        "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    ])
    func responsesThatAreNotPlain(_ text: String) {
        guard case .other = HTTP1PlainHead.response(ByteBuffer(string: text), maxBytes: 1024) else {
            Issue.record("read as plain: \(text.debugDescription)")
            return
        }
    }

    @Test func aHeadPastTheLimitIsNIOs() {
        let text = "POST / HTTP/1.1\r\nX: \(String(repeating: "a", count: 200))"
        guard case .other = HTTP1PlainHead.request(ByteBuffer(string: text), maxBytes: 100) else {
            Issue.record("an unfinished head past the limit is still waited for")
            return
        }
    }

    // MARK: Against NIO's decoders

    static let requestStreams: [String] = [
        // Plain, pipelined: a body, none, a GET.
        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
        // Plain, then chunked: NIO reads from the second request on.
        "POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nokPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 1\r\n\r\nz",
        // Whitespace around and inside values, an empty value, a leading-zero length.
        "POST /x HTTP/1.1\r\nA:\t v \t\r\nB:\r\nC: x \t y\r\nContent-Length: 002\r\n\r\nokPOST /y HTTP/1.1\r\nConnection: close\r\n\r\n",
        // HTTP/1.0 first.
        "POST /a HTTP/1.0\r\nContent-Length: 2\r\n\r\nokPOST /b HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        // Malformed after a plain one: NIO refuses it.
        "POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nxPOST /b HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
        "POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nxGARBAGE\r\n\r\n",
    ]

    @Test(arguments: requestStreams)
    func requestsReadAsNIOReadsThem(_ text: String) throws {
        try Self.expectSameAtEverySplit(Array(text.utf8), answers: false)
    }

    /// Seeded mutations of plain requests and answers (bytes flipped, inserted, dropped,
    /// among them the ones that matter to framing): every one reads as NIO reads it.
    @Test func mutationsReadAsNIOReadsThem() throws {
        let requests = Array("POST /v1/chat/completions HTTP/1.1\r\nHost: a:1\r\nAuthorization: Bearer k\r\nContent-Length: 4\r\n\r\nbodyGET /b HTTP/1.1\r\n\r\n".utf8)
        let answers = Array("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\nbody".utf8)
        let alphabet = Array("\r\n \t:0123456789-,;aZ/\u{0}\u{7F}\u{80}".utf8)
        var random = SeededRandom(seed: 0x1A7E_10C4)
        var compared = (requests: 0, answers: 0, plain: 0)
        for round in 0..<3000 {
            let answer = round % 3 == 2
            var bytes = answer ? answers : requests
            for _ in 0..<(1 + Int(random.next() % 4)) {
                let at = Int(random.next() % UInt64(bytes.count))
                let byte = alphabet[Int(random.next() % UInt64(alphabet.count))]
                switch random.next() % 3 {
                case 0: bytes[at] = byte
                case 1: bytes.insert(byte, at: at)
                default: bytes.remove(at: at)
                }
            }
            let expected = try Self.parts(bytes, split: nil, plain: false, answers: answer)
            let got = try Self.parts(bytes, split: nil, plain: true, answers: answer)
            #expect(got.parts == expected.parts, "\(String(decoding: bytes, as: UTF8.self).debugDescription)")
            #expect(got.failed == expected.failed, "\(String(decoding: bytes, as: UTF8.self).debugDescription)")
            if answer { compared.answers += 1 } else { compared.requests += 1 }
            if !expected.failed { compared.plain += 1 }
        }
        // The mutations reach both outcomes: read, and refused.
        #expect(compared.plain > 100 && compared.plain < 2900)
    }

    struct SeededRandom {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return state >> 33
        }
    }

    static let responseStreams: [String] = [
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 503 Busy\r\nRetry-After: 1\r\nContent-Length: 4\r\n\r\nbusy",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nHI",
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nHI",
    ]

    @Test(arguments: responseStreams)
    func answersReadAsNIOReadsThem(_ text: String) throws {
        try Self.expectSameAtEverySplit(Array(text.utf8), answers: true)
    }

    /// A head that arrives a few bytes at a time is handed to NIO's decoder after a few looks
    /// (each look reads it from its start); one in two pieces is read here. Both read the same.
    @Test func aHeadTrickledInGoesToNIOAfterAFewLooks() throws {
        let bytes = Array("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok".utf8)
        let expected = try Self.requestParts(bytes, split: nil, plain: false)
        for (pieces, handedOver) in [(bytes.count, true), (2, false)] {
            let channel = EmbeddedChannel()
            let collector = Collector<HTTPServerRequestPart>()
            try channel.pipeline.syncOperations.addHandlers([PlainHTTPDecoder.requests(limits: .init(), maxHeadBytes: 8192), collector])
            let size = (bytes.count + pieces - 1) / pieces
            for start in stride(from: 0, to: bytes.count, by: size) {
                try channel.writeInbound(ByteBuffer(bytes: bytes[start..<min(bytes.count, start + size)]))
            }
            #expect(Self.joiningBodies(collector.parts.map(\.kind)) == expected.parts, "\(pieces) pieces")
            let nio = try? channel.pipeline.syncOperations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
            #expect((nio != nil) == handedOver, "\(pieces) pieces")
            _ = try channel.finish()
        }
    }

    /// A plain answer, then one NIO must read: its decoder is told the method of the request
    /// in flight, so the second answer reads as it would have.
    @Test func aConnectionHandedOverKeepsReadingAnswers() throws {
        let plain = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        let channel = EmbeddedChannel()
        let collector = Collector<HTTPClientResponsePart>()
        let decoder = PlainHTTPDecoder.answers { true }
        try channel.pipeline.syncOperations.addHandlers([decoder, collector])
        try channel.writeInbound(ByteBuffer(string: plain))
        #expect(!decoder.handedOver)
        try channel.writeInbound(ByteBuffer(string: chunked))
        #expect(decoder.handedOver)
        #expect(collector.parts.map(\.short) == ["head 200", "body ok", "end", "head 200", "body hi", "end"])
        // The request after: its head goes through the pipeline, and the answer reads.
        try channel.writeOutbound(HTTPClientRequestPart.head(EncodedRequestWriter.postHead))
        try channel.writeInbound(ByteBuffer(string: plain))
        #expect(collector.parts.map(\.short).suffix(3) == ["head 200", "body ok", "end"])
        _ = try channel.finish()
    }

    // MARK: Running both

    struct Outcome {
        var parts: [String]
        var failed: Bool
    }

    /// Both readers, the input whole and then split at every byte: the same parts, or the same refusal.
    static func expectSameAtEverySplit(_ bytes: [UInt8], answers: Bool) throws {
        let expected = try parts(bytes, split: nil, plain: false, answers: answers)
        #expect(!expected.parts.isEmpty || expected.failed)
        for split in 0...bytes.count {
            let got = try parts(bytes, split: split, plain: true, answers: answers)
            #expect(got.parts == expected.parts, "split at \(split)")
            #expect(got.failed == expected.failed, "split at \(split)")
        }
    }

    static func parts(_ bytes: [UInt8], split: Int?, plain: Bool, answers: Bool) throws -> Outcome {
        answers ? try responseParts(bytes, split: split, plain: plain) : try requestParts(bytes, split: split, plain: plain)
    }

    static func requestParts(_ bytes: [UInt8], split: Int?, plain: Bool) throws -> Outcome {
        let channel = EmbeddedChannel()
        let collector = Collector<HTTPServerRequestPart>()
        let limits = NIOHTTPDecoderLimitConfiguration()
        if plain {
            try channel.pipeline.syncOperations.addHandlers([PlainHTTPDecoder.requests(limits: limits, maxHeadBytes: 8192), collector])
        } else {
            try channel.pipeline.syncOperations.addHandlers([
                ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: limits)), collector,
            ])
        }
        return feed(channel, bytes, split: split, collector: collector)
    }

    static func responseParts(_ bytes: [UInt8], split: Int?, plain: Bool) throws -> Outcome {
        let channel = EmbeddedChannel()
        let collector = Collector<HTTPClientResponsePart>()
        if plain {
            try channel.pipeline.syncOperations.addHandlers([PlainHTTPDecoder.answers { true }, collector])
        } else {
            try channel.pipeline.syncOperations.addHandlers([ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes)), collector])
            try channel.writeOutbound(HTTPClientRequestPart.head(EncodedRequestWriter.postHead))
        }
        return feed(channel, bytes, split: split, collector: collector)
    }

    static func feed<Part: DescribedPart>(_ channel: EmbeddedChannel, _ bytes: [UInt8], split: Int?, collector: Collector<Part>) -> Outcome {
        var failed = false
        let pieces = split.map { [Array(bytes[..<$0]), Array(bytes[$0...])] } ?? [bytes]
        for piece in pieces where !piece.isEmpty {
            do {
                try channel.writeInbound(ByteBuffer(bytes: piece))
            } catch {
                failed = true
                break
            }
        }
        _ = try? channel.finish()
        // Bodies may come in other pieces: compare their bytes, joined.
        return Outcome(parts: joiningBodies(collector.parts.map(\.kind)), failed: failed)
    }

    final class Collector<Part: DescribedPart>: ChannelInboundHandler {
        typealias InboundIn = Part
        var parts: [Part] = []

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            parts.append(unwrapInboundIn(data))
        }
    }

    static func joiningBodies(_ kinds: [String]) -> [String] {
        var joined: [String] = []
        for kind in kinds {
            if kind.hasPrefix("body "), let last = joined.last, last.hasPrefix("body ") {
                joined[joined.count - 1] = last + kind.dropFirst("body ".count)
            } else {
                joined.append(kind)
            }
        }
        return joined
    }
}

protocol DescribedPart {
    var kind: String { get }
}

/// Requests and answers as text, to compare what two pipelines handed on.
extension HTTPPart: DescribedPart where BodyT == ByteBuffer {
    var kind: String {
        switch self {
        case .head(let head as HTTPRequestHead):
            "head \(head.method) \(head.uri) \(head.version) \(head.headers.map { "\($0.name)=\($0.value)" }) keepAlive=\(head.isKeepAlive)"
        case .head(let head as HTTPResponseHead):
            "head \(head.status.code) \(head.status.reasonPhrase) \(head.version) \(head.headers.map { "\($0.name)=\($0.value)" }) keepAlive=\(head.isKeepAlive)"
        case .head(let head): "head \(head)"
        case .body(let body): "body \(String(buffer: body))"
        case .end: "end"
        }
    }

    var short: String {
        if case .head(let head as HTTPResponseHead) = self { return "head \(head.status.code)" }
        return kind
    }
}
