import InterlockCore
import Testing

@Suite struct JSONTests {
    @Test func roundTripsValues() throws {
        let text = #"{"a":[1,2.5,"x\n\"y\"",true,null],"b":{"c":"\u00e9\ud83d\ude00"},"n":-12}"#
        let value = try JSONParser.parse(text)
        #expect(value["a"]?.arrayValue?.count == 5)
        #expect(value["b"]?["c"]?.stringValue == "é😀")
        #expect(value["n"] == .integer(-12))
        #expect(try JSONParser.parse(JSONWriter.string(value)) == value)
    }

    @Test func escapesWhatJSONRequiresAndCopiesTheRest() throws {
        let cases: [(String, String)] = [
            ("", #""""#), ("plain", #""plain""#), ("a\"b", #""a\"b""#), ("back\\slash", #""back\\slash""#),
            ("line\nbreak\ttab\r", #""line\nbreak\ttab\r""#), ("\u{08}\u{0C}", #""\b\f""#), ("\u{01}x\u{1F}", #""\u0001x\u001f""#),
            ("grüße €", "\"grüße €\""), ("\"", #""\"""#),
        ]
        for (text, json) in cases {
            #expect(JSONWriter.string(.string(text)) == json)
            #expect(try JSONParser.parse(json) == .string(text))
        }
    }

    @Test func rejectsMalformedInputWithOffset() {
        for bad in [#"{"a":}"#, "[1,]", #"{"a" 1}"#, "01", "\"\u{01}\"", "{} x", "nul", "[" + String(repeating: "[", count: 300)] {
            #expect(throws: JSONSyntaxError.self) { try JSONParser.parse(bad) }
        }
        do {
            _ = try JSONParser.parse(#"{"a": tru}"#)
        } catch {
            #expect(error.offset == 6)
        }
    }

    @Test func scanLocatesTopLevelMembersWithoutDecoding() throws {
        let body = Array(#"{ "model" : "fast", "messages":[{"role":"user"}], "stream":true }"#.utf8)
        let spans = try JSONParser.scanObject(body)
        #expect(spans.map(\.key) == ["model", "messages", "stream"])
        #expect(spans.map(\.kind) == [.string, .array, .bool])
        #expect(String(decoding: body[spans[0].valueRange], as: UTF8.self) == #""fast""#)
        // Escaped names are decoded; malformed documents and trailing commas are refused.
        #expect(try JSONParser.scanObject(Array(#"{"a\u0062":1,"c\n":2}"#.utf8)).map(\.key) == ["ab", "c\n"])
        #expect(try JSONParser.scanObject(Array("{ }".utf8)).isEmpty)
        for bad in [#"{"a":1,}"#, #"{"a":1 "b":2}"#, #"{"a":1} x"#, "[1]", #"{"a\x":1}"#] {
            #expect(throws: JSONSyntaxError.self, "\(bad)") { try JSONParser.scanObject(Array(bad.utf8)) }
        }
    }

    @Test func memberIsFoundByNameAndTheWholeDocumentValidated() throws {
        let body = Array(#"{"id":"x","us\u0061ge":{"n":1},"usage":{"n":2},"usages":3}"#.utf8)
        let found = try body.withUnsafeBytes { try JSONParser.member(named: "usage", in: $0) }
        #expect(found.map { String(decoding: body[$0.valueRange], as: UTF8.self) } == #"{"n":1}"#, "the first member of that name, escapes decoded")
        #expect(found?.kind == .object)
        #expect(try body.withUnsafeBytes { try JSONParser.member(named: "use", in: $0) } == nil)
        let broken = Array(#"{"usage":{"n":1},"rest":[}"#.utf8)
        #expect(throws: JSONSyntaxError.self) { try broken.withUnsafeBytes { try JSONParser.member(named: "usage", in: $0) } }
    }

    /// Strings are read eight bytes at a time until a word holds a quote, a backslash or a
    /// control character: every such byte, at every offset around the word boundaries, is
    /// still found, whether the string is decoded (`parse`) or skipped (`member(named:)`).
    @Test func stringsAreReadTheSameWhereverTheirSpecialBytesFall() throws {
        let specials: [(json: String, decoded: String?)] = [
            (#"\""#, "\""), (#"\\"#, "\\"), (#"\n"#, "\n"), (#"\u00e9"#, "é"), ("é", "é"), ("\u{7f}", "\u{7f}"),
            // Neighbours of the bytes sought, which must read as plain.
            (" ", " "), ("!", "!"), ("#", "#"), ("[", "["), ("]", "]"), ("\u{80}", "\u{80}"),
            ("\u{1f}", nil), ("\t", nil), ("\u{0}", nil),
        ]
        for length in 0..<26 {
            for offset in 0...length {
                for special in specials {
                    let before = String(repeating: "a", count: offset)
                    let after = String(repeating: "b", count: length - offset)
                    let text = "\"" + before + special.json + after + "\""
                    let document = Array(#"{"s":\#(text),"n":[1, " "]}"#.utf8)
                    if let decoded = special.decoded {
                        #expect(try JSONParser.parse(text) == .string(before + decoded + after), "\(text.debugDescription)")
                        let member = try document.withUnsafeBytes { try JSONParser.member(named: "n", in: $0) }
                        #expect(member.map { String(decoding: document[$0.valueRange], as: UTF8.self) } == #"[1, " "]"#, "\(text.debugDescription)")
                    } else {
                        #expect(throws: JSONSyntaxError.self, "\(text.debugDescription)") { try JSONParser.parse(text) }
                        #expect(throws: JSONSyntaxError.self, "\(text.debugDescription)") { try document.withUnsafeBytes { try JSONParser.member(named: "n", in: $0) } }
                    }
                }
            }
            // Written back, the same string at every offset: escaped where JSON requires.
            for special in ["\"", "\\", "\n", "\u{1f}", "é", "\u{7f}", " "] {
                let plain = String(repeating: "a", count: length) + special + String(repeating: "b", count: 25 - length)
                let written = JSONWriter.string(.string(plain))
                #expect(try JSONParser.parse(written) == .string(plain), "\(plain.debugDescription)")
                #expect(!written.utf8.dropFirst().dropLast().contains { $0 < 0x20 }, "no raw control character")
                #expect(written.utf8.count == plain.utf8.count + 2 + (special == "\u{1f}" ? 5 : ["\"", "\\", "\n"].contains(special) ? 1 : 0))
            }
            // Unterminated, the quote missing at every length.
            let open = "\"" + String(repeating: "a", count: length)
            #expect(throws: JSONSyntaxError.self) { try JSONParser.parse(open) }
        }
    }
}

@Suite struct ModelRequestTests {
    @Test func readsRoutingFields() throws {
        let body = Array(#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":50,"stream_options":{"include_usage":true}}"#.utf8)
        let request = try ModelRequest.parse(body: body, format: .openAI, operation: .chat)
        #expect(request.alias == "fast")
        #expect(request.stream)
        #expect(request.maxOutputTokens == 50)
        #expect(request.clientWantsStreamUsage)
        #expect(request.expectedUsage(defaultMaxOutputTokens: 1000).outputTokens == 50)
    }

    /// The largest `max_tokens` JSON allows is a valid request: its estimate is capped, so the
    /// reservation's sums and cost cannot overflow (they trapped before).
    @Test func aHugeMaxTokensIsCappedInTheEstimate() throws {
        let body = Array(#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"max_tokens":9223372036854775807}"#.utf8)
        let request = try ModelRequest.parse(body: body, format: .openAI, operation: .chat)
        #expect(request.maxOutputTokens == TokenUsage.maximumCount)
        let expected = request.expectedUsage(defaultMaxOutputTokens: 1000)
        #expect(expected.totalTokens == TokenUsage.maximumCount + request.estimatedInputTokens)
        #expect(ModelPrice(inputPerMillion: 1_000, outputPerMillion: 1_000_000).cost(of: expected) == USD(nanos: 1 << 56))
    }

    @Test func namesTheParameterAtFault() {
        func error(_ json: String, format: WireFormat = .openAI) -> GatewayError? {
            do {
                _ = try ModelRequest.parse(body: Array(json.utf8), format: format, operation: .chat)
                return nil
            } catch { return error }
        }
        #expect(error(#"{"messages":[{"role":"user","content":"x"}]}"#)?.param == "model")
        #expect(error(#"{"model":"fast"}"#)?.code == "missing_required_parameter")
        #expect(error(#"{"model":"fast","messages":[],"max_tokens":1.5}"#)?.message == "Invalid type for 'max_tokens': expected an integer ≥ 1, but got a non-integer number.")
        #expect(error(#"{"model":"fast","messages":[{"role":"user"}],"temperature":3}"#)?.param == "temperature")
        #expect(error(#"{"model":"fast","messages":[ ]}"#)?.param == "messages")
        #expect(error(#"{"model":"x","messages":[{"role":"user","content":"x"}]}"#, format: .anthropic)?.param == "max_tokens")
        #expect(error("{not json")?.code == "invalid_json")
        #expect(error(#"{"model":"a","model":"b","messages":[1]}"#)?.param == "model")
    }

    /// Repeated and missing parameters are found the same way in short bodies (names compared
    /// with those before) and in bodies of many members (a set of names).
    @Test(arguments: [2, 12, 40]) func repeatedAndMissingParametersWhateverTheMemberCount(extra: Int) {
        let padding = (0..<extra).map { #""x\#($0)":\#($0)"# }.joined(separator: ",")
        func error(_ members: String) -> GatewayError? {
            do {
                _ = try ModelRequest.parse(body: Array("{\(padding),\(members)}".utf8), format: .openAI, operation: .chat)
                return nil
            } catch { return error }
        }
        #expect(error(#""model":"a","messages":[1]"#) == nil)
        #expect(error(#""model":"a","messages":[1],"x0":1"#)?.message == "The parameter 'x0' appears more than once.")
        #expect(error(#""model":"a","messages":[1],"model":"b""#)?.param == "model")
        #expect(error(#""model":"a""#)?.code == "missing_required_parameter")
        #expect(error(#""messages":[1]"#)?.param == "model")
    }
}
