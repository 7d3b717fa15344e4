import InterlockProviders
import Testing

@Suite struct ServerSentEventParserTests {
    @Test func eventsSurviveAnyChunkBoundary() {
        let stream = "event: message_start\r\ndata: {\"a\":1}\r\n\r\n: keep-alive comment\n\ndata: line one\ndata: line two\n\nevent: x\ndata: [DONE]\n\n"
        let bytes = Array(stream.utf8)
        var expected: [ServerSentEvent] = []
        do {
            var parser = ServerSentEventParser()
            expected = parser.consume(bytes)
        }
        #expect(expected == [
            ServerSentEvent(event: "message_start", data: #"{"a":1}"#),
            ServerSentEvent(data: "line one\nline two"),
            ServerSentEvent(event: "x", data: "[DONE]"),
        ])
        // Every split point, including inside "\r\n", gives the same events.
        for split in 0...bytes.count {
            var parser = ServerSentEventParser()
            let events = parser.consume(bytes[..<split]) + parser.consume(bytes[split...])
            #expect(events == expected, "split at \(split)")
        }
    }

    /// Chunks are read a line run at a time, in place when contiguous and copied when not:
    /// every line ending (LF, CRLF, CR) reads the same, wherever a chunk ends.
    @Test func chunksReadInPlaceOrCopiedGiveTheSameEvents() {
        let stream = "data: a\rdata: b\r\r: note\r\nevent: e\r\ndata: \(String(repeating: "x", count: 300))\n\nid: 7\ndata: c\r\n\r\ndata: tail"
        let bytes = Array(stream.utf8)
        for split in 0...bytes.count {
            var contiguous = ServerSentEventParser()
            var generic = ServerSentEventParser()
            var fast = contiguous.consume(bytes[..<split]) + contiguous.consume(bytes[split...])
            var slow = generic.consume(bytes[..<split].lazy.map { $0 }) + generic.consume(bytes[split...].lazy.map { $0 })
            fast += contiguous.finish().map { [$0] } ?? []
            slow += generic.finish().map { [$0] } ?? []
            #expect(fast == slow, "split at \(split)")
            #expect(fast == [
                ServerSentEvent(data: "a\nb"), ServerSentEvent(event: "e", data: String(repeating: "x", count: 300)), ServerSentEvent(data: "c"),
                ServerSentEvent(data: "tail"),
            ], "split at \(split)")
            #expect(contiguous.lastEventID == "7")
        }
    }

    @Test func finishDeliversAnEventWithoutItsBlankLine() {
        var parser = ServerSentEventParser()
        #expect(parser.consume(Array("data: tail".utf8)).isEmpty)
        #expect(parser.finish() == ServerSentEvent(data: "tail"))
        #expect(parser.finish() == nil)
    }

    @Test func encodedEventsParseBack() {
        let event = ServerSentEvent(event: "content_block_delta", data: #"{"x":"y"}"#)
        var parser = ServerSentEventParser()
        #expect(parser.consume(event.encoded()) == [event])
        // Data with line breaks goes out as one `data:` line each and comes back whole.
        let lines = ServerSentEvent(data: "one\n\ntwo\n")
        #expect(String(decoding: lines.encoded(), as: UTF8.self) == "data: one\ndata: \ndata: two\ndata: \n\n")
        #expect(parser.consume(lines.encoded() + ServerSentEvent(data: "").encoded()) == [lines, ServerSentEvent(data: "")])
        #expect(ServerSentEvent(data: "[DONE]").isDone && !ServerSentEvent(data: "[DONE] ").isDone)
    }

    @Test func remembersTheLastEventIDAndRetryForResuming() {
        var parser = ServerSentEventParser()
        #expect(parser.consume(Array("id: e1\nretry: 250\ndata: \n\ndata: x\n\nretry: soon\nid: bad\u{0}id\n\n".utf8)) == [ServerSentEvent(data: ""), ServerSentEvent(data: "x")])
        // The id carries over to later events; an id with NUL and a retry that is not digits are ignored.
        #expect(parser.lastEventID == "e1" && parser.retryMs == 250)
        _ = parser.consume(Array("id: e2\ndata: y\n\n".utf8))
        #expect(parser.lastEventID == "e2")
    }

    /// An event is held until its blank line, so it is bounded: a line, or the data lines of
    /// one event together, past `maxEventBytes` stop the parser; events before it are kept.
    @Test func anEventPastItsBoundStopsTheParser() {
        let limit = 64
        // Exactly at the bound (the line "data: " plus 58 bytes) is accepted, wherever chunks end.
        let fits = "data: " + String(repeating: "a", count: limit - 6) + "\n\n"
        for split in 0...fits.utf8.count {
            var parser = ServerSentEventParser(maxEventBytes: limit)
            let bytes = Array(fits.utf8)
            let events = parser.consume(bytes[..<split]) + parser.consume(bytes[split...])
            #expect(events == [ServerSentEvent(data: String(repeating: "a", count: limit - 6))], "split at \(split)")
            #expect(!parser.overflowed)
        }
        // A line that never ends: the event before it arrives, then nothing more.
        var endless = ServerSentEventParser(maxEventBytes: limit)
        #expect(endless.consume(Array("data: first\n\ndata: ".utf8)) == [ServerSentEvent(data: "first")])
        for _ in 0..<10 { #expect(endless.consume(Array(repeating: UInt8(ascii: "x"), count: 20)).isEmpty) }
        #expect(endless.overflowed)
        #expect(endless.consume(Array("\n\ndata: later\n\n".utf8)).isEmpty)
        #expect(endless.finish() == nil)
        // Short lines that add up: the data of one event counts as a whole.
        var many = ServerSentEventParser(maxEventBytes: limit)
        let lines = String(repeating: "data: 0123456789\n", count: 10)
        #expect(many.consume(Array(lines.utf8)).isEmpty)
        #expect(many.overflowed)
        // Without a bound (the default) the same input is one event.
        var unbounded = ServerSentEventParser()
        #expect(unbounded.consume(Array((lines + "\n").utf8)).count == 1)
        #expect(!unbounded.overflowed)
    }
}
