import InterlockCore
@testable import InterlockServer
import Testing

/// The header readers and writers every call runs, written byte by byte for speed: they must
/// read and write exactly what the plain string versions did.
@Suite struct HeaderParsingTests {
    @Test func apiKeysComeFromABearerHeaderInAnyCaseOrFromXAPIKey() {
        #expect(AgentAuthenticationMiddleware.apiKey(authorization: "Bearer key-1", xAPIKey: nil) == "key-1")
        #expect(AgentAuthenticationMiddleware.apiKey(authorization: "bEARER   key-2  ", xAPIKey: "other") == "key-2")
        #expect(AgentAuthenticationMiddleware.apiKey(authorization: "Bearer    ", xAPIKey: nil) == "")
        #expect(AgentAuthenticationMiddleware.apiKey(authorization: "Bearer ", xAPIKey: " key-3 ") == "key-3")
        #expect(AgentAuthenticationMiddleware.apiKey(authorization: "Basic abc", xAPIKey: "key-4") == "key-4")
        #expect(AgentAuthenticationMiddleware.apiKey(authorization: "Bearerkey", xAPIKey: nil) == nil)
        #expect(AgentAuthenticationMiddleware.apiKey(authorization: "Bearer ключ", xAPIKey: nil) == "ключ")
        #expect(AgentAuthenticationMiddleware.apiKey(authorization: nil, xAPIKey: nil) == nil)
    }

    @Test func mcpClientsMustAcceptJSON() {
        #expect(MCPRoutes.acceptsJSON("application/json, text/event-stream"))
        #expect(MCPRoutes.acceptsJSON("text/event-stream, Application/JSON"))
        #expect(MCPRoutes.acceptsJSON("*/*"))
        #expect(!MCPRoutes.acceptsJSON("text/event-stream"))
        #expect(!MCPRoutes.acceptsJSON("application/jso"))
        #expect(!MCPRoutes.acceptsJSON(""))
        #expect(!MCPRoutes.acceptsJSON(nil))
    }

    @Test func millisecondsHaveThreeDecimalsAtMost() {
        let cases: [(Double, String)] = [
            (0, "0"), (0.0004, "0"), (0.0006, "0.001"), (0.25, "0.25"), (1.2346, "1.235"), (3, "3"), (12.07, "12.07"), (1000.5, "1000.5"),
            (-0.25, "-0.25"), (0.001, "0.001"), (0.01, "0.01"),
        ]
        for (value, text) in cases { #expect(ModelRoutes.format3(value) == text, "\(value)") }
    }

    @Test func fixedPointAndHexMatchTheirPlainDefinitions() {
        // The plain definition: whole part, then the fraction's digits without trailing zeros.
        func plain(_ units: Int64, scale: Int) -> String {
            var divisor: UInt64 = 1
            for _ in 0..<scale { divisor *= 10 }
            var fraction = scale == 0 ? "" : String(units.magnitude % divisor)
            fraction = String(repeating: "0", count: scale - fraction.count) + fraction
            while fraction.hasSuffix("0") { fraction.removeLast() }
            return (units < 0 ? "-" : "") + String(units.magnitude / divisor) + (fraction.isEmpty ? "" : "." + fraction)
        }
        let values: [Int64] = [0, 1, -1, 9, 10, 100, 123_000, 2_500, 3_000, -2_500, 1_000_000_007, 999_999_999, .max, .min, .min + 1]
        for value in values {
            for scale in [0, 1, 3, 9, 18] {
                #expect(ASCIIText.fixedPoint(value, scale: scale) == plain(value, scale: scale), "\(value) at scale \(scale)")
            }
        }
        let bytes: [UInt8] = [0x00, 0x0f, 0x10, 0x7f, 0x80, 0xab, 0xff]
        let hex = bytes.withUnsafeBytes(ASCIIText.hex)
        #expect(hex == bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined())
        #expect(hex == "000f107f80abff")
        #expect([UInt8]().withUnsafeBytes(ASCIIText.hex) == "")
    }

    @Test func digitsMatchTheStandardLibrary() {
        for value: UInt64 in [0, 1, 9, 10, 35, 36, 255, 1000, 123_456_789, UInt64(Int64.max), .max] {
            for radix: UInt64 in [2, 10, 16, 36] {
                #expect(ASCIIText.digits(value, radix: radix) == String(value, radix: Int(radix)), "\(value) in \(radix)")
            }
            #expect(ASCIIText.digits(value, radix: 36, after: "req_x_") == "req_x_" + String(value, radix: 36))
        }
        #expect(ASCIIText.digits(42, after: "ключ-") == "ключ-42")
        let first = RequestIDGenerator.next()
        let second = RequestIDGenerator.next()
        let (head1, counter1) = (first[..<first.lastIndex(of: "_")!], UInt64(first[first.index(after: first.lastIndex(of: "_")!)...], radix: 36))
        let (head2, counter2) = (second[..<second.lastIndex(of: "_")!], UInt64(second[second.index(after: second.lastIndex(of: "_")!)...], radix: 36))
        #expect(first.hasPrefix("req_") && head1 == head2)
        #expect(counter1! < counter2!)
    }
}
