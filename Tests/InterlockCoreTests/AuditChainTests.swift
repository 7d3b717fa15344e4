import InterlockCore
import Testing

@Suite struct CanonicalJSONTests {
    /// RFC 8785 §3.2.2.3 and appendix B number examples.
    @Test func numbersAreWrittenAsECMAScriptDoes() {
        let cases: [(Double, String)] = [
            (0, "0"), (-0.0, "0"), (1, "1"), (-1, "-1"), (4.5, "4.5"), (0.002, "0.002"), (1e-7, "1e-7"), (0.000001, "0.000001"),
            (1e21, "1e+21"), (1e20, "100000000000000000000"), (Double("123456789012345680000")!, "123456789012345680000"),
            (333333333.33333329, "333333333.3333333"), (9007199254740991, "9007199254740991"), (-1.5e-10, "-1.5e-10"),
            (Double.leastNonzeroMagnitude, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"), (0x1p68, "295147905179352830000"),
        ]
        for (value, expected) in cases {
            #expect(CanonicalJSON.number(value) == expected, "\(value)")
        }
    }

    @Test func membersAreSortedByUTF16AndStringsMinimallyEscaped() {
        // RFC 8785 §3.2.3: sorting by UTF-16 code units puts U+1F600 (a surrogate pair) before U+FB33.
        let value: JSONValue = .object([
            "\u{20ac}": "Euro Sign", "\r": "Carriage Return", "\u{fb33}": "Hebrew Letter Dalet With Dagesh",
            "1": "One", "\u{1f600}": "Emoji: Grinning Face", "\u{80}": "Control\u{7f}",
            "\u{f6}": "Latin Small Letter O With Diaeresis",
        ])
        let text = String(decoding: CanonicalJSON.bytes(value), as: UTF8.self)
        let keys = ["\\r", "1", "\u{80}", "\u{f6}", "\u{20ac}", "\u{1f600}", "\u{fb33}"]
        // Keys appear in exactly this order.
        let found = keys.map { key in text.ranges(of: "\"\(key)\":").first?.lowerBound }
        #expect(found.allSatisfy { $0 != nil }, "\(text)")
        let offsets = found.compactMap { $0 }.map { text.distance(from: text.startIndex, to: $0) }
        #expect(offsets == offsets.sorted(), "\(text)")
        #expect(String(decoding: CanonicalJSON.bytes(.string("a\u{8}\u{c}\n\u{1}\"\\/é")), as: UTF8.self) == #""a\b\f\n\u0001\"\\/é""#)
        let nested: JSONValue = .array([.integer(1), .bool(true), .null, .object(["b": .integer(1), "a": .integer(2)])])
        let nestedText = String(decoding: CanonicalJSON.bytes(nested), as: UTF8.self)
        #expect(nestedText == #"[1,true,null,{"a":2,"b":1}]"#)
    }
}

@Suite struct AuditChainTests {
    func chain(_ count: Int) -> [AuditRecord] {
        var chain = AuditChain()
        var records: [AuditRecord] = []
        for index in 1...count {
            let denied = index % 4 == 0
            let record = AuditRecord(
                timestampMs: 1_700_000_000_000 + Int64(index), node: "node-1", action: "model.call", agentID: "a\(index % 3)", target: "fast",
                decision: denied ? "deny" : "allow", reason: denied ? "budget_exceeded" : nil, outcome: "success", status: 200,
                costNanos: Int64(index) * 1000, requestID: "req_\(index)")
            records.append(chain.link(record))
        }
        return records
    }

    /// `place` gives a record the place `link` gives it, and the chain it builds verifies.
    @Test func placingWithoutACopyLinksAsLinkDoes() {
        let unlinked = chain(6).map { record in
            var record = record
            record.sequence = 0
            record.previousHash = ""
            record.hash = ""
            return record
        }
        var linking = AuditChain(lastSequence: 41, lastHash: String(repeating: "b", count: 64))
        var placing = linking
        var placed: [AuditRecord] = []
        for record in unlinked {
            let linked = linking.link(record)
            let place = placing.place(record)
            #expect(place.sequence == linked.sequence)
            #expect(place.previousHash == linked.previousHash)
            #expect(place.hash == linked.hash)
            #expect(place.hash == linked.computedHash())
            var stored = record
            (stored.sequence, stored.previousHash, stored.hash) = (place.sequence, place.previousHash, place.hash)
            placed.append(stored)
        }
        #expect(placing.lastHash == linking.lastHash)
        var verifying = AuditChain(lastSequence: 41, lastHash: String(repeating: "b", count: 64))
        #expect(verifying.verify(placed) == nil)
        // A place is the record's: another record in it fails verification.
        placed[2].target = "other"
        var again = AuditChain(lastSequence: 41, lastHash: String(repeating: "b", count: 64))
        #expect(again.verify(placed)?.sequence == 44)
    }

