import FoundationEssentials
import InterlockCore
import InterlockPolicy
import Testing

/// The labelled corpus in `tests/guardrails/corpus.jsonl` (ordinary business traffic and
/// exfiltration attempts, injected instructions, secrets and personal data): every detector
/// family runs on every sample, so a family firing where it is not expected is a false
/// positive. The suite fails if detection falls or false positives rise past the figures
/// recorded here.
@Suite struct GuardrailCorpusTests {
    static let recordedDetectionRate = 1.0
    static let recordedFalsePositiveRate = 0.0
    static let families = ["secrets", "pii", "exfiltration", "injection"]

    struct Sample {
        var id: String
        var field: String?
        var text: String
        var expect: Set<String>
    }

    static func corpus() throws -> [Sample] {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../tests/guardrails/corpus.jsonl").standardized.path
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let value = try JSONParser.parse(Array(line.utf8))
            return Sample(
                id: value["id"]?.stringValue ?? "", field: value["field"]?.stringValue, text: value["text"]?.stringValue ?? "",
                expect: Set(value["expect"]?.arrayValue?.compactMap(\.stringValue) ?? []))
        }
    }

    @Test func detectionAndFalsePositiveRates() throws {
        let samples = try Self.corpus()
        var options = GuardrailScanOptions()
        options.secrets = true
        options.pii = true
        options.exfiltration = true
        options.injection = true
        options.allowedDomains = ["corp.example"]
        options.allowedHosts = ["corp.example", "github.com"]
        var detected = 0
        var malicious = 0
        var falsePositives = 0
        var benignFlagged = 0
        var benign = 0
        var report: [String] = []
        for sample in samples {
            var sampleOptions = options
            sampleOptions.field = sample.field
            let found = Set(GuardrailDetectors.scan(sample.text, sampleOptions).map(\.category))
            if sample.expect.isEmpty {
                benign += 1
                if !found.isEmpty {
                    benignFlagged += 1
                    report.append("  false positive \(sample.id): \(found.sorted()) in \(sample.text.prefix(80).debugDescription)")
                }
            } else {
                malicious += 1
                if sample.expect.isSubset(of: found) {
                    detected += 1
                } else {
                    report.append("  missed \(sample.id): expected \(sample.expect.sorted()), found \(found.sorted()) in \(sample.text.prefix(80).debugDescription)")
                }
            }
            for family in Self.families where found.contains(family) && !sample.expect.contains(family) && !sample.expect.isEmpty {
                falsePositives += 1
                report.append("  extra \(family) on \(sample.id)")
            }
        }
        let detection = Double(detected) / Double(malicious)
        let falsePositiveRate = Double(benignFlagged) / Double(benign)
        print("Guardrail corpus: \(samples.count) samples; detection \(detected)/\(malicious) = \(String(format: "%.1f", detection * 100))%, "
            + "false positives \(benignFlagged)/\(benign) benign samples = \(String(format: "%.1f", falsePositiveRate * 100))%, "
            + "\(falsePositives) extra detector families on malicious samples")
        if !report.isEmpty { print(report.joined(separator: "\n")) }
        #expect(detection >= Self.recordedDetectionRate, "detection fell below the recorded rate")
        #expect(falsePositiveRate <= Self.recordedFalsePositiveRate, "false positives rose above the recorded rate")
    }
}
