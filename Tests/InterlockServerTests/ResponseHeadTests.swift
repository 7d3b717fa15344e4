@testable import InterlockServer
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

/// The event-loop path writes its response heads itself: byte for byte what NIO's
/// `HTTPResponseEncoder` writes for the same head, however little room the buffer had.
@Suite struct ResponseHeadTests {
    func encodedByNIO(_ head: HTTPResponseHead) throws -> String {
        let channel = EmbeddedChannel(handler: HTTPResponseEncoder())
        defer { _ = try? channel.finish() }
        try channel.writeOutbound(HTTPServerResponsePart.head(head))
        var bytes = ""
        while let part = try channel.readOutbound(as: IOData.self) {
            guard case .byteBuffer(let buffer) = part else { continue }
            bytes += String(buffer: buffer)
        }
        return bytes
    }

    @Test(arguments: [0, 16, 4096])
    func headsMatchNIOsEncoder(capacity: Int) throws {
        let long = String(repeating: "v", count: 3000)
        let cases: [(HTTPVersion, HTTPResponseStatus, [(String, String)], Int, Bool)] = [
            (.http1_1, .ok, [("x-request-id", "req_1"), ("content-type", "application/json")], 315, true),
            (.http1_1, .tooManyRequests, [("retry-after", "3")], 0, false),
            (.http1_0, .ok, [], 12, true),
            (.http1_1, .ok, [("x-long", long), ("x-after", "1")], 1_234_567, true),
            (.http1_1, HTTPResponseStatus(statusCode: 599), [("x-empty", "")], 5, false),
        ]
        for (version, status, pairs, contentLength, keepAlive) in cases {
            var out = ByteBufferAllocator().buffer(capacity: capacity)
            out.writeString("prefix|")
            EventLoopModelHandler.writeHead(
                into: &out, version: version, status: status, headers: { add in for (name, value) in pairs { add(name, value) } },
                contentLength: contentLength, keepAlive: keepAlive)
            var headers = HTTPHeaders(pairs)
            headers.add(name: "content-length", value: String(contentLength))
            headers.add(name: "server", value: "interlock")
            if !keepAlive { headers.add(name: "connection", value: "close") }
            let expected = try encodedByNIO(HTTPResponseHead(version: version, status: status, headers: headers))
            #expect(String(buffer: out) == "prefix|" + expected, "\(version) \(status) \(pairs.map(\.0))")
        }
    }
}