    /// The direct canonical writer and the generic one agree, for every shape of record.
    @Test func directCanonicalFormMatchesTheGenericOne() {
        var records = chain(8)
        records[2].actorChain = ["user:ann", "agent:planner", "agent:mailer"]
        records[3].userID = "ann \"quoted\" \u{1}\u{e9}"
        records[4].status = nil
        records[4].costNanos = nil
        records[5].runID = "run-1"
        records[5].parentRunID = "run-0"
        records[5].supervisor = "bob"
        records[6].resultHash = String(repeating: "a", count: 64)
        records[6].capture = #"{"args":{"q":"x"}}"#
        for record in records {
            #expect(record.canonicalBytes() == CanonicalJSON.bytes(record.json(includingHash: false)))
        }
        // Integers at the edges of the plain-digit form.
        for cost: Int64 in [0, 9, 10, 99, 100, 1_000_000_007, 1 << 53, (1 << 53) + 1, -5, Int64.max, Int64.min] {
            var record = records[1]
            record.costNanos = cost
            record.sequence = cost
            record.timestampMs = cost
            #expect(record.canonicalBytes() == CanonicalJSON.bytes(record.json(includingHash: false)), "\(cost)")
        }
    }

    @Test func linkedRecordsVerify() {
        let records = chain(20)
        #expect(records.first?.previousHash == AuditRecord.genesisHash)
        #expect(records.map(\.sequence) == Array(1...20))
        var verifier = AuditChain()
        #expect(verifier.verify(records) == nil)
        #expect(verifier.lastSequence == 20)
        #expect(verifier.lastHash == records.last?.hash)
        // Verification can resume from a known point.
        var resumed = AuditChain(lastSequence: 10, lastHash: records[9].hash)
        #expect(resumed.verify(records[10...]) == nil)
    }

    @Test func everyTamperingIsFoundAtItsRecord() {
        let records = chain(10)
        func firstBreak(_ tampered: [AuditRecord]) -> AuditChain.Break? {
            var verifier = AuditChain()
            return verifier.verify(tampered)
        }
        // Altered: any field changes the hash.
        var altered = records
        altered[4].costNanos = 1
        #expect(firstBreak(altered)?.sequence == 5)
        #expect(firstBreak(altered)?.kind == .altered)
        var alteredDecision = records
        // Record 8 was a refusal; turning it into an allow is caught.
        alteredDecision[7].decision = "allow"
        alteredDecision[7].reason = nil
        #expect(firstBreak(alteredDecision)?.sequence == 8)
        #expect(firstBreak(alteredDecision)?.kind == .altered)
        // Altered and rehashed: the next record no longer links to it.
        var rehashed = records
        rehashed[2].agentID = "intruder"
        rehashed[2].hash = rehashed[2].computedHash()
        #expect(firstBreak(rehashed)?.sequence == 4)
        #expect(firstBreak(rehashed)?.kind == .misplaced)
        // Removed.
        var removed = records
        removed.remove(at: 5)
        #expect(firstBreak(removed)?.sequence == 7)
        #expect(firstBreak(removed)?.kind == .removed)
        // Inserted: a forged record with a valid hash of its own.
        var inserted = records
        var forged = records[3]
        forged.action = "operator.agent.delete"
        forged.hash = forged.computedHash()
        inserted.insert(forged, at: 4)
        #expect(firstBreak(inserted)?.sequence == 4)
        #expect(firstBreak(inserted)?.kind == .misplaced)
        // Reordered.
        var reordered = records
        reordered.swapAt(7, 8)
        #expect(firstBreak(reordered)?.sequence == 9)
        #expect(firstBreak(reordered)?.kind == .removed)
    }
}
